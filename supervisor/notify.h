/*
 * notify: tells a service manager (systemd, Type=notify) what the supervisor
 * is doing, with the documented NOTIFY_SOCKET datagram protocol (sd_notify(3))
 * and without libsystemd. Every function is a no-op when the process was not
 * started with NOTIFY_SOCKET, so callers never need to ask.
 */
#ifndef DROVER_NOTIFY_H
#define DROVER_NOTIFY_H

#include <stddef.h>

/*
 * Reads NOTIFY_SOCKET ("/path" or "@abstract"), removes it from the
 * environment so that workers and handlers never inherit it, and opens a
 * close-on-exec datagram socket. Call once, early, before forking workers.
 * Returns 0 (also when there is nothing to notify), or -1 and err when the
 * variable is malformed or the socket cannot be made (the caller logs it);
 * notification is then off and drover runs on.
 */
int notify_init(char *err, size_t errlen);

/* READY=1 (with MAINPID and, when status is not NULL, STATUS=status). */
void notify_ready(const char *status);
/* STATUS=status: a one-line human summary ("3 workers, 5 jobs in flight"). */
void notify_status(const char *status);
/* RELOADING=1: a reload has begun; notify_ready() again when it is applied or refused. */
void notify_reloading(void);
/* STOPPING=1: a graceful or fast stop has begun. */
void notify_stopping(void);

#endif
