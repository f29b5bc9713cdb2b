/*
 * warm: the handler pool of one worker in persistent mode (handler_mode =
 * persistent). It keeps long-lived handler processes, each in its own process
 * group, and speaks the frame protocol (frame.h, README "Persistent handlers")
 * with them on the worker's libev loop: jobs and cancels in on stdin through a
 * non-blocking output queue, ready/progress/result/error/cancelled out on
 * stdout, stderr logged per line. It enforces each job's timeout (cancel, then
 * kill the process after kill_grace_ms), recycles processes (handler_max_jobs,
 * handler_max_rss_mb) and restarts those that end with back-off.
 *
 * Where drover has cgroups (cgroup.h, memcg.h) each process runs in one of
 * its own, named after its attempt token, with memory_max, cpu_max and
 * pids_max: they bound the process with every job it holds. When it is
 * reaped the cgroup ends whatever is left of it (cgroup.kill: descendants
 * that left its process group too), and an OOM kill in it fails its jobs
 * with memory_limit rather than handler_lost.
 *
 * Every job it takes ends with exactly one done() call carrying a
 * runner_result, like an exec-mode run, so the worker's job life (attempts,
 * retries, outcomes) is one code path. Like the runner, it does not reap: the
 * worker hands it each reaped pid (warm_pool_child_exited).
 */
#ifndef DROVER_WARM_H
#define DROVER_WARM_H

#include "shared/orphans.h"
#include "shared/scoreboard.h"
#include "worker/cgroup.h"
#include "worker/runner.h"

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

struct warm_settings {
	char *const *argv;
	const char *working_dir;
	int processes;    /* ceil(max_concurrent / concurrency) */
	int concurrency;  /* jobs at once per process */
	int max_jobs, max_jobs_jitter, max_rss_mb;
	long long start_timeout_ms, timeout_ms, kill_grace_ms;
	size_t max_result_bytes;
	struct runner_limits limits; /* set on each process (rlimit_cpu counts its whole life, so it is left unset) */
	struct cgroup_limits cgroup_limits; /* of each process's own cgroup, where drover has cgroups */
	struct attempt_token token;         /* the worker's: a process's cgroup is named after its own token */
};

struct warm_callbacks {
	/* The job's attempt is over (result valid during the call); the warm_job is gone after it. */
	void (*done)(void *job_arg, const struct runner_result *result);
	void (*progress)(void *job_arg, double progress, const char *message);
	/* A process became ready: there is room for jobs. */
	void (*room)(void *arg);
	/* A pool fault to show (the handler cannot start, or crash-loops), or NULL once it is over. */
	void (*health)(void *arg, const char *fault);
	/* After warm_pool_stop: the last process is gone. */
	void (*stopped)(void *arg);
	/* A new process's environment (NULL-terminated) and the attempt-token serial it carries. */
	char **(*env)(void *arg, unsigned long long *token_serial);
	void (*env_free)(void *arg, char **env);
	void *arg;
};

struct warm_pool;
struct warm_job;

/* NULL when out of memory. Starts the processes at once; the board shows them. */
struct warm_pool *warm_pool_new(struct ev_loop *loop, const struct warm_settings *settings,
                                const struct warm_callbacks *cb, struct scoreboard_slot *board);
/* Kills what is left (SIGKILL, not reaped: the worker is exiting) and frees. */
void warm_pool_free(struct warm_pool *pool);

/* Jobs that may be sent now: free places in ready processes (0 while stopping). */
int warm_pool_room(const struct warm_pool *pool);
/* Sends a job to the least busy ready process; NULL when there is no room or no memory. */
struct warm_job *warm_pool_submit(struct warm_pool *pool, const char *id, int attempt, const char *job,
                                  size_t job_len, void *job_arg);
pid_t warm_job_pid(const struct warm_job *job);
/* The job must stop (partition revoked): a cancel, then the process is killed if it does not answer. */
void warm_job_kill(struct warm_job *job);

/* The reaped pid was one of ours: its jobs end, a replacement starts. False for any other pid. */
bool warm_pool_child_exited(struct warm_pool *pool, pid_t pid, int wait_status);
bool warm_pool_owns_pid(const struct warm_pool *pool, pid_t pid);
/* True while a process carrying this attempt-token serial lives (its descendants are not orphans yet). */
bool warm_pool_token_live(const struct warm_pool *pool, unsigned long long serial);
/* Periodic checks (RSS against handler_max_rss_mb). */
void warm_pool_tick(struct warm_pool *pool);
/*
 * No more jobs: now = kill every process (their jobs end RUNNER_KILLED);
 * otherwise each process gets EOF on stdin once its jobs are done and
 * kill_grace_ms to exit. stopped() follows when none is left.
 */
void warm_pool_stop(struct warm_pool *pool, bool now);
/* Processes not yet reaped. */
size_t warm_pool_live(const struct warm_pool *pool);

#endif
