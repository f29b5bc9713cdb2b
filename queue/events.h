/*
 * events: the outcome documents (README: The spool, Kafka > Events), built with jansson, shared
 * by every backend (Kafka topics, spool files) so that they match exactly.
 * Each builder returns a malloc'd compact JSON string (free()), or NULL on
 * memory exhaustion. Times are ISO 8601 UTC with milliseconds.
 */
#ifndef DROVER_EVENTS_H
#define DROVER_EVENTS_H

#include <stdbool.h>
#include <stddef.h>

struct event_origin {
	const char *host;
	int worker; /* slot */
};

struct failure {
	/* exit_code | signal | timeout | result_too_large | spawn_failed | invalid_job | worker_lost |
	 * handler_error | handler_lost | memory_limit | cancelled (README: The handler protocol) */
	const char *reason;
	int exit_code;        /* -1 = none */
	int signal;           /* 0 = none */
	const char *message;  /* human sentence, may be NULL */
	const char *stderr_tail;
	size_t stderr_len;
	long long peak_memory_bytes; /* the attempt's cgroup peak; 0 = unknown (left out of the document) */
};

/* state: started | progress | retrying | completed | failed. progress < 0 and NULLs are omitted. */
char *event_status(const struct event_origin *origin, const char *id, const char *state, int attempt,
                   long long ts_ms, double progress, const char *message, const char *error);
/*
 * result is the handler's stdout: embedded as JSON when it parses, else as a string.
 * peak_memory_bytes: the attempt's cgroup peak, 0 = unknown (left out).
 */
char *event_complete(const struct event_origin *origin, const char *id, const char *result, size_t result_len,
                     int attempts, long long duration_ms, long long finished_ms, long long peak_memory_bytes);
/* job is the original message: embedded as JSON when it parses, else as a string. */
char *event_failed(const struct event_origin *origin, const char *id, const struct failure *failure, int attempts,
                   const char *job, size_t job_len, long long failed_ms);

/* The job's "id" string field when payload is a JSON object that has one (malloc'd), else NULL. */
char *event_job_id(const char *payload, size_t len);
/*
 * Job ids are bounded and printable at every entry (spool file, droverctl
 * submit, Kafka key or "id" field): a long id cannot be passed to a handler's
 * environment (exec fails with E2BIG) and a control character would forge log
 * lines. A job whose id breaks these rules fails with invalid_job.
 */
#define EVENT_JOB_ID_MAX 1024
/* NULL when id (len bytes) is acceptable, else a static sentence saying why not. */
const char *event_job_id_problem(const char *id, size_t len);
/* True when payload parses as a JSON object (README, The handler protocol: anything else is invalid_job). */
bool event_payload_is_object(const char *payload, size_t len);
/* "2026-11-27T17:40:00.123Z" */
void event_format_time(long long unix_ms, char *buf, size_t len);

#endif
