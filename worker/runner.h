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

enum runner_status {
	RUNNER_COMPLETED,        /* exit 0 */
	RUNNER_EXIT_CODE,        /* exit != 0: exit_code */
	RUNNER_SIGNAL,           /* killed by a signal it was not sent for a timeout: signal */
	RUNNER_TIMEOUT,
	RUNNER_RESULT_TOO_LARGE,
	RUNNER_KILLED,           /* runner_kill() (shutdown/revoke): not an outcome, the job is released */
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
/* Runs not yet done. */
size_t runner_active(void);

#endif
