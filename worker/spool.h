/*
 * spool: the embedded durable queue (spec section 6), a maildir-style
 * directory: tmp/, incoming/, processing/, complete/, failed/. Enqueue =
 * write in tmp/, fsync, rename into incoming/, fsync the directory. A worker
 * claims a job by locking the file (flock) and renaming it into processing/;
 * the lock lives as long as the worker, so a claim whose lock can be taken
 * belongs to a dead worker and goes back to incoming/ with its attempt count.
 * Implements source_ops (spool_source_ops); the functions below serve
 * droverctl and the supervisor.
 */
#ifndef DROVER_SPOOL_H
#define DROVER_SPOOL_H

#include <stddef.h>

#include "source.h"

extern const struct source_ops spool_source_ops;

/* Creates the five directories if missing and checks they are writable. 0, or -1 and err. */
int spool_prepare(const char *dir, char *err, size_t errlen);
/* Like prepare, without creating: for `droverctl health`. */
int spool_health(const char *dir, char *err, size_t errlen);
/* Durably enqueues one job; writes its id (spec section 3) to id_out. 0 or -1/errno. */
int spool_enqueue(const char *dir, const char *payload, size_t len, char *id_out, size_t id_len);
/* Returns claims of dead workers to incoming/. Number returned, or -1. */
int spool_reclaim(const char *dir);

#endif
