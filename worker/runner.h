/*
 * runner: runs one attempt of a job as a handler process in its own process
 * group: argv exec (never a shell), the job on stdin written without
 * blocking, stdout captured up to max_result_bytes, the last 4 KiB of stderr
 * kept, progress lines read from fd 3, the timeout enforced with SIGTERM to
 * the group then SIGKILL after kill_grace. The outcome is decided by the exit
 * status, not by EOF on the pipes; when the handler exits, whatever is left of
 * its group is killed, so no process of a job outlives it.
 *
 * The runner does not reap: the worker calls runner_child_exited() for each
 * pid its SIGCHLD handling reaps (see runner_find).
 */
#ifndef DROVER_RUNNER_H
#define DROVER_RUNNER_H

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#define RUNNER_STDERR_TAIL 4096

/*
 * How an attempt ended, in exec mode (the runner) and persistent mode (warm.h)
 * alike, so that the worker treats a job's end the same way in both.
 */
enum runner_status {
	RUNNER_COMPLETED,        /* exit 0 (persistent: a result frame) */
	RUNNER_EXIT_CODE,        /* exit != 0: exit_code */
	RUNNER_SIGNAL,           /* killed by a signal it was not sent for a timeout: signal */
	RUNNER_TIMEOUT,
	RUNNER_RESULT_TOO_LARGE,
	RUNNER_KILLED,           /* runner_kill() (shutdown/revoke): not an outcome, the job is released */
	RUNNER_HANDLER_ERROR,    /* persistent: an error frame; detail is its text, no_retry its "retry":false */
	RUNNER_HANDLER_LOST,     /* persistent: the process ended while holding the job; detail says why */
};

struct runner_result {
	enum runner_status status;
	int exit_code;  /* -1 unless exited */
	int signal;     /* 0 unless signalled */
	char *output;   /* stdout (NUL-terminated), owned by the result */
	size_t output_len;
	char stderr_tail[RUNNER_STDERR_TAIL + 1];
	size_t stderr_len;
	long long duration_ms;
	const char *detail;  /* persistent: the sentence of a HANDLER_ERROR or HANDLER_LOST, else NULL */
	bool no_retry;       /* persistent: the handler said this job must not be retried */
	bool oom_killed;     /* persistent: the process was lost to the OOM killer in its memory cgroup */
	pid_t pid;           /* the handler's */
};

/* Set in the child before exec; RUNNER_LIMIT_UNSET (-1) leaves drover's own value. */
#define RUNNER_LIMIT_UNSET (-1LL)
struct runner_limits {
	long long nofile;  /* RLIMIT_NOFILE */
	long long as;      /* RLIMIT_AS, bytes */
	long long core;    /* RLIMIT_CORE, bytes */
	long long cpu;     /* RLIMIT_CPU, seconds: SIGXCPU there, SIGKILL a second later */
	long long nice;    /* 0..19 */
};

struct runner_spec {
	char *const *argv;    /* argv[0] is a path (resolved by the caller if it had no '/') */
	char *const *envp;
	const char *working_dir; /* NULL or "" = inherit */
	const char *input;
	size_t input_len;
	long long timeout_ms;
	long long kill_grace_ms;
	size_t max_result_bytes;
	const struct runner_limits *limits; /* NULL = none */
	bool join_cgroup;     /* the child joins a cgroup before exec, writing "0" to its cgroup.procs: */
	int cgroup_procs_fd;  /* this fd (worker/cgroup.h) */
	bool join_memcg;      /* likewise a cgroup v1 memory cgroup (memory_max without v2's controller): */
	int memcg_procs_fd;   /* this fd (worker/memcg.h) */
	const char *job_id;   /* for the log lines of the run (its stderr too); copied */
	int attempt;
};

struct run;

struct runner_callbacks {
	/* The attempt is over; result is valid only during the call; run is freed after it returns. */
	void (*done)(struct run *run, const struct runner_result *result, void *arg);
	/* A progress line from fd 3: progress in 0..1, message may be NULL. */
	void (*progress)(struct run *run, double progress, const char *message, void *arg);
	void *arg;
};

/*
 * Starts the handler. Returns NULL with errno set when it could not be started:
 * the process could not be created (EAGAIN, ENOMEM), or its set-up or exec
 * failed (ENOENT, EACCES, ENOEXEC, E2BIG, ...). Not thread-safe: one loop
 * thread starts every run.
 */
struct run *runner_start(struct ev_loop *loop, const struct runner_spec *spec, const struct runner_callbacks *cb);
/*
 * True when a runner_start errno is caused by the job itself (E2BIG: its
 * environment is too large), so that job alone fails; any other cause is the
 * same for every job (handler missing, not executable, no processes left).
 */
bool runner_error_is_the_jobs(int err);
pid_t runner_pgid(const struct run *run);
/* Kills the group now (SIGKILL); done() follows with RUNNER_KILLED once the handler is reaped. */
void runner_kill(struct run *run);
/*
 * Stops the group as a timeout does (SIGTERM, SIGKILL after kill_grace_ms),
 * for droverctl cancel; done() follows with RUNNER_KILLED (or the outcome,
 * when the handler had already exited 0).
 */
void runner_cancel(struct run *run);
/* The run whose handler has this pid, or NULL. */
struct run *runner_find(pid_t pid);
/* Hands the reaped handler's wait status to its run. */
void runner_child_exited(struct run *run, int wait_status);
/*
 * The runner's spawn, also for other long-lived children (warm.h): argv in
 * its own process group, killed when the worker dies, signals reset,
 * child_fds[i] moved to fd i (nfds <= 4), every other fd closed, limits set
 * (NULL = none) and, when cgroup_procs_fd (v2) or memcg_procs_fd (the v1
 * memory cgroup's) is >= 0, that cgroup joined before exec. The pid, or -1
 * with the clone's or the child's set-up/exec errno. The caller reaps it.
 */
pid_t runner_spawn(char *const *argv, char *const *envp, const char *working_dir, const int *child_fds, int nfds,
                   const struct runner_limits *limits, int cgroup_procs_fd, int memcg_procs_fd);
/* Runs not yet done. */
size_t runner_active(void);

#endif
