/*
 * worker: the job loop of one worker process (see worker.h).
 *
 * A "task" is one job this worker holds, from take() to finish()/release():
 * either a handler runs for it (a runner's process in exec mode, a job in a
 * persistent handler process of warm.h otherwise), it waits out its retry
 * delay, or (persistent mode) it waits for a process with room. Both modes
 * end an attempt in task_attempt_ended, so a job's life is one code path. Tasks count
 * against max_concurrent either way, so a worker never holds more jobs than
 * it may run. Signals arrive through a signalfd on the worker's own loop, so
 * nothing is done in a signal handler and the supervisor's inherited libev
 * state is never touched again.
 */
#include "worker/worker.h"
#include "queue/events.h"
#include "shared/log.h"
#include "shared/proctitle.h"
#include "shared/orphans.h"
#include "worker/cgroup.h"
#include "worker/memcg.h"
#include "worker/runner.h"
#include "worker/frame.h"
#include "worker/warm.h"
#include "queue/source.h"
#include "shared/util.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/queue.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <sysexits.h>
#include <unistd.h>

extern char **environ;

#define HEARTBEAT_INTERVAL_S 1.0
#define FAULT_RETRY_FIRST_S 1.0
#define FAULT_RETRY_MAX_S 30.0
#define PROGRESS_EVENT_INTERVAL_MS 1000

struct task {
	struct worker *worker;
	struct job *job;
	int attempt;
	int board_index;
	struct run *run;         /* exec mode: the attempt's handler */
	struct warm_job *warm;   /* persistent mode: the attempt in a handler process */
	bool awaiting_handler;   /* persistent mode: due to run, no handler process has room yet */
	struct job_cgroup *cgroup; /* the running attempt's, when drover has a delegated cgroup */
	struct memcg *memcg;       /* the running attempt's v1 memory cgroup (memory_max without v2's) */
	unsigned long long token_attempt; /* the running (or last) attempt's serial in its token */
	ev_timer retry_timer;
	ev_timer slow_timer; /* slow_job_ms: fires once per attempt that runs that long */
	long long last_progress_event_ms;
	bool cancelled;   /* droverctl cancel: the run is being stopped; the job fails with reason cancelled */
	LIST_ENTRY(task) link;
};

enum drain_mode { RUNNING, DRAIN_GRACEFUL, DRAIN_FAST };

struct worker {
	const struct config *cfg;
	int slot;
	struct scoreboard_slot *board;
	struct ev_loop *loop;
	const struct source_ops *ops;
	struct source *source;
	struct event_origin origin;
	char host[256];
	char **base_env;     /* environ minus secrets, plus env.* */
	size_t base_env_count;
	LIST_HEAD(task_list, task) tasks;
	int task_count;
	bool source_paused;
	bool intake_paused;  /* droverctl pause, as last read from the scoreboard's requests */
	uint64_t requests_seen; /* the newest scoreboard request already acted on */
	enum drain_mode drain;
	bool fault;          /* the handler could not be started: take nothing until the retry */
	double fault_delay_s;
	ev_io signal_watcher;
	ev_io parent_watcher;
	ev_timer heartbeat_timer;
	ev_timer fault_timer;
	ev_timer orphan_timer;  /* bounds the drain once no supervisor is left to bound it */
	int signal_fd;
	struct children *children;   /* our own children, to find orphans of ended attempts */
	struct attempt_token token;  /* supervisor and worker parts; .attempt counts attempts started */
	long long full_since_ms;     /* monotonic: since when every job slot is taken, 0 = not full */
	struct warm_pool *warm;      /* persistent mode's handler processes, else NULL */
	int awaiting;                /* tasks with awaiting_handler */
	bool ready_published;
};

static void worker_fill(struct worker *w);
static void worker_maybe_exit(struct worker *w);
static void worker_note_capacity(struct worker *w);
static void task_begin_attempt(struct task *t);
static void task_attempt_ended(struct task *t, const struct runner_result *result);

static bool task_running(const struct task *t)
{
	return t->run != NULL || t->warm != NULL;
}

/* ---- environment of handlers ------------------------------------------ */

static char *expand_slot(const char *value, int slot)
{
	char num[16];
	size_t len = strlen(value), cap = len + 1;
	snprintf(num, sizeof(num), "%d", slot);
	for (const char *p = strstr(value, "{slot}"); p != NULL; p = strstr(p + 6, "{slot}"))
		cap += strlen(num);
	char *out = malloc(cap);
	if (out == NULL)
		return NULL;
	size_t n = 0;
	for (const char *p = value; *p != '\0';) {
		if (strncmp(p, "{slot}", 6) == 0) {
			memcpy(out + n, num, strlen(num));
			n += strlen(num);
			p += 6;
		} else {
			out[n++] = *p++;
		}
	}
	out[n] = '\0';
	return out;
}

static bool env_name_is(const char *entry, const char *name)
{
	size_t len = strlen(name);
	return strncmp(entry, name, len) == 0 && entry[len] == '=';
}

static bool env_is_hidden(const struct config *cfg, const char *entry)
{
	char name[256];
	const char *eq = strchr(entry, '=');
	size_t len = eq != NULL ? (size_t)(eq - entry) : strlen(entry);
	if (len >= sizeof(name))
		len = sizeof(name) - 1;
	memcpy(name, entry, len);
	name[len] = '\0';
	if (config_env_is_secret(name) || strcmp(name, "NOTIFY_SOCKET") == 0)
		return true;
	for (size_t i = 0; i < cfg->handler_env_count; i++)
		if (strcmp(cfg->handler_env[i].key, name) == 0)
			return true; /* replaced by env.NAME */
	return false;
}

static int worker_build_base_env(struct worker *w)
{
	size_t n = 0;
	for (char **e = environ; *e != NULL; e++)
		n++;
	w->base_env = calloc(n + w->cfg->handler_env_count + 1, sizeof(char *));
	if (w->base_env == NULL)
		return -1;
	/* base_env_count follows every string stored, so worker_teardown frees a partial vector too. */
	for (char **e = environ; *e != NULL; e++) {
		if (env_is_hidden(w->cfg, *e))
			continue;
		if ((w->base_env[w->base_env_count] = strdup(*e)) == NULL)
			return -1;
		w->base_env_count++;
	}
	for (size_t i = 0; i < w->cfg->handler_env_count; i++) {
		char *value = expand_slot(w->cfg->handler_env[i].value, w->slot);
		char *entry = NULL;
		if (value == NULL || asprintf(&entry, "%s=%s", w->cfg->handler_env[i].key, value) < 0) {
			free(value);
			return -1;
		}
		free(value);
		w->base_env[w->base_env_count++] = entry;
	}
	return 0;
}

/* Set by drover for each handler: never inherited from the worker's own environment. */
static const char *const own_env_names[] = {
	"DROVER_JOB_ID", "DROVER_ATTEMPT", "DROVER_WORKER", "DROVER_TIMEOUT_MS", "DROVER_DEADLINE_MS", ATTEMPT_TOKEN_VAR,
	"DROVER_HANDLER_MODE", "DROVER_PROTOCOL", "DROVER_HANDLER_CONCURRENCY",
};
#define OWN_ENV_MAX 6

static void env_abandon(char **env, size_t first_own, size_t n)
{
	for (size_t i = first_own; i < n; i++)
		free(env[i]);
	free(env);
}

/*
 * A vector of base_env (without drover's own names) and the attempt token of
 * attempt, with room for OWN_ENV_MAX entries in all; *n its length, and
 * *first_own where drover's own (malloc'd) entries start. NULL on failure.
 */
static char **env_start(const struct worker *w, unsigned long long attempt, size_t *n, size_t *first_own)
{
	char **env = calloc(w->base_env_count + OWN_ENV_MAX + 1, sizeof(char *));
	if (env == NULL)
		return NULL;
	*n = 0;
	for (size_t i = 0; i < w->base_env_count; i++) {
		bool shadowed = false;
		for (size_t k = 0; k < ARRAY_LEN(own_env_names); k++)
			shadowed = shadowed || env_name_is(w->base_env[i], own_env_names[k]);
		if (!shadowed)
			env[(*n)++] = w->base_env[i];
	}
	*first_own = *n;
	struct attempt_token token = w->token;
	char token_entry[128];
	token.attempt = attempt;
	if (attempt_token_format(token_entry, sizeof(token_entry), &token) < 0 ||
	    (env[*n] = strdup(token_entry)) == NULL) {
		env_abandon(env, *first_own, *n);
		return NULL;
	}
	(*n)++;
	return env;
}

/* base_env plus the six DROVER_* job variables; free with task_env_free. */
static char **task_env(const struct task *t)
{
	const struct worker *w = t->worker;
	size_t n, first_own;
	char **env = env_start(w, t->token_attempt, &n, &first_own);
	if (env == NULL)
		return NULL;
	int ok = asprintf(&env[n++], "DROVER_JOB_ID=%s", t->job->id) >= 0 &&
	         asprintf(&env[n++], "DROVER_ATTEMPT=%d", t->attempt) >= 0 &&
	         asprintf(&env[n++], "DROVER_WORKER=%d", w->slot) >= 0 &&
	         asprintf(&env[n++], "DROVER_TIMEOUT_MS=%lld", w->cfg->timeout_ms) >= 0 &&
	         asprintf(&env[n++], "DROVER_DEADLINE_MS=%lld", wall_ms() + w->cfg->timeout_ms) >= 0;
	if (!ok) {
		env_abandon(env, first_own, n);
		return NULL;
	}
	env[n] = NULL;
	return env;
}

/*
 * A persistent handler process's environment: base_env, no per-job variable,
 * the protocol's variables and its own attempt token (its serial counts among
 * the attempts', so the orphan sweep tells its descendants apart).
 */
static char **process_env(void *arg, unsigned long long *token_serial)
{
	struct worker *w = arg;
	size_t n, first_own;
	*token_serial = ++w->token.attempt;
	char **env = env_start(w, *token_serial, &n, &first_own);
	if (env == NULL)
		return NULL;
	int ok = (env[n++] = strdup("DROVER_HANDLER_MODE=persistent")) != NULL &&
	         asprintf(&env[n++], "DROVER_PROTOCOL=%d", FRAME_PROTOCOL_VERSION) >= 0 &&
	         asprintf(&env[n++], "DROVER_HANDLER_CONCURRENCY=%d", w->cfg->handler_concurrency) >= 0 &&
	         asprintf(&env[n++], "DROVER_WORKER=%d", w->slot) >= 0;
	if (!ok) {
		env_abandon(env, first_own, n);
		return NULL;
	}
	env[n] = NULL;
	return env;
}

static void task_env_free(const struct worker *w, char **env)
{
	if (env == NULL)
		return;
	for (char **e = env; *e != NULL; e++) {
		bool borrowed = false;
		for (size_t i = 0; i < w->base_env_count && !borrowed; i++)
			borrowed = *e == w->base_env[i];
		if (!borrowed)
			free(*e);
	}
	free(env);
}

/* ---- tasks -------------------------------------------------------------- */

/* Tells the source a state of t's job; the other fields of status are filled by the caller. */
static void worker_publish_status(struct worker *w, struct task *t, struct job_status status)
{
	status.attempt = t->attempt;
	status.ts_ms = wall_ms();
	w->ops->status(w->source, t->job, &status);
}

static struct task *task_new(struct worker *w, struct job *job)
{
	struct task *t = calloc(1, sizeof(*t));
	if (t == NULL)
		return NULL;
	t->worker = w;
	t->job = job;
	t->attempt = job->attempts_done;
	t->board_index = -1;
	LIST_INSERT_HEAD(&w->tasks, t, link);
	w->task_count++;
	return t;
}

/* Forgets the task; the job itself now belongs to the source (finish/release). */
static void task_free(struct task *t)
{
	struct worker *w = t->worker;
	ev_timer_stop(w->loop, &t->retry_timer);
	ev_timer_stop(w->loop, &t->slow_timer);
	if (t->awaiting_handler)
		w->awaiting--;
	if (t->board_index >= 0)
		scoreboard_job_remove(w->board, t->board_index);
	LIST_REMOVE(t, link);
	w->task_count--;
	free(t);
	worker_note_capacity(w);
}

static void counters_update(struct worker *w, void (*apply)(struct scoreboard_counters *, double), double arg)
{
	scoreboard_write_begin(w->board);
	apply(&w->board->counters, arg);
	scoreboard_write_end(w->board);
}

static void count_started(struct scoreboard_counters *c, double unused) { c->started++; }
static void count_retried(struct scoreboard_counters *c, double unused) { c->retried++; }
static void count_failed(struct scoreboard_counters *c, double unused) { c->failed++; }
static void count_timed_out(struct scoreboard_counters *c, double unused) { c->timed_out++; }
static void count_slow(struct scoreboard_counters *c, double unused) { c->slow++; }
static void count_at_capacity(struct scoreboard_counters *c, double ms) { c->at_capacity_ms += (uint64_t)ms; }
static void count_completed(struct scoreboard_counters *c, double seconds)
{
	c->completed++;
	scoreboard_record_duration(c, seconds);
}

/* What the lines about a task carry as fields (see log.h). */
static struct log_fields task_fields(const struct task *t, pid_t handler_pid)
{
	return (struct log_fields){ .job_id = t->job->id, .attempt = t->attempt, .handler_pid = handler_pid };
}

static void task_release(struct task *t)
{
	struct worker *w = t->worker;
	struct log_fields fields = task_fields(t, 0);
	log_job(LOG_LEVEL_INFO, &fields, "given back to the queue after attempt %d", t->attempt);
	w->ops->release(w->source, t->job);
	task_free(t);
}

static void task_fail(struct task *t, const struct failure *failure)
{
	struct worker *w = t->worker;
	char *doc = event_failed(&w->origin, t->job->id, failure, t->attempt, t->job->payload, t->job->payload_len,
	                         wall_ms());
	if (doc == NULL) {
		/* Cannot describe the outcome: keep the job in the queue rather than lose it. */
		struct log_fields fields = task_fields(t, 0);
		log_job(LOG_LEVEL_ERROR, &fields, "out of memory building the failed event; releasing it");
		task_release(t);
		return;
	}
	/* A warning: with log_level = warn an operator still sees every job that failed. log_job bounds the id
	 * (this is also the path of ids too long or too strange to log whole). */
	struct log_fields fields = task_fields(t, 0);
	log_job(LOG_LEVEL_WARN, &fields, "failed after %d attempt(s): %s (%s)", t->attempt, failure->reason,
	        failure->message != NULL ? failure->message : "");
	worker_publish_status(w, t, (struct job_status){ .state = JOB_FAILED, .message = failure->message,
	                                                 .reason = failure->reason });
	t->job->completed = false; /* counted when the outcome is durable: source_settled */
	t->job->failed_reason = failure->reason;
	t->job->attempts_run = t->attempt;
	w->ops->finish(w->source, t->job, false, doc, strlen(doc));
	free(doc);
	task_free(t);
}

/* droverctl cancel: the job fails for good with the attempts it ran; no retry. */
static void task_fail_cancelled(struct task *t)
{
	struct failure failure = { .reason = "cancelled", .exit_code = -1,
	                           .message = "cancelled by the operator (droverctl cancel)" };
	task_fail(t, &failure);
}

static void task_complete(struct task *t, const struct runner_result *result, long long peak_memory_bytes)
{
	struct worker *w = t->worker;
	char *doc = event_complete(&w->origin, t->job->id, result->output, result->output_len, t->attempt,
	                           result->duration_ms, wall_ms(), peak_memory_bytes);
	if (doc == NULL) {
		struct log_fields fields = task_fields(t, 0);
		log_job(LOG_LEVEL_ERROR, &fields, "out of memory building the complete event; releasing it");
		task_release(t);
		return;
	}
	struct log_fields fields = task_fields(t, result->pid);
	log_job(LOG_LEVEL_INFO, &fields, "completed in %lld ms (attempt %d)", result->duration_ms, t->attempt);
	worker_publish_status(w, t, (struct job_status){ .state = JOB_COMPLETED });
	t->job->completed = true; /* counted when the outcome is durable: source_settled */
	t->job->duration_s = (double)result->duration_ms / 1000.0;
	w->ops->finish(w->source, t->job, true, doc, strlen(doc));
	free(doc);
	task_free(t);
}

static void task_retry_cb(struct ev_loop *loop, ev_timer *timer, int revents)
{
	struct task *t = timer->data;
	task_begin_attempt(t);
}

static void describe_failure(const struct runner_result *r, struct failure *f, char *message, size_t len)
{
	memset(f, 0, sizeof(*f));
	f->exit_code = r->exit_code;
	f->signal = r->signal;
	f->stderr_tail = r->stderr_tail;
	f->stderr_len = r->stderr_len;
	f->message = message;
	switch (r->status) {
	case RUNNER_EXIT_CODE:
		f->reason = "exit_code";
		snprintf(message, len, "handler exited with status %d", r->exit_code);
		break;
	case RUNNER_SIGNAL:
		f->reason = "signal";
		/* By name too: SIGXCPU is rlimit_cpu, SIGKILL past it (or the OOM killer). */
		snprintf(message, len, "handler was killed by signal %d (SIG%s)", r->signal,
		         sigabbrev_np(r->signal) != NULL ? sigabbrev_np(r->signal) : "?");
		break;
	case RUNNER_TIMEOUT:
		f->reason = "timeout";
		snprintf(message, len, "handler ran longer than %lld ms", r->duration_ms);
		break;
	case RUNNER_RESULT_TOO_LARGE:
		f->reason = "result_too_large";
		snprintf(message, len, "handler printed more than the result limit");
		break;
	case RUNNER_HANDLER_ERROR:
		f->reason = "handler_error";
		f->message = r->detail; /* the handler's own text, bounded by warm.c */
		break;
	case RUNNER_HANDLER_LOST:
		f->reason = "handler_lost";
		snprintf(message, len, "%s", r->detail != NULL ? r->detail : "the handler process ended");
		break;
	default:
		f->reason = "internal";
		snprintf(message, len, "unexpected runner status %d", (int)r->status);
		break;
	}
}

/*
 * The OOM killer acted in the attempt's memory cgroup: the handler (or a
 * process of its tree, making it fail) went over memory_max. Retried like
 * any failure: the next attempt may need less (other input, a smaller batch).
 */
static void describe_memory_limit(const struct worker *w, long long peak, struct failure *f, char *message,
                                  size_t len)
{
	f->reason = "memory_limit";
	f->message = message;
	int n = snprintf(message, len, "handler went over memory_max (%lld bytes) and was killed by the OOM killer",
	                 w->cfg->memory_max);
	if (peak > 0 && n >= 0 && (size_t)n < len)
		snprintf(message + n, len - (size_t)n, "; peak %lld bytes", peak);
}

static bool retry_allowed(const struct worker *w, const struct task *t, const struct runner_result *r)
{
	if (t->attempt >= w->cfg->max_attempts)
		return false;
	if (r->status == RUNNER_EXIT_CODE && r->exit_code > 0 && r->exit_code < 256 &&
	    w->cfg->no_retry_exit[r->exit_code])
		return false;
	return !r->no_retry; /* an error frame with "retry": false */
}

static double retry_delay_s(const struct worker *w, int attempt)
{
	long long delay = w->cfg->retry_delay_ms;
	for (int i = 1; i < attempt && delay < 3600 * 1000LL; i++)
		delay *= 2;
	return (double)delay / 1000.0;
}

static bool attempt_running(const struct worker *w, unsigned long long serial)
{
	if (w->warm != NULL && warm_pool_token_live(w->warm, serial))
		return true; /* a persistent handler process: its token is its own */
	for (const struct task *t = LIST_FIRST(&w->tasks); t != NULL; t = LIST_NEXT(t, link)) {
		if (t->run != NULL && t->token_attempt == serial)
			return true;
	}
	return false;
}

/*
 * Kills those of our children that carry the token of an attempt of ours that
 * has ended: descendants of a handler that left its process group and were
 * orphaned to us (we are a child subreaper). Handlers are skipped without a
 * look; a child of a running attempt is left until that attempt ends; one
 * without our token is only reaped when it exits. Called when an attempt ends
 * and when a stranger is reaped (its own children have just come to us).
 */
static void worker_sweep_orphans(struct worker *w)
{
	const pid_t *pids;
	size_t count;
	cgroup_collect(); /* the cgroups of ended attempts, once their killed processes are gone */
	if (w->children == NULL)
		return;
	if (children_list(w->children, &pids, &count) < 0) {
		log_warn("worker %d: cannot list its child processes", w->slot);
		return;
	}
	for (size_t i = 0; i < count; i++) {
		struct attempt_token token;
		if (runner_find(pids[i]) != NULL || (w->warm != NULL && warm_pool_owns_pid(w->warm, pids[i])) ||
		    attempt_token_of(pids[i], &token) != 1)
			continue;
		if (token.supervisor != w->token.supervisor || token.worker != w->token.worker ||
		    attempt_running(w, token.attempt))
			continue;
		if (orphan_kill(pids[i]))
			log_info("worker %d: killed pid %d, left behind by ended attempt %llu outside its process group",
			         w->slot, (int)pids[i], token.attempt);
	}
}

static void task_run_done(struct run *run, const struct runner_result *result, void *arg)
{
	struct task *t = arg;
	t->run = NULL;
	/* The runner killed the job's group; this gets what left it (setsid and the like). */
	worker_sweep_orphans(t->worker);
	task_attempt_ended(t, result);
}

static void task_warm_done(void *arg, const struct runner_result *result)
{
	struct task *t = arg;
	t->warm = NULL;
	task_attempt_ended(t, result);
}

/* The attempt ended, in exec or persistent mode alike: the outcome, a retry, or the job goes back. */
static void task_attempt_ended(struct task *t, const struct runner_result *result)
{
	struct worker *w = t->worker;
	char message[256];
	struct failure failure;

	ev_timer_stop(w->loop, &t->slow_timer);
	/* Ends whatever of the attempt is left, wherever it went (setsid, a cleared environment). */
	bool v2_oom_killed;
	long long peak = cgroup_attempt_end(t->cgroup, &v2_oom_killed);
	t->cgroup = NULL;
	struct memcg_outcome memory;
	memcg_attempt_end(t->memcg, result->status == RUNNER_SIGNAL && result->signal == SIGKILL, &memory);
	t->memcg = NULL;
	if (peak < 0)
		peak = memory.peak_bytes;
	memory.oom_killed = memory.oom_killed || v2_oom_killed || result->oom_killed;
	if (t->board_index >= 0)
		scoreboard_job_set_pgid(w->board, t->board_index, 0);
	if (result->status == RUNNER_KILLED && t->cancelled) {
		task_fail_cancelled(t);
	} else if (result->status == RUNNER_KILLED) {
		task_release(t);
	} else if (result->status == RUNNER_COMPLETED) {
		task_complete(t, result, peak > 0 ? peak : 0);
	} else {
		describe_failure(result, &failure, message, sizeof(message));
		if (memory.oom_killed && (result->status == RUNNER_SIGNAL || result->status == RUNNER_EXIT_CODE ||
		                          result->status == RUNNER_HANDLER_LOST))
			describe_memory_limit(w, peak, &failure, message, sizeof(message));
		failure.peak_memory_bytes = peak > 0 ? peak : 0;
		if (result->status == RUNNER_TIMEOUT)
			counters_update(w, count_timed_out, 0);
		if (w->drain == RUNNING && retry_allowed(w, t, result)) {
			double delay = retry_delay_s(w, t->attempt);
			struct log_fields fields = task_fields(t, result->pid);
			log_job(LOG_LEVEL_WARN, &fields, "attempt %d failed (%s); retrying in %.1f s", t->attempt,
			        message, delay);
			worker_publish_status(w, t, (struct job_status){ .state = JOB_RETRYING, .message = message,
			                                                 .reason = failure.reason,
			                                                 .delay_ms = (long long)(delay * 1000) });
			counters_update(w, count_retried, 0);
			ev_timer_init(&t->retry_timer, task_retry_cb, delay, 0);
			t->retry_timer.data = t;
			ev_timer_start(w->loop, &t->retry_timer);
		} else if (w->drain != RUNNING && retry_allowed(w, t, result)) {
			task_release(t); /* it would be retried: let the next worker do it */
		} else {
			task_fail(t, &failure);
		}
	}
	worker_fill(w);
	worker_maybe_exit(w);
}

static void task_progress(struct run *run, double progress, const char *message, void *arg)
{
	struct task *t = arg;
	struct worker *w = t->worker;
	long long now = now_ms();
	if (t->board_index >= 0) {
		scoreboard_job_set_progress(w->board, t->board_index, (float)progress);
		if (message != NULL)
			scoreboard_job_set_message(w->board, t->board_index, message);
	}
	if (now - t->last_progress_event_ms < PROGRESS_EVENT_INTERVAL_MS)
		return;
	t->last_progress_event_ms = now;
	worker_publish_status(w, t, (struct job_status){ .state = JOB_PROGRESS, .progress = progress,
	                                                 .message = message });
}

static void worker_enter_fault(struct worker *w, const char *why)
{
	/* The delay doubles per failed retry and starts over only once a handler started. */
	if (w->fault_delay_s <= 0) {
		w->fault_delay_s = FAULT_RETRY_FIRST_S;
	} else {
		w->fault_delay_s *= 2;
		if (w->fault_delay_s > FAULT_RETRY_MAX_S)
			w->fault_delay_s = FAULT_RETRY_MAX_S;
	}
	w->fault = true;
	log_error("worker %d: %s; taking no jobs, retrying in %.0f s", w->slot, why, w->fault_delay_s);
	scoreboard_write_begin(w->board);
	snprintf(w->board->fault, sizeof(w->board->fault), "%s", why);
	scoreboard_write_end(w->board);
	ev_timer_stop(w->loop, &w->fault_timer);
	ev_timer_set(&w->fault_timer, w->fault_delay_s, 0);
	ev_timer_start(w->loop, &w->fault_timer);
}

static void worker_fault_retry_cb(struct ev_loop *loop, ev_timer *timer, int revents)
{
	struct worker *w = timer->data;
	w->fault = false; /* the next start tells whether the fault is over */
	/* With no job to try, the handler's mode tells: a worker left idle must not show a mended fault forever. */
	if (access(w->cfg->handler_argv[0], X_OK) == 0 && w->board->fault[0] != '\0') {
		scoreboard_write_begin(w->board);
		w->board->fault[0] = '\0';
		scoreboard_write_end(w->board);
	}
	worker_fill(w);
}

/*
 * The handler could not be started for this attempt. When the job is the
 * cause (its environment cannot be exec'd) it fails alone and for good: the
 * same exec would fail again. Any other cause is the same for every job: a
 * pool fault; the attempt never happened and the job goes back.
 */
static void task_not_started(struct task *t, int err)
{
	struct worker *w = t->worker;
	char why[SCOREBOARD_FAULT_MAX];

	if (runner_error_is_the_jobs(err)) {
		char message[256];
		snprintf(message, sizeof(message), "handler %s cannot be started for this job: %s",
		         w->cfg->handler_argv[0], strerror(err));
		struct failure failure = { .reason = "spawn_failed", .exit_code = -1, .message = message };
		task_fail(t, &failure);
		return;
	}
	snprintf(why, sizeof(why), "handler %s cannot be started: %s", w->cfg->handler_argv[0], strerror(err));
	t->attempt--;
	w->ops->attempt(w->source, t->job, t->attempt);
	task_release(t);
	worker_enter_fault(w, why);
}

/* php-fpm's request_slowlog_timeout: one warning per attempt that runs past slow_job_ms, while it runs. */
static void task_slow_cb(struct ev_loop *loop, ev_timer *timer, int revents)
{
	struct task *t = timer->data;
	struct worker *w = t->worker;
	pid_t pid = t->run != NULL ? runner_pgid(t->run) : t->warm != NULL ? warm_job_pid(t->warm) : 0;
	struct log_fields fields = task_fields(t, pid);
	log_job(LOG_LEVEL_WARN, &fields, "has run longer than slow_job_ms (%lld ms)", w->cfg->slow_job_ms);
	counters_update(w, count_slow, 0);
}

static void task_watch_slow(struct task *t)
{
	const struct worker *w = t->worker;
	if (w->cfg->slow_job_ms <= 0)
		return;
	ev_timer_init(&t->slow_timer, task_slow_cb, (double)w->cfg->slow_job_ms / 1000.0, 0);
	t->slow_timer.data = t;
	ev_timer_start(w->loop, &t->slow_timer);
}

static void task_warm_progress(void *arg, double progress, const char *message)
{
	task_progress(NULL, progress, message, arg);
}

/* The attempt's cgroup, named after its token (unique among this supervisor's attempts); NULL when none. */
static struct job_cgroup *attempt_cgroup(const struct worker *w, const struct task *t)
{
	if (!cgroup_enabled())
		return NULL;
	struct attempt_token token = w->token;
	char name[96];
	token.attempt = t->token_attempt;
	if (attempt_token_format(name, sizeof(name), &token) < 0)
		return NULL;
	const char *value = name + sizeof(ATTEMPT_TOKEN_VAR); /* past "DROVER_ATTEMPT_TOKEN=" */
	const struct cgroup_limits limits = { .memory_max = w->cfg->memory_max, .cpu_max = w->cfg->cpu_max,
	                                      .pids_max = w->cfg->pids_max };
	return cgroup_attempt_create(value, &limits);
}

/* The attempt's cgroup v1 memory cgroup, named like its v2 one; NULL when memory_max is not enforced there. */
static struct memcg *attempt_memcg(const struct worker *w, const struct task *t)
{
	if (!memcg_enabled() || w->cfg->memory_max < 0)
		return NULL;
	struct attempt_token token = w->token;
	char name[96];
	token.attempt = t->token_attempt;
	if (attempt_token_format(name, sizeof(name), &token) < 0)
		return NULL;
	return memcg_attempt_create(name + sizeof(ATTEMPT_TOKEN_VAR), w->cfg->memory_max);
}

/* The attempt runs (exec or persistent alike): counted, shown, announced. */
static void task_attempt_started(struct task *t, pid_t pgid)
{
	struct worker *w = t->worker;
	if (t->attempt == 1) /* a job's first handler really runs (a failed spawn is not a start) */
		counters_update(w, count_started, 0);
	if (t->board_index >= 0)
		scoreboard_job_set_pgid(w->board, t->board_index, pgid);
	struct log_fields fields = task_fields(t, pgid);
	log_job(LOG_LEVEL_DEBUG, &fields, "attempt %d started, pid %d", t->attempt, (int)pgid);
	worker_publish_status(w, t, (struct job_status){ .state = JOB_STARTED });
	task_watch_slow(t);
}

static void task_count_attempt(struct task *t)
{
	struct worker *w = t->worker;
	t->attempt++;
	if (t->board_index >= 0)
		scoreboard_job_set_attempt(w->board, t->board_index, t->attempt);
	struct log_fields fields = task_fields(t, 0);
	if (w->ops->attempt(w->source, t->job, t->attempt) < 0)
		log_job(LOG_LEVEL_WARN, &fields, "could not record attempt %d in the queue: %s", t->attempt,
		        strerror(errno));
}

/*
 * Persistent mode: the attempt goes to a handler process with room; with
 * none (all busy, starting or restarting) the task waits for one
 * (worker_dispatch_waiting) without counting an attempt.
 */
static void task_begin_warm_attempt(struct task *t)
{
	struct worker *w = t->worker;
	if (warm_pool_room(w->warm) <= 0) {
		if (!t->awaiting_handler)
			w->awaiting++;
		t->awaiting_handler = true;
		return;
	}
	if (t->awaiting_handler)
		w->awaiting--;
	t->awaiting_handler = false;
	task_count_attempt(t);
	t->warm = warm_pool_submit(w->warm, t->job->id, t->attempt, t->job->payload, t->job->payload_len, t);
	if (t->warm == NULL) {
		log_error("job %s: out of memory sending it to a handler process; giving it back", t->job->id);
		t->attempt--;
		w->ops->attempt(w->source, t->job, t->attempt);
		task_release(t);
		return;
	}
	task_attempt_started(t, warm_job_pid(t->warm));
}

static void task_begin_attempt(struct task *t)
{
	struct worker *w = t->worker;

	if (w->warm != NULL) {
		task_begin_warm_attempt(t);
		return;
	}
	task_count_attempt(t);
	t->token_attempt = ++w->token.attempt;
	char **env = task_env(t);
	t->cgroup = attempt_cgroup(w, t);
	t->memcg = attempt_memcg(w, t);
	const struct runner_limits limits = {
		.nofile = w->cfg->rlimit_nofile, .as = w->cfg->rlimit_as, .core = w->cfg->rlimit_core,
		.cpu = w->cfg->rlimit_cpu, .nice = w->cfg->nice,
	};
	struct runner_spec spec = {
		.argv = w->cfg->handler_argv,
		.envp = env,
		.working_dir = w->cfg->working_dir,
		.input = t->job->payload,
		.input_len = t->job->payload_len,
		.timeout_ms = w->cfg->timeout_ms,
		.kill_grace_ms = w->cfg->kill_grace_ms,
		.max_result_bytes = (size_t)w->cfg->max_result_bytes,
		.limits = &limits,
		.join_cgroup = t->cgroup != NULL,
		.cgroup_procs_fd = cgroup_attempt_procs_fd(t->cgroup),
		.join_memcg = t->memcg != NULL,
		.memcg_procs_fd = memcg_procs_fd(t->memcg),
		.job_id = t->job->id,
		.attempt = t->attempt,
	};
	struct runner_callbacks callbacks = { .done = task_run_done, .progress = task_progress, .arg = t };
	t->run = env != NULL ? runner_start(w->loop, &spec, &callbacks) : NULL;
	int saved = errno;
	task_env_free(w, env);
	if (t->run == NULL) {
		cgroup_attempt_end(t->cgroup, NULL);
		t->cgroup = NULL;
		struct memcg_outcome unused;
		memcg_attempt_end(t->memcg, false, &unused);
		t->memcg = NULL;
		task_not_started(t, saved);
		return;
	}
	if (w->fault_delay_s > 0) {
		/* A handler starts again: clear the fault this worker showed, never the source's own
		 * (a Kafka outage must stay in stats while prefetched jobs still run). */
		w->fault_delay_s = 0;
		scoreboard_write_begin(w->board);
		w->board->fault[0] = '\0';
		scoreboard_write_end(w->board);
	}
	task_attempt_started(t, runner_pgid(t->run));
}

/* The queue took the job away (Kafka: partition revoked): stop the handler; task_run_done releases it. */
static void worker_revoke_job(struct job *job, void *arg)
{
	struct worker *w = arg;
	struct task *t = LIST_FIRST(&w->tasks);
	while (t != NULL && t->job != job)
		t = LIST_NEXT(t, link);
	if (t == NULL)
		return;
	if (t->run != NULL) {
		runner_kill(t->run);
		return;
	}
	if (t->warm != NULL) {
		warm_job_kill(t->warm); /* a cancel; task_warm_done gives it back */
		return;
	}
	task_release(t);
	worker_fill(w);
}

/*
 * Jobs that must not reach a handler fail here, before any attempt: a message
 * that is not a JSON object; an id that breaks the rules of every entry
 * (events.h; the backends check too, this is the last line); a job whose
 * earlier attempts already used up max_attempts by dying with their worker
 * (the count comes with the delivery: spool file name, Kafka crash ledger).
 * Before either, a redelivered job whose outcome was recorded before its
 * worker died only leaves the queue (finish_recorded): it neither runs again
 * nor gains a second outcome.
 * True when the task was failed.
 */
static bool worker_refuses_job(struct worker *w, struct task *t)
{
	const struct job *job = t->job;
	char message[160];
	struct failure failure = { .reason = "invalid_job", .exit_code = -1, .message = message };

	const char *id_problem = event_job_id_problem(job->id, strlen(job->id));
	if (job->invalid) {
		failure.message = job->invalid_reason != NULL ? job->invalid_reason : "the message is not a JSON object";
	} else if (id_problem != NULL) {
		log_warnx("job with an id of %zu bytes: %s", strlen(job->id), id_problem);
		failure.message = id_problem;
	} else if (job->attempts_done > 0 && w->ops->finish_recorded != NULL &&
	           w->ops->finish_recorded(w->source, t->job)) {
		task_free(t); /* its worker died after recording the outcome: that one stands */
		return true;
	} else if (job->attempts_done >= w->cfg->max_attempts) {
		failure.reason = "worker_lost";
		snprintf(message, sizeof(message), "the worker died during attempt %d; max_attempts is %d",
		         job->attempts_done, w->cfg->max_attempts);
	} else {
		return false;
	}
	task_fail(t, &failure);
	return true;
}

static void worker_start_job(struct worker *w, struct job *job)
{
	struct task *t = task_new(w, job);
	if (t == NULL) {
		struct log_fields fields = { .job_id = job->id };
		log_job(LOG_LEVEL_ERROR, &fields, "out of memory; giving the job back");
		w->ops->release(w->source, job);
		return;
	}
	if (worker_refuses_job(w, t))
		return;
	t->board_index = scoreboard_job_add(w->board, job->id, job->attempts_done + 1);
	if (job->delivery != 0)
		scoreboard_job_set_delivery(w->board, t->board_index, job->delivery);
	task_begin_attempt(t);
}

/*
 * Time at capacity (every job slot taken), for the saturation figures: added
 * to the counter when the worker stops being full, and on each heartbeat
 * while it stays full, so the counter moves while it lasts.
 */
static void worker_note_capacity(struct worker *w)
{
	bool full = w->task_count >= w->cfg->max_concurrent;
	long long now = now_ms();
	if (w->full_since_ms > 0) {
		if (now > w->full_since_ms)
			counters_update(w, count_at_capacity, (double)(now - w->full_since_ms));
		w->full_since_ms = full ? now : 0;
	} else if (full) {
		w->full_since_ms = now;
	}
}

/*
 * Persistent mode: tasks due to run wait for a handler process with room
 * (a retry whose delay is over, a job taken while a process restarted).
 * True when none is left waiting.
 */
static void worker_dispatch_waiting(struct worker *w)
{
	for (struct task *t = LIST_FIRST(&w->tasks), *next; t != NULL && w->awaiting > 0; t = next) {
		next = LIST_NEXT(t, link);
		if (!t->awaiting_handler)
			continue;
		if (warm_pool_room(w->warm) <= 0)
			break;
		task_begin_warm_attempt(t);
	}
}

/* Whether one more job could start now (persistent: after the tasks already waiting for a process). */
static bool worker_has_room(const struct worker *w)
{
	if (w->task_count >= w->cfg->max_concurrent)
		return false;
	return w->warm == NULL || (w->awaiting == 0 && warm_pool_room(w->warm) > 0);
}

/* Intake is paused by droverctl pause: running jobs go on, no new one is taken. */
static bool worker_intake_paused(struct worker *w)
{
	bool paused = scoreboard_intake_paused();
	if (paused != w->intake_paused)
		log_info("worker %d: intake %s", w->slot, paused ? "paused" : "resumed");
	w->intake_paused = paused;
	return paused;
}

static void worker_update_flow(struct worker *w)
{
	worker_note_capacity(w);
	bool full = !worker_has_room(w) || w->drain != RUNNING || w->fault || worker_intake_paused(w);
	if (full && !w->source_paused) {
		w->ops->pause(w->source);
		w->source_paused = true;
	} else if (!full && w->source_paused) {
		w->ops->resume(w->source);
		w->source_paused = false;
	}
}

static void worker_fill(struct worker *w)
{
	if (w->warm != NULL && w->drain == RUNNING)
		worker_dispatch_waiting(w); /* jobs taken already: a pause stops only the intake */
	while (w->drain == RUNNING && !w->fault && !worker_intake_paused(w) && worker_has_room(w)) {
		struct job *job = NULL;
		if (w->source_paused) {
			w->ops->resume(w->source);
			w->source_paused = false;
		}
		if (w->ops->take(w->source, &job) != SOURCE_TAKEN)
			break;
		worker_start_job(w, job);
	}
	worker_update_flow(w);
}

static void source_ready(void *arg)
{
	worker_fill(arg);
}

static void source_settled(struct job *job, bool durable, void *arg)
{
	struct worker *w = arg;
	struct log_fields fields = { .job_id = job->id };
	/* recorded: an earlier delivery's outcome (spool), counted here since its worker died before it could */
	if (!durable) {
		log_job(LOG_LEVEL_WARN, &fields, "outcome not recorded; it stays in the queue");
	} else if (job->completed) {
		counters_update(w, count_completed, job->duration_s);
	} else {
		counters_update(w, count_failed, 0);
		/* droverctl jobs lists it (Kafka has no failed/ to read; the spool's failed/ is read directly) */
		if (!job->recorded)
			scoreboard_failure_add(w->board, job->id, job->failed_reason, job->attempts_run);
	}
	worker_maybe_exit(w);
}

/* ---- requests from the supervisor ------------------------------------------ */

/* One cancel request: the task holding job id stops (running) or fails now (waiting for a retry). */
static void worker_cancel_job(const char *id, void *arg)
{
	struct worker *w = arg;
	struct task *t = LIST_FIRST(&w->tasks);
	while (t != NULL && strcmp(t->job->id, id) != 0)
		t = LIST_NEXT(t, link);
	if (t == NULL) {
		log_info("worker %d: cancel of job %.200s: it is no longer here", w->slot, id);
		return;
	}
	log_warnx("job %.200s: cancelled during attempt %d", id, t->attempt);
	if (t->run != NULL || t->warm != NULL) {
		t->cancelled = true;
		if (t->run != NULL)
			runner_cancel(t->run); /* task_run_done fails it once the handler is reaped */
		else
			warm_job_kill(t->warm); /* a cancel frame; its process is killed if it does not answer in time */
		return;
	}
	task_fail_cancelled(t);
	worker_fill(w);
	worker_maybe_exit(w);
}

/* After a poke (SCOREBOARD_POKE_SIGNAL) and on every heartbeat: cancels, then the pause flag. */
static void worker_read_requests(struct worker *w)
{
	scoreboard_each_cancel(w->slot, &w->requests_seen, worker_cancel_job, w);
	worker_fill(w);
}

/* ---- draining and exit -------------------------------------------------- */

static void worker_maybe_exit(struct worker *w)
{
	if (w->drain == RUNNING || w->task_count > 0)
		return;
	if (w->ops->pending(w->source) > 0)
		return;
	if (w->warm != NULL && warm_pool_live(w->warm) > 0)
		return; /* its processes got EOF on stdin; warm_stopped comes back here */
	ev_break(w->loop, EVBREAK_ALL);
}

static void worker_drain(struct worker *w, enum drain_mode mode)
{
	if (mode <= w->drain)
		return;
	w->drain = mode;
	log_info("worker %d: %s", w->slot, mode == DRAIN_FAST ? "stopping now" : "draining");
	scoreboard_write_begin(w->board);
	w->board->draining = 1;
	scoreboard_write_end(w->board);
	worker_update_flow(w);
	if (mode == DRAIN_FAST && w->ops->hurry != NULL)
		w->ops->hurry(w->source, w->cfg->kill_grace_ms);
	for (struct task *t = LIST_FIRST(&w->tasks), *next; t != NULL; t = next) {
		next = LIST_NEXT(t, link);
		if (!task_running(t))
			task_release(t); /* waiting for a retry: the next worker retries it */
		else if (mode == DRAIN_FAST && t->run != NULL)
			runner_kill(t->run);
	}
	/* Persistent: running jobs finish (or, fast, are killed with their processes and given back). */
	if (w->warm != NULL)
		warm_pool_stop(w->warm, mode == DRAIN_FAST);
	worker_maybe_exit(w);
}

/* Reaps every child: handlers go to their runs; anyone else is an orphan whose children are ours now. */
static void worker_reap(struct worker *w)
{
	int status;
	pid_t pid;
	bool sweep = false;
	while ((pid = waitpid_retry(-1, &status, WNOHANG)) > 0) {
		struct run *run = runner_find(pid);
		if (run != NULL) {
			runner_child_exited(run, status);
			continue;
		}
		/* A persistent handler process (its group is killed now) or a stranger (its children
		 * are ours now): either way, sweep for what left them. */
		if (w->warm != NULL)
			(void)warm_pool_child_exited(w->warm, pid, status);
		sweep = true;
	}
	if (sweep)
		worker_sweep_orphans(w);
}

static void worker_signal_cb(struct ev_loop *loop, ev_io *io, int revents)
{
	struct worker *w = io->data;
	struct signalfd_siginfo info;
	for (;;) {
		ssize_t n = read_some(w->signal_fd, &info, sizeof(info));
		if (n != (ssize_t)sizeof(info))
			break;
		switch (info.ssi_signo) {
		case SIGCHLD:
			worker_reap(w);
			break;
		case SIGTERM:
		case SIGINT:
			worker_drain(w, DRAIN_GRACEFUL);
			break;
		case SIGQUIT:
			worker_drain(w, DRAIN_FAST);
			break;
		case SIGUSR1:
			if (log_reopen() < 0)
				log_warn("cannot reopen the log file");
			break;
		case SCOREBOARD_POKE_SIGNAL:
			worker_read_requests(w);
			break;
		default:
			break;
		}
	}
}

static void worker_parent_cb(struct ev_loop *loop, ev_io *io, int revents)
{
	struct worker *w = io->data;
	char buf[64];
	ssize_t n = read_some(io->fd, buf, sizeof(buf));
	if (n < 0 && errno == EAGAIN)
		return;
	/* EOF: the supervisor is gone. Finish what runs, take nothing new; nobody
	 * will escalate for us, so stop the rest after shutdown_timeout_ms ourselves. */
	ev_io_stop(loop, io);
	log_warnx("worker %d: supervisor gone; draining for up to %lld ms", w->slot, w->cfg->shutdown_timeout_ms);
	ev_timer_set(&w->orphan_timer, (double)w->cfg->shutdown_timeout_ms / 1000.0, 0);
	ev_timer_start(loop, &w->orphan_timer);
	worker_drain(w, DRAIN_GRACEFUL);
}

static void worker_orphan_timeout_cb(struct ev_loop *loop, ev_timer *timer, int revents)
{
	struct worker *w = timer->data;
	log_warnx("worker %d: drain time is up; stopping the jobs still running", w->slot);
	worker_drain(w, DRAIN_FAST);
}

static void worker_heartbeat_cb(struct ev_loop *loop, ev_timer *timer, int revents)
{
	struct worker *w = timer->data;
	scoreboard_write_begin(w->board);
	w->board->heartbeat_ms = now_ms();
	scoreboard_write_end(w->board);
	worker_note_capacity(w);
	if (w->warm != NULL)
		warm_pool_tick(w->warm);
	/* A safety net for a missed wake-up or poke; cheap when the source has nothing. */
	worker_read_requests(w);
}

/* ---- persistent handler processes ------------------------------------- */

/* A handler process became ready. With its source ready too, the worker is ready (rolling replacement). */
static void worker_warm_room(void *arg)
{
	struct worker *w = arg;
	if (!w->ready_published) {
		w->ready_published = true;
		scoreboard_publish_handlers_ready(w->board);
	}
	worker_fill(w);
}

/* The handler pool's fault (cannot start, crash loop) is the worker's, as in exec mode. */
static void worker_warm_health(void *arg, const char *fault)
{
	struct worker *w = arg;
	if (fault != NULL)
		log_error("worker %d: %s", w->slot, fault);
	else
		log_info("worker %d: its handler processes work again", w->slot);
	scoreboard_write_begin(w->board);
	snprintf(w->board->fault, sizeof(w->board->fault), "%s", fault != NULL ? fault : "");
	scoreboard_write_end(w->board);
}

static void worker_warm_stopped(void *arg)
{
	worker_maybe_exit(arg);
}

static void process_env_free(void *arg, char **env)
{
	task_env_free(arg, env);
}

static int worker_start_handlers(struct worker *w)
{
	const struct config *cfg = w->cfg;
	struct warm_settings settings = {
		.argv = cfg->handler_argv,
		.working_dir = cfg->working_dir,
		.processes = (cfg->max_concurrent + cfg->handler_concurrency - 1) / cfg->handler_concurrency,
		.concurrency = cfg->handler_concurrency,
		.max_jobs = cfg->handler_max_jobs,
		.max_jobs_jitter = cfg->handler_max_jobs_jitter,
		.max_rss_mb = cfg->handler_max_rss_mb,
		.start_timeout_ms = cfg->handler_start_timeout_ms,
		.timeout_ms = cfg->timeout_ms,
		.kill_grace_ms = cfg->kill_grace_ms,
		.max_result_bytes = (size_t)cfg->max_result_bytes,
		/* Per process: a CPU limit would count every job the process ever served. */
		.limits = { .nofile = cfg->rlimit_nofile, .as = cfg->rlimit_as, .core = cfg->rlimit_core,
		            .cpu = RUNNER_LIMIT_UNSET, .nice = cfg->nice },
		/* A cgroup per process (not per job): the limits bound the process and all it serves at once. */
		.cgroup_limits = { .memory_max = cfg->memory_max, .cpu_max = cfg->cpu_max, .pids_max = cfg->pids_max },
		.token = w->token,
	};
	struct warm_callbacks callbacks = {
		.done = task_warm_done,
		.progress = task_warm_progress,
		.room = worker_warm_room,
		.health = worker_warm_health,
		.stopped = worker_warm_stopped,
		.env = process_env,
		.env_free = process_env_free,
		.arg = w,
	};
	log_info("worker %d: %d persistent handler process(es), %d job(s) each", w->slot, settings.processes,
	         settings.concurrency);
	w->warm = warm_pool_new(w->loop, &settings, &callbacks, w->board);
	return w->warm != NULL ? 0 : -1;
}

/* ---- set-up ------------------------------------------------------------- */

static int worker_setup_signals(struct worker *w)
{
	sigset_t set;
	sigemptyset(&set);
	int signals[] = { SIGCHLD, SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2, SIGTTIN, SIGTTOU,
	                  SCOREBOARD_POKE_SIGNAL };
	for (size_t i = 0; i < ARRAY_LEN(signals); i++)
		sigaddset(&set, signals[i]);
	if (sigprocmask(SIG_BLOCK, &set, NULL) < 0)
		return -1;
	signal(SIGPIPE, SIG_IGN);
	w->signal_fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
	return w->signal_fd < 0 ? -1 : 0;
}

static void worker_publish_start(struct worker *w, unsigned generation)
{
	scoreboard_write_begin(w->board);
	w->board->pid = getpid();
	w->board->generation = generation;
	w->board->started_ms = wall_ms();
	w->board->heartbeat_ms = now_ms();
	w->board->draining = 0;
	scoreboard_write_end(w->board);
	scoreboard_wake_supervisor(); /* so the slot shows running now, not at the next heartbeat check */
}

static void worker_crash_if_asked(int slot)
{
	/* Fault injection for the test suite: a worker that dies during start-up. */
	const char *crash = getenv("DROVER_FAULT_CRASH_SLOT");
	if (crash != NULL && *crash != '\0' && atoi(crash) == slot) {
		log_error("worker %d: DROVER_FAULT_CRASH_SLOT set: aborting", slot);
		abort();
	}
}

/*
 * A handler's descendant that leaves the job's group and loses its parents
 * comes back to us instead of init, so worker_sweep_orphans can find it among
 * our children. Without either, escaped processes are only stopped by the
 * supervisor when this worker dies.
 */
static void worker_adopt_orphans(struct worker *w)
{
	if (prctl(PR_SET_CHILD_SUBREAPER, 1) < 0)
		log_warn("worker %d: cannot become a child subreaper", w->slot);
	w->children = children_open();
	if (w->children == NULL)
		log_warn("worker %d: cannot open its list of child processes", w->slot);
}

/* `ps` shows "drover: worker 2 (spool)", `ps -e` and `top` "drover-w2". */
static void worker_set_title(const struct worker *w)
{
	char comm[16];
	snprintf(comm, sizeof(comm), "drover-w%d", w->slot);
	proctitle_set(comm, "worker %d (%s)", w->slot, config_backend_name(w->cfg->backend));
}

static void worker_teardown(struct worker *w)
{
	warm_pool_free(w->warm);
	if (w->source != NULL && w->ops != NULL)
		w->ops->close(w->source);
	for (size_t i = 0; i < w->base_env_count; i++)
		free(w->base_env[i]);
	free(w->base_env);
	if (w->signal_fd >= 0)
		close(w->signal_fd);
	children_close(w->children);
	cgroup_collect(); /* a last try; what is still busy is the supervisor's to end (cgroup_end_worker) */
	ev_loop_destroy(w->loop);
}

/* Signals, the supervisor's pipe and the worker's timers on its loop. */
static void worker_watch(struct worker *w, int parent_fd)
{
	ev_io_init(&w->signal_watcher, worker_signal_cb, w->signal_fd, EV_READ);
	w->signal_watcher.data = w;
	ev_io_start(w->loop, &w->signal_watcher);
	fd_set_nonblock(parent_fd);
	ev_io_init(&w->parent_watcher, worker_parent_cb, parent_fd, EV_READ);
	w->parent_watcher.data = w;
	ev_io_start(w->loop, &w->parent_watcher);
	ev_timer_init(&w->heartbeat_timer, worker_heartbeat_cb, HEARTBEAT_INTERVAL_S, HEARTBEAT_INTERVAL_S);
	w->heartbeat_timer.data = w;
	ev_timer_start(w->loop, &w->heartbeat_timer);
	ev_timer_init(&w->fault_timer, worker_fault_retry_cb, FAULT_RETRY_FIRST_S, 0);
	w->fault_timer.data = w;
	ev_timer_init(&w->orphan_timer, worker_orphan_timeout_cb, 0, 0);
	w->orphan_timer.data = w;
}

/* Names the process (log prefix, ps title) and the outcome documents' origin. */
static void worker_name_self(struct worker *w)
{
	char name[32];

	snprintf(name, sizeof(name), "worker %d", w->slot);
	log_set_name(name);
	worker_set_title(w);
	log_set_worker(w->slot);
	if (gethostname(w->host, sizeof(w->host) - 1) < 0)
		snprintf(w->host, sizeof(w->host), "localhost");
	w->origin.host = w->host;
	w->origin.worker = w->slot;
}

/* Opens the queue and, in persistent mode, starts the handler processes. EX_OK, or the worker's exit code. */
static int worker_open_queue(struct worker *w)
{
	char err[512];
	struct source_callbacks callbacks = {
		.ready = source_ready, .settled = source_settled, .revoke = worker_revoke_job, .arg = w,
	};
	struct source_params source_params = {
		.cfg = w->cfg, .loop = w->loop, .slot = w->slot, .board = w->board, .origin = &w->origin, .cb = &callbacks,
	};
	w->ops = source_for(w->cfg);
	w->source = w->ops->open(&source_params, err, sizeof(err)); /* copies the callbacks */
	if (w->source == NULL) {
		/* A refused configuration: EX_CONFIG tells the supervisor not to restart us (README "Worker slots"). */
		int code = errno == EINVAL ? EX_CONFIG : EX_UNAVAILABLE;
		log_error("worker %d: cannot open the %s queue: %s", w->slot, w->ops->name, err);
		return code;
	}
	if (w->cfg->handler_mode == HANDLER_MODE_EXEC) {
		scoreboard_publish_handlers_ready(w->board); /* a handler starts per attempt */
	} else if (worker_start_handlers(w) < 0) {
		log_error("worker %d: out of memory starting its handler processes", w->slot);
		return EX_SOFTWARE;
	}
	return EX_OK;
}

int worker_main(const struct worker_params *params)
{
	struct worker w = {
		.cfg = params->cfg,
		.slot = params->slot,
		.board = params->board,
		.signal_fd = -1,
		.token = { .supervisor = params->supervisor_pid, .worker = params->serial },
		.requests_seen = scoreboard_request_serial(),
	};

	worker_name_self(&w);
	if (worker_setup_signals(&w) < 0) {
		log_warn("worker %d: cannot set up signals", w.slot);
		return EX_SOFTWARE;
	}
	worker_crash_if_asked(w.slot);
	worker_adopt_orphans(&w);
	w.loop = ev_loop_new(EVFLAG_AUTO);
	if (w.loop == NULL)
		return EX_SOFTWARE;
	if (worker_build_base_env(&w) < 0) {
		log_error("worker %d: out of memory at start", w.slot);
		worker_teardown(&w);
		return EX_SOFTWARE;
	}
	scoreboard_set_wake_fd(params->wake_fd);
	worker_publish_start(&w, params->generation);
	int code = worker_open_queue(&w);
	if (code != EX_OK) {
		worker_teardown(&w);
		return code;
	}
	worker_watch(&w, params->parent_fd);
	log_info("worker %d: started (%s queue, up to %d jobs at once)", w.slot, w.ops->name, w.cfg->max_concurrent);
	worker_fill(&w);
	ev_run(w.loop, 0);

	log_info("worker %d: stopped", w.slot);
	worker_teardown(&w);
	return EX_OK;
}
