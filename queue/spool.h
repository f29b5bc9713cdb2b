/*
 * spool: the embedded durable queue (README: The spool), a maildir-style
 * directory: tmp/, incoming/, processing/, complete/, failed/. Enqueue =
 * write in tmp/, fsync, rename into incoming/, fsync the directory. A worker
 * claims a job by locking the file (flock) and renaming it into processing/;
 * the lock lives as long as the worker, so a claim whose lock can be taken
 * belongs to a dead worker and goes back to incoming/ with its attempt count.
 * Outcomes finished together share one directory fsync (group commit).
 * Implements source_ops (spool_source_ops, spool.c: what a worker uses) and
 * queue_ops (spool_queue_ops, spool_admin.c); the functions below, which need
 * no worker (spool_dir.c), are what droverctl and the supervisor link.
 */
#ifndef DROVER_SPOOL_H
#define DROVER_SPOOL_H

#include <stdbool.h>
#include <stddef.h>

#include "shared/scoreboard.h"
#include "queue/source.h"

extern const struct source_ops spool_source_ops;
extern const struct queue_ops spool_queue_ops;

/* Creates the five directories if missing and checks they are writable. 0, or -1 and err. */
int spool_prepare(const char *dir, char *err, size_t errlen);
/* Like prepare, without creating: for `droverctl health`. */
int spool_health(const char *dir, char *err, size_t errlen);
/*
 * Durably enqueues one job; writes its id (README: The handler protocol) to id_out. 0 or
 * -1/errno: EINVAL when the payload would be an invalid job (not a JSON
 * object, or an "id" that events.h refuses; spool_enqueue_refusal says why).
 */
int spool_enqueue(const char *dir, const char *payload, size_t len, char *id_out, size_t id_len);
/* NULL when payload may be enqueued, else a sentence saying why not. */
const char *spool_enqueue_refusal(const char *payload, size_t len);
/* Returns claims of dead workers to incoming/ and removes their tmp/ leftovers. The number returned, or -1. */
int spool_reclaim(const char *dir);

/*
 * For the per-job commands (spool_jobs.c: droverctl jobs, cancel, retry).
 * spool_job_id: a job's id from its file name and bytes, as a worker would
 * name it (the "id" field, else the name without suffix and .json).
 * spool_outcome_file: the complete/ or failed/ file name of id.
 * spool_write_new: writes dir/sub/name durably (tmp/, fsync, rename, fsync of
 * sub/); without replace an existing name is kept: -1/EEXIST. 0, or -1/errno.
 */
char *spool_job_id(const char *name, const char *payload, size_t len);
int spool_name_attempts(const char *name);
void spool_outcome_file(const char *id, char *buf, size_t len);
int spool_write_new(const char *dir, const char *sub, const char *name, const void *data, size_t len, bool replace);

/* The per-job queue_ops (source.h), in spool_jobs.c. */
json_t *spool_jobs_list(const struct config *cfg, size_t queued_max, size_t failed_max, char *why, size_t len);
enum queue_job_result spool_cancel_queued(const struct config *cfg, const char *id, const struct event_origin *origin,
                                          char *why, size_t len);
enum queue_job_result spool_retry_failed(const struct config *cfg, const char *id, char *why, size_t len);

/* What a source has done, for tests that check the hot path by counts rather than by time. */
struct spool_counters {
	unsigned long dir_fsyncs;    /* of complete/ and failed/ (group commits) */
	unsigned long scans;         /* readdirs of incoming/ */
	unsigned long safety_passes;
	unsigned long spare_syncs;   /* fsyncs of processing/ that made finished job files reusable */
	unsigned long recycled;      /* outcomes written into such a file instead of a new one */
};
void spool_source_counters(const struct source *src, struct spool_counters *out);

#endif
