/*
 * stats: the `stats` JSON object and the Prometheus `metrics` text (README:
 * Operations, "Control socket"). Both are computed from the supervisor's slot table and the
 * shared-memory scoreboard only, never by asking a worker, so they answer
 * while every worker is busy. Job totals are the counters of workers that
 * have exited (sup->retired) plus those of every live worker. Nothing here
 * ever prints a secret: only counters, states, ids and the config's path.
 */
#include "supervisor/stats.h"
#include "queue/source.h"
#include "supervisor/http.h"
#include "supervisor/supervisor.h"
#include "shared/util.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef DROVER_VERSION
#define DROVER_VERSION "unknown"
#endif

/* ---- reading the slots ------------------------------------------------- */

/*
 * The scoreboard copy of a slot, when it belongs to the worker the slot table
 * names (a slot not yet claimed by its new owner, or left by a dead one, has
 * counters that are zero or already in sup->retired).
 */
static bool read_live_slot(const struct supervisor *sup, const struct slot_view *view, struct scoreboard_slot *copy)
{
	if (view->pid <= 0 || sup->scoreboard == NULL)
		return false;
	const struct scoreboard_slot *shared = scoreboard_slot(sup->scoreboard, view->slot);
	if (shared == NULL)
		return false;
	scoreboard_read_slot(shared, copy);
	return copy->pid == view->pid;
}

enum fault_cause { FAULT_HANDLER, FAULT_QUEUE, FAULT_CAUSES };
static const char *const fault_cause_names[FAULT_CAUSES] = { "handler", "queue" };

/* Saturation and backlog: what the pool could take, what it holds, what waits. */
struct load {
	long long job_slots;  /* max_concurrent of each running worker without a fault */
	long long busy;       /* their jobs (running or waiting out a retry delay) */
	int faults[FAULT_CAUSES];
	long long slow_running; /* handlers running past slow_job_ms now */
	bool waiting_known;
	long long waiting;    /* spool: incoming/ at the freshest count; Kafka: the summed lag */
	long long oldest_ms;  /* spool: wall-clock mtime of the oldest waiting job, 0 = none */
	long long counted_ms; /* spool: wall clock of that count */
};

struct totals {
	struct scoreboard_counters counters;
	long long in_flight;
	unsigned long long restarts;
	int by_state[SLOT_STATE_COUNT]; /* a live worker in fault is counted in in_fault instead */
	int in_fault;
	struct load load;
};

/* A pool fault of a live worker (the handler cannot start, the queue is unusable): it takes no jobs. */
static bool in_fault(const struct scoreboard_slot *live)
{
	return live != NULL && live->fault[0] != '\0';
}

static enum fault_cause fault_cause_of(const char *fault)
{
	return strncmp(fault, "handler", 7) == 0 ? FAULT_HANDLER : FAULT_QUEUE;
}

/* The metric label of a fault: what the operator has to fix. */
static const char *fault_cause(const char *fault)
{
	return fault_cause_names[fault_cause_of(fault)];
}

static long long slow_running_of(const struct scoreboard_slot *live, long long slow_job_ms, long long now)
{
	long long slow = 0;
	for (int i = 0; slow_job_ms > 0 && i < CONFIG_MAX_CONCURRENT; i++) {
		const struct scoreboard_job *job = &live->jobs[i];
		if (job->used && job->pgid > 0 && job->started_ms > 0 && now - job->started_ms > slow_job_ms)
			slow++;
	}
	return slow;
}

/* The worker's summed lag, -1 when no partition's is known (librdkafka knows it once the group committed there). */
static long long lag_of(const struct scoreboard_slot *live)
{
	long long lag = -1;
	int count = live->partition_count > SCOREBOARD_PARTITIONS ? SCOREBOARD_PARTITIONS : live->partition_count;
	for (int i = 0; i < count; i++)
		if (live->partitions[i].lag >= 0)
			lag = (lag < 0 ? 0 : lag) + live->partitions[i].lag;
	return lag;
}


/*
 * Whether the backlog is the workers' summed partition lag (Kafka), which
 * also counts jobs in flight and finished ones waiting for an older offset's
 * commit: it has no oldest age and cannot tell a stall; else it is a count of
 * waiting jobs the workers share (spool: incoming/).
 */
static bool backlog_is_lag(const struct config *cfg)
{
	return queue_ops_for(cfg)->has_partitions;
}
/* Adds one live worker to the load. Every spool worker counts the same incoming/: the freshest count wins. */
static void load_add(const struct supervisor *sup, struct load *load, const struct slot_view *view,
		     const struct scoreboard_slot *live)
{
	const struct config *cfg = sup->cfg;
	if (in_fault(live))
		load->faults[fault_cause_of(live->fault)]++;
	else if (view->state == SLOT_RUNNING && cfg != NULL) {
		load->job_slots += cfg->max_concurrent;
		load->busy += live->in_flight;
	}
	load->slow_running += slow_running_of(live, cfg != NULL ? cfg->slow_job_ms : 0, wall_ms());
	if (cfg != NULL && backlog_is_lag(cfg)) {
		long long lag = lag_of(live);
		if (lag >= 0) {
			load->waiting_known = true;
			load->waiting += lag;
		}
	} else if (live->backlog_counted_ms > load->counted_ms && live->backlog >= 0) {
		load->waiting_known = true;
		load->waiting = live->backlog;
		load->oldest_ms = live->backlog_oldest_ms;
		load->counted_ms = live->backlog_counted_ms;
	}
}

/* Calls visit for every slot with its view and (when live) scoreboard copy; sums into totals. */
typedef int (*slot_visitor)(void *ctx, const struct slot_view *view, const struct scoreboard_slot *live);

static int for_each_slot(const struct supervisor *sup, struct totals *totals, slot_visitor visit, void *ctx)
{
	memset(totals, 0, sizeof(*totals));
	totals->counters = sup->retired;
	totals->restarts = sup->restarts_retired;
	struct scoreboard_slot *copy = malloc(sizeof(*copy));
	if (copy == NULL)
		return -1;
	int rc = 0;
	int count = supervisor_slot_count(sup);
	for (int i = 0; i < count && rc == 0; i++) {
		struct slot_view view;
		memset(&view, 0, sizeof(view));
		if (!supervisor_slot_view(sup, i, &view))
			continue;
		bool live = read_live_slot(sup, &view, copy);
		if (live) {
			scoreboard_counters_add(&totals->counters, &copy->counters);
			totals->in_flight += copy->in_flight;
			load_add(sup, &totals->load, &view, copy);
		}
		totals->restarts += view.restarts;
		if (live && in_fault(copy))
			totals->in_fault++;
		else if ((unsigned)view.state < SLOT_STATE_COUNT)
			totals->by_state[view.state]++;
		if (visit != NULL)
			rc = visit(ctx, &view, live ? copy : NULL);
	}
	free(copy);
	return rc;
}

/* ---- stats (JSON) ------------------------------------------------------ */

/* jansson's set_new steals the value even on failure; remember any failure. */
static void put(json_t *obj, const char *key, json_t *value, bool *ok)
{
	if (value == NULL || json_object_set_new(obj, key, value) < 0)
		*ok = false;
}

static void append(json_t *array, json_t *value, bool *ok)
{
	if (value == NULL || json_array_append_new(array, value) < 0)
		*ok = false;
}

static json_t *string_or_null(const char *s)
{
	return s != NULL && s[0] != '\0' ? json_string(s) : json_null();
}

/* Strings from shared memory are bounded but may be unterminated or not UTF-8 if torn. */
static json_t *bounded_string(const char *s, size_t cap)
{
	size_t len = strnlen(s, cap);
	if (len == 0)
		return json_null();
	json_t *value = json_stringn(s, len);
	return value != NULL ? value : json_string("?");
}

static json_t *progress_value(float progress)
{
	if (!(progress >= 0.0f)) /* also NaN */
		return json_null();
	double p = progress > 1.0f ? 1.0 : (double)progress;
	return json_real((double)(long long)(p * 1000.0 + 0.5) / 1000.0);
}

static json_t *jobs_of(const struct scoreboard_slot *live, bool *ok)
{
	json_t *jobs = json_array();
	if (jobs == NULL || live == NULL) {
		*ok = *ok && jobs != NULL;
		return jobs;
	}
	long long now = wall_ms();
	for (int i = 0; i < CONFIG_MAX_CONCURRENT; i++) {
		const struct scoreboard_job *job = &live->jobs[i];
		if (!job->used)
			continue;
		json_t *entry = json_object();
		if (entry == NULL) {
			*ok = false;
			break;
		}
		put(entry, "id", bounded_string(job->id, sizeof(job->id)), ok);
		put(entry, "attempt", json_integer(job->attempt), ok);
		put(entry, "age_ms", json_integer(job->started_ms > 0 ? now - job->started_ms : 0), ok);
		put(entry, "progress", progress_value(job->progress), ok);
		put(entry, "message", bounded_string(job->message, sizeof(job->message)), ok);
		append(jobs, entry, ok);
	}
	return jobs;
}

static json_t *kafka_of(const struct scoreboard_slot *live, bool *ok)
{
	json_t *kafka = json_object();
	json_t *partitions = json_array();
	long long total = 0;
	int count = live != NULL ? live->partition_count : 0;
	if (count > SCOREBOARD_PARTITIONS)
		count = SCOREBOARD_PARTITIONS;
	for (int i = 0; i < count && partitions != NULL; i++) {
		const struct scoreboard_partition *p = &live->partitions[i];
		json_t *entry = json_object();
		if (entry == NULL) {
			*ok = false;
			break;
		}
		put(entry, "topic", bounded_string(p->topic, sizeof(p->topic)), ok);
		put(entry, "partition", json_integer(p->partition), ok);
		put(entry, "lag", p->lag >= 0 ? json_integer(p->lag) : json_null(), ok);
		append(partitions, entry, ok);
		if (p->lag > 0)
			total += p->lag;
	}
	if (kafka == NULL) {
		json_decref(partitions);
		*ok = false;
		return NULL;
	}
	put(kafka, "partitions", partitions, ok);
	put(kafka, "lag", json_integer(total), ok);
	put(kafka, "hold_backs", json_integer(live != NULL ? (json_int_t)live->counters.kafka_hold_backs : 0), ok);
	return kafka;
}

/* Persistent mode: the worker's handler processes and what happened to them. */
static void put_handlers(json_t *w, const struct scoreboard_slot *live, bool *ok)
{
	json_t *handlers = json_array();
	int count = live != NULL ? live->handler_count : 0;
	if (count > CONFIG_MAX_CONCURRENT)
		count = CONFIG_MAX_CONCURRENT;
	for (int i = 0; i < count && handlers != NULL; i++) {
		const struct scoreboard_handler *h = &live->handlers[i];
		json_t *entry = json_object();
		if (entry == NULL) {
			*ok = false;
			break;
		}
		put(entry, "pid", json_integer(h->pid), ok);
		put(entry, "state", json_string(scoreboard_handler_state_name(h->state)), ok);
		put(entry, "jobs", json_integer((json_int_t)h->jobs), ok);
		append(handlers, entry, ok);
	}
	if (handlers == NULL)
		*ok = false;
	put(w, "handlers", handlers, ok);
	const struct scoreboard_counters *c = live != NULL ? &live->counters : NULL;
	put(w, "handler_restarts", json_integer(c != NULL ? (json_int_t)c->handler_restarts : 0), ok);
	put(w, "handler_recycles", json_integer(c != NULL ? (json_int_t)c->handler_recycles : 0), ok);
	put(w, "handler_protocol_errors", json_integer(c != NULL ? (json_int_t)c->handler_protocol_errors : 0), ok);
}

struct json_ctx {
	const struct supervisor *sup;
	json_t *workers;
	long long wall_now;
	long long mono_now;
	bool ok;
};

static int worker_json(void *arg, const struct slot_view *view, const struct scoreboard_slot *live)
{
	struct json_ctx *ctx = arg;
	bool *ok = &ctx->ok;
	json_t *w = json_object();
	if (w == NULL)
		return -1;
	put(w, "slot", json_integer(view->slot), ok);
	put(w, "pid", json_integer(view->pid), ok);
	put(w, "state", json_string(slot_state_name(view->state)), ok);
	put(w, "uptime_ms", json_integer(view->pid > 0 && view->started_ms > 0 ? ctx->wall_now - view->started_ms : 0), ok);
	put(w, "restarts", json_integer(view->restarts), ok);
	put(w, "last_exit", string_or_null(view->last_exit), ok);
	if (view->state == SLOT_BACKOFF && view->backoff_until_ms > 0) {
		long long left = view->backoff_until_ms - ctx->wall_now;
		put(w, "backoff_ms", json_integer(left > 0 ? left : 0), ok);
	}
	put(w, "ready", json_boolean(live != NULL && scoreboard_worker_ready(live)), ok);
	put(w, "in_flight", json_integer(live != NULL ? live->in_flight : 0), ok);
	put(w, "completed", json_integer(live != NULL ? (json_int_t)live->counters.completed : 0), ok);
	put(w, "failed", json_integer(live != NULL ? (json_int_t)live->counters.failed : 0), ok);
	put(w, "timed_out", json_integer(live != NULL ? (json_int_t)live->counters.timed_out : 0), ok);
	put(w, "heartbeat_age_ms",
	    live != NULL && live->heartbeat_ms > 0 ? json_integer(ctx->mono_now - live->heartbeat_ms) : json_null(), ok);
	/* A failed slot has no live worker: its fault is the configuration its worker refused. */
	bool failed = view->state == SLOT_FAILED;
	put(w, "fault", live != NULL ? bounded_string(live->fault, sizeof(live->fault))
	                : failed     ? json_string(view->last_exit)
	                             : json_null(), ok);
	put(w, "fault_cause", in_fault(live) ? json_string(fault_cause(live->fault))
	                      : failed       ? json_string("config")
	                                     : json_null(), ok);
	put(w, "jobs", jobs_of(live, ok), ok);
	if (ctx->sup->cfg != NULL && ctx->sup->cfg->handler_mode == HANDLER_MODE_PERSISTENT)
		put_handlers(w, live, ok);
	if (ctx->sup->cfg != NULL && queue_ops_for(ctx->sup->cfg)->has_partitions)
		put(w, "kafka", kafka_of(live, ok), ok);
	append(ctx->workers, w, ok);
	return 0;
}

static json_t *jobs_totals(const struct totals *totals, bool *ok)
{
	json_t *jobs = json_object();
	if (jobs == NULL) {
		*ok = false;
		return NULL;
	}
	const struct scoreboard_counters *c = &totals->counters;
	put(jobs, "started", json_integer((json_int_t)c->started), ok);
	put(jobs, "completed", json_integer((json_int_t)c->completed), ok);
	put(jobs, "failed", json_integer((json_int_t)c->failed), ok);
	put(jobs, "timed_out", json_integer((json_int_t)c->timed_out), ok);
	put(jobs, "retried", json_integer((json_int_t)c->retried), ok);
	put(jobs, "in_flight", json_integer(totals->in_flight), ok);
	return jobs;
}

/* What the last reload did to each changed key. */
static json_t *reload_changes(const struct supervisor *sup, bool *ok)
{
	json_t *changes = json_array();
	if (changes == NULL) {
		*ok = false;
		return NULL;
	}
	for (size_t i = 0; i < sup->reload_change_count; i++) {
		json_t *entry = json_object();
		if (entry == NULL) {
			*ok = false;
			break;
		}
		put(entry, "key", json_string(sup->reload_changes[i].key), ok);
		put(entry, "result", json_string(sup->reload_changes[i].result), ok);
		append(changes, entry, ok);
	}
	return changes;
}

/* ---- saturation and backlog ------------------------------------------------- */

static long long stalled_ms(const struct supervisor *sup)
{
	return sup->progress.since_ms > 0 ? now_ms() - sup->progress.since_ms : 0;
}

static bool stalled(const struct supervisor *sup)
{
	return sup->cfg != NULL && sup->progress.since_ms > 0 && stalled_ms(sup) >= sup->cfg->stall_timeout_ms;
}

static json_t *backlog_json(const struct supervisor *sup, const struct load *load, long long now, bool *ok)
{
	json_t *backlog = json_object();
	if (backlog == NULL) {
		*ok = false;
		return NULL;
	}
	bool spool = sup->cfg == NULL || !backlog_is_lag(sup->cfg);
	put(backlog, "waiting", load->waiting_known ? json_integer(load->waiting) : json_null(), ok);
	put(backlog, "oldest_age_ms",
	    spool && load->waiting_known ? json_integer(load->oldest_ms > 0 && now > load->oldest_ms ? now - load->oldest_ms : 0)
					 : json_null(), ok);
	put(backlog, "counted_age_ms", spool && load->counted_ms > 0 ? json_integer(now - load->counted_ms) : json_null(), ok);
	return backlog;
}

static json_t *saturation_json(const struct supervisor *sup, const struct totals *totals, bool *ok)
{
	json_t *sat = json_object();
	json_t *faults = json_object();
	if (sat == NULL || faults == NULL) {
		json_decref(sat);
		json_decref(faults);
		*ok = false;
		return NULL;
	}
	const struct load *load = &totals->load;
	for (int c = 0; c < FAULT_CAUSES; c++)
		put(faults, fault_cause_names[c], json_integer(load->faults[c]), ok);
	put(sat, "job_slots", json_integer(load->job_slots), ok);
	put(sat, "busy", json_integer(load->busy), ok);
	put(sat, "at_capacity_seconds", json_real((double)totals->counters.at_capacity_ms / 1000.0), ok);
	put(sat, "slow_running", json_integer(load->slow_running), ok);
	put(sat, "slow_total", json_integer((json_int_t)totals->counters.slow), ok);
	put(sat, "faults", faults, ok);
	put(sat, "stalled", json_boolean(stalled(sup)), ok);
	put(sat, "stalled_ms", json_integer(stalled_ms(sup)), ok);
	return sat;
}

/* The HTTP endpoint and its bounds, null when http_listen is off. */
static json_t *http_of(const struct supervisor *sup, bool *ok)
{
	if (sup->http == NULL)
		return json_null();
	json_t *http = json_object();
	if (http == NULL) {
		*ok = false;
		return NULL;
	}
	put(http, "listen", json_string(http_address(sup->http)), ok);
	put(http, "connections_max", json_integer(HTTP_CONNECTIONS_MAX), ok);
	put(http, "per_ip_max", json_integer(HTTP_PER_IP_MAX), ok);
	put(http, "timeout_s", json_integer(HTTP_TIMEOUT_S), ok);
	return http;
}

/* json_dumps plus the protocol's trailing newline. */
static char *dump_line(json_t *root)
{
	char *text = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(6));
	if (text == NULL)
		return NULL;
	size_t len = strlen(text);
	char *line = realloc(text, len + 2);
	if (line == NULL) {
		free(text);
		return NULL;
	}
	line[len] = '\n';
	line[len + 1] = '\0';
	return line;
}

char *stats_json(const struct supervisor *sup)
{
	struct json_ctx ctx = { .sup = sup, .workers = json_array(), .wall_now = wall_ms(), .mono_now = now_ms(), .ok = true };
	struct totals totals;
	json_t *root = json_object();
	if (root == NULL || ctx.workers == NULL || for_each_slot(sup, &totals, worker_json, &ctx) < 0) {
		json_decref(root);
		json_decref(ctx.workers);
		return NULL;
	}
	const struct config *cfg = sup->cfg;
	bool *ok = &ctx.ok;
	put(root, "version", json_string(DROVER_VERSION), ok);
	put(root, "pid", json_integer(getpid()), ok);
	put(root, "uptime_ms", json_integer(sup->started_ms > 0 ? ctx.wall_now - sup->started_ms : 0), ok);
	put(root, "backend", json_string(config_backend_name(cfg != NULL ? cfg->backend : BACKEND_SPOOL)), ok);
	put(root, "config_file", string_or_null(cfg != NULL && cfg->file != NULL ? cfg->file : sup->config_path), ok);
	/* Where `droverctl -s SOCKET submit` writes: the spool behind this socket, not its own config's. */
	put(root, "spool_dir", cfg != NULL && cfg->backend == BACKEND_SPOOL ? string_or_null(cfg->spool_dir) : json_null(),
	    ok);
	put(root, "config_generation", json_integer(sup->generation), ok);
	put(root, "reloads", json_integer(sup->reloads), ok);
	put(root, "last_reload", string_or_null(sup->last_reload), ok);
	put(root, "last_reload_changes", reload_changes(sup, ok), ok);
	put(root, "stopping", json_boolean(sup->stopping), ok);
	put(root, "http", http_of(sup, ok), ok);
	put(root, "paused", json_boolean(sup->scoreboard != NULL && scoreboard_intake_paused_in(sup->scoreboard)), ok);
	put(root, "workers_desired", json_integer(supervisor_workers_desired(sup)), ok);
	put(root, "workers_alive", json_integer(supervisor_workers_alive(sup)), ok);
	put(root, "jobs", jobs_totals(&totals, ok), ok);
	put(root, "jobs_lost", json_integer((json_int_t)sup->jobs_lost), ok);
	put(root, "backlog", backlog_json(sup, &totals.load, ctx.wall_now, ok), ok);
	put(root, "saturation", saturation_json(sup, &totals, ok), ok);
	put(root, "workers", ctx.workers, ok);
	char *text = ctx.ok ? dump_line(root) : NULL;
	json_decref(root);
	return text;
}

/* ---- droverctl jobs: the running jobs and the lag, across the workers ---- */

struct running_ctx {
	json_t *running;
	json_t *lag;
	long long lag_total;
	bool ok;
};

static int running_visit(void *arg, const struct slot_view *view, const struct scoreboard_slot *live)
{
	struct running_ctx *ctx = arg;
	json_t *jobs = jobs_of(live, &ctx->ok);
	size_t i;
	json_t *job;
	for (i = 0; i < json_array_size(jobs) && (job = json_array_get(jobs, i)) != NULL; i++) {
		put(job, "worker", json_integer(view->slot), &ctx->ok);
		append(ctx->running, json_incref(job), &ctx->ok);
	}
	json_decref(jobs);
	if (ctx->lag == NULL || live == NULL)
		return ctx->ok ? 0 : -1;
	json_t *kafka = kafka_of(live, &ctx->ok);
	json_t *partitions = json_object_get(kafka, "partitions");
	for (i = 0; i < json_array_size(partitions) && (job = json_array_get(partitions, i)) != NULL; i++) {
		put(job, "worker", json_integer(view->slot), &ctx->ok);
		append(ctx->lag, json_incref(job), &ctx->ok);
	}
	ctx->lag_total += json_integer_value(json_object_get(kafka, "lag"));
	json_decref(kafka);
	return ctx->ok ? 0 : -1;
}

int stats_running(const struct supervisor *sup, json_t **running, json_t **lag, long long *lag_total)
{
	bool kafka = sup->cfg != NULL && queue_ops_for(sup->cfg)->has_partitions;
	struct running_ctx ctx = { .running = json_array(), .lag = kafka ? json_array() : NULL, .ok = true };
	struct totals totals;
	if (ctx.running == NULL || (kafka && ctx.lag == NULL) || for_each_slot(sup, &totals, running_visit, &ctx) < 0) {
		json_decref(ctx.running);
		json_decref(ctx.lag);
		return -1;
	}
	*running = ctx.running;
	*lag = ctx.lag;
	*lag_total = ctx.lag_total;
	return 0;
}

/* ---- health ------------------------------------------------------------- */

struct health_ctx {
	bool progress;        /* some worker can take jobs */
	char fault[SCOREBOARD_FAULT_MAX + 32];
	char last_exit[64];
	int backoff;
};

static int health_visit(void *arg, const struct slot_view *view, const struct scoreboard_slot *live)
{
	struct health_ctx *ctx = arg;
	if (in_fault(live)) {
		if (ctx->fault[0] == '\0')
			snprintf(ctx->fault, sizeof(ctx->fault), "worker %d: %.*s", view->slot, (int)sizeof(live->fault),
				 live->fault);
		return 0;
	}
	if (view->pid > 0 && (view->state == SLOT_STARTING || view->state == SLOT_RUNNING))
		ctx->progress = true;
	if (view->state == SLOT_FAILED && ctx->fault[0] == '\0')
		snprintf(ctx->fault, sizeof(ctx->fault), "worker %d: %s; not restarted until a reload or scale",
			 view->slot, view->last_exit);
	if (view->state == SLOT_BACKOFF) {
		ctx->backoff++;
		snprintf(ctx->last_exit, sizeof(ctx->last_exit), "%s", view->last_exit);
	}
	return 0;
}

bool stats_health(const struct supervisor *sup, bool check_queue, char *why, size_t len)
{
	struct health_ctx ctx = { .progress = false };
	struct totals totals;
	why[0] = '\0';
	if (sup->stopping)
		return true; /* stopping is no fault */
	if (for_each_slot(sup, &totals, health_visit, &ctx) < 0) {
		snprintf(why, len, "out of memory");
		return false;
	}
	if (!ctx.progress) {
		if (ctx.fault[0] != '\0')
			snprintf(why, len, "no worker can make progress: %s", ctx.fault);
		else if (ctx.backoff > 0)
			snprintf(why, len, "no worker can make progress: every worker is restarting (last exit: %s)",
				 ctx.last_exit[0] != '\0' ? ctx.last_exit : "unknown");
		else
			snprintf(why, len, "no worker can make progress: none is running");
		return false;
	}
	if (stalled(sup)) {
		const struct progress_watch *p = &sup->progress;
		snprintf(why, len, "pool stalled: %lld job(s) waiting, %lld of %lld job slots free, no job started for "
			 "%lld ms (stall_timeout_ms %lld)", p->waiting, p->free_slots, p->job_slots, stalled_ms(sup),
			 sup->cfg->stall_timeout_ms);
		return false;
	}
	const struct queue_ops *queue = queue_ops_for(sup->cfg);
	if (check_queue && queue->probe != NULL && queue->probe(sup->cfg, why, len) < 0)
		return false;
	return true;
}

void stats_watch_progress(struct supervisor *sup)
{
	struct totals totals;
	if (for_each_slot(sup, &totals, NULL, NULL) < 0)
		return; /* out of memory: judge next time */
	const struct load *load = &totals.load;
	struct progress_watch *p = &sup->progress;
	/*
	 * Spool only: Kafka's lag also counts messages in flight and finished
	 * ones waiting for an older offset's commit, and a partition's
	 * max_uncommitted window holds back takes behind a long job by design.
	 */
	bool spool = sup->cfg != NULL && !backlog_is_lag(sup->cfg);
	bool stuck = spool && load->waiting_known && load->waiting > 0 && load->busy < load->job_slots;
	/* Failed counts too: a job refused before any start (not JSON, a bad id) is progress. */
	uint64_t moved = totals.counters.started + totals.counters.failed;
	if (!stuck || moved != p->started)
		p->since_ms = 0;
	else if (p->since_ms == 0)
		p->since_ms = now_ms();
	p->started = moved;
	p->waiting = load->waiting;
	p->free_slots = load->job_slots - load->busy;
	p->job_slots = load->job_slots;
}

/* ---- metrics (Prometheus text format 0.0.4) ----------------------------- */

static void write_label_value(FILE *out, const char *value, size_t cap)
{
	for (size_t i = 0; i < cap && value[i] != '\0'; i++) {
		char ch = value[i];
		if (ch == '\\')
			fputs("\\\\", out);
		else if (ch == '"')
			fputs("\\\"", out);
		else if (ch == '\n')
			fputs("\\n", out);
		else
			fputc(ch, out);
	}
}

static void write_header(FILE *out, const char *name, const char *type, const char *help)
{
	fprintf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void write_histogram(FILE *out, const struct scoreboard_counters *c)
{
	write_header(out, "drover_job_duration_seconds", "histogram", "Duration of finished job attempts.");
	/* The scoreboard keeps one count per bucket; Prometheus buckets are cumulative. */
	uint64_t cumulative = 0;
	for (int i = 0; i < SCOREBOARD_DURATION_BUCKETS; i++) {
		cumulative += c->duration_buckets[i];
		fprintf(out, "drover_job_duration_seconds_bucket{le=\"%g\"} %" PRIu64 "\n", scoreboard_duration_bounds[i],
			cumulative);
	}
	cumulative += c->duration_buckets[SCOREBOARD_DURATION_BUCKETS];
	fprintf(out, "drover_job_duration_seconds_bucket{le=\"+Inf\"} %" PRIu64 "\n", cumulative);
	fprintf(out, "drover_job_duration_seconds_sum %.6f\n", c->duration_sum_s);
	fprintf(out, "drover_job_duration_seconds_count %" PRIu64 "\n", cumulative);
}

/* Consumer lag per assigned partition; a partition seen twice (mid-rebalance) is reported once. */
struct lag_ctx {
	FILE *out;
	bool header_done;
	struct seen {
		char topic[SCOREBOARD_TOPIC_MAX];
		int32_t partition;
	} *seen;
	size_t seen_count, seen_cap;
};

static bool lag_seen(struct lag_ctx *ctx, const struct scoreboard_partition *p)
{
	for (size_t i = 0; i < ctx->seen_count; i++)
		if (ctx->seen[i].partition == p->partition && strncmp(ctx->seen[i].topic, p->topic, SCOREBOARD_TOPIC_MAX) == 0)
			return true;
	if (ctx->seen_count == ctx->seen_cap) {
		size_t cap = ctx->seen_cap ? ctx->seen_cap * 2 : 64;
		void *grown = realloc(ctx->seen, cap * sizeof(*ctx->seen));
		if (grown == NULL)
			return true; /* skipping a sample is better than a duplicate series */
		ctx->seen = grown;
		ctx->seen_cap = cap;
	}
	memcpy(ctx->seen[ctx->seen_count].topic, p->topic, SCOREBOARD_TOPIC_MAX);
	ctx->seen[ctx->seen_count].partition = p->partition;
	ctx->seen_count++;
	return false;
}

static int lag_visit(void *arg, const struct slot_view *view, const struct scoreboard_slot *live)
{
	struct lag_ctx *ctx = arg;
	if (live == NULL)
		return 0;
	int count = live->partition_count > SCOREBOARD_PARTITIONS ? SCOREBOARD_PARTITIONS : live->partition_count;
	for (int i = 0; i < count; i++) {
		const struct scoreboard_partition *p = &live->partitions[i];
		if (p->lag < 0 || p->topic[0] == '\0' || lag_seen(ctx, p))
			continue;
		if (!ctx->header_done) {
			write_header(ctx->out, "drover_kafka_consumer_lag", "gauge",
				     "Messages behind the high watermark, per assigned partition.");
			ctx->header_done = true;
		}
		fputs("drover_kafka_consumer_lag{topic=\"", ctx->out);
		write_label_value(ctx->out, p->topic, sizeof(p->topic));
		fprintf(ctx->out, "\",partition=\"%d\"} %" PRId64 "\n", p->partition, p->lag);
	}
	return 0;
}

/* drover_worker_fault: one series per live worker in fault (none when all is well). */
struct fault_ctx {
	FILE *out;
	bool header_done;
};

static int fault_visit(void *arg, const struct slot_view *view, const struct scoreboard_slot *live)
{
	struct fault_ctx *ctx = arg;
	if (!in_fault(live))
		return 0;
	if (!ctx->header_done) {
		write_header(ctx->out, "drover_worker_fault", "gauge",
			     "1 per worker that takes no jobs because of a pool fault, by cause (handler, queue).");
		ctx->header_done = true;
	}
	fprintf(ctx->out, "drover_worker_fault{slot=\"%d\",cause=\"%s\"} 1\n", view->slot, fault_cause(live->fault));
	return 0;
}

/* Backlog, saturation, faults by cause, slow jobs and the stall check. */
static void write_saturation(FILE *out, const struct supervisor *sup, const struct totals *t)
{
	const struct load *load = &t->load;
	bool spool = sup->cfg == NULL || !backlog_is_lag(sup->cfg);
	if (load->waiting_known) {
		write_header(out, "drover_jobs_waiting", "gauge", "Jobs waiting in the queue (spool: incoming/; Kafka: the summed lag).");
		fprintf(out, "drover_jobs_waiting %lld\n", load->waiting);
	}
	if (spool && load->waiting_known) {
		long long now = wall_ms();
		write_header(out, "drover_oldest_waiting_job_age_seconds", "gauge",
			     "Age of the oldest job waiting in incoming/ (0 when none waits).");
		fprintf(out, "drover_oldest_waiting_job_age_seconds %.3f\n",
			load->oldest_ms > 0 && now > load->oldest_ms ? (double)(now - load->oldest_ms) / 1000.0 : 0.0);
	}
	write_header(out, "drover_job_slots", "gauge", "Job slots of running workers without a fault (workers x max_concurrent).");
	fprintf(out, "drover_job_slots %lld\n", load->job_slots);
	write_header(out, "drover_job_slots_busy", "gauge", "Of those, slots holding a job.");
	fprintf(out, "drover_job_slots_busy %lld\n", load->busy);
	write_header(out, "drover_worker_at_capacity_seconds_total", "counter",
		     "Seconds workers spent with every job slot taken, summed over workers.");
	fprintf(out, "drover_worker_at_capacity_seconds_total %.3f\n", (double)t->counters.at_capacity_ms / 1000.0);
	write_header(out, "drover_faults", "gauge", "Workers in a pool fault, by cause.");
	for (int c = 0; c < FAULT_CAUSES; c++)
		fprintf(out, "drover_faults{cause=\"%s\"} %d\n", fault_cause_names[c], load->faults[c]);
	write_header(out, "drover_jobs_slow", "gauge", "Handlers running past slow_job_ms now.");
	fprintf(out, "drover_jobs_slow %lld\n", load->slow_running);
	write_header(out, "drover_jobs_slow_total", "counter", "Attempts that ran past slow_job_ms.");
	fprintf(out, "drover_jobs_slow_total %" PRIu64 "\n", t->counters.slow);
	write_header(out, "drover_pool_stalled", "gauge",
		     "1 while jobs wait, job slots are free and no job started for stall_timeout_ms.");
	fprintf(out, "drover_pool_stalled %d\n", stalled(sup) ? 1 : 0);
}

static void write_counters(FILE *out, const struct supervisor *sup, const struct totals *t)
{
	write_header(out, "drover_up", "gauge", "1 while the supervisor runs.");
	fputs("drover_up 1\n", out);
	write_header(out, "drover_build_info", "gauge", "The running binary's version (a binary upgrade changes it).");
	fprintf(out, "drover_build_info{version=\"%s\"} 1\n", DROVER_VERSION);
	write_header(out, "drover_workers", "gauge", "Worker slots by state.");
	for (int s = 0; s < SLOT_STATE_COUNT; s++)
		fprintf(out, "drover_workers{state=\"%s\"} %d\n", slot_state_name((enum slot_state)s), t->by_state[s]);
	fprintf(out, "drover_workers{state=\"fault\"} %d\n", t->in_fault);
	write_header(out, "drover_intake_paused", "gauge", "1 while intake is paused (droverctl pause).");
	fprintf(out, "drover_intake_paused %d\n", sup->scoreboard != NULL && scoreboard_intake_paused_in(sup->scoreboard));
	write_header(out, "drover_workers_desired", "gauge", "Configured number of workers.");
	fprintf(out, "drover_workers_desired %d\n", supervisor_workers_desired(sup));
	write_header(out, "drover_worker_restarts_total", "counter", "Worker restarts since drover started.");
	fprintf(out, "drover_worker_restarts_total %llu\n", t->restarts);
	const struct scoreboard_counters *c = &t->counters;
	write_header(out, "drover_jobs_started_total", "counter", "Job attempts started.");
	fprintf(out, "drover_jobs_started_total %" PRIu64 "\n", c->started);
	write_header(out, "drover_jobs_total", "counter", "Finished jobs and retried attempts by outcome.");
	fprintf(out, "drover_jobs_total{outcome=\"completed\"} %" PRIu64 "\n", c->completed);
	fprintf(out, "drover_jobs_total{outcome=\"failed\"} %" PRIu64 "\n", c->failed);
	fprintf(out, "drover_jobs_total{outcome=\"timed_out\"} %" PRIu64 "\n", c->timed_out);
	fprintf(out, "drover_jobs_total{outcome=\"retried\"} %" PRIu64 "\n", c->retried);
	write_header(out, "drover_jobs_in_flight", "gauge", "Jobs running now.");
	fprintf(out, "drover_jobs_in_flight %lld\n", t->in_flight);
	write_header(out, "drover_jobs_lost_total", "counter", "In-flight jobs of workers that died (they run again).");
	fprintf(out, "drover_jobs_lost_total %" PRIu64 "\n", sup->jobs_lost);
	if (sup->cfg != NULL && sup->cfg->handler_mode == HANDLER_MODE_PERSISTENT) {
		write_header(out, "drover_handler_processes_total", "counter",
			     "Persistent handler processes restarted, recycled, killed for a protocol violation.");
		fprintf(out, "drover_handler_processes_total{event=\"restarted\"} %" PRIu64 "\n", c->handler_restarts);
		fprintf(out, "drover_handler_processes_total{event=\"recycled\"} %" PRIu64 "\n", c->handler_recycles);
		fprintf(out, "drover_handler_processes_total{event=\"protocol_error\"} %" PRIu64 "\n",
			c->handler_protocol_errors);
	}
	if (sup->cfg != NULL && queue_ops_for(sup->cfg)->has_partitions) {
		write_header(out, "drover_kafka_hold_backs_total", "counter",
			     "Times a partition stopped taking jobs while its offset commits stalled.");
		fprintf(out, "drover_kafka_hold_backs_total %" PRIu64 "\n", c->kafka_hold_backs);
	}
	write_histogram(out, c);
	write_saturation(out, sup, t);
	write_header(out, "drover_reloads_total", "counter", "Configuration reloads applied.");
	fprintf(out, "drover_reloads_total %u\n", sup->reloads);
	write_header(out, "drover_config_generation", "gauge", "Generation of the running configuration.");
	fprintf(out, "drover_config_generation %u\n", sup->generation);
}

char *stats_metrics(const struct supervisor *sup)
{
	char *text = NULL;
	size_t len = 0;
	FILE *out = open_memstream(&text, &len);
	if (out == NULL)
		return NULL;
	struct totals totals;
	struct lag_ctx lag = { .out = out };
	bool kafka = sup->cfg != NULL && queue_ops_for(sup->cfg)->has_partitions;
	/* The lag series come last, so a first pass sums the totals and a second prints them. */
	struct fault_ctx faults = { .out = out };
	int rc = for_each_slot(sup, &totals, NULL, NULL);
	if (rc == 0) {
		write_counters(out, sup, &totals);
		rc = for_each_slot(sup, &totals, fault_visit, &faults);
	}
	if (rc == 0) {
		if (kafka)
			rc = for_each_slot(sup, &totals, lag_visit, &lag);
	}
	free(lag.seen);
	if (fclose(out) != 0 || rc < 0) {
		free(text);
		return NULL;
	}
	return text;
}
