/*
 * warm: persistent handler processes of one worker (see warm.h).
 *
 * The pool has `processes` places; each place holds the process serving it,
 * or waits out a restart delay. A process is STARTING until it says ready,
 * READY while it takes jobs, RECYCLING once retired (its place already has a
 * replacement; stdin is closed when its last job ends) and STOPPING once
 * drover signalled it. Jobs end when their answer arrives, or when the
 * process is reaped: then every job it still held ends at once (timeout for
 * the one whose cancel went unanswered, handler_lost for the others).
 */
#include "worker/warm.h"

#include "shared/log.h"
#include "shared/util.h"
#include "worker/frame.h"
#include "worker/memcg.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/wait.h>
#include <unistd.h>

#define EOF_EXIT_WAIT_S 0.5          /* after stdout's EOF, how long its exit may take to show */
#define STDERR_LINE_MAX 1024
#define READS_PER_WAKEUP 16          /* so one chatty process cannot starve the loop */
#define BACKOFF_FIRST_S 1.0
#define BACKOFF_MAX_S 30.0
#define CRASH_LOOP_FAULT 3           /* abnormal ends in a row, without a job answered, that show as a fault */
#define DETAIL_MAX 4096              /* of an error frame's text in the failure document */
#define RSS_TREE_MAX_PROCS 256

struct hproc;

struct warm_job {
	struct hproc *proc;
	LIST_ENTRY(warm_job) link;
	void *arg;
	char *id;
	ev_timer timer;      /* the timeout, then the cancel's grace */
	long long started_ms;
	bool cancelled;      /* the timeout's cancel was sent */
	bool revoked;        /* warm_job_kill: the job is given back whatever happens */
};

LIST_HEAD(job_list, warm_job);

struct hproc {
	struct warm_pool *pool;
	LIST_ENTRY(hproc) link;
	pid_t pid; /* also its process group */
	int place; /* the place it serves, -1 once retired */
	enum scoreboard_handler_state state;
	unsigned long long token;
	int in_fd, out_fd, err_fd;
	ev_io in_io, out_io, err_io;
	char *outq;
	size_t outq_len, outq_off, outq_cap;
	struct frame_reader reader;
	char err_line[STDERR_LINE_MAX + 1];
	size_t err_len;
	bool err_cut;
	struct job_list jobs;
	int job_count;
	unsigned long long sent, served, limit;
	ev_timer timer;      /* start timeout, exit wait after stdin's end, or SIGKILL after SIGTERM */
	char why[240];       /* why drover ended it; empty when it ended by itself */
	bool killed, stdin_closed, release_jobs;
	bool reaped;         /* its last answers are being read: it takes nothing more, is signalled no more */
	bool oom_killed;     /* the OOM killer acted in its memory cgroup: its lost jobs say memory_limit */
	struct job_cgroup *cgroup; /* its own cgroup v2, when drover has one */
	struct memcg *memcg;       /* its own v1 memory cgroup, when memory_max is enforced there */
};

struct place {
	struct warm_pool *pool;
	int index;
	struct hproc *proc;
	ev_timer restart;
};

struct warm_pool {
	struct ev_loop *loop;
	struct warm_settings set;
	struct warm_callbacks cb;
	struct scoreboard_slot *board;
	struct place *places;
	LIST_HEAD(proc_list, hproc) procs; /* every process not yet reaped */
	size_t live;
	int crashes;         /* abnormal ends since a job was last answered */
	char spawn_error[160];
	char last_end[160];
	bool fault_shown, stopping;
	unsigned rng;
};

static void proc_spawn(struct place *pl);
static void proc_kill(struct hproc *p, int sig, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* ---- small helpers ------------------------------------------------------ */

static double ms_to_s(long long ms)
{
	return ms > 0 ? (double)ms / 1000.0 : 0.0;
}

static const char *handler_name(const struct warm_pool *pool)
{
	return pool->set.argv[0];
}

static void signal_group(const struct hproc *p, int sig)
{
	if (p->reaped)
		return; /* warm_pool_child_exited killed what was left of the group */
	if (kill(-p->pid, sig) < 0 && errno != ESRCH)
		log_warn("handler process %d: cannot send signal %d to its group", (int)p->pid, sig);
}

static void close_fd(struct hproc *p, int *fd, ev_io *io)
{
	if (*fd < 0)
		return;
	ev_io_stop(p->pool->loop, io);
	close(*fd);
	*fd = -1;
}

static void count(struct warm_pool *pool, uint64_t *counter)
{
	scoreboard_write_begin(pool->board);
	(*counter)++;
	scoreboard_write_end(pool->board);
}

/* The handler table in the scoreboard: rewritten whole, it is a few entries. */
static void pool_publish(struct warm_pool *pool)
{
	int n = 0;
	scoreboard_write_begin(pool->board);
	for (struct hproc *p = LIST_FIRST(&pool->procs); p != NULL && n < CONFIG_MAX_CONCURRENT;
	     p = LIST_NEXT(p, link), n++) {
		pool->board->handlers[n].pid = p->pid;
		pool->board->handlers[n].state = p->state;
		pool->board->handlers[n].jobs = p->served;
	}
	pool->board->handler_count = n;
	scoreboard_write_end(pool->board);
}

static void pool_update_health(struct warm_pool *pool)
{
	char fault[SCOREBOARD_FAULT_MAX];
	fault[0] = '\0';
	if (pool->spawn_error[0] != '\0')
		snprintf(fault, sizeof(fault), "handler %.60s cannot be started: %.100s", handler_name(pool), pool->spawn_error);
	else if (pool->crashes >= CRASH_LOOP_FAULT)
		snprintf(fault, sizeof(fault), "handler %.40s: %d processes in a row ended before answering a job (last: %.80s)",
		         handler_name(pool), pool->crashes, pool->last_end);
	if (fault[0] == '\0' && !pool->fault_shown)
		return;
	pool->fault_shown = fault[0] != '\0';
	if (pool->cb.health != NULL)
		pool->cb.health(pool->cb.arg, pool->fault_shown ? fault : NULL);
}

static unsigned long long pool_limit(struct warm_pool *pool)
{
	if (pool->set.max_jobs <= 0)
		return 0;
	unsigned long long jitter = 0;
	if (pool->set.max_jobs_jitter > 0)
		jitter = (unsigned long long)rand_r(&pool->rng) % ((unsigned long long)pool->set.max_jobs_jitter + 1);
	return (unsigned long long)pool->set.max_jobs + jitter;
}

/* ---- stdin: the output queue ------------------------------------------- */

static bool proc_exited(const struct hproc *p)
{
	siginfo_t info;
	memset(&info, 0, sizeof(info));
	/* WNOWAIT: only look; the worker's SIGCHLD handling reaps it. */
	return waitid(P_PID, (id_t)p->pid, &info, WEXITED | WNOHANG | WNOWAIT) == 0 && info.si_pid == p->pid;
}

static void stdin_finish_close(struct hproc *p);

static void proc_flush(struct hproc *p)
{
	while (p->in_fd >= 0 && p->outq_off < p->outq_len) {
		ssize_t n = write_some(p->in_fd, p->outq + p->outq_off, p->outq_len - p->outq_off);
		if (n < 0 && errno == EAGAIN) {
			ev_io_start(p->pool->loop, &p->in_io);
			return;
		}
		if (n < 0) {
			int err = errno;
			close_fd(p, &p->in_fd, &p->in_io);
			if (!p->reaped && !proc_exited(p))
				proc_kill(p, SIGKILL, "its stdin failed (%s)", strerror(err));
			return;
		}
		p->outq_off += (size_t)n;
	}
	ev_io_stop(p->pool->loop, &p->in_io);
	p->outq_off = p->outq_len = 0;
	if (p->stdin_closed)
		stdin_finish_close(p);
}

static int proc_send(struct hproc *p, const char *frame, size_t len)
{
	if (p->in_fd < 0)
		return -1;
	if (p->outq_cap - p->outq_len < len) {
		size_t cap = p->outq_cap < 4096 ? 4096 : p->outq_cap;
		while (cap - p->outq_len < len)
			cap *= 2;
		char *grown = realloc(p->outq, cap);
		if (grown == NULL)
			return -1;
		p->outq = grown;
		p->outq_cap = cap;
	}
	memcpy(p->outq + p->outq_len, frame, len);
	p->outq_len += len;
	if (!ev_is_active(&p->in_io))
		proc_flush(p);
	return 0;
}

static void in_cb(struct ev_loop *loop, ev_io *io, int revents)
{
	proc_flush(io->data);
}

static void exit_wait_cb(struct ev_loop *loop, ev_timer *timer, int revents)
{
	struct hproc *p = timer->data;
	proc_kill(p, SIGKILL, "did not exit within %lld ms of the end of its stdin", p->pool->set.kill_grace_ms);
}

static void stdin_finish_close(struct hproc *p)
{
	if (p->in_fd < 0)
		return;
	close_fd(p, &p->in_fd, &p->in_io);
	if (p->job_count == 0 && !p->killed) {
		ev_timer_stop(p->pool->loop, &p->timer);
		ev_timer_init(&p->timer, exit_wait_cb, ms_to_s(p->pool->set.kill_grace_ms), 0);
		p->timer.data = p;
		ev_timer_start(p->pool->loop, &p->timer);
	}
}

/*
 * EOF on stdin: no more jobs; called once the process holds none, so that a
 * cancel can still reach a job until then. It has kill_grace_ms to exit.
 */
static void proc_close_stdin(struct hproc *p)
{
	if (p->stdin_closed)
		return;
	p->stdin_closed = true;
	if (p->outq_off >= p->outq_len)
		stdin_finish_close(p); /* else proc_flush finishes once the queue is written */
}

/* ---- ending processes --------------------------------------------------- */

static void sigkill_cb(struct ev_loop *loop, ev_timer *timer, int revents)
{
	struct hproc *p = timer->data;
	log_info("handler process %d: still there %lld ms after SIGTERM; sending SIGKILL", (int)p->pid,
	         p->pool->set.kill_grace_ms);
	signal_group(p, SIGKILL);
}

/* drover ends the process: why is kept for the log and for its jobs' failure detail. */
static void proc_kill(struct hproc *p, int sig, const char *fmt, ...)
{
	if (p->killed && sig != SIGKILL)
		return;
	if (!p->killed) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(p->why, sizeof(p->why), fmt, ap);
		va_end(ap);
		p->killed = true;
		p->state = HANDLER_STOPPING;
		pool_publish(p->pool);
	}
	ev_timer_stop(p->pool->loop, &p->timer);
	signal_group(p, sig);
	if (sig != SIGKILL) {
		ev_timer_init(&p->timer, sigkill_cb, ms_to_s(p->pool->set.kill_grace_ms), 0);
		p->timer.data = p;
		ev_timer_start(p->pool->loop, &p->timer);
	}
}

static void proc_violation(struct hproc *p, const char *why)
{
	log_warnx("handler process %d: protocol violation: %s; killing it", (int)p->pid, why);
	count(p->pool, &p->pool->board->counters.handler_protocol_errors);
	proc_kill(p, SIGKILL, "broke the protocol: %s", why);
}

/* No new jobs; a replacement takes its place at once; it ends once its jobs are done. */
static void proc_retire(struct hproc *p, const char *why)
{
	struct warm_pool *pool = p->pool;
	if (p->place < 0 || p->killed)
		return;
	log_info("handler process %d: recycling after %llu jobs (%s)", (int)p->pid, p->sent, why);
	count(pool, &pool->board->counters.handler_recycles);
	struct place *pl = &pool->places[p->place];
	p->place = -1;
	p->state = HANDLER_RECYCLING;
	pl->proc = NULL;
	if (p->job_count == 0)
		proc_close_stdin(p);
	pool_publish(pool);
	if (!pool->stopping)
		proc_spawn(pl);
}

/* ---- jobs ---------------------------------------------------------------- */

static void job_unlink(struct warm_job *job)
{
	LIST_REMOVE(job, link);
	job->proc->job_count--;
}

static struct warm_job *proc_pop_job(struct hproc *p)
{
	struct warm_job *job = LIST_FIRST(&p->jobs);
	if (job == NULL)
		return NULL;
	LIST_REMOVE(job, link);
	p->job_count--;
	return job;
}

/* Ends a job already unlinked from p: the worker hears of it, the job is freed, p may take the next one. */
static void job_finish(struct hproc *p, struct warm_job *job, enum runner_status status, const char *output,
                       size_t output_len, const char *detail, bool no_retry)
{
	struct warm_pool *pool = p->pool;
	struct runner_result result;

	memset(&result, 0, sizeof(result));
	result.status = status;
	result.exit_code = -1;
	result.output = (char *)(output != NULL ? output : "");
	result.output_len = output != NULL ? output_len : 0;
	result.duration_ms = now_ms() - job->started_ms;
	result.detail = detail;
	result.no_retry = no_retry;
	result.oom_killed = status == RUNNER_HANDLER_LOST && p->oom_killed;

	ev_timer_stop(pool->loop, &job->timer);
	if (status != RUNNER_HANDLER_LOST && status != RUNNER_KILLED) {
		p->served++; /* it answered: not a crash loop */
		pool_publish(pool);
		if (pool->crashes > 0) {
			pool->crashes = 0;
			pool_update_health(pool);
		}
	}
	void *arg = job->arg;
	free(job->id);
	free(job);
	pool->cb.done(arg, &result);
	if (p->job_count == 0 && !p->stdin_closed && (p->place < 0 || pool->stopping) && !p->killed)
		proc_close_stdin(p);
}

static void job_end(struct warm_job *job, enum runner_status status, const char *output, size_t output_len,
                    const char *detail, bool no_retry)
{
	struct hproc *p = job->proc;
	job_unlink(job);
	job_finish(p, job, status, output, output_len, detail, no_retry);
}

static struct warm_job *job_find(struct hproc *p, const char *id)
{
	for (struct warm_job *job = LIST_FIRST(&p->jobs); job != NULL; job = LIST_NEXT(job, link)) {
		if (strcmp(job->id, id) == 0)
			return job;
	}
	return NULL;
}

static void job_grace_cb(struct ev_loop *loop, ev_timer *timer, int revents)
{
	struct warm_job *job = timer->data;
	proc_kill(job->proc, SIGTERM, "job %.200s did not answer its cancel within %lld ms", job->id,
	          job->proc->pool->set.kill_grace_ms);
}

static void job_cancel(struct warm_job *job, const char *reason)
{
	struct hproc *p = job->proc;
	size_t len;
	char *frame = frame_cancel(job->id, reason, &len);
	if (frame == NULL || proc_send(p, frame, len) < 0)
		log_warnx("handler process %d: cannot send the cancel of job %.200s", (int)p->pid, job->id);
	free(frame);
	ev_timer_stop(p->pool->loop, &job->timer);
	ev_timer_init(&job->timer, job_grace_cb, ms_to_s(p->pool->set.kill_grace_ms), 0);
	job->timer.data = job;
	ev_timer_start(p->pool->loop, &job->timer);
}

static void job_timeout_cb(struct ev_loop *loop, ev_timer *timer, int revents)
{
	struct warm_job *job = timer->data;
	log_info("job %.200s: ran longer than %lld ms; cancelling it in handler process %d", job->id,
	         job->proc->pool->set.timeout_ms, (int)job->proc->pid);
	job->cancelled = true;
	job_cancel(job, "timeout");
}

void warm_job_kill(struct warm_job *job)
{
	if (job->revoked)
		return;
	job->revoked = true;
	if (!job->cancelled)
		job_cancel(job, "cancelled");
}

pid_t warm_job_pid(const struct warm_job *job)
{
	return job->proc->pid;
}

/* ---- frames from the handler ------------------------------------------- */

static void frame_result(struct hproc *p, struct warm_job *job, json_t *value)
{
	char *text = json_dumps(value, JSON_COMPACT | JSON_ENCODE_ANY);
	if (text == NULL) {
		proc_violation(p, "a result that cannot be encoded");
		return;
	}
	size_t len = strlen(text);
	if (len > p->pool->set.max_result_bytes)
		job_end(job, RUNNER_RESULT_TOO_LARGE, NULL, 0, NULL, false);
	else
		job_end(job, RUNNER_COMPLETED, text, len, NULL, false); /* even when revoked: the work is done */
	free(text);
}

static void frame_error(struct warm_job *job, const char *error, bool retry)
{
	char detail[DETAIL_MAX + 1];
	size_t len = strlen(error);
	if (len > DETAIL_MAX) {
		len = DETAIL_MAX;
		while (len > 0 && ((unsigned char)error[len] & 0xC0) == 0x80)
			len--; /* not inside a UTF-8 sequence */
	}
	memcpy(detail, error, len);
	detail[len] = '\0';
	job_end(job, job->revoked ? RUNNER_KILLED : RUNNER_HANDLER_ERROR, NULL, 0, detail, !retry);
}

static void frame_cancelled(struct warm_job *job)
{
	if (job->revoked)
		job_end(job, RUNNER_KILLED, NULL, 0, NULL, false);
	else if (job->cancelled)
		job_end(job, RUNNER_TIMEOUT, NULL, 0, NULL, false);
	else
		job_end(job, RUNNER_HANDLER_ERROR, NULL, 0, "the handler cancelled the job without being asked", false);
}

static void frame_ready(struct hproc *p)
{
	struct warm_pool *pool = p->pool;
	if (p->state != HANDLER_STARTING) {
		proc_violation(p, "a second ready frame");
		return;
	}
	ev_timer_stop(pool->loop, &p->timer);
	p->state = HANDLER_READY;
	log_info("handler process %d: ready", (int)p->pid);
	pool_publish(pool);
	if (pool->spawn_error[0] != '\0') {
		pool->spawn_error[0] = '\0';
		pool_update_health(pool);
	}
	if (pool->cb.room != NULL)
		pool->cb.room(pool->cb.arg);
}

static void frame_dispatch(struct hproc *p, const struct frame *f)
{
	char why[160];
	if (f->type == FRAME_READY) {
		frame_ready(p);
		return;
	}
	if (p->state == HANDLER_STARTING) {
		proc_violation(p, "a frame about a job before ready");
		return;
	}
	struct warm_job *job = job_find(p, f->id);
	if (job == NULL) {
		snprintf(why, sizeof(why), "a frame for an id it does not hold: \"%.80s\"", f->id);
		proc_violation(p, why);
		return;
	}
	switch (f->type) {
	case FRAME_PROGRESS:
		if (p->pool->cb.progress != NULL && f->progress >= 0)
			p->pool->cb.progress(job->arg, f->progress, f->message);
		break;
	case FRAME_RESULT:
		frame_result(p, job, f->result);
		break;
	case FRAME_ERROR:
		frame_error(job, f->error, f->retry);
		break;
	default:
		frame_cancelled(job);
		break;
	}
}

static void proc_lines(struct hproc *p)
{
	char *line;
	size_t len;
	int rc;
	while (!p->killed && (rc = frame_reader_next(&p->reader, &line, &len)) != 0) {
		char why[200];
		struct frame f;
		if (rc < 0) {
			snprintf(why, sizeof(why), "a frame longer than %zu bytes", p->reader.limit);
			proc_violation(p, why);
			return;
		}
		if (frame_parse(line, len, &f, why, sizeof(why)) < 0) {
			proc_violation(p, why);
			return;
		}
		frame_dispatch(p, &f);
		frame_clear(&f);
	}
}

/* Reads stdout (at most max_reads chunks); false at EOF or error. */
static bool proc_read_stdout(struct hproc *p, int max_reads)
{
	for (int reads = 0; p->out_fd >= 0 && reads < max_reads && !p->killed; reads++) {
		char *dst;
		size_t room = frame_reader_space(&p->reader, &dst);
		if (room == 0) {
			proc_kill(p, SIGKILL, "drover ran out of memory for its stdout");
			return false;
		}
		ssize_t n = read_some(p->out_fd, dst, room);
		if (n < 0 && errno == EAGAIN)
			return true;
		if (n <= 0)
			return false;
		frame_reader_commit(&p->reader, (size_t)n);
		proc_lines(p);
	}
	return true;
}

static void stdout_closed_cb(struct ev_loop *loop, ev_timer *timer, int revents)
{
	struct hproc *p = timer->data;
	if (!p->killed && !p->reaped && !proc_exited(p))
		proc_kill(p, SIGKILL, "closed its stdout");
}

static void out_cb(struct ev_loop *loop, ev_io *io, int revents)
{
	struct hproc *p = io->data;
	if (proc_read_stdout(p, READS_PER_WAKEUP) || p->out_fd < 0)
		return;
	close_fd(p, &p->out_fd, &p->out_io);
	if (p->killed || p->reaped || proc_exited(p) || p->stdin_closed)
		return; /* its end is known, or awaited already (exit_wait_cb) */
	/*
	 * The kernel closes an exiting process's files before it becomes a
	 * zombie, so its exit may not show yet: wait a moment for the real exit
	 * status before ending it as one that closed its stdout and can answer
	 * nothing more.
	 */
	ev_timer_stop(p->pool->loop, &p->timer);
	ev_timer_init(&p->timer, stdout_closed_cb, EOF_EXIT_WAIT_S, 0);
	p->timer.data = p;
	ev_timer_start(p->pool->loop, &p->timer);
}

/* ---- stderr ------------------------------------------------------------- */

static void stderr_emit(struct hproc *p, bool cut)
{
	p->err_line[p->err_len] = '\0';
	if (p->job_count == 1) {
		const struct warm_job *job = LIST_FIRST(&p->jobs);
		struct log_fields fields = { .job_id = job->id, .handler_pid = p->pid };
		log_job(LOG_LEVEL_INFO, &fields, "handler process %d: %s%s", (int)p->pid, p->err_line, cut ? " [...]" : "");
	} else
		log_info("handler process %d: %s%s", (int)p->pid, p->err_line, cut ? " [...]" : "");
	p->err_len = 0;
}

static void stderr_feed(struct hproc *p, const char *data, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (data[i] == '\n') {
			if (!p->err_cut)
				stderr_emit(p, false);
			p->err_cut = false;
			p->err_len = 0;
		} else if (!p->err_cut) {
			if (p->err_len == STDERR_LINE_MAX) {
				stderr_emit(p, true);
				p->err_cut = true;
			} else {
				p->err_line[p->err_len++] = data[i];
			}
		}
	}
}

static void proc_read_stderr(struct hproc *p, int max_reads)
{
	char chunk[4096];
	for (int reads = 0; p->err_fd >= 0 && reads < max_reads; reads++) {
		ssize_t n = read_some(p->err_fd, chunk, sizeof(chunk));
		if (n < 0 && errno == EAGAIN)
			return;
		if (n <= 0) {
			if (p->err_len > 0 && !p->err_cut)
				stderr_emit(p, false);
			close_fd(p, &p->err_fd, &p->err_io);
			return;
		}
		stderr_feed(p, chunk, (size_t)n);
	}
}

static void err_cb(struct ev_loop *loop, ev_io *io, int revents)
{
	proc_read_stderr(io->data, READS_PER_WAKEUP);
}

/* ---- starting ----------------------------------------------------------- */

static void start_timeout_cb(struct ev_loop *loop, ev_timer *timer, int revents)
{
	struct hproc *p = timer->data;
	proc_kill(p, SIGKILL, "did not say ready within %lld ms", p->pool->set.start_timeout_ms);
}

static void restart_cb(struct ev_loop *loop, ev_timer *timer, int revents)
{
	struct place *pl = timer->data;
	if (!pl->pool->stopping && pl->proc == NULL)
		proc_spawn(pl);
}

static void place_restart_later(struct place *pl)
{
	struct warm_pool *pool = pl->pool;
	double delay = BACKOFF_FIRST_S;
	for (int i = 1; i < pool->crashes && delay < BACKOFF_MAX_S; i++)
		delay *= 2;
	if (delay > BACKOFF_MAX_S)
		delay = BACKOFF_MAX_S;
	ev_timer_stop(pool->loop, &pl->restart);
	ev_timer_set(&pl->restart, delay, 0);
	ev_timer_start(pool->loop, &pl->restart);
	log_info("handler place %d: next process in %.0f s", pl->index, delay);
}

/* Parent ends non-blocking; the child's stdin is read, its stdout and stderr written. */
static int make_pipes(int parent[3], int child[3])
{
	for (int s = 0; s < 3; s++) {
		int fds[2];
		if (pipe2(fds, O_CLOEXEC) < 0)
			return -1;
		parent[s] = s == 0 ? fds[1] : fds[0];
		child[s] = s == 0 ? fds[0] : fds[1];
		if (fd_set_nonblock(parent[s]) < 0)
			return -1;
	}
	return 0;
}

static void close_all(int *fds, int n)
{
	for (int i = 0; i < n; i++) {
		if (fds[i] >= 0)
			close(fds[i]);
		fds[i] = -1;
	}
}

/* The process's own cgroups (v2, v1 memory), named after its token as an attempt's are; NULL where none. */
static void proc_cgroups_create(struct hproc *p, const struct warm_pool *pool)
{
	struct attempt_token token = pool->set.token;
	char var[96];
	token.attempt = p->token;
	if (attempt_token_format(var, sizeof(var), &token) < 0)
		return;
	const char *name = var + sizeof(ATTEMPT_TOKEN_VAR); /* past "DROVER_ATTEMPT_TOKEN=" */
	p->cgroup = cgroup_attempt_create(name, &pool->set.cgroup_limits);
	p->memcg = memcg_attempt_create(name, pool->set.cgroup_limits.memory_max);
}

/*
 * Ends the process's cgroups: what is left in them is killed (cgroup.kill: a
 * descendant that left its group too) and they are removed. Whether the OOM
 * killer acted in them (sigkilled: it died of SIGKILL, which v1 before 4.13
 * needs to tell); the peak goes to the log, since the jobs it held shared it.
 */
static bool proc_cgroups_end(struct hproc *p, bool sigkilled)
{
	bool v2_oom = false;
	struct memcg_outcome v1;
	long long peak = cgroup_attempt_end(p->cgroup, &v2_oom);
	memcg_attempt_end(p->memcg, sigkilled, &v1);
	p->cgroup = NULL;
	p->memcg = NULL;
	if (!v2_oom && !v1.oom_killed)
		return false;
	log_warnx("handler process %d: the OOM killer acted in its cgroup (memory_max = %lld bytes; process peak %lld "
	          "bytes)",
	          (int)p->pid, p->pool->set.cgroup_limits.memory_max, peak >= 0 ? peak : v1.peak_bytes);
	return true;
}

static pid_t spawn_with_env(struct warm_pool *pool, const int child[3], struct hproc *p)
{
	char **env = pool->cb.env(pool->cb.arg, &p->token);
	if (env == NULL) {
		errno = ENOMEM;
		return -1;
	}
	proc_cgroups_create(p, pool);
	pid_t pid = runner_spawn(pool->set.argv, env, pool->set.working_dir, child, 3, &pool->set.limits,
	                         cgroup_attempt_procs_fd(p->cgroup), memcg_procs_fd(p->memcg));
	int saved = errno;
	pool->cb.env_free(pool->cb.arg, env);
	if (pid < 0)
		(void)proc_cgroups_end(p, false);
	errno = saved;
	return pid;
}

static void proc_watch(struct hproc *p)
{
	struct ev_loop *loop = p->pool->loop;
	ev_io_init(&p->in_io, in_cb, p->in_fd, EV_WRITE);
	ev_io_init(&p->out_io, out_cb, p->out_fd, EV_READ);
	ev_io_init(&p->err_io, err_cb, p->err_fd, EV_READ);
	p->in_io.data = p->out_io.data = p->err_io.data = p;
	ev_io_start(loop, &p->out_io);
	ev_io_start(loop, &p->err_io);
	ev_timer_init(&p->timer, start_timeout_cb, ms_to_s(p->pool->set.start_timeout_ms), 0);
	p->timer.data = p;
	ev_now_update(loop);
	ev_timer_start(loop, &p->timer);
}

static void spawn_failed(struct place *pl, int err)
{
	struct warm_pool *pool = pl->pool;
	snprintf(pool->spawn_error, sizeof(pool->spawn_error), "%s", strerror(err));
	log_error("handler %s cannot be started: %s", handler_name(pool), strerror(err));
	pool->crashes++;
	pool_update_health(pool);
	place_restart_later(pl);
}

static void proc_spawn(struct place *pl)
{
	struct warm_pool *pool = pl->pool;
	int parent[3] = { -1, -1, -1 }, child[3] = { -1, -1, -1 };
	struct hproc *p = calloc(1, sizeof(*p));
	if (p == NULL || make_pipes(parent, child) < 0) {
		int err = errno;
		close_all(parent, 3);
		close_all(child, 3);
		free(p);
		spawn_failed(pl, err);
		return;
	}
	p->pid = spawn_with_env(pool, child, p);
	int err = errno;
	close_all(child, 3);
	if (p->pid < 0) {
		close_all(parent, 3);
		free(p);
		spawn_failed(pl, err);
		return;
	}
	p->pool = pool;
	p->place = pl->index;
	p->state = HANDLER_STARTING;
	p->in_fd = parent[0];
	p->out_fd = parent[1];
	p->err_fd = parent[2];
	p->limit = pool_limit(pool);
	frame_reader_init(&p->reader, pool->set.max_result_bytes + FRAME_OVERHEAD_BYTES);
	LIST_INIT(&p->jobs);
	LIST_INSERT_HEAD(&pool->procs, p, link);
	pool->live++;
	pl->proc = p;
	proc_watch(p);
	log_info("handler process %d: started for place %d", (int)p->pid, pl->index);
	pool_publish(pool);
}

/* ---- the end of a process ---------------------------------------------- */

static void proc_unlink(struct hproc *p)
{
	struct warm_pool *pool = p->pool;
	LIST_REMOVE(p, link);
	pool->live--;
	if (p->place >= 0 && pool->places[p->place].proc == p)
		pool->places[p->place].proc = NULL;
}

static void proc_free(struct hproc *p)
{
	struct ev_loop *loop = p->pool->loop;
	ev_timer_stop(loop, &p->timer);
	close_fd(p, &p->in_fd, &p->in_io);
	close_fd(p, &p->out_fd, &p->out_io);
	close_fd(p, &p->err_fd, &p->err_io);
	frame_reader_free(&p->reader);
	free(p->outq);
	free(p);
}

/* Every job it still held ends: given back, timed out, or lost with the reason. */
static void proc_end_jobs(struct hproc *p, const char *how)
{
	char detail[360];
	snprintf(detail, sizeof(detail), "handler process %d %.280s while holding the job", (int)p->pid, how);
	struct warm_job *job;
	while ((job = proc_pop_job(p)) != NULL) {
		if (p->release_jobs || job->revoked)
			job_finish(p, job, RUNNER_KILLED, NULL, 0, NULL, false);
		else if (job->cancelled)
			job_finish(p, job, RUNNER_TIMEOUT, NULL, 0, NULL, false);
		else
			job_finish(p, job, RUNNER_HANDLER_LOST, NULL, 0, detail, false);
	}
}

/* An end drover did not ask for, of a process still serving its place: restarted with back-off. */
static void proc_after_end(struct warm_pool *pool, int place, bool abnormal, const char *how)
{
	if (place < 0 || pool->stopping)
		return;
	if (abnormal) {
		pool->crashes++;
		snprintf(pool->last_end, sizeof(pool->last_end), "%.150s", how);
		pool_update_health(pool);
		count(pool, &pool->board->counters.handler_restarts);
		place_restart_later(&pool->places[place]);
	} else {
		proc_spawn(&pool->places[place]);
	}
}

bool warm_pool_child_exited(struct warm_pool *pool, pid_t pid, int wait_status)
{
	struct hproc *p = LIST_FIRST(&pool->procs);
	while (p != NULL && p->pid != pid)
		p = LIST_NEXT(p, link);
	if (p == NULL)
		return false;
	signal_group(p, SIGKILL); /* what is left of its group: nothing of it outlives it */
	/* ... nor of its cgroup (what left the group); and whether the OOM killer ended it. */
	p->oom_killed = proc_cgroups_end(p, WIFSIGNALED(wait_status) && WTERMSIG(wait_status) == SIGKILL);
	p->reaped = true;
	if (!p->killed)
		proc_read_stdout(p, INT32_MAX); /* answers written just before it exited still count */
	proc_read_stderr(p, INT32_MAX);

	char status[64], how[sizeof(p->why) + 80];
	describe_wait_status(wait_status, status, sizeof(status));
	if (p->why[0] != '\0')
		snprintf(how, sizeof(how), "was killed by drover (%s)", p->why);
	else if (p->oom_killed)
		snprintf(how, sizeof(how), "was killed by the OOM killer over memory_max (%s)", status);
	else
		snprintf(how, sizeof(how), "ended (%s)", status);
	bool asked = p->stdin_closed && WIFEXITED(wait_status) && WEXITSTATUS(wait_status) == 0;
	bool abnormal = p->place >= 0 && !asked;
	if (abnormal && !pool->stopping)
		log_warnx("handler process %d %s holding %d job(s)", (int)pid, how, p->job_count);
	else
		log_info("handler process %d %s", (int)pid, how);

	int place = p->place;
	proc_unlink(p);
	p->state = HANDLER_STOPPING;
	pool_publish(pool);
	proc_end_jobs(p, how);
	proc_free(p);
	proc_after_end(pool, place, abnormal, how);
	if (pool->stopping && pool->live == 0 && pool->cb.stopped != NULL)
		pool->cb.stopped(pool->cb.arg);
	return true;
}

/* ---- the interface ------------------------------------------------------ */

struct warm_pool *warm_pool_new(struct ev_loop *loop, const struct warm_settings *settings,
                                const struct warm_callbacks *cb, struct scoreboard_slot *board)
{
	struct warm_pool *pool = calloc(1, sizeof(*pool));
	if (pool == NULL)
		return NULL;
	pool->places = calloc((size_t)settings->processes, sizeof(*pool->places));
	if (pool->places == NULL) {
		free(pool);
		return NULL;
	}
	pool->loop = loop;
	pool->set = *settings;
	pool->cb = *cb;
	pool->board = board;
	pool->rng = (unsigned)getpid() ^ (unsigned)now_ms();
	LIST_INIT(&pool->procs);
	for (int i = 0; i < settings->processes; i++) {
		struct place *pl = &pool->places[i];
		pl->pool = pool;
		pl->index = i;
		ev_timer_init(&pl->restart, restart_cb, 0, 0);
		pl->restart.data = pl;
	}
	for (int i = 0; i < settings->processes; i++)
		proc_spawn(&pool->places[i]);
	return pool;
}

void warm_pool_free(struct warm_pool *pool)
{
	if (pool == NULL)
		return;
	struct hproc *p;
	while ((p = LIST_FIRST(&pool->procs)) != NULL) {
		LIST_REMOVE(p, link);
		signal_group(p, SIGKILL);
		(void)proc_cgroups_end(p, false);
		struct warm_job *job;
		while ((job = proc_pop_job(p)) != NULL) {
			ev_timer_stop(pool->loop, &job->timer);
			free(job->id);
			free(job);
		}
		proc_free(p);
	}
	for (int i = 0; i < pool->set.processes; i++)
		ev_timer_stop(pool->loop, &pool->places[i].restart);
	free(pool->places);
	free(pool);
}

static bool proc_takes_jobs(const struct hproc *p)
{
	return p != NULL && p->state == HANDLER_READY && !p->killed && !p->stdin_closed && !p->reaped &&
	       p->in_fd >= 0;
}

int warm_pool_room(const struct warm_pool *pool)
{
	int room = 0;
	if (pool->stopping)
		return 0;
	for (int i = 0; i < pool->set.processes; i++) {
		const struct hproc *p = pool->places[i].proc;
		if (proc_takes_jobs(p) && p->job_count < pool->set.concurrency)
			room += pool->set.concurrency - p->job_count;
	}
	return room;
}

static struct hproc *pool_pick(struct warm_pool *pool)
{
	struct hproc *best = NULL;
	for (int i = 0; i < pool->set.processes; i++) {
		struct hproc *p = pool->places[i].proc;
		if (proc_takes_jobs(p) && p->job_count < pool->set.concurrency &&
		    (best == NULL || p->job_count < best->job_count))
			best = p;
	}
	return best;
}

static struct warm_job *job_new(struct hproc *p, const char *id, void *job_arg)
{
	struct warm_job *job = calloc(1, sizeof(*job));
	if (job == NULL || (job->id = strdup(id)) == NULL) {
		free(job);
		return NULL;
	}
	job->proc = p;
	job->arg = job_arg;
	LIST_INSERT_HEAD(&p->jobs, job, link);
	p->job_count++;
	return job;
}

struct warm_job *warm_pool_submit(struct warm_pool *pool, const char *id, int attempt, const char *job_text,
                                  size_t job_len, void *job_arg)
{
	struct hproc *p = pool->stopping ? NULL : pool_pick(pool);
	if (p == NULL)
		return NULL;
	size_t len;
	ev_now_update(pool->loop);
	char *frame = frame_job(id, attempt, pool->set.timeout_ms, wall_ms() + pool->set.timeout_ms, job_text,
	                        job_len, &len);
	struct warm_job *job = frame != NULL ? job_new(p, id, job_arg) : NULL;
	if (job == NULL || proc_send(p, frame, len) < 0) {
		if (job != NULL) {
			job_unlink(job);
			free(job->id);
			free(job);
		}
		free(frame);
		return NULL;
	}
	free(frame);
	job->started_ms = now_ms();
	ev_timer_init(&job->timer, job_timeout_cb, ms_to_s(pool->set.timeout_ms), 0);
	job->timer.data = job;
	ev_timer_start(pool->loop, &job->timer);
	p->sent++;
	if (p->limit > 0 && p->sent >= p->limit)
		proc_retire(p, "handler_max_jobs");
	return job;
}

bool warm_pool_owns_pid(const struct warm_pool *pool, pid_t pid)
{
	for (const struct hproc *p = LIST_FIRST(&pool->procs); p != NULL; p = LIST_NEXT(p, link)) {
		if (p->pid == pid)
			return true;
	}
	return false;
}

bool warm_pool_token_live(const struct warm_pool *pool, unsigned long long serial)
{
	for (const struct hproc *p = LIST_FIRST(&pool->procs); p != NULL; p = LIST_NEXT(p, link)) {
		if (p->token == serial)
			return true;
	}
	return false;
}

/* Resident kB of pid and its descendants (each thread's children), at most *budget processes. */
static long long tree_rss_kb(pid_t pid, int *budget)
{
	char path[64], buf[4096];
	long long pages = 0, total = 0;
	if (--*budget < 0)
		return 0;
	snprintf(path, sizeof(path), "/proc/%d/statm", (int)pid);
	FILE *f = fopen(path, "re");
	if (f == NULL)
		return 0;
	if (fscanf(f, "%*s %lld", &pages) == 1)
		total = pages * (sysconf(_SC_PAGESIZE) / 1024);
	fclose(f);
	snprintf(path, sizeof(path), "/proc/%d/task/%d/children", (int)pid, (int)pid);
	f = fopen(path, "re");
	if (f == NULL)
		return total;
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	for (char *tok = strtok(buf, " \n"); tok != NULL; tok = strtok(NULL, " \n"))
		total += tree_rss_kb((pid_t)atoi(tok), budget);
	return total;
}

void warm_pool_tick(struct warm_pool *pool)
{
	if (pool->set.max_rss_mb <= 0 || pool->stopping)
		return;
	for (int i = 0; i < pool->set.processes; i++) {
		struct hproc *p = pool->places[i].proc;
		if (p == NULL || p->state != HANDLER_READY || p->killed)
			continue;
		int budget = RSS_TREE_MAX_PROCS;
		long long kb = tree_rss_kb(p->pid, &budget);
		if (kb > (long long)pool->set.max_rss_mb * 1024) {
			char why[96];
			snprintf(why, sizeof(why), "RSS %lld MB above handler_max_rss_mb %d", kb / 1024, pool->set.max_rss_mb);
			proc_retire(p, why);
		}
	}
}

void warm_pool_stop(struct warm_pool *pool, bool now)
{
	if (pool->stopping && !now)
		return;
	pool->stopping = true;
	for (int i = 0; i < pool->set.processes; i++)
		ev_timer_stop(pool->loop, &pool->places[i].restart);
	for (struct hproc *p = LIST_FIRST(&pool->procs), *next; p != NULL; p = next) {
		next = LIST_NEXT(p, link);
		if (now) {
			p->release_jobs = true;
			proc_kill(p, SIGKILL, "the worker stops now");
		} else if (p->state == HANDLER_STARTING) {
			proc_kill(p, SIGKILL, "the worker stopped before it was ready");
		} else if (p->job_count == 0) {
			proc_close_stdin(p);
		}
	}
	if (pool->live == 0 && pool->cb.stopped != NULL)
		pool->cb.stopped(pool->cb.arg);
}

size_t warm_pool_live(const struct warm_pool *pool)
{
	return pool->live;
}
