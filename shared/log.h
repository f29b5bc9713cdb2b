/*
 * log: the one logging module of drover (after OpenSMTPD's log.c).
 * Text or JSON lines to stderr or a file, reopened on SIGUSR1. Library code
 * returns errors; only start-up code calls log_fatal/log_fatalx.
 */
#ifndef DROVER_LOG_H
#define DROVER_LOG_H

#include <stdarg.h>
#include <sys/types.h>

enum log_level { LOG_LEVEL_ERROR, LOG_LEVEL_WARN, LOG_LEVEL_INFO, LOG_LEVEL_DEBUG };
enum log_format { LOG_FORMAT_TEXT, LOG_FORMAT_JSON };

/* name: process role shown in each line ("supervisor", "worker 3", "droverctl"). */
void log_init(const char *name, enum log_level level, enum log_format format);
void log_set_name(const char *name);
void log_set_level(enum log_level level);
void log_set_format(enum log_format format);
/* path "-" or NULL means stderr. Returns 0, or -1 with errno (old target kept). */
int log_open(const char *path);
int log_reopen(void);
/*
 * Logs to fd, an open file at path (reopened there by log_reopen): a binary
 * upgrade's new image keeps the old one's log file, which drover's user may
 * not be able to open again (created before the privilege drop).
 */
void log_adopt(int fd, const char *path);
int log_fd(void);

/*
 * What a line is about, beside its message: JSON lines carry these as fields
 * ("job_id", "attempt", "handler_pid"), text lines as a "job=ID attempt=N "
 * prefix, so that an operator can join every line of one job. Unset members
 * (NULL, 0) are left out.
 */
struct log_fields {
	const char *job_id;
	int attempt;
	pid_t handler_pid; /* the handler process of the attempt, when one runs */
};

/* The worker slot this process is (-1: none); every JSON line then has "worker". */
void log_set_worker(int slot);
/* Like log_info and friends, about one job. */
void log_job(enum log_level level, const struct log_fields *fields, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/*
 * Renders the fields as JSON members (",\"job_id\":\"...\",...") or as the text
 * prefix into out; exposed for the unit tests. Returns the length written.
 */
size_t log_render_fields(char *out, size_t cap, const struct log_fields *fields, enum log_format format);

/* *_warn variants append ": strerror(errno)". */
void log_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_warnx(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_fatal(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
void log_fatalx(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));

#endif
