/*
 * supervisor: the master's actions and signals. Each signal and its control
 * command run the same function (reload, scale, stop), and signal watchers
 * only feed the libev loop: no work happens in a signal handler.
 */
#include "supervisor/supervisor.h"
#include "supervisor/control.h"
#include "supervisor/http.h"
#include "shared/log.h"
#include "supervisor/notify.h"
#include "supervisor/pool.h"
#include "queue/source.h"
#include "supervisor/stats.h"
#include "supervisor/upgrade.h"
#include "shared/util.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sysexits.h>

/* How often the service manager's status line is refreshed. */
#define STATUS_INTERVAL_S 5.0
/* How often the stall check of health looks at the pool. */
#define PROGRESS_INTERVAL_S 1.0

/* ---- reload ---------------------------------------------------------------- */

static void reload_change_add(struct supervisor *sup, const char *key, const char *result)
{
	if (sup->reload_change_count == RELOAD_CHANGES_MAX)
		return;
	struct reload_change *change = &sup->reload_changes[sup->reload_change_count++];
	snprintf(change->key, sizeof(change->key), "%s", key);
	change->result = result;
}

/* A refused file: every "[section] key" its errors name is rejected (config.h's error format). */
static void reload_record_rejected(struct supervisor *sup, const struct config_errors *errors)
{
	sup->reload_change_count = 0;
	for (size_t i = 0; i < errors->count; i++) {
		const char *open = strstr(errors->lines[i], ": [");
		const char *key = open != NULL ? open + 2 : NULL;
		const char *end = key != NULL ? strstr(key, ": ") : NULL;
		if (end == NULL || (size_t)(end - key) >= sizeof(sup->reload_changes[0].key))
			continue;
		char name[sizeof(sup->reload_changes[0].key)];
		snprintf(name, sizeof(name), "%.*s", (int)(end - key), key);
		reload_change_add(sup, name, "rejected");
	}
}

/*
 * The supervisor's own part of the logging keys, first, so that the lines of
 * this reload are already written as configured. Returns false when the new
 * log file cannot be opened (the old one stays).
 */
static bool apply_logging(const struct config *old, const struct config *next)
{
	log_set_level(next->log_level);
	log_set_format(next->log_format);
	if (strcmp(old->log_file, next->log_file) != 0 && log_open(next->log_file) < 0) {
		log_warn("reload: cannot open log file %s; keeping the old one", next->log_file);
		return false;
	}
	return true;
}

struct reload_apply {
	struct supervisor *sup;
	bool log_file_failed;
};

/*
 * One changed key: its scope in the option table says what happens to it.
 * The supervisor reads its other settings (workers, delays, timeouts, the
 * queue) from sup->cfg when it uses them, so installing the new config
 * applies them.
 */
static void apply_change(void *arg, const char *key, unsigned scope)
{
	struct reload_apply *ctx = arg;
	const char *result;
	if (scope & CONFIG_SCOPE_START) {
		log_warnx("reload: %s changed; it takes effect at the next start", key);
		result = "needs restart";
	} else if (ctx->log_file_failed && strcmp(key, "[supervisor] log_file") == 0) {
		result = "rejected";
	} else {
		result = (scope & CONFIG_SCOPE_WORKERS) ? "workers replaced" : "applied";
	}
	log_info("reload: %s: %s", key, result);
	reload_change_add(ctx->sup, key, result);
}

static int reload_refused(struct supervisor *sup, struct config_errors *errors, char *err, size_t errlen)
{
	for (size_t i = 0; i < errors->count; i++)
		log_error("reload: %s", errors->lines[i]);
	config_errors_join(errors, sup->last_reload, sizeof(sup->last_reload));
	reload_record_rejected(sup, errors);
	config_errors_clear(errors);
	log_error("reload refused; the running configuration stays in force");
	snprintf(err, errlen, "%s", sup->last_reload);
	notify_ready("reload refused");
	return -1;
}

int supervisor_reload(struct supervisor *sup, char *err, size_t errlen)
{
	struct config_errors errors = { 0 };

	if (sup->stopping || sup->upgrading) {
		snprintf(err, errlen, sup->stopping ? "stopping" : "upgrading");
		return -1;
	}
	notify_reloading();
	log_info("reloading %s", sup->config_path);
	struct config *next = queue_config_load(sup->config_path, &errors);
	if (config_hide_secrets() < 0) /* normally a no-op: start-up took them out already */
		log_warnx("reload: cannot remove every secret from the environment (out of memory)");
	if (next == NULL)
		return reload_refused(sup, &errors, err, errlen);
	struct config *old = sup->cfg;
	struct reload_apply ctx = { .sup = sup, .log_file_failed = !apply_logging(old, next) };
	sup->reload_change_count = 0;
	bool workers_unchanged = (config_changed_scopes(old, next) & CONFIG_SCOPE_WORKERS) == 0;
	config_diff(old, next, apply_change, &ctx);
	sup->cfg = next;
	config_free(old);
	sup->generation++;
	sup->reloads++;
	snprintf(sup->last_reload, sizeof(sup->last_reload), "ok");
	if (workers_unchanged)
		pool_adopt_generation(sup->pool);
	pool_scale(sup->pool, next->workers);
	if (!workers_unchanged)
		pool_replace_outdated(sup->pool);
	log_info("configuration generation %u applied (%s)", sup->generation,
	         workers_unchanged ? "workers keep running" : "workers are replaced one at a time");
	notify_ready("reloaded");
	return 0;
}

/* ---- scale ----------------------------------------------------------------- */

int supervisor_scale(struct supervisor *sup, int workers, char *err, size_t errlen)
{
	if (sup->stopping || sup->upgrading) {
		snprintf(err, errlen, sup->stopping ? "stopping" : "upgrading");
		return -1;
	}
	if (workers < 1 || workers > CONFIG_MAX_WORKERS) {
		snprintf(err, errlen, "workers must be 1..%d", CONFIG_MAX_WORKERS);
		return -1;
	}
	log_info("scaling to %d worker(s)", workers);
	pool_scale(sup->pool, workers);
	return 0;
}

/* ---- stop ------------------------------------------------------------------ */

/* One stage of the whole pool's stop ladder (escalate.h): every worker gets its signal. */
static void supervisor_stop_stage(void *arg, enum escalate_stage stage, int signo, bool timed_out)
{
	struct supervisor *sup = arg;
	switch (stage) {
	case ESCALATE_TERM:
		log_info("graceful stop: draining workers (up to %lld ms)", sup->cfg->shutdown_timeout_ms);
		pool_stop(sup->pool, STOP_GRACEFUL);
		break;
	case ESCALATE_QUIT:
		if (timed_out)
			log_warnx("shutdown timeout (%lld ms): stopping the jobs still running; they will run again",
			          sup->cfg->shutdown_timeout_ms);
		log_info("fast stop: stopping running jobs");
		pool_stop(sup->pool, STOP_FAST);
		break;
	case ESCALATE_KILL:
		log_error("workers did not exit after QUIT; killing them");
		pool_kill_all(sup->pool);
		break;
	case ESCALATE_IDLE:
		break;
	}
}

/* A second TERM/INT, or QUIT while draining, stops at once; anything later changes nothing. */
void supervisor_stop(struct supervisor *sup, enum stop_mode mode)
{
	if (sup->upgrading) {
		/* The control socket answers again during the drain. */
		log_warnx("upgrade abandoned: stopping");
		sup->upgrading = false;
		control_resume(sup->control);
	}
	if (sup->stopping) {
		mode = STOP_FAST;
	} else {
		sup->stopping = true;
		notify_stopping();
	}
	escalate_to_cfg(&sup->stop, mode == STOP_FAST ? ESCALATE_QUIT : ESCALATE_TERM, sup->cfg);
}

void supervisor_workers_gone(struct supervisor *sup)
{
	log_info("all workers have exited");
	escalate_cancel(&sup->stop);
	ev_break(sup->loop, EVBREAK_ALL);
}

/* ---- binary upgrade ------------------------------------------------------ */

static int supervisor_handover(struct supervisor *sup, struct handover *h, char *err, size_t errlen)
{
	memset(h, 0, sizeof(*h));
	if (pool_handover(sup->pool, h, err, errlen) < 0)
		return -1;
	h->scoreboard_fd = scoreboard_fd(sup->scoreboard);
	h->control_fd = control_fd(sup->control);
	h->pid_fd = sup->pid_fd;
	h->log_fd = log_fd() != STDERR_FILENO ? log_fd() : -1;
	h->http_fd = http_listen_fd(sup->http);
	h->generation = sup->generation;
	h->started_ms = sup->started_ms;
	if (h->scoreboard_fd < 0 || h->control_fd < 0) {
		snprintf(err, errlen, "the scoreboard or the control socket has no fd to hand over");
		return -1;
	}
	/* The counters of workers gone so far live on in the new image. */
	struct scoreboard_carry *carry = scoreboard_carry(sup->scoreboard);
	carry->retired = sup->retired;
	carry->jobs_lost = sup->jobs_lost;
	carry->restarts_retired = sup->restarts_retired;
	return 0;
}

/* Called by the control socket once no client is left: exec, or stay and say why. */
static void supervisor_upgrade_now(struct supervisor *sup)
{
	char err[1024];
	struct handover h;
	if (!sup->upgrading)
		return; /* abandoned by a stop */
	sup->upgrading = false;
	if (supervisor_handover(sup, &h, err, sizeof(err)) == 0) {
		log_info("upgrade: executing %s (%d worker(s) handed over)", upgrade_binary(), h.slot_count);
		notify_reloading();
		upgrade_exec(&h, sup->config_path, err, sizeof(err));
		notify_ready("upgrade failed");
	}
	log_error("upgrade failed; this image keeps running: %s", err);
	control_resume(sup->control);
}

int supervisor_upgrade(struct supervisor *sup, char *err, size_t errlen)
{
	struct handover h;
	if (sup->stopping || sup->upgrading) {
		snprintf(err, errlen, sup->stopping ? "stopping" : "an upgrade is already under way");
		return -1;
	}
	log_info("upgrade: checking %s", upgrade_binary());
	if (pool_handover(sup->pool, &h, err, errlen) < 0 || upgrade_check(sup->config_path, err, errlen) < 0) {
		log_error("upgrade refused; this image keeps running: %s", err);
		return -1;
	}
	sup->upgrading = true;
	control_quiesce(sup->control, supervisor_upgrade_now);
	return 0;
}

/* ---- slot views for stats ------------------------------------------------- */

int supervisor_slot_count(const struct supervisor *sup)
{
	return pool_slot_count(sup->pool);
}

bool supervisor_slot_view(const struct supervisor *sup, int slot, struct slot_view *view)
{
	return pool_view(sup->pool, slot, view);
}

int supervisor_workers_desired(const struct supervisor *sup)
{
	return pool_desired(sup->pool);
}

int supervisor_workers_alive(const struct supervisor *sup)
{
	return pool_alive(sup->pool);
}

/* ---- signals ------------------------------------------------------------- */

static void supervisor_signal_cb(struct ev_loop *loop, ev_signal *watcher, int revents)
{
	struct supervisor *sup = watcher->data;
	char err[256];
	int desired = pool_desired(sup->pool);

	switch (watcher->signum) {
	case SIGTERM:
	case SIGINT:
		supervisor_stop(sup, STOP_GRACEFUL);
		break;
	case SIGQUIT:
		supervisor_stop(sup, STOP_FAST);
		break;
	case SIGHUP:
		(void)supervisor_reload(sup, err, sizeof(err));
		break;
	case SIGUSR1:
		if (log_reopen() < 0)
			log_warn("cannot reopen the log file");
		else
			log_info("log file reopened");
		pool_signal_all(sup->pool, SIGUSR1);
		break;
	case SIGTTIN:
		if (supervisor_scale(sup, desired + 1, err, sizeof(err)) < 0)
			log_warnx("TTIN ignored: %s", err);
		break;
	case SIGTTOU:
		if (supervisor_scale(sup, desired - 1, err, sizeof(err)) < 0)
			log_warnx("TTOU ignored: %s", err);
		break;
	case SIGUSR2:
		(void)supervisor_upgrade(sup, err, sizeof(err)); /* a refusal is logged */
		break;
	default:
		break;
	}
}

static void supervisor_watch_signals(struct supervisor *sup)
{
	static const int signals[] = { SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2, SIGTTIN, SIGTTOU };
	_Static_assert(ARRAY_LEN(signals) <= ARRAY_LEN(((struct supervisor *)0)->signals), "room for every watcher");
	for (size_t i = 0; i < ARRAY_LEN(signals); i++) {
		ev_signal_init(&sup->signals[i], supervisor_signal_cb, signals[i]);
		sup->signals[i].data = sup;
		ev_signal_start(sup->loop, &sup->signals[i]);
	}
}

static void supervisor_status_cb(struct ev_loop *loop, ev_timer *timer, int revents)
{
	struct supervisor *sup = timer->data;
	char status[128];
	int in_flight = 0;
	/* Live slots only: a read of a memfd page never written allocates it (256 slots, a page each). */
	for (int i = 0; i < pool_slot_count(sup->pool); i++)
		in_flight += __atomic_load_n(&scoreboard_slot(sup->scoreboard, i)->in_flight, __ATOMIC_RELAXED);
	snprintf(status, sizeof(status), "%d/%d workers, %d jobs in flight", pool_alive(sup->pool),
	         pool_desired(sup->pool), in_flight);
	notify_status(status);
}

static void supervisor_progress_cb(struct ev_loop *loop, ev_timer *timer, int revents)
{
	stats_watch_progress(timer->data);
}

void supervisor_start(struct supervisor *sup)
{
	escalate_init(&sup->stop, sup->loop, supervisor_stop_stage, sup);
	ev_timer_init(&sup->status_timer, supervisor_status_cb, STATUS_INTERVAL_S, STATUS_INTERVAL_S);
	sup->status_timer.data = sup;
	ev_timer_start(sup->loop, &sup->status_timer);
	ev_timer_init(&sup->progress_timer, supervisor_progress_cb, PROGRESS_INTERVAL_S, PROGRESS_INTERVAL_S);
	sup->progress_timer.data = sup;
	ev_timer_start(sup->loop, &sup->progress_timer);
	supervisor_watch_signals(sup);
	control_start(sup->control);
	http_start(sup->http);
	pool_start(sup->pool);
}

int supervisor_serve(struct supervisor *sup)
{
	char status[128];

	snprintf(status, sizeof(status), "%d workers on the %s queue", sup->cfg->workers,
	         config_backend_name(sup->cfg->backend));
	notify_ready(status);
	log_info("drover %s ready: %s", DROVER_VERSION, status);
	ev_run(sup->loop, 0);
	ev_timer_stop(sup->loop, &sup->status_timer);
	ev_timer_stop(sup->loop, &sup->progress_timer);
	return EX_OK;
}
