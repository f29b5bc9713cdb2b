/*
 * log: the one logging module of drover (after OpenSMTPD's log.c).
 * Text or JSON lines to stderr or a file, reopened on SIGUSR1. Library code
 * returns errors; only start-up code calls log_fatal/log_fatalx.
 */
#ifndef DROVER_LOG_H
#define DROVER_LOG_H

#include <stdarg.h>

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

/* *_warn variants append ": strerror(errno)". */
void log_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_warnx(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_fatal(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
void log_fatalx(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));

#endif
