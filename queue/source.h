/*
 * source: the queue layer's interface. Everything above queue/ reaches a
 * queue through two tables chosen once from cfg->backend (after OpenSMTPD's
 * queue_backend table), so nothing above this layer names a backend:
 *
 *  - struct queue_ops: what the supervisor and droverctl do with the
 *    queue as a whole (prepare at start, reclaim after a worker died, health,
 *    submit, topics, the configuration check of drover -t). It names no
 *    per-worker code, so droverctl links none of the consumers.
 *  - struct source_ops: one worker's connection to the queue (source_for).
 *
 * Life of a job: take() hands it out; attempt() is called before each handler
 * run (so the backend can persist the attempt number); status() carries the
 * typed started/progress/retrying/completed/failed states; then exactly one
 * of finish() (outcome document, complete or failed) or release() (unfinished:
 * it will run again, same id, next attempt). After finish() the source calls
 * cb.settled once the outcome is durable (spool: fsynced; Kafka: acknowledged
 * by the broker) and frees the job; only then does the job leave the queue.
 *
 * Return conventions: a function returning int returns 0 on success and -1
 * on failure (with err/errno as stated); anything with more than two
 * outcomes returns a named enum (enum source_take). The queue_ops
 * commands that droverctl runs return its exit code instead (0, 1 or a
 * <sysexits.h> code), since they also print what they did.
 */
#ifndef DROVER_SOURCE_H
#define DROVER_SOURCE_H

#include <ev.h>
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "queue/events.h"
#include "shared/config.h"
#include "shared/scoreboard.h"

struct job {
	char *id;            /* rules: README, The handler protocol; never NULL */
	char *payload;       /* the message bytes, NUL-terminated for convenience */
	size_t payload_len;
	int attempts_done;   /* attempts already made before this delivery (crashed workers' included) */
	uint64_t delivery;   /* the message's place in the queue (scoreboard crash ledger), 0 = none */
	bool invalid;        /* not a JSON object: fail with invalid_job, never run */
	const char *invalid_reason; /* static sentence saying why, NULL = not a JSON object */
	bool completed;      /* set by the worker before finish(): what settles, for the counters */
	double duration_s;   /* of the completing attempt, for the duration histogram */
	const char *failed_reason; /* set by the worker before a failed finish(): a static events.h reason */
	int attempts_run;    /* set by the worker before finish(): attempts made, for droverctl jobs */
	bool recorded;       /* settled by finish_recorded: an earlier delivery's outcome, never counted by its dead worker */
	void *backend;       /* the source's own per-job state */
};

/* What the worker tells the queue about a job between take() and its outcome. */
enum job_state { JOB_STARTED, JOB_PROGRESS, JOB_RETRYING, JOB_COMPLETED, JOB_FAILED };

struct job_status {
	enum job_state state;
	int attempt;
	long long ts_ms;      /* wall clock */
	double progress;      /* JOB_PROGRESS: 0..1 */
	const char *message;  /* JOB_PROGRESS, JOB_RETRYING, JOB_FAILED: a sentence, may be NULL */
	const char *reason;   /* JOB_RETRYING, JOB_FAILED: the failure reason (events.h), else NULL */
	long long delay_ms;   /* JOB_RETRYING: until the next attempt */
};

/* The state's name in status events ("started", "progress", ...). */
const char *job_state_name(enum job_state state);

struct source_callbacks {
	void (*ready)(void *arg);                     /* take() may have jobs now */
	void (*settled)(struct job *job, bool durable, void *arg); /* finish() done; job freed after return */
	/*
	 * Optional. The queue took job away while it runs (Kafka: its partition
	 * was revoked and the drain time is over): the worker stops the handler
	 * and then calls release() as usual. Without it, such jobs run on and
	 * their outcome is still produced.
	 */
	void (*revoke)(struct job *job, void *arg);
	void *arg;
};

struct source_params {
	const struct config *cfg;
	struct ev_loop *loop;
	int slot;
	/*
	 * The worker's scoreboard slot, or NULL: the source shows its faults in
	 * board->fault (only text it wrote itself is replaced there), publishes
	 * what it consumes (Kafka: partitions and lag; spool: the jobs waiting in
	 * incoming/ and the oldest one's age) and marks the slot ready
	 * once it can hand out jobs (spool: at once; Kafka: first assignment).
	 */
	struct scoreboard_slot *board;
	const struct event_origin *origin; /* host and slot for status events; copied */
	const struct source_callbacks *cb;
};

enum source_take {
	SOURCE_TAKEN, /* *job is set */
	SOURCE_EMPTY, /* none now; cb.ready follows when there may be */
	SOURCE_ERROR, /* out of memory: try again later */
};

struct source;

/* What a per-job command (droverctl cancel, retry) found in the queue. */
enum queue_job_result {
	QUEUE_JOB_DONE,    /* done, and durable */
	QUEUE_JOB_UNKNOWN, /* no such job where the command looks */
	QUEUE_JOB_BUSY,    /* a worker is claiming it right now: the caller may look again */
	QUEUE_JOB_ERROR,   /* the queue refused (why says so) */
};

struct source_ops {
	const char *name;
	/*
	 * Creates the backend (after fork: Kafka handles live in the worker only).
	 * NULL + err on failure, with errno EINVAL when the backend refuses the
	 * configuration itself (a restart cannot mend it: the worker exits
	 * EX_CONFIG), another errno when a restart may.
	 */
	struct source *(*open)(const struct source_params *params, char *err, size_t errlen);
	enum source_take (*take)(struct source *src, struct job **job);
	/* Before attempt n (1-based) of job starts. 0, or -1 when it could not be recorded. */
	int (*attempt)(struct source *src, struct job *job, int attempt);
	/* A state of job; backends without status events ignore it. */
	void (*status)(struct source *src, struct job *job, const struct job_status *status);
	/* The outcome document; the source owns job from here and calls cb.settled. */
	void (*finish)(struct source *src, struct job *job, bool completed, const char *doc, size_t len);
	/* Gives an unfinished job back to the queue; the source frees it. */
	void (*release)(struct source *src, struct job *job);
	/*
	 * Optional (NULL: never known; Kafka cannot tell without reading its
	 * outcome topic). For a job redelivered after an attempt: when that
	 * delivery's outcome is already recorded (its worker died after writing
	 * it, before the job left the queue), the source takes the job as
	 * finish() does, with no new outcome: cb.settled follows once that
	 * outcome is durable, job->recorded set. True then; false when none is
	 * recorded, and the job stays the caller's (it runs again, or fails as
	 * worker_lost when its attempts are used up).
	 */
	bool (*finish_recorded)(struct source *src, struct job *job);
	/* Flow control: stop / restart handing out jobs (Kafka pauses partitions). */
	void (*pause)(struct source *src);
	void (*resume)(struct source *src);
	/* Number of outcomes handed to finish() not yet settled (shutdown waits for 0). */
	size_t (*pending)(struct source *src);
	/* Stats for the scoreboard's fault text; "" when healthy. */
	const char *(*fault)(struct source *src);
	/*
	 * Optional. A fast stop (QUIT): outcomes not acknowledged within about half
	 * of budget_ms are given up (their jobs stay in the queue), and close()
	 * finishes within the rest.
	 */
	void (*hurry)(struct source *src, long long budget_ms);
	/* Final commit and teardown; jobs still out were released or finished before. */
	void (*close)(struct source *src);
};

/*
 * The queue as a whole. Every operation may be NULL where the backend has
 * nothing to do (say so to the user where that matters: topics).
 */
struct queue_ops {
	const char *name; /* config_backend_name() */
	/* Workers publish partitions and lag in their slots (stats "kafka", metrics). */
	bool has_partitions;
	/* Start-up, before any worker: create what is missing and check it is usable. 0, or -1 and err. */
	int (*prepare)(const struct config *cfg, char *err, size_t errlen);
	/* Claims of dead workers back to the queue (at start and after a worker died): the number, or -1. */
	int (*reclaim)(const struct config *cfg);
	/* The daemon's health: a write the queue must take now. 0, or -1 and why. */
	int (*probe)(const struct config *cfg, char *why, size_t len);
	/* droverctl health: the queue itself; prints "ok: ..." to out or the trouble to stderr. An exit code. */
	int (*health)(const struct config *cfg, FILE *out);
	/*
	 * droverctl submit: one job per non-empty line of in, durable (spool:
	 * fsynced; Kafka: acknowledged) before its id is printed to out; a line
	 * refused is named on stderr with the reason. An exit code.
	 */
	int (*submit)(const struct config *cfg, FILE *in, FILE *out);
	/* droverctl topics create / list. Exit codes. */
	int (*topics_create)(const struct config *cfg);
	int (*topics_list)(const struct config *cfg);
	/*
	 * drover -t and start-up: what the backend's own library refuses in a
	 * configuration config_load accepted, appended to errs as
	 * "FILE:LINE: [section] key: what is wrong". 0, or -1 when errs grew.
	 */
	int (*check)(const struct config *cfg, struct config_errors *errs);
	/*
	 * Optional: how long a new worker may take to become ready (Kafka: to join
	 * the group, up to a session timeout). NULL: ready as soon as it opened.
	 */
	long long (*ready_within_ms)(const struct config *cfg);
	/*
	 * droverctl jobs, run by the supervisor: {"queued": {"count", "jobs"},
	 * "failed": {"count", "jobs"}}, jobs bounded by queued_max (oldest first)
	 * and failed_max (newest first). NULL and why on failure. NULL op: the
	 * backend cannot list (Kafka: the supervisor shows lag per partition and
	 * the failures its workers saw, from their scoreboard rings).
	 */
	json_t *(*jobs)(const struct config *cfg, size_t queued_max, size_t failed_max, char *why, size_t len);
	/*
	 * droverctl cancel of a job still waiting: its failed outcome (reason
	 * cancelled, from origin) is durable before the job leaves the queue.
	 */
	enum queue_job_result (*cancel_queued)(const struct config *cfg, const char *id,
	                                       const struct event_origin *origin, char *why, size_t len);
	/*
	 * droverctl retry: a failed job goes back to the queue with its attempts
	 * reset; its failed record is removed only once the new entry is durable.
	 */
	enum queue_job_result (*retry_failed)(const struct config *cfg, const char *id, char *why, size_t len);
	/*
	 * retry_failed needs a client of the queue that the supervisor must not
	 * hold (Kafka: a librdkafka handle starts threads, and the supervisor
	 * forks): droverctl runs it itself. Else the supervisor runs it, for the
	 * socket's permission rules.
	 */
	bool retry_in_client;
};

/* The backend cfg names. */
const struct queue_ops *queue_ops_for(const struct config *cfg);
/* The backend called name ("spool", "kafka"), or NULL. */
const struct queue_ops *queue_ops_named(const char *name);

/*
 * config_load, then what the backend's own library refuses (librdkafka
 * properties only a handle sees), in the same FILE:LINE error format: what
 * drover -t, start-up and every reload check, so a worker never meets a
 * configuration the check passed and its library refuses.
 */
struct config *queue_config_load(const char *path, struct config_errors *errors);

/* The worker's ops for cfg->backend (links every backend's consumer: the worker's side only). */
const struct source_ops *source_for(const struct config *cfg);

/* Shared by backends: frees a job's common fields (not ->backend). */
void job_free(struct job *job);

#endif
