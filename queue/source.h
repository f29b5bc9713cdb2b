/*
 * source: where a worker's jobs come from and where their outcomes go. The
 * spool directory and Kafka both implement source_ops, so the worker loop and
 * the runner never know which one they talk to.
 *
 * Life of a job: take() hands it out; attempt() is called before each handler
 * run (so the backend can persist the attempt number); status() carries
 * started/progress/retrying documents; then exactly one of finish() (outcome
 * document, complete or failed) or release() (unfinished: it will run again,
 * same id, next attempt). After finish() the source calls cb.settled once the
 * outcome is durable (spool: fsynced; Kafka: acknowledged by the broker) and
 * frees the job; only then does the job leave the queue.
 */
#ifndef DROVER_SOURCE_H
#define DROVER_SOURCE_H

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "shared/config.h"

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
	void *backend;       /* the source's own per-job state */
};

struct source_callbacks {
	void (*ready)(void *arg);                     /* take() may have jobs now */
	void (*settled)(struct job *job, bool durable, void *arg); /* finish() done; job freed after return */
	void *arg;
};

struct source;

struct source_ops {
	const char *name;
	/* Creates the backend (after fork: Kafka handles live in the worker only). NULL + err on failure. */
	struct source *(*open)(const struct config *cfg, struct ev_loop *loop, int slot,
	                       const struct source_callbacks *cb, char *err, size_t errlen);
	/* 0 and *job when one is available, 1 when none is now (cb.ready will follow), -1 on error. */
	int (*take)(struct source *src, struct job **job);
	/* Before attempt n (1-based) of job starts. 0 or -1. */
	int (*attempt)(struct source *src, struct job *job, int attempt);
	/* A status document (JSON) for job; backends without status events ignore it. */
	void (*status)(struct source *src, struct job *job, const char *doc, size_t len);
	/* The outcome document; the source owns job from here and calls cb.settled. */
	void (*finish)(struct source *src, struct job *job, bool completed, const char *doc, size_t len);
	/* Gives an unfinished job back to the queue; the source frees it. */
	void (*release)(struct source *src, struct job *job);
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

/* The ops for cfg->backend. */
const struct source_ops *source_for(const struct config *cfg);

/* Shared by backends: frees a job's common fields (not ->backend). */
void job_free(struct job *job);

#endif
