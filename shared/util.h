/*
 * util: the small system helpers every module needs: I/O that survives
 * EINTR and partial transfers, fd flags, clocks (durable writes: durable.h).
 */
#ifndef DROVER_UTIL_H
#define DROVER_UTIL_H

#include <stddef.h>
#include <sys/types.h>

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* Blocking-fd helpers: retry on EINTR, loop on partial transfers. 0 or -1/errno. */
int write_all(int fd, const void *buf, size_t len);
/* Reads until len bytes or EOF; returns bytes read, or -1/errno. */
ssize_t read_full(int fd, void *buf, size_t len);
/* One read/write on a non-blocking fd: retries EINTR; returns -1 with EAGAIN when it would block. */
ssize_t read_some(int fd, void *buf, size_t len);
ssize_t write_some(int fd, const void *buf, size_t len);

int fd_set_nonblock(int fd);

/* mkdir -p with mode; existing directories are fine. */
int mkdir_p(const char *path, mode_t mode);

/* Reads a whole file (at most max bytes, else -1/EFBIG) into a malloc'd NUL-terminated buffer. */
char *read_file(const char *path, size_t max, size_t *len_out);

long long now_ms(void);       /* CLOCK_MONOTONIC, milliseconds */
long long wall_ms(void);      /* CLOCK_REALTIME, Unix milliseconds */

/* waitpid that retries EINTR. */
pid_t waitpid_retry(pid_t pid, int *status, int options);
/* "exit 3", "signal 9 (core)" for a wait status. */
void describe_wait_status(int status, char *buf, size_t len);

#endif
