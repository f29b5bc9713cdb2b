/*
 * runner: one attempt of a job as a handler process (see runner.h).
 *
 * runner_start spawns without copying the worker (a vfork-style clone, see
 * runner_spawn()); the child puts itself in a new process group, asks to be killed
 * when the worker dies, resets its signal state, moves the pipes to fds 0-3,
 * closes every other inherited fd and execs argv. An exec failure comes back
 * through the memory the child shares with us, so a handler that cannot
 * start is reported to the caller instead of looking like a job that failed.
 *
 * In the parent every pipe is non-blocking and watched by libev on the
 * caller's loop. The outcome is decided when the worker hands over the reaped
 * wait status (runner_child_exited): whatever is left of the group is killed,
 * the pipes are drained without blocking, done() is called, the run is freed.
 */
#include "worker/runner.h"

#include "shared/log.h"
#include "shared/util.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#define LINE_MAX_BYTES 1024          /* progress and logged stderr lines; longer ones are cut */
#define READ_CHUNK 16384
#define READS_PER_WAKEUP 16          /* so one chatty handler cannot starve the loop */
#define DRAIN_MAX_BYTES (1 << 20)    /* per pipe at exit, in case something outside the group writes */

enum stream { STREAM_STDIN, STREAM_STDOUT, STREAM_STDERR, STREAM_PROGRESS, STREAM_COUNT };

struct line_reader {
	char buf[LINE_MAX_BYTES + 1];
	size_t len;
	bool cut; /* the current line overflowed: drop it up to the next newline */
};

struct run {
	struct run *prev, *next;
	struct ev_loop *loop;
	pid_t pid; /* also the process group id */
	struct runner_callbacks cb;

	int fd[STREAM_COUNT]; /* parent ends, -1 once closed */
	ev_io io[STREAM_COUNT];

	char *input;
	size_t input_len, input_off;

	char *out; /* stdout, at most max_out bytes kept (+1 read to detect overflow, +1 for the NUL) */
	size_t out_len, out_cap, max_out;

	char err_ring[RUNNER_STDERR_TAIL];
	size_t err_total;
	struct line_reader err_line, progress_line;

	ev_timer timeout_timer, grace_timer;
	long long kill_grace_ms;
	long long started_ms;
	bool timed_out, too_large, killed;
	char *job_id; /* log fields of every line about this run */
	int attempt;
};

static struct run *runs;
static size_t run_count;

/* ---- the child ---------------------------------------------------------- */

/*
 * Everything the child needs, prepared before the clone. The child shares the
 * worker's memory (CLONE_VM) and runs while the worker is suspended
 * (CLONE_VFORK), on a stack inside runner_spawn()'s frame: it may only make
 * async-signal-safe calls (no malloc, no stdio, no locks), and it reports a
 * failure by storing errno in exec_errno before _exit.
 */
struct child_plan {
	char *const *argv;
	char *const *envp;
	const char *working_dir;
	int stdio[STREAM_COUNT]; /* child ends, in fd order 0..nfds-1 */
	int nfds;
	pid_t worker_pid;
	struct runner_limits limits;
	int cgroup_procs_fd;     /* -1 = none */
	int memcg_procs_fd;      /* the cgroup v1 memory cgroup's (worker/memcg.h); -1 = none */
	int exec_errno;          /* written by the child, read once it is gone or has exec'd */
};

static void __attribute__((noreturn)) child_fail(struct child_plan *plan)
{
	__atomic_store_n(&plan->exec_errno, errno != 0 ? errno : EIO, __ATOMIC_RELEASE);
	_exit(127);
}

/*
 * Every disposition back to SIG_DFL. A handler would survive until exec and
 * could run in the child on the worker's memory; an ignored signal would
 * survive exec itself.
 */
static void child_reset_signals(void)
{
	struct sigaction dfl;
	memset(&dfl, 0, sizeof(dfl));
	dfl.sa_handler = SIG_DFL;
	sigemptyset(&dfl.sa_mask);
	for (int sig = 1; sig < NSIG; sig++) {
		if (sig != SIGKILL && sig != SIGSTOP)
			sigaction(sig, &dfl, NULL); /* glibc's reserved signals say EINVAL: fine */
	}
}

/*
 * Puts the pipes on 0..3 whatever fds they had, then closes everything else
 * (the child has its own fd table: nothing here touches the worker's). dup2
 * clears close-on-exec on its target; when a pipe already sits on 0..3 it is
 * first moved out of the way, so no dup2 overwrites another pipe or is a no-op.
 */
static int child_arrange_fds(const struct child_plan *plan)
{
	int src[STREAM_COUNT];
	int n = plan->nfds;
	bool low = false;
	for (int i = 0; i < n; i++)
		low = low || plan->stdio[i] < STREAM_COUNT;
	for (int i = 0; i < n; i++) {
		src[i] = low ? fcntl(plan->stdio[i], F_DUPFD_CLOEXEC, STREAM_COUNT) : plan->stdio[i];
		if (src[i] < 0)
			return -1;
	}
	for (int i = 0; i < n; i++) {
		if (dup2(src[i], i) < 0)
			return -1;
	}
	if (close_range((unsigned)n, ~0U, 0) == 0)
		return 0;
	/* Kernels before 5.9: close them one by one. */
	struct rlimit lim;
	rlim_t last = 65536;
	if (getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur != RLIM_INFINITY && lim.rlim_cur < last)
		last = lim.rlim_cur;
	for (rlim_t fd = (rlim_t)n; fd < last; fd++)
		close((int)fd);
	return 0;
}

static int child_set_limit(int resource, long long value, long long hard_extra)
{
	if (value == RUNNER_LIMIT_UNSET)
		return 0;
	struct rlimit lim = { .rlim_cur = (rlim_t)value, .rlim_max = (rlim_t)(value + hard_extra) };
	return setrlimit(resource, &lim);
}

/*
 * setrlimit and setpriority are plain system calls, safe on the worker's
 * memory. Soft and hard limits are both set, so the handler cannot raise them
 * again; only RLIMIT_CPU keeps a second between the two, so that the handler
 * gets SIGXCPU (it may clean up) before the kernel's SIGKILL.
 */
static int child_apply_limits(const struct runner_limits *lim)
{
	if (child_set_limit(RLIMIT_NOFILE, lim->nofile, 0) < 0 || child_set_limit(RLIMIT_AS, lim->as, 0) < 0 ||
	    child_set_limit(RLIMIT_CORE, lim->core, 0) < 0 || child_set_limit(RLIMIT_CPU, lim->cpu, 1) < 0)
		return -1;
	if (lim->nice != RUNNER_LIMIT_UNSET && setpriority(PRIO_PROCESS, 0, (int)lim->nice) < 0)
		return -1;
	return 0;
}

static int child_main(void *arg)
{
	struct child_plan *plan = arg;
	sigset_t none;

	/* Dispositions first: the signals the worker blocked are unblocked only once nothing handles them. */
	child_reset_signals();
	if (setpgid(0, 0) < 0)
		child_fail(plan);
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0)
		child_fail(plan);
	if (getppid() != plan->worker_pid)
		_exit(127); /* the worker died before the death signal was armed: nobody waits for us */
	/* Into the attempt's cgroup before anything of the handler runs ("0" = the writer itself);
	 * before the fds are arranged, which closes this one. Not clone3's CLONE_INTO_CGROUP: clone3
	 * takes no child function, and a child that returns from it onto the worker's own stack
	 * (CLONE_VM) would corrupt the frame the worker resumes in; spawn() needs clone()'s own stack. */
	if (plan->cgroup_procs_fd >= 0 && write(plan->cgroup_procs_fd, "0", 1) != 1)
		child_fail(plan);
	if (plan->memcg_procs_fd >= 0 && write(plan->memcg_procs_fd, "0", 1) != 1)
		child_fail(plan);
	if (child_arrange_fds(plan) < 0)
		child_fail(plan);
	if (plan->working_dir != NULL && plan->working_dir[0] != '\0' && chdir(plan->working_dir) < 0)
		child_fail(plan);
	if (child_apply_limits(&plan->limits) < 0)
		child_fail(plan);
	sigemptyset(&none);
	if (sigprocmask(SIG_SETMASK, &none, NULL) < 0)
		child_fail(plan);
	execve(plan->argv[0], plan->argv, plan->envp);
	child_fail(plan);
}

/* ---- registry and small helpers ---------------------------------------- */

static void registry_add(struct run *run)
{
	run->next = runs;
	if (runs != NULL)
		runs->prev = run;
	runs = run;
	run_count++;
}

static void registry_remove(struct run *run)
{
	if (run->prev != NULL)
		run->prev->next = run->next;
	else
		runs = run->next;
	if (run->next != NULL)
		run->next->prev = run->prev;
	run->prev = run->next = NULL;
	run_count--;
}

static struct log_fields run_fields(const struct run *run)
{
	return (struct log_fields){ .job_id = run->job_id, .attempt = run->attempt, .handler_pid = run->pid };
}

static void signal_group(struct run *run, int sig)
{
	if (kill(-run->pid, sig) < 0 && errno != ESRCH)
		log_warn("handler %d: cannot send signal %d to its process group", (int)run->pid, sig);
}

static void stream_close(struct run *run, enum stream s)
{
	if (run->fd[s] < 0)
		return;
	ev_io_stop(run->loop, &run->io[s]);
	close(run->fd[s]);
	run->fd[s] = -1;
}

static void close_fds(int *fds, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (fds[i] >= 0) {
			close(fds[i]);
			fds[i] = -1;
		}
	}
}

/* ---- stdin -------------------------------------------------------------- */

static void write_stdin(struct run *run)
{
	int fd = run->fd[STREAM_STDIN];
	while (fd >= 0 && run->input_off < run->input_len) {
		ssize_t n = write_some(fd, run->input + run->input_off, run->input_len - run->input_off);
		if (n < 0 && errno == EAGAIN)
			return;
		if (n < 0) {
			/* EPIPE: the handler does not read its input, which is its business. */
			if (errno != EPIPE)
				log_warn("handler %d: writing its stdin", (int)run->pid);
			break;
		}
		run->input_off += (size_t)n;
	}
	stream_close(run, STREAM_STDIN);
	free(run->input);
	run->input = NULL;
}

/* ---- stdout ------------------------------------------------------------- */

static void result_too_large(struct run *run)
{
	log_debug("handler %d: stdout beyond %zu bytes; killing its group", (int)run->pid, run->max_out);
	run->too_large = true;
	run->out_len = run->max_out;
	ev_timer_stop(run->loop, &run->timeout_timer);
	ev_timer_stop(run->loop, &run->grace_timer);
	/* Kill before closing the pipe, so the handler dies of SIGKILL rather than of SIGPIPE. */
	signal_group(run, SIGKILL);
	stream_close(run, STREAM_STDOUT);
}

/* Room to read into: never more than one byte past the limit, so memory stays bounded by it. */
static size_t stdout_room(struct run *run, char **dst)
{
	if (run->out_cap - run->out_len <= 1) {
		size_t limit = run->max_out + 2;
		size_t cap = run->out_cap < 4096 ? 4096 : run->out_cap * 2;
		if (cap > limit || cap < run->out_cap)
			cap = limit;
		char *grown = realloc(run->out, cap);
		if (grown == NULL)
			return 0;
		run->out = grown;
		run->out_cap = cap;
	}
	size_t room = run->out_cap - 1 - run->out_len;
	size_t allowed = run->max_out + 1 - run->out_len;
	*dst = run->out + run->out_len;
	return room < allowed ? room : allowed;
}

/* ---- stderr and progress lines ----------------------------------------- */

static void stderr_line(struct run *run, const char *line, size_t len, bool cut)
{
	struct log_fields fields = run_fields(run);
	log_job(LOG_LEVEL_DEBUG, &fields, "stderr: %.*s%s", (int)len, line, cut ? " [...]" : "");
}

static bool parse_progress_object(const char *line, size_t len, double *progress, json_t **root)
{
	json_error_t error;
	*root = json_loadb(line, len, 0, &error);
	if (*root == NULL || !json_is_object(*root))
		return false;
	json_t *value = json_object_get(*root, "progress");
	if (!json_is_number(value))
		return false;
	*progress = json_number_value(value);
	return true;
}

static bool parse_progress_number(const char *line, double *progress)
{
	char *end;
	errno = 0;
	*progress = strtod(line, &end);
	return errno == 0 && end != line && *end == '\0';
}

static void progress_line(struct run *run, char *line, size_t len, bool cut)
{
	if (cut)
		return; /* a line too long to be progress is garbage */
	while (len > 0 && (line[len - 1] == ' ' || line[len - 1] == '\t' || line[len - 1] == '\r'))
		len--;
	line[len] = '\0';
	while (*line == ' ' || *line == '\t') {
		line++;
		len--;
	}
	double progress = NAN;
	json_t *root = NULL;
	const char *message = NULL;
	bool ok;
	if (line[0] == '{') {
		ok = parse_progress_object(line, len, &progress, &root);
		json_t *msg = ok ? json_object_get(root, "message") : NULL;
		if (json_is_string(msg))
			message = json_string_value(msg);
	} else {
		ok = parse_progress_number(line, &progress);
	}
	if (ok && isfinite(progress) && progress >= 0.0 && progress <= 1.0) {
		if (run->cb.progress != NULL)
			run->cb.progress(run, progress, message, run->cb.arg);
	} else {
		log_debug("handler %d: ignoring progress line \"%s\"", (int)run->pid, line);
	}
	json_decref(root);
}

static void line_emit(struct run *run, enum stream s, bool cut)
{
	struct line_reader *lr = s == STREAM_STDERR ? &run->err_line : &run->progress_line;
	lr->buf[lr->len] = '\0';
	if (s == STREAM_STDERR)
		stderr_line(run, lr->buf, lr->len, cut);
	else
		progress_line(run, lr->buf, lr->len, cut);
	lr->len = 0;
}

static void lines_feed(struct run *run, enum stream s, const char *data, size_t n)
{
	struct line_reader *lr = s == STREAM_STDERR ? &run->err_line : &run->progress_line;
	for (size_t i = 0; i < n; i++) {
		char c = data[i];
		if (c == '\n') {
			if (!lr->cut)
				line_emit(run, s, false);
			lr->cut = false;
			lr->len = 0;
		} else if (!lr->cut) {
			if (lr->len == LINE_MAX_BYTES) {
				line_emit(run, s, true);
				lr->cut = true;
			} else {
				lr->buf[lr->len++] = c;
			}
		}
	}
}

/* EOF: an unterminated last line still counts. */
static void lines_flush(struct run *run, enum stream s)
{
	struct line_reader *lr = s == STREAM_STDERR ? &run->err_line : &run->progress_line;
	if (lr->len > 0 && !lr->cut)
		line_emit(run, s, false);
	lr->len = 0;
	lr->cut = false;
}

static void stderr_keep(struct run *run, const char *data, size_t n)
{
	if (n > RUNNER_STDERR_TAIL) {
		run->err_total += n - RUNNER_STDERR_TAIL;
		data += n - RUNNER_STDERR_TAIL;
		n = RUNNER_STDERR_TAIL;
	}
	for (size_t i = 0; i < n; i++)
		run->err_ring[(run->err_total + i) % RUNNER_STDERR_TAIL] = data[i];
	run->err_total += n;
}

/* ---- reading the handler's output -------------------------------------- */

static void stream_consume(struct run *run, enum stream s, const char *data, size_t n)
{
	if (s == STREAM_STDERR) {
		stderr_keep(run, data, n);
		lines_feed(run, s, data, n);
	} else if (s == STREAM_PROGRESS) {
		lines_feed(run, s, data, n);
	} else {
		run->out_len += n; /* read in place by stdout_room */
		if (run->out_len > run->max_out)
			result_too_large(run);
	}
}

/* Reads what the pipe has, up to budget bytes; closes the stream on EOF or error. */
static void stream_read(struct run *run, enum stream s, size_t budget, int max_reads)
{
	char chunk[READ_CHUNK];
	for (int reads = 0; run->fd[s] >= 0 && budget > 0 && reads < max_reads; reads++) {
		char *dst = chunk;
		size_t room = sizeof(chunk);
		if (s == STREAM_STDOUT) {
			room = stdout_room(run, &dst);
			if (room == 0) {
				log_error("handler %d: out of memory for its stdout; killing its group", (int)run->pid);
				signal_group(run, SIGKILL);
				stream_close(run, s);
				return;
			}
		}
		if (room > budget)
			room = budget;
		ssize_t n = read_some(run->fd[s], dst, room);
		if (n < 0 && errno == EAGAIN)
			return;
		if (n <= 0) {
			if (n < 0)
				log_warn("handler %d: reading its fd %d", (int)run->pid, (int)s);
			if (s != STREAM_STDOUT)
				lines_flush(run, s);
			stream_close(run, s);
			return;
		}
		budget -= (size_t)n;
		stream_consume(run, s, dst, (size_t)n);
	}
}

static void stream_cb(struct ev_loop *loop, ev_io *io, int revents)
{
	struct run *run = io->data;
	enum stream s = (enum stream)(io - run->io);
	if (s == STREAM_STDIN)
		write_stdin(run);
	else
		stream_read(run, s, SIZE_MAX, READS_PER_WAKEUP);
}

/* ---- timeout ------------------------------------------------------------ */

static void grace_cb(struct ev_loop *loop, ev_timer *timer, int revents)
{
	struct run *run = timer->data;
	log_debug("handler %d: still running %lld ms after SIGTERM; sending SIGKILL", (int)run->pid,
	          run->kill_grace_ms);
	signal_group(run, SIGKILL);
}

static void timeout_cb(struct ev_loop *loop, ev_timer *timer, int revents)
{
	struct run *run = timer->data;
	struct log_fields fields = run_fields(run);
	log_job(LOG_LEVEL_WARN, &fields, "handler %d timed out; sending SIGTERM to its group", (int)run->pid);
	run->timed_out = true;
	signal_group(run, SIGTERM);
	ev_timer_start(loop, &run->grace_timer);
}

/* ---- start -------------------------------------------------------------- */

static double ms_to_s(long long ms)
{
	return ms > 0 ? (double)ms / 1000.0 : 0.0;
}

static struct run *run_new(struct ev_loop *loop, const struct runner_spec *spec, const struct runner_callbacks *cb)
{
	struct run *run = calloc(1, sizeof(*run));
	if (run == NULL)
		return NULL;
	if (spec->input_len > 0) {
		run->input = malloc(spec->input_len);
		if (run->input == NULL) {
			free(run);
			return NULL;
		}
		memcpy(run->input, spec->input, spec->input_len);
		run->input_len = spec->input_len;
	}
	run->loop = loop;
	run->cb = *cb;
	run->max_out = spec->max_result_bytes < SIZE_MAX / 2 ? spec->max_result_bytes : SIZE_MAX / 2;
	run->kill_grace_ms = spec->kill_grace_ms;
	run->attempt = spec->attempt;
	if (spec->job_id != NULL && (run->job_id = strdup(spec->job_id)) == NULL) {
		free(run->input);
		free(run);
		return NULL;
	}
	for (int i = 0; i < STREAM_COUNT; i++)
		run->fd[i] = -1;
	return run;
}

static void run_free(struct run *run)
{
	free(run->input);
	free(run->out);
	free(run->job_id);
	free(run);
}

/*
 * The parent ends are non-blocking, the child ends stay blocking (each end of
 * a pipe is its own open file description). Stdin flows the other way.
 */
static int make_pipes(int parent[STREAM_COUNT], int child[STREAM_COUNT])
{
	for (int s = 0; s < STREAM_COUNT; s++) {
		int p[2];
		if (pipe2(p, O_CLOEXEC) < 0)
			return -1;
		parent[s] = s == STREAM_STDIN ? p[1] : p[0];
		child[s] = s == STREAM_STDIN ? p[0] : p[1];
		if (fd_set_nonblock(parent[s]) < 0)
			return -1;
	}
	return 0;
}

/* Big enough for the child's few libc calls, sanitizer builds included; it lives in runner_spawn()'s frame. */
#define CHILD_STACK_BYTES (64 * 1024)

#if defined(__SANITIZE_ADDRESS__)
#define RUNNER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define RUNNER_ASAN 1
#endif
#endif
#ifdef RUNNER_ASAN
#include <sanitizer/asan_interface.h>
/* The child's frames never return (it execs or exits): clear the poison they left on our memory. */
#define child_stack_reclaim(stack, size) ASAN_UNPOISON_MEMORY_REGION(stack, size)
#else
#define child_stack_reclaim(stack, size) ((void)(stack), (void)(size))
#endif

/*
 * Starts the handler the way posix_spawn does, without copying the worker:
 * clone(CLONE_VM|CLONE_VFORK) runs child_main on a stack of our own and
 * suspends us until it has exec'd or died, so its exec errno is in the plan
 * when clone returns. Every signal is blocked around it, so that no handler of
 * the worker runs in the child before child_main resets them. A child that
 * failed is reaped here: the worker never sees a stranger. Returns the pid, or
 * -1 with errno (the clone's, or the child's set-up or exec error).
 */
static pid_t spawn_joining(char *const *argv, char *const *envp, const char *working_dir, const int *child_fds,
                          int nfds, const struct runner_limits *limits, int cgroup_procs_fd, int memcg_procs_fd);

pid_t runner_spawn(char *const *argv, char *const *envp, const char *working_dir, const int *child_fds, int nfds,
                   const struct runner_limits *limits, int cgroup_procs_fd, int memcg_procs_fd)
{
	return spawn_joining(argv, envp, working_dir, child_fds, nfds, limits, cgroup_procs_fd, memcg_procs_fd);
}

/* runner_spawn's body; the child joins the cgroups whose cgroup.procs fds are >= 0. */
static pid_t spawn_joining(char *const *argv, char *const *envp, const char *working_dir, const int *child_fds,
                          int nfds, const struct runner_limits *limits, int cgroup_procs_fd, int memcg_procs_fd)
{
	/* A char array, so the child's frames may use it; aligned as any ABI wants a stack. */
	char stack[CHILD_STACK_BYTES] __attribute__((aligned(64)));
	sigset_t all, old;
	struct child_plan plan = {
		.argv = argv,
		.envp = envp != NULL ? envp : environ,
		.working_dir = working_dir,
		.nfds = nfds,
		.worker_pid = getpid(),
		.exec_errno = 0,
	};
	if (argv == NULL || argv[0] == NULL || nfds < 0 || nfds > STREAM_COUNT) {
		errno = EINVAL;
		return -1;
	}
	memcpy(plan.stdio, child_fds, (size_t)nfds * sizeof(int));
	plan.cgroup_procs_fd = cgroup_procs_fd;
	plan.memcg_procs_fd = memcg_procs_fd;
	if (limits != NULL)
		plan.limits = *limits;
	else
		plan.limits = (struct runner_limits){ RUNNER_LIMIT_UNSET, RUNNER_LIMIT_UNSET, RUNNER_LIMIT_UNSET,
		                                      RUNNER_LIMIT_UNSET, RUNNER_LIMIT_UNSET };

	sigfillset(&all);
	int rc = pthread_sigmask(SIG_SETMASK, &all, &old);
	if (rc != 0) {
		errno = rc;
		return -1;
	}
	pid_t pid = clone(child_main, stack + sizeof(stack), CLONE_VM | CLONE_VFORK | SIGCHLD, &plan);
	int saved = errno;
	child_stack_reclaim(stack, sizeof(stack));
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (pid < 0) {
		errno = saved;
		return -1;
	}
	int err = __atomic_load_n(&plan.exec_errno, __ATOMIC_ACQUIRE);
	if (err == 0)
		return pid; /* exec'd: from here on the worker reaps it like any handler */
	waitpid_retry(pid, NULL, 0);
	errno = err;
	return -1;
}

static void run_watch(struct run *run)
{
	for (int s = 0; s < STREAM_COUNT; s++) {
		ev_io_init(&run->io[s], stream_cb, run->fd[s], s == STREAM_STDIN ? EV_WRITE : EV_READ);
		run->io[s].data = run;
		ev_io_start(run->loop, &run->io[s]);
	}
}

static void run_arm_timers(struct run *run, long long timeout_ms)
{
	ev_timer_init(&run->timeout_timer, timeout_cb, ms_to_s(timeout_ms), 0);
	ev_timer_init(&run->grace_timer, grace_cb, ms_to_s(run->kill_grace_ms), 0);
	run->timeout_timer.data = run;
	run->grace_timer.data = run;
	if (timeout_ms > 0) {
		ev_now_update(run->loop); /* the loop's idea of now may be stale; the budget starts now */
		ev_timer_start(run->loop, &run->timeout_timer);
	}
}

struct run *runner_start(struct ev_loop *loop, const struct runner_spec *spec, const struct runner_callbacks *cb)
{
	int child_fds[STREAM_COUNT] = { -1, -1, -1, -1 };
	int saved;

	if (spec->argv == NULL || spec->argv[0] == NULL) {
		errno = EINVAL;
		return NULL;
	}
	struct run *run = run_new(loop, spec, cb);
	if (run == NULL)
		return NULL;
	if (make_pipes(run->fd, child_fds) < 0)
		goto fail;
	run->started_ms = now_ms();
	run->pid = spawn_joining(spec->argv, spec->envp, spec->working_dir, child_fds, STREAM_COUNT, spec->limits,
	                         spec->join_cgroup ? spec->cgroup_procs_fd : -1,
	                         spec->join_memcg ? spec->memcg_procs_fd : -1);
	saved = errno;
	close_fds(child_fds, STREAM_COUNT);
	errno = saved;
	if (run->pid < 0)
		goto fail;

	run_watch(run);
	run_arm_timers(run, spec->timeout_ms);
	registry_add(run);
	if (run->input_len == 0)
		write_stdin(run); /* closes it: the handler sees EOF at once */
	return run;

fail:
	saved = errno;
	close_fds(child_fds, STREAM_COUNT);
	close_fds(run->fd, STREAM_COUNT);
	run_free(run);
	errno = saved;
	return NULL;
}

bool runner_error_is_the_jobs(int err)
{
	/* The job's id and environment are the only per-job inputs of the exec. */
	return err == E2BIG;
}

/* ---- the end of a run --------------------------------------------------- */

static enum runner_status classify(const struct run *run, int wait_status)
{
	bool clean_exit = WIFEXITED(wait_status) && WEXITSTATUS(wait_status) == 0;
	/* A handler that had already exited 0 when it was killed did finish its job: keep the result. */
	if (run->killed && !(clean_exit && !run->too_large && !run->timed_out))
		return RUNNER_KILLED;
	if (run->too_large)
		return RUNNER_RESULT_TOO_LARGE;
	if (run->timed_out)
		return RUNNER_TIMEOUT;
	if (clean_exit)
		return RUNNER_COMPLETED;
	return WIFEXITED(wait_status) ? RUNNER_EXIT_CODE : RUNNER_SIGNAL;
}

static void stderr_tail(const struct run *run, struct runner_result *result)
{
	size_t len = run->err_total < RUNNER_STDERR_TAIL ? run->err_total : RUNNER_STDERR_TAIL;
	size_t start = run->err_total < RUNNER_STDERR_TAIL ? 0 : run->err_total % RUNNER_STDERR_TAIL;
	size_t first = RUNNER_STDERR_TAIL - start < len ? RUNNER_STDERR_TAIL - start : len;
	memcpy(result->stderr_tail, run->err_ring + start, first);
	memcpy(result->stderr_tail + first, run->err_ring, len - first);
	size_t skip = 0;
	/* A tail cut inside a UTF-8 sequence would not be valid text: start at the next character. */
	while (run->err_total > RUNNER_STDERR_TAIL && skip < 3 && skip < len &&
	       ((unsigned char)result->stderr_tail[skip] & 0xC0) == 0x80)
		skip++;
	memmove(result->stderr_tail, result->stderr_tail + skip, len - skip);
	result->stderr_len = len - skip;
	result->stderr_tail[result->stderr_len] = '\0';
}

static void build_result(struct run *run, int wait_status, struct runner_result *result)
{
	memset(result, 0, sizeof(*result));
	result->status = classify(run, wait_status);
	result->exit_code = WIFEXITED(wait_status) ? WEXITSTATUS(wait_status) : -1;
	result->signal = WIFSIGNALED(wait_status) ? WTERMSIG(wait_status) : 0;
	if (run->out != NULL) {
		run->out[run->out_len] = '\0';
		result->output = run->out;
		result->output_len = run->out_len;
	} else {
		result->output = (char *)"";
	}
	stderr_tail(run, result);
	result->duration_ms = now_ms() - run->started_ms;
	result->pid = run->pid;
}

void runner_child_exited(struct run *run, int wait_status)
{
	struct runner_result result;

	ev_timer_stop(run->loop, &run->timeout_timer);
	ev_timer_stop(run->loop, &run->grace_timer);
	/* First the rest of the group (a grandchild may hold the pipes), so draining ends. */
	signal_group(run, SIGKILL);
	stream_close(run, STREAM_STDIN);
	for (int s = STREAM_STDOUT; s < STREAM_COUNT; s++) {
		stream_read(run, (enum stream)s, s == STREAM_STDOUT ? SIZE_MAX : DRAIN_MAX_BYTES, INT32_MAX);
		if (s != STREAM_STDOUT)
			lines_flush(run, (enum stream)s);
		stream_close(run, (enum stream)s);
	}
	build_result(run, wait_status, &result);
	registry_remove(run);
	if (run->cb.done != NULL)
		run->cb.done(run, &result, run->cb.arg);
	run_free(run);
}

/* ---- the rest of the interface ----------------------------------------- */

pid_t runner_pgid(const struct run *run)
{
	return run->pid;
}

void runner_kill(struct run *run)
{
	run->killed = true;
	ev_timer_stop(run->loop, &run->timeout_timer);
	ev_timer_stop(run->loop, &run->grace_timer);
	signal_group(run, SIGKILL);
}

void runner_cancel(struct run *run)
{
	if (run->killed)
		return;
	run->killed = true;
	ev_timer_stop(run->loop, &run->timeout_timer);
	signal_group(run, SIGTERM);
	if (!ev_is_active(&run->grace_timer))
		ev_timer_start(run->loop, &run->grace_timer);
}

struct run *runner_find(pid_t pid)
{
	for (struct run *run = runs; run != NULL; run = run->next) {
		if (run->pid == pid)
			return run;
	}
	return NULL;
}

size_t runner_active(void)
{
	return run_count;
}
