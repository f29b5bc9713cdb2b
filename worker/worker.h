/*
 * worker: one worker process's life. A libev loop (its own, not the
 * supervisor's inherited default loop) takes jobs from the source while fewer
 * than max_concurrent run, runs each attempt through the runner (exec mode)
 * or its persistent handler processes (warm.h), retries with
 * a doubling delay, and hands outcomes back to the source. It publishes its
 * heartbeat, counters and in-flight jobs in its scoreboard slot. TERM (or EOF
 * on the supervisor's pipe) drains: no new jobs, running ones finish. QUIT
 * kills running jobs and gives them back to the queue.
 */
#ifndef DROVER_WORKER_H
#define DROVER_WORKER_H

#include "shared/config.h"
#include "shared/scoreboard.h"

struct worker_params {
	const struct config *cfg;
	int slot;
	unsigned generation;
	struct scoreboard_slot *board;
	int parent_fd; /* read end of a pipe only the supervisor writes: EOF = supervisor gone */
	int wake_fd;   /* write end of the supervisor's wake-up pipe (scoreboard_wake_supervisor) */
	long long supervisor_pid;  /* with serial, the prefix of this worker's attempt tokens (orphans.h) */
	unsigned long long serial; /* unique among the workers this supervisor ever started */
};

/* Called in the forked child; returns the exit status for _exit(). */
int worker_main(const struct worker_params *params);

#endif
