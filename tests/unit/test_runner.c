/*
 * Unit tests of the runner on a real libev loop with real handler processes
 * (small /bin/sh scripts). Children are reaped the way the worker does it:
 * an ev_child watcher for every pid that hands the status to runner_find's
 * run. The test process is a child subreaper, so grandchildren orphaned by a
 * handler come back to it and can be checked for and reaped too.
 */
#include <criterion/criterion.h>

#include "worker/runner.h"
#include "shared/util.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define DEADLINE_MS 10000
#define MAX_PROGRESS 16

struct outcome {
	bool done;
	struct runner_result result;
	char *output;
	struct run *run;
	int progress_count;
	double progress[MAX_PROGRESS];
	char message[MAX_PROGRESS][64];
	bool has_message[MAX_PROGRESS];
};

static struct ev_loop *loop;
static ev_child reaper;
static ev_timer tick;
static char *outputs[64]; /* copies made by on_done, freed at teardown */
static int output_count;

static void reap_cb(struct ev_loop *l, ev_child *w, int revents)
{
	if (!WIFEXITED(w->rstatus) && !WIFSIGNALED(w->rstatus))
		return;
	struct run *run = runner_find(w->rpid);
	if (run != NULL)
		runner_child_exited(run, w->rstatus);
}

static void tick_cb(struct ev_loop *l, ev_timer *w, int revents) {}

static void setup(void)
{
	signal(SIGPIPE, SIG_IGN); /* as the worker does */
	cr_assert_eq(prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
	loop = ev_default_loop(0);
	cr_assert_not_null(loop);
	ev_child_init(&reaper, reap_cb, 0, 0);
	ev_child_start(loop, &reaper);
	/* ev_run(EVRUN_ONCE) returns at least this often, so deadlines are checked. */
	ev_timer_init(&tick, tick_cb, 0.01, 0.01);
	ev_timer_start(loop, &tick);
}

static void teardown(void)
{
	ev_timer_stop(loop, &tick);
	ev_child_stop(loop, &reaper);
	for (int i = 0; i < output_count; i++)
		free(outputs[i]);
}

TestSuite(runner, .init = setup, .fini = teardown, .timeout = 30);

/* ---- helpers ------------------------------------------------------------ */

static void on_done(struct run *run, const struct runner_result *result, void *arg)
{
	struct outcome *o = arg;
	cr_assert_eq(run, o->run);
	cr_assert_not_null(result->output);
	cr_assert_eq(result->output[result->output_len], '\0');
	o->result = *result;
	o->output = malloc(result->output_len + 1);
	cr_assert_not_null(o->output);
	memcpy(o->output, result->output, result->output_len + 1);
	cr_assert_lt(output_count, (int)ARRAY_LEN(outputs));
	outputs[output_count++] = o->output;
	o->done = true;
}

static void on_progress(struct run *run, double progress, const char *message, void *arg)
{
	struct outcome *o = arg;
	cr_assert_eq(run, o->run);
	cr_assert_lt(o->progress_count, MAX_PROGRESS);
	o->progress[o->progress_count] = progress;
	o->has_message[o->progress_count] = message != NULL;
	if (message != NULL)
		snprintf(o->message[o->progress_count], sizeof(o->message[0]), "%s", message);
	o->progress_count++;
}

struct run_opts {
	const char *input;
	size_t input_len;
	long long timeout_ms;
	long long kill_grace_ms;
	size_t max_result_bytes;
	char *const *envp;
	const char *working_dir;
	const struct runner_limits *limits;
};

static struct run *start_argv(struct outcome *o, char *const *argv, const struct run_opts *opts)
{
	struct runner_spec spec = {
		.argv = argv,
		.envp = opts->envp != NULL ? opts->envp : environ,
		.working_dir = opts->working_dir,
		.input = opts->input,
		.input_len = opts->input_len,
		.timeout_ms = opts->timeout_ms > 0 ? opts->timeout_ms : 20000,
		.kill_grace_ms = opts->kill_grace_ms > 0 ? opts->kill_grace_ms : 1000,
		.max_result_bytes = opts->max_result_bytes > 0 ? opts->max_result_bytes : 65536,
		.limits = opts->limits,
	};
	struct runner_callbacks cb = { .done = on_done, .progress = on_progress, .arg = o };
	memset(o, 0, sizeof(*o));
	o->run = runner_start(loop, &spec, &cb);
	return o->run;
}

static struct run *start_sh(struct outcome *o, const char *script, const struct run_opts *opts)
{
	char *argv[] = { "/bin/sh", "-c", (char *)script, NULL };
	struct run *run = start_argv(o, argv, opts);
	cr_assert_not_null(run, "runner_start: %s", strerror(errno));
	return run;
}

typedef bool (*condition)(void *arg);

/* Runs the loop until cond holds or the deadline passes. */
static bool loop_until(condition cond, void *arg, long long timeout_ms)
{
	long long deadline = now_ms() + timeout_ms;
	while (!cond(arg) && now_ms() < deadline)
		ev_run(loop, EVRUN_ONCE);
	return cond(arg);
}

static bool is_done(void *arg)
{
	return ((struct outcome *)arg)->done;
}

static void wait_done(struct outcome *o)
{
	cr_assert(loop_until(is_done, o, DEADLINE_MS), "the run did not finish in time");
}

static struct outcome *run_sh(const char *script, const struct run_opts *opts)
{
	static struct outcome o;
	start_sh(&o, script, opts);
	wait_done(&o);
	return &o;
}

static bool group_gone(void *arg)
{
	pid_t pgid = *(pid_t *)arg;
	return kill(-pgid, 0) < 0 && errno == ESRCH;
}

static bool pid_gone(void *arg)
{
	pid_t pid = *(pid_t *)arg;
	return kill(pid, 0) < 0 && errno == ESRCH;
}

static int count_fds(void)
{
	int n = 0;
	char path[64];
	for (int fd = 0; fd < 1024; fd++) {
		snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
		struct stat st;
		if (lstat(path, &st) == 0)
			n++;
	}
	return n;
}

static char process_state(pid_t pid)
{
	char path[64], buf[512];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return '?';
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return '?';
	buf[n] = '\0';
	char *paren = strrchr(buf, ')');
	return paren != NULL && paren[1] == ' ' ? paren[2] : '?';
}

/* ---- outcomes by exit status ------------------------------------------- */

Test(runner, exit_0_captures_stdout_and_leaks_no_fd)
{
	int fds_before = count_fds();
	struct run_opts opts = { .input = "hello", .input_len = 5 };
	struct outcome *o = run_sh("cat; printf ' done'", &opts);
	cr_assert_eq(o->result.status, RUNNER_COMPLETED);
	cr_assert_eq(o->result.exit_code, 0);
	cr_assert_eq(o->result.signal, 0);
	cr_assert_str_eq(o->output, "hello done");
	cr_assert_eq(o->result.output_len, 10);
	cr_assert_eq(o->result.stderr_len, 0);
	cr_assert_eq(runner_active(), 0);
	cr_assert_eq(count_fds(), fds_before, "the runner left fds open");
}

Test(runner, empty_input_gives_eof_at_once)
{
	struct run_opts opts = { .timeout_ms = 5000 };
	struct outcome *o = run_sh("cat", &opts);
	cr_assert_eq(o->result.status, RUNNER_COMPLETED);
	cr_assert_eq(o->result.output_len, 0);
	cr_assert_str_eq(o->output, "");
}

Test(runner, exit_code_3_with_stderr)
{
	struct run_opts opts = { 0 };
	struct outcome *o = run_sh("echo oops >&2; exit 3", &opts);
	cr_assert_eq(o->result.status, RUNNER_EXIT_CODE);
	cr_assert_eq(o->result.exit_code, 3);
	cr_assert_eq(o->result.signal, 0);
	cr_assert_str_eq(o->result.stderr_tail, "oops\n");
	cr_assert_eq(o->result.stderr_len, 5);
}

Test(runner, killed_by_a_signal)
{
	struct run_opts opts = { 0 };
	struct outcome *o = run_sh("kill -USR1 $$; sleep 5", &opts);
	cr_assert_eq(o->result.status, RUNNER_SIGNAL);
	cr_assert_eq(o->result.signal, SIGUSR1);
	cr_assert_eq(o->result.exit_code, -1);
}

Test(runner, runs_in_its_own_group_with_env_and_working_dir)
{
	char *envp[] = { "FOO=bar", "PATH=/usr/bin:/bin", NULL };
	struct run_opts opts = { .envp = envp, .working_dir = "/tmp" };
	struct outcome o;
	start_sh(&o, "echo \"$FOO\"; pwd; exec cut -d' ' -f5 /proc/self/stat", &opts);
	pid_t pgid = runner_pgid(o.run);
	cr_assert_eq(runner_find(pgid), o.run);
	wait_done(&o);
	char expected[64];
	snprintf(expected, sizeof(expected), "bar\n/tmp\n%d\n", (int)pgid);
	cr_assert_str_eq(o.output, expected);
	cr_assert_null(runner_find(pgid));
}

Test(runner, signal_mask_and_dispositions_are_reset)
{
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGUSR2);
	sigaddset(&set, SIGTERM);
	cr_assert_eq(sigprocmask(SIG_BLOCK, &set, NULL), 0);
	signal(SIGINT, SIG_IGN);
	struct run_opts opts = { 0 };
	struct outcome *o = run_sh("exec grep -E '^Sig(Blk|Ign):' /proc/self/status", &opts);
	cr_assert_eq(o->result.status, RUNNER_COMPLETED);
	unsigned long long blocked = 1, ignored = 1;
	cr_assert_eq(sscanf(o->output, "SigBlk:\t%llx\nSigIgn:\t%llx", &blocked, &ignored), 2, "%s", o->output);
	cr_assert_eq(blocked, 0ULL);
	/* Signals 32 and 33 are glibc's own (SIGCANCEL, SIGSETXID): sigaction() refuses them, so an
	 * SIG_IGN inherited from whoever started the test (make does this) cannot be reset. */
	cr_assert_eq(ignored & ~(3ULL << 31), 0ULL, "SigIgn %llx", ignored);
}

Test(runner, no_inherited_fd_reaches_the_handler)
{
	int leaky = open("/dev/null", O_RDONLY); /* deliberately without O_CLOEXEC */
	cr_assert_geq(leaky, 0);
	cr_assert_eq(dup2(leaky, 200), 200);
	int p[2];
	cr_assert_eq(pipe(p), 0);
	struct run_opts opts = { 0 };
	struct outcome *o = run_sh("i=0; while [ $i -lt 1024 ]; do [ -h /proc/$$/fd/$i ] && printf '%s ' $i; "
	                           "i=$((i+1)); done",
	                           &opts);
	cr_assert_eq(o->result.status, RUNNER_COMPLETED);
	cr_assert_str_eq(o->output, "0 1 2 3 ");
}

Test(runner, works_when_the_worker_has_no_stdio)
{
	/* With 0..2 closed the runner's own pipes land on the fds the child must rearrange. */
	int saved[3];
	for (int fd = 0; fd < 3; fd++) {
		saved[fd] = fcntl(fd, F_DUPFD_CLOEXEC, 10);
		cr_assert_geq(saved[fd], 0);
		close(fd);
	}
	struct run_opts opts = { .input = "in", .input_len = 2 };
	struct outcome o;
	struct run *run = start_sh(&o, "cat; echo err >&2; echo 0.5 >&3", &opts);
	bool finished = run != NULL && loop_until(is_done, &o, DEADLINE_MS);
	for (int fd = 0; fd < 3; fd++) {
		dup2(saved[fd], fd);
		close(saved[fd]);
	}
	cr_assert(finished);
	cr_assert_eq(o.result.status, RUNNER_COMPLETED);
	cr_assert_str_eq(o.output, "in");
	cr_assert_str_eq(o.result.stderr_tail, "err\n");
	cr_assert_eq(o.progress_count, 1);
}

/* ---- timeouts and the process group ------------------------------------- */

Test(runner, timeout_terminates_a_sleeper)
{
	struct run_opts opts = { .timeout_ms = 200, .kill_grace_ms = 5000 };
	struct outcome o;
	start_sh(&o, "sleep 30", &opts);
	pid_t pgid = runner_pgid(o.run);
	wait_done(&o);
	cr_assert_eq(o.result.status, RUNNER_TIMEOUT);
	cr_assert_eq(o.result.signal, SIGTERM);
	cr_assert_geq(o.result.duration_ms, 200);
	cr_assert_lt(o.result.duration_ms, 200 + 1500);
	cr_assert(loop_until(group_gone, &pgid, 2000), "a process of the group survived");
}

Test(runner, handler_ignoring_term_is_killed_after_grace)
{
	struct run_opts opts = { .timeout_ms = 300, .kill_grace_ms = 300 };
	struct outcome o;
	start_sh(&o, "trap '' TERM; while :; do sleep 1; done", &opts);
	pid_t pid = runner_pgid(o.run);
	wait_done(&o);
	cr_assert_eq(o.result.status, RUNNER_TIMEOUT);
	cr_assert_eq(o.result.signal, SIGKILL, "signal %d", o.result.signal);
	cr_assert_geq(o.result.duration_ms, 600);
	cr_assert_lt(o.result.duration_ms, 600 + 1500, "took %lld ms", o.result.duration_ms);
	cr_assert(pid_gone(&pid));
	cr_assert(loop_until(group_gone, &pid, 2000), "a process of the group survived");
}

Test(runner, timeout_kills_grandchildren_too)
{
	struct run_opts opts = { .timeout_ms = 200, .kill_grace_ms = 300 };
	struct outcome o;
	start_sh(&o, "(trap '' TERM; exec sleep 60) & sleep 60 & wait", &opts);
	pid_t pgid = runner_pgid(o.run);
	wait_done(&o);
	cr_assert_eq(o.result.status, RUNNER_TIMEOUT);
	cr_assert_lt(o.result.duration_ms, 200 + 300 + 1500);
	cr_assert(loop_until(group_gone, &pgid, 2000), "a process of the group survived");
}

Test(runner, outcome_by_exit_status_and_the_group_dies_with_the_handler)
{
	/* The grandchild keeps stdout open and ignores TERM: no EOF ever comes from the handler's pipes. */
	struct run_opts opts = { .timeout_ms = 20000 };
	struct outcome o;
	start_sh(&o, "(trap '' TERM; exec sleep 60) & echo $!", &opts);
	pid_t pgid = runner_pgid(o.run);
	wait_done(&o);
	cr_assert_eq(o.result.status, RUNNER_COMPLETED);
	cr_assert_lt(o.result.duration_ms, 5000);
	pid_t grandchild = (pid_t)atoi(o.output);
	cr_assert_gt(grandchild, 0, "output: %s", o.output);
	cr_assert_neq(grandchild, pgid);
	cr_assert(loop_until(group_gone, &pgid, 2000), "a process of the group survived");
	cr_assert(pid_gone(&grandchild));
}

Test(runner, runner_kill_gives_killed)
{
	struct run_opts opts = { 0 };
	struct outcome o;
	start_sh(&o, "sleep 30", &opts);
	pid_t pgid = runner_pgid(o.run);
	runner_kill(o.run);
	wait_done(&o);
	cr_assert_eq(o.result.status, RUNNER_KILLED);
	cr_assert_eq(o.result.signal, SIGKILL);
	cr_assert(loop_until(group_gone, &pgid, 2000));
}

Test(runner, runner_kill_after_a_clean_exit_keeps_the_result)
{
	struct run_opts opts = { 0 };
	struct outcome o;
	start_sh(&o, "printf ok", &opts);
	pid_t pid = runner_pgid(o.run);
	/* The loop does not run here, so the handler stays an unreaped zombie. */
	long long deadline = now_ms() + DEADLINE_MS;
	while (process_state(pid) != 'Z' && now_ms() < deadline) {
		struct timespec ts = { 0, 1000000 };
		nanosleep(&ts, NULL);
	}
	cr_assert_eq(process_state(pid), 'Z');
	runner_kill(o.run);
	wait_done(&o);
	cr_assert_eq(o.result.status, RUNNER_COMPLETED);
	cr_assert_str_eq(o.output, "ok");
}

/* ---- stdout limit, stdin, stderr ------------------------------------- */

Test(runner, endless_output_is_result_too_large)
{
	struct run_opts opts = { .max_result_bytes = 100000 };
	struct outcome *o = run_sh("yes", &opts);
	cr_assert_eq(o->result.status, RUNNER_RESULT_TOO_LARGE);
	cr_assert_eq(o->result.signal, SIGKILL, "signal %d", o->result.signal);
	cr_assert_eq(o->result.output_len, 100000, "kept %zu bytes", o->result.output_len);
	cr_assert_lt(o->result.duration_ms, 5000);
}

Test(runner, output_exactly_at_the_limit_completes)
{
	struct run_opts opts = { .max_result_bytes = 100000 };
	struct outcome *o = run_sh("head -c 100000 /dev/zero | tr '\\0' x", &opts);
	cr_assert_eq(o->result.status, RUNNER_COMPLETED);
	cr_assert_eq(o->result.output_len, 100000);
}

Test(runner, one_byte_over_the_limit_is_too_large)
{
	struct run_opts opts = { .max_result_bytes = 99999 };
	struct outcome *o = run_sh("head -c 100000 /dev/zero | tr '\\0' x", &opts);
	cr_assert_eq(o->result.status, RUNNER_RESULT_TOO_LARGE);
	cr_assert_leq(o->result.output_len, 99999);
}

static char *pattern(size_t len)
{
	char *buf = malloc(len);
	cr_assert_not_null(buf);
	unsigned x = 12345;
	for (size_t i = 0; i < len; i++) {
		x = x * 1103515245u + 12345u;
		buf[i] = (char)(x >> 16);
	}
	return buf;
}

Test(runner, one_mebibyte_of_stdin_is_echoed_back)
{
	size_t len = 1 << 20;
	char *input = pattern(len);
	struct run_opts opts = { .input = input, .input_len = len, .max_result_bytes = 2 << 20 };
	struct outcome *o = run_sh("exec cat", &opts);
	cr_assert_eq(o->result.status, RUNNER_COMPLETED);
	cr_assert_eq(o->result.output_len, len);
	cr_assert(memcmp(o->output, input, len) == 0);
	free(input);
}

Test(runner, handler_not_reading_stdin)
{
	size_t len = 1 << 20;
	char *input = pattern(len);
	struct run_opts opts = { .input = input, .input_len = len };
	struct outcome *o = run_sh("sleep 0.2; echo hi", &opts);
	cr_assert_eq(o->result.status, RUNNER_COMPLETED);
	cr_assert_str_eq(o->output, "hi\n");
	o = run_sh("exec 0<&-; echo closed", &opts);
	cr_assert_eq(o->result.status, RUNNER_COMPLETED);
	cr_assert_str_eq(o->output, "closed\n");
	free(input);
}

Test(runner, stderr_tail_keeps_the_last_4_kib)
{
	struct run_opts opts = { 0 };
	struct outcome *o =
		run_sh("i=0; while [ $i -lt 2000 ]; do echo \"line $i\"; i=$((i+1)); done >&2; echo out", &opts);
	cr_assert_eq(o->result.status, RUNNER_COMPLETED);
	char *all = malloc(32 * 2000);
	size_t len = 0;
	for (int i = 0; i < 2000; i++)
		len += (size_t)sprintf(all + len, "line %d\n", i);
	cr_assert_eq(o->result.stderr_len, RUNNER_STDERR_TAIL);
	cr_assert(memcmp(o->result.stderr_tail, all + len - RUNNER_STDERR_TAIL, RUNNER_STDERR_TAIL) == 0);
	cr_assert_eq(o->result.stderr_tail[RUNNER_STDERR_TAIL], '\0');
	cr_assert_str_eq(o->output, "out\n");
	free(all);
}

Test(runner, stderr_tail_starts_on_a_utf8_character)
{
	/* 2999 two-byte characters and "x": 5999 bytes, so the last 4096 begin mid-character. */
	struct run_opts opts = { 0 };
	struct outcome *o =
		run_sh("i=0; while [ $i -lt 2999 ]; do printf '\\303\\251'; i=$((i+1)); done >&2; printf x >&2", &opts);
	cr_assert_eq(o->result.stderr_len, RUNNER_STDERR_TAIL - 1);
	cr_assert_eq((unsigned char)o->result.stderr_tail[0], 0xC3);
	cr_assert_eq(o->result.stderr_tail[RUNNER_STDERR_TAIL - 2], 'x');
}

/* ---- progress ---------------------------------------------------------- */

Test(runner, progress_lines_are_parsed_and_garbage_ignored)
{
	struct run_opts opts = { 0 };
	struct outcome *o = run_sh("printf '0.25\\n{\"progress\":0.5,\"message\":\"half\"}\\ngarbage\\n1.5\\n' >&3;"
	                           "printf '{\"message\":\"no progress\"}\\nnan\\ninf\\n-0.1\\n[0.3]\\n' >&3;"
	                           "printf '{\"progress\":0.6,\"message\":5}\\n' >&3;"
	                           "printf '0.' >&3; head -c 5000 /dev/zero | tr '\\0' 1 >&3;"
	                           "printf '\\n  0.75  \\n1\\n{\"progress\":0}\\n0.9' >&3",
	                           &opts);
	cr_assert_eq(o->result.status, RUNNER_COMPLETED);
	double expected[] = { 0.25, 0.5, 0.6, 0.75, 1.0, 0.0, 0.9 };
	cr_assert_eq(o->progress_count, 7, "got %d progress lines", o->progress_count);
	for (int i = 0; i < 7; i++) {
		cr_assert_float_eq(o->progress[i], expected[i], 1e-9, "line %d", i);
		cr_assert_eq(o->has_message[i], i == 1, "line %d", i);
	}
	cr_assert_str_eq(o->message[1], "half");
}

/* ---- start-up failures -------------------------------------------------- */

static void assert_start_fails(char *const *argv, const char *working_dir, int expected_errno)
{
	struct outcome o;
	struct run_opts opts = { .working_dir = working_dir };
	errno = 0;
	cr_assert_null(start_argv(&o, argv, &opts));
	cr_assert_eq(errno, expected_errno, "errno %d (%s)", errno, strerror(errno));
	cr_assert_eq(runner_active(), 0);
	/* The failed child was reaped by the runner: nothing is left to reap. */
	cr_assert_eq(waitpid(-1, NULL, WNOHANG), -1);
	cr_assert_eq(errno, ECHILD);
}

Test(runner, exec_failure_is_reported_not_run)
{
	char *missing[] = { "/nonexistent/drover-handler", NULL };
	assert_start_fails(missing, NULL, ENOENT);

	char path[] = "/tmp/drover-runner-test-XXXXXX";
	int fd = mkstemp(path);
	cr_assert_geq(fd, 0);
	close(fd);
	char *not_executable[] = { path, NULL };
	assert_start_fails(not_executable, NULL, EACCES);
	unlink(path);

	char *sh[] = { "/bin/sh", "-c", "true", NULL };
	assert_start_fails(sh, "/nonexistent/dir", ENOENT);
}

Test(runner, exec_errors_say_whether_the_job_is_the_cause)
{
	/* A single environment string over 128 KiB cannot be exec'd: only this job's environment is at fault. */
	size_t len = 200 * 1024;
	char *big = malloc(len + 1);
	cr_assert_not_null(big);
	memset(big, 'x', len);
	memcpy(big, "BIG=", 4);
	big[len] = '\0';
	char *envp[] = { big, NULL };
	char *sh[] = { "/bin/sh", "-c", "true", NULL };
	struct outcome o;
	struct run_opts opts = { .envp = envp };
	errno = 0;
	cr_assert_null(start_argv(&o, sh, &opts));
	int err = errno;
	free(big);
	cr_assert_eq(err, E2BIG, "errno %d (%s)", err, strerror(err));
	cr_assert(runner_error_is_the_jobs(err));
	cr_assert_eq(runner_active(), 0);
	cr_assert_eq(waitpid(-1, NULL, WNOHANG), -1, "the failed child was left to reap");
	cr_assert_eq(errno, ECHILD);

	cr_assert_not(runner_error_is_the_jobs(ENOENT));
	cr_assert_not(runner_error_is_the_jobs(EACCES));
	cr_assert_not(runner_error_is_the_jobs(ENOEXEC));
	cr_assert_not(runner_error_is_the_jobs(EAGAIN));
	cr_assert_not(runner_error_is_the_jobs(ENOMEM));

	/* And the runner still works after a failed start (no stale state from the child). */
	struct run_opts plain = { 0 };
	struct outcome *ok = run_sh("printf fine", &plain);
	cr_assert_eq(ok->result.status, RUNNER_COMPLETED);
	cr_assert_str_eq(ok->output, "fine");
}

/* ---- several at once, and the worker's death ---------------------------- */

static bool all_done(void *arg)
{
	struct outcome *o = arg;
	for (int i = 0; i < 8; i++) {
		if (!o[i].done)
			return false;
	}
	return true;
}

Test(runner, concurrent_runs_keep_their_own_output)
{
	struct outcome o[8];
	char input[8][16];
	for (int i = 0; i < 8; i++) {
		int n = snprintf(input[i], sizeof(input[i]), "job-%d", i);
		struct run_opts opts = { .input = input[i], .input_len = (size_t)n };
		start_sh(&o[i], "sleep 0.1; cat", &opts);
	}
	cr_assert_eq(runner_active(), 8);
	cr_assert(loop_until(all_done, o, DEADLINE_MS));
	for (int i = 0; i < 8; i++) {
		cr_assert_eq(o[i].result.status, RUNNER_COMPLETED);
		cr_assert_str_eq(o[i].output, input[i]);
	}
	cr_assert_eq(runner_active(), 0);
}

Test(runner, handler_dies_with_the_worker)
{
	int report[2];
	cr_assert_eq(pipe(report), 0);
	pid_t middle = fork();
	cr_assert_geq(middle, 0);
	if (middle == 0) {
		/* The "worker": starts a handler on its own loop, then dies without reaping it. */
		struct ev_loop *own = ev_loop_new(0);
		char *argv[] = { "/bin/sleep", "30", NULL };
		struct runner_spec spec = { .argv = argv, .envp = environ, .timeout_ms = 20000, .max_result_bytes = 10 };
		struct outcome o;
		struct runner_callbacks cb = { .done = on_done, .arg = &o };
		struct run *run = runner_start(own, &spec, &cb);
		pid_t pid = run != NULL ? runner_pgid(run) : -1;
		if (write(report[1], &pid, sizeof(pid)) != sizeof(pid))
			_exit(1);
		_exit(0);
	}
	close(report[1]);
	pid_t handler = -1;
	cr_assert_eq(read_full(report[0], &handler, sizeof(handler)), (ssize_t)sizeof(handler));
	close(report[0]);
	cr_assert_gt(handler, 0);
	int status;
	cr_assert_eq(waitpid_retry(middle, &status, 0), middle);
	/* The orphaned handler comes back to this subreaper, killed by its death signal. */
	long long deadline = now_ms() + DEADLINE_MS;
	pid_t got = 0;
	while ((got = waitpid(handler, &status, WNOHANG)) == 0 && now_ms() < deadline) {
		struct timespec ts = { 0, 2000000 };
		nanosleep(&ts, NULL);
	}
	cr_assert_eq(got, handler, "the handler outlived its worker");
	cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
}

/* ---- per-handler limits -------------------------------------------------- */

Test(runner, limits_are_set_before_exec)
{
	const struct runner_limits limits = { .nofile = 64, .as = 1LL << 31, .core = 0, .cpu = 7, .nice = 5 };
	const struct run_opts opts = { .limits = &limits };
	struct outcome *o = run_sh("ulimit -n; ulimit -Hn; ulimit -v; ulimit -c; ulimit -t; ulimit -Ht; "
	                           "cut -d' ' -f19 /proc/self/stat", &opts);
	cr_assert_eq(o->result.status, RUNNER_COMPLETED, "stderr: %s", o->result.stderr_tail);
	/* soft = hard, except CPU: SIGXCPU at 7 s, SIGKILL at 8 s; -v is in KiB */
	cr_assert_str_eq(o->output, "64\n64\n2097152\n0\n7\n8\n5\n");
}

Test(runner, unset_limits_are_inherited)
{
	const struct runner_limits limits = { RUNNER_LIMIT_UNSET, RUNNER_LIMIT_UNSET, RUNNER_LIMIT_UNSET,
		                              RUNNER_LIMIT_UNSET, RUNNER_LIMIT_UNSET };
	const struct run_opts opts = { .limits = &limits };
	struct rlimit own;
	cr_assert_eq(getrlimit(RLIMIT_NOFILE, &own), 0);
	char want[64];
	snprintf(want, sizeof(want), "%llu\n", (unsigned long long)own.rlim_cur);
	struct outcome *o = run_sh("ulimit -n", &opts);
	cr_assert_str_eq(o->output, want);
}

/* A limit the handler may not have (nice below drover's own needs privilege) is a start failure, not a job's. */
Test(runner, a_refused_limit_fails_the_start)
{
	const struct runner_limits limits = { .nofile = 1LL << 40, .as = RUNNER_LIMIT_UNSET, .core = RUNNER_LIMIT_UNSET,
		                              .cpu = RUNNER_LIMIT_UNSET, .nice = RUNNER_LIMIT_UNSET };
	const struct run_opts opts = { .limits = &limits };
	char *argv[] = { "/bin/true", NULL };
	struct outcome o;
	cr_assert_null(start_argv(&o, argv, &opts));
	cr_assert(errno == EPERM || errno == EINVAL, "errno %d", errno);
}
