/*
 * jobctl: the control socket's per-job commands (droverctl jobs, cancel,
 * retry, pause, resume). What runs is read from the scoreboard; what waits
 * or failed is the queue's business (queue_ops jobs, cancel_queued,
 * retry_failed), so nothing here names a backend.
 *
 * Workers are asked through the scoreboard's requests (scoreboard.h): the
 * supervisor writes a cancel request or the pause flag there and pokes the
 * worker with SCOREBOARD_POKE_SIGNAL. That channel needs no fd per worker to
 * create, inherit and close across forks and restarts, the pause flag is
 * already there for a worker started later (so a pause survives restarts and
 * reloads with no handshake), and a lost poke is made up by the worker's
 * next heartbeat, which rereads the requests.
 *
 * The queue's part (listing the spool, moving one file) is a few bounded
 * directory reads and fsyncs run on the supervisor's loop: an operator's
 * command, not a hot path.
 */
#include "supervisor/jobctl.h"
#include "queue/events.h"
#include "queue/source.h"
#include "shared/log.h"
#include "shared/util.h"
#include "supervisor/stats.h"
#include "supervisor/supervisor.h"

#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define JOBS_QUEUED_SHOWN 100
#define JOBS_FAILED_SHOWN 20

/* ---- failures the workers saw (Kafka has no failed/ to list) -------------- */

void jobctl_keep_failures(struct supervisor *sup, const struct scoreboard_slot *copy)
{
	uint32_t kept = copy->failure_count < SCOREBOARD_FAILURES ? copy->failure_count : SCOREBOARD_FAILURES;
	for (uint32_t n = copy->failure_count - kept; n < copy->failure_count; n++) /* oldest first */
		sup->failures[sup->failure_count++ % SUPERVISOR_FAILURES] = copy->failures[n % SCOREBOARD_FAILURES];
}

static int newest_failure_first(const void *a, const void *b)
{
	const struct scoreboard_failure *x = a, *y = b;
	return x->failed_ms == y->failed_ms ? 0 : x->failed_ms < y->failed_ms ? 1 : -1;
}

/* Appends the failures of every live worker's ring to all (room for them is there); the number added. */
static size_t collect_live_failures(const struct supervisor *sup, struct scoreboard_failure *all)
{
	static struct scoreboard_slot copy; /* large: off the stack */
	size_t n = 0;
	for (int i = 0; i < supervisor_slot_count(sup); i++) {
		struct slot_view view;
		if (!supervisor_slot_view(sup, i, &view) || view.pid <= 0)
			continue;
		scoreboard_read_slot(scoreboard_slot(sup->scoreboard, i), &copy);
		for (int k = 0; copy.pid == view.pid && k < SCOREBOARD_FAILURES; k++)
			if (copy.failures[k].failed_ms != 0)
				all[n++] = copy.failures[k];
	}
	return n;
}

static json_t *failure_json(const struct scoreboard_failure *f)
{
	char when[40];
	event_format_time(f->failed_ms, when, sizeof(when));
	json_t *id = json_stringn(f->id, strnlen(f->id, sizeof(f->id)));
	return json_pack("{s:o, s:s, s:i, s:s}", "id", id != NULL ? id : json_string("?"), "reason", f->reason,
	                 "attempts", f->attempts, "failed_at", when);
}

/* {"count", "jobs"}: the failures this supervisor's workers saw, newest first (live rings and exited workers'). */
static json_t *failures_seen(const struct supervisor *sup)
{
	size_t cap = SUPERVISOR_FAILURES + (size_t)supervisor_slot_count(sup) * SCOREBOARD_FAILURES;
	struct scoreboard_failure *all = calloc(cap, sizeof(*all));
	if (all == NULL)
		return NULL;
	size_t n = 0;
	for (int i = 0; i < SUPERVISOR_FAILURES; i++)
		if (sup->failures[i].failed_ms != 0)
			all[n++] = sup->failures[i];
	n += collect_live_failures(sup, all + n);
	if (n > 1)
		qsort(all, n, sizeof(*all), newest_failure_first);
	json_t *jobs = json_array();
	for (size_t i = 0; jobs != NULL && i < n && i < JOBS_FAILED_SHOWN; i++)
		if (json_array_append_new(jobs, failure_json(&all[i])) < 0) {
			json_decref(jobs);
			jobs = NULL;
		}
	free(all);
	return jobs != NULL ? json_pack("{s:I, s:o}", "count", (json_int_t)n, "jobs", jobs) : NULL;
}

/* ---- jobs ------------------------------------------------------------------ */

/*
 * The queue's waiting and failed jobs; or, for a backend that cannot list
 * (Kafka), the lag of the partitions the workers hold and the failures this
 * supervisor's workers saw (bounded rings: each worker's last
 * SCOREBOARD_FAILURES, and the last SUPERVISOR_FAILURES of workers gone).
 */
static int put_queue_sections(const struct supervisor *sup, json_t *root, json_t *lag, long long lag_total,
                              char *why, size_t len)
{
	const struct queue_ops *queue = queue_ops_for(sup->cfg);
	if (queue->jobs != NULL) {
		json_t *sections = queue->jobs(sup->cfg, JOBS_QUEUED_SHOWN, JOBS_FAILED_SHOWN, why, len);
		if (sections == NULL)
			return -1;
		int rc = json_object_update(root, sections);
		json_decref(sections);
		return rc;
	}
	/* O? takes its own reference to lag: the caller keeps and drops its own. */
	json_t *queued = json_pack("{s:I, s:O?}", "count", (json_int_t)lag_total, "partitions", lag);
	json_t *failed = failures_seen(sup);
	if (queued == NULL || failed == NULL || json_object_set_new(root, "queued", queued) < 0 ||
	    json_object_set_new(root, "failed", failed) < 0) {
		snprintf(why, len, "out of memory");
		return -1;
	}
	return 0;
}

char *jobctl_jobs(const struct supervisor *sup)
{
	json_t *running = NULL, *lag = NULL;
	long long lag_total = 0;
	char why[512] = "out of memory";
	if (stats_running(sup, &running, &lag, &lag_total) < 0)
		return str_printf("error: %s\n", why);
	json_t *root = json_pack("{s:s, s:b, s:o}", "backend", queue_ops_for(sup->cfg)->name, "paused",
	                         scoreboard_intake_paused_in(sup->scoreboard), "running", running);
	int rc = root != NULL ? put_queue_sections(sup, root, lag, lag_total, why, sizeof(why)) : -1;
	json_decref(lag);
	char *text = rc == 0 ? json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(6)) : NULL;
	json_decref(root);
	if (text == NULL)
		return str_printf("error: %s\n", why);
	char *line = str_printf("%s\n", text);
	free(text);
	return line;
}

/* ---- cancel ---------------------------------------------------------------- */

/* Asks every worker whose slot shows job id to stop it; the number asked, *attempt the attempt one runs. */
static int cancel_running(struct supervisor *sup, const char *id, int *slot_out, int *attempt)
{
	struct scoreboard_slot *copy = malloc(sizeof(*copy));
	if (copy == NULL)
		return -1;
	int asked = 0;
	for (int i = 0; i < supervisor_slot_count(sup); i++) {
		struct slot_view view;
		if (!supervisor_slot_view(sup, i, &view) || view.pid <= 0)
			continue;
		scoreboard_read_slot(scoreboard_slot(sup->scoreboard, i), copy);
		for (int j = 0; copy->pid == view.pid && j < CONFIG_MAX_CONCURRENT; j++) {
			if (!scoreboard_job_is(&copy->jobs[j], id))
				continue;
			scoreboard_request_cancel(sup->scoreboard, i, id);
			if (kill(view.pid, SCOREBOARD_POKE_SIGNAL) < 0)
				log_warn("cancel %.200s: cannot poke worker %d (pid %d)", id, i, (int)view.pid);
			*slot_out = i;
			*attempt = copy->jobs[j].attempt;
			asked++;
			break;
		}
	}
	free(copy);
	return asked;
}

/* A job that waits: the queue fails it as cancelled, if it can. */
static char *cancel_queued(struct supervisor *sup, const char *id)
{
	const struct queue_ops *queue = queue_ops_for(sup->cfg);
	if (queue->cancel_queued == NULL)
		return str_printf("error: no job %s is running (a waiting %s job cannot be cancelled)\n", id, queue->name);
	char host[256] = "localhost", why[1024] = "";
	if (gethostname(host, sizeof(host) - 1) < 0)
		snprintf(host, sizeof(host), "localhost");
	/* worker -1: the supervisor itself wrote the outcome (no worker ran it). */
	struct event_origin origin = { .host = host, .worker = -1 };
	switch (queue->cancel_queued(sup->cfg, id, &origin, why, sizeof(why))) {
	case QUEUE_JOB_DONE:
		log_warnx("job %.200s: cancelled before it ran (droverctl cancel)", id);
		return str_printf("ok: %s was waiting; it failed as cancelled\n", id);
	case QUEUE_JOB_UNKNOWN:
		return str_printf("error: no job %s is running or waiting\n", id);
	case QUEUE_JOB_BUSY:
	case QUEUE_JOB_ERROR:
		break;
	}
	return str_printf("error: %s\n", why);
}

char *jobctl_cancel(struct supervisor *sup, const char *id)
{
	int slot = -1, attempt = 0;
	int asked = cancel_running(sup, id, &slot, &attempt);
	if (asked < 0)
		return NULL;
	if (asked == 0)
		return cancel_queued(sup, id);
	log_warnx("job %.200s: cancel asked of worker %d (attempt %d)", id, slot, attempt);
	return str_printf("ok: cancelling %s (attempt %d on worker %d)\n", id, attempt, slot);
}

/* ---- retry ----------------------------------------------------------------- */

char *jobctl_retry(struct supervisor *sup, const char *id)
{
	const struct queue_ops *queue = queue_ops_for(sup->cfg);
	if (queue->retry_failed == NULL)
		return str_printf("error: retry: the %s queue keeps no failed jobs to retry\n", queue->name);
	if (queue->retry_in_client)
		return str_printf("error: retry: on the %s queue droverctl retries the job itself; give it the "
		              "configuration (-c FILE)\n", queue->name);
	char why[1024] = "";
	switch (queue->retry_failed(sup->cfg, id, why, sizeof(why))) {
	case QUEUE_JOB_DONE:
		log_warnx("job %.200s: queued again with its attempts reset (droverctl retry)", id);
		return str_printf("ok: %s is queued again\n", id);
	case QUEUE_JOB_UNKNOWN:
		return str_printf("error: no failed job %s\n", id);
	case QUEUE_JOB_BUSY:
	case QUEUE_JOB_ERROR:
		break;
	}
	return str_printf("error: %s\n", why);
}

/* ---- pause / resume -------------------------------------------------------- */

/* Every live worker rereads the requests now (through the slot table only, so the unit tests can run this). */
static void poke_workers(const struct supervisor *sup)
{
	for (int i = 0; i < supervisor_slot_count(sup); i++) {
		struct slot_view view;
		if (supervisor_slot_view(sup, i, &view) && view.pid > 0 && kill(view.pid, SCOREBOARD_POKE_SIGNAL) < 0)
			log_warn("cannot poke worker %d (pid %d)", i, (int)view.pid);
	}
}

char *jobctl_pause(struct supervisor *sup, bool paused)
{
	bool was = scoreboard_intake_paused_in(sup->scoreboard);
	scoreboard_set_intake_paused(sup->scoreboard, paused);
	poke_workers(sup);
	if (was != paused)
		log_warnx("intake %s (droverctl %s)%s", paused ? "paused" : "resumed", paused ? "pause" : "resume",
		          paused ? "; running jobs go on" : "");
	return str_printf("ok: intake %s\n", paused ? "paused" : "resumed");
}
