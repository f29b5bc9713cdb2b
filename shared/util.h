/*
 * util: the small system helpers every module needs: I/O that survives
 * EINTR and partial transfers, fd flags, bounded and secret file reads,
 * paths, clocks (durable writes: durable.h).
 *
 * The error convention of every module:
 *  - A function that can fail returns 0, or -1 on failure; a constructor
 *    returns its object, or NULL. The reason goes one of two ways:
 *      errno, for thin wrappers of system calls whose errno says it all
 *        (write_all, read_file, durable_write, runner_start, scoreboard_create);
 *      char *err, size_t errlen, filled with one sentence (no newline, never
 *        a secret) when the reason needs words (control_open,
 *        kafka_props_build, spool_health, read_secret_file, source open).
 *    The configuration loader alone collects every error of a file (struct
 *    config_errors), so that the operator fixes them in one go.
 *  - Library code (shared/, queue/, worker/) never exits and never logs what
 *    it returns as an error: the caller logs it once, with its context. What
 *    a module handles itself (a file skipped, a retry planned) it may log.
 *  - Exit codes come from <sysexits.h> and are chosen only by a process's
 *    entry point: main(), worker_main() in a forked worker, the runner's
 *    child between fork and exec.
 */
#ifndef DROVER_UTIL_H
#define DROVER_UTIL_H

#include <stddef.h>
#include <sys/stat.h>
#include <sys/types.h>

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define SECRET_FILE_MAX 65536 /* longest password file */

/* Blocking-fd helpers: retry on EINTR, loop on partial transfers. 0 or -1/errno. */
int write_all(int fd, const void *buf, size_t len);
/* Reads until len bytes or EOF; returns bytes read, or -1/errno. */
ssize_t read_full(int fd, void *buf, size_t len);
/* One read/write on a non-blocking fd: retries EINTR; returns -1 with EAGAIN when it would block. */
ssize_t read_some(int fd, void *buf, size_t len);
ssize_t write_some(int fd, const void *buf, size_t len);

int fd_set_nonblock(int fd);
/* A binary upgrade's new image marks the fds it was handed close-on-exec again. */
int fd_set_cloexec(int fd);

/* "dir/sub", or "dir/sub/name" when name is not NULL, into buf. 0, or -1/ENAMETOOLONG when it does not fit. */
int join_path(char *buf, size_t len, const char *dir, const char *sub, const char *name);
/* mkdir -p with mode; existing directories are fine. */
int mkdir_p(const char *path, mode_t mode);

/*
 * Opens path to read it whole, never blocking (a FIFO) nor reading without
 * end (/dev/zero): only a regular file of at most max bytes, or /dev/null,
 * is accepted. The fd (blocking again) and, when st is not NULL, its fstat;
 * or -1 with errno, and *refusal set to why ("not a regular file", "too
 * large") when the file opened but is refused, else to NULL.
 */
int open_bounded(const char *path, size_t max, struct stat *st, const char **refusal);
/*
 * Reads a whole file, opened by open_bounded, into a malloc'd NUL-terminated
 * buffer. NULL with errno: EFBIG larger than max, EINVAL not a regular file.
 */
char *read_file(const char *path, size_t max, size_t *len_out);
/*
 * Reads a secret (a password file) of at most SECRET_FILE_MAX bytes, with
 * read_file's care, and strips one trailing line end ("\n" or "\r\n"); an
 * empty secret or one with a NUL byte is refused. malloc'd: free it with secret_free. NULL with err (a sentence
 * naming the file) and errno: EBADMSG when the file was read but holds no
 * usable secret, else why it could not be read.
 */
char *read_secret_file(const char *path, char *err, size_t errlen);
/* Zeroes a secret's bytes, then frees it. NULL is fine. */
void secret_free(char *secret);

long long now_ms(void);       /* CLOCK_MONOTONIC, milliseconds */
long long wall_ms(void);      /* CLOCK_REALTIME, Unix milliseconds */

/* waitpid that retries EINTR. */
pid_t waitpid_retry(pid_t pid, int *status, int options);
/* "exit 3", "signal 9 (core)" for a wait status. */
void describe_wait_status(int status, char *buf, size_t len);

/* A malloc'd string from a printf format; NULL when out of memory. */
char *str_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
