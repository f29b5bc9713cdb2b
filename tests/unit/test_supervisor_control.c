/*
 * Unit tests of the control commands (control_execute) and of what `stats`,
 * `metrics` and `health` render, against a slot table and a scoreboard
 * filled in memory. The supervisor's slot table and actions are this file's
 * own (the functions below), so that nothing forks: stats.c and control.c
 * meet the supervisor only through them (supervisor.h).
 */
#include <criterion/criterion.h>

#include "shared/scoreboard.h"
#include "shared/util.h"
#include "supervisor/control.h"
#include "supervisor/stats.h"
#include "supervisor/supervisor.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

TestSuite(control, .timeout = 10);

/* ---- the supervisor as stats and control see it ------------------------ */

#define SLOTS 3
static struct slot_view table[SLOTS];
static int scaled_to, reloads_asked, stops_asked, upgrades_asked;
static const char *reload_error, *upgrade_error;

int supervisor_slot_count(const struct supervisor *sup)
{
	return SLOTS;
}

bool supervisor_slot_view(const struct supervisor *sup, int slot, struct slot_view *view)
{
	if (slot < 0 || slot >= SLOTS)
		return false;
	*view = table[slot];
	return true;
}

int supervisor_workers_desired(const struct supervisor *sup)
{
	return SLOTS;
}

int supervisor_workers_alive(const struct supervisor *sup)
{
	int alive = 0;
	for (int i = 0; i < SLOTS; i++)
		alive += table[i].pid > 0;
	return alive;
}

int supervisor_scale(struct supervisor *sup, int workers, char *err, size_t errlen)
{
	scaled_to = workers;
	return 0;
}

int supervisor_reload(struct supervisor *sup, char *err, size_t errlen)
{
	reloads_asked++;
	if (reload_error == NULL)
		return 0;
	snprintf(err, errlen, "%s", reload_error);
	return -1;
}

int supervisor_upgrade(struct supervisor *sup, char *err, size_t errlen)
{
	upgrades_asked++;
	if (upgrade_error == NULL)
		return 0;
	snprintf(err, errlen, "%s", upgrade_error);
	return -1;
}

void supervisor_stop(struct supervisor *sup, enum stop_mode mode)
{
	cr_assert_eq(mode, STOP_GRACEFUL);
	stops_asked++;
}

/* ---- a pool in memory ----------------------------------------------------- */

static struct supervisor sup;
static struct config cfg;
static char spool[] = "/tmp/drover-unit-control-XXXXXX";
static char spool_tmp[sizeof(spool) + 8];

/* Slot 0 runs two jobs, slot 1 refused its configuration, slot 2 backs off. */
static void setup(void)
{
	cr_assert_not_null(mkdtemp(spool));
	snprintf(spool_tmp, sizeof(spool_tmp), "%s/tmp", spool);
	cr_assert_eq(mkdir(spool_tmp, 0700), 0);
	cfg.backend = BACKEND_SPOOL;
	cfg.spool_dir = spool;
	sup.cfg = &cfg;
	sup.config_path = "/etc/drover/drover.ini";
	sup.generation = 2;
	sup.reloads = 1;
	snprintf(sup.last_reload, sizeof(sup.last_reload), "ok");
	sup.started_ms = wall_ms() - 5000;
	sup.jobs_lost = 3;
	sup.retired.completed = 10;
	sup.scoreboard = scoreboard_create();
	cr_assert_not_null(sup.scoreboard);

	table[0] = (struct slot_view){ .slot = 0, .pid = getpid(), .state = SLOT_RUNNING, .started_ms = wall_ms() };
	table[1] = (struct slot_view){ .slot = 1, .state = SLOT_FAILED, .last_exit = "exit 78: configuration refused" };
	table[2] = (struct slot_view){ .slot = 2, .state = SLOT_BACKOFF, .restarts = 4, .last_exit = "signal 9",
		                       .backoff_until_ms = wall_ms() + 60000 };
	struct scoreboard_slot *board = scoreboard_slot(sup.scoreboard, 0);
	scoreboard_write_begin(board);
	board->pid = getpid();
	board->ready = 1;
	board->handlers_ready = 1; /* an exec-mode worker: ready once its source is */
	board->heartbeat_ms = now_ms();
	board->counters.started = 7;
	board->counters.completed = 5;
	board->counters.failed = 1;
	scoreboard_record_duration(&board->counters, 0.3);
	scoreboard_write_end(board);
	cr_assert_geq(scoreboard_job_add(board, "job-a", 1), 0);
	cr_assert_geq(scoreboard_job_add(board, "job-b", 2), 0);
	scaled_to = reloads_asked = stops_asked = upgrades_asked = 0;
	reload_error = upgrade_error = NULL;
}

static void teardown(void)
{
	char path[sizeof(spool) + 16];
	scoreboard_destroy(sup.scoreboard);
	rmdir(spool_tmp);
	for (size_t i = 0; i < 2; i++) {
		snprintf(path, sizeof(path), "%s/%s", spool, i == 0 ? "incoming" : "failed");
		rmdir(path);
	}
	rmdir(spool);
}

static char *run(const char *line)
{
	char *answer = control_execute(&sup, line);
	cr_assert_not_null(answer, "%s: no answer", line);
	return answer;
}

static void expect(const char *line, const char *answer)
{
	char *got = run(line);
	cr_assert_str_eq(got, answer, "%s", line);
	free(got);
}

/* ---- command parsing ------------------------------------------------------ */

#define COMMANDS "ping, health, stats, metrics, jobs, reload, scale N, stop, upgrade, cancel ID, retry ID, pause, resume"

Test(control, commands_and_their_errors, .init = setup, .fini = teardown)
{
	expect("ping\n", "pong\n");
	expect("  ping  \n", "pong\n");
	expect("", "error: empty command (try: " COMMANDS ")\n");
	expect("ping now\n", "error: ping takes no argument\n");
	expect("scale 1 2\n", "error: too many arguments\n");
	expect("frobnicate\n", "error: unknown command \"frobnicate\" (try: " COMMANDS ")\n");
	expect("PING\n", "error: unknown command \"PING\" (try: " COMMANDS ")\n");
	expect("bad\x01word\n", "error: unknown command \"bad?word\" (try: " COMMANDS ")\n");
	expect("upgrade now\n", "error: upgrade takes no argument\n");
	cr_assert_eq(scaled_to + reloads_asked + stops_asked + upgrades_asked, 0, "no action for a bad command");
}

Test(control, scale_takes_one_worker_count_in_range, .init = setup, .fini = teardown)
{
	char usage[128], range[128];
	snprintf(usage, sizeof(usage), "error: usage: scale N (1..%d)\n", CONFIG_MAX_WORKERS);
	snprintf(range, sizeof(range), "error: scale: workers must be an integer in 1..%d\n", CONFIG_MAX_WORKERS);
	expect("scale\n", usage);
	const char *bad[] = { "scale 0", "scale -1", "scale x", "scale 3x", "scale 99999999999999999999", "scale 257" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		expect(bad[i], range);
	cr_assert_eq(scaled_to, 0);
	expect("scale 4\n", "ok\n");
	cr_assert_eq(scaled_to, 4);
	expect("scale\t256", "ok\n");
	cr_assert_eq(scaled_to, CONFIG_MAX_WORKERS);
}

Test(control, reload_and_stop, .init = setup, .fini = teardown)
{
	expect("reload\n", "ok\n");
	reload_error = "drover.ini:3: [jobs] timeout_ms: not a number\ndrover.ini:9: [supervisor] workers: too large\n";
	expect("reload\n", "error: drover.ini:3: [jobs] timeout_ms: not a number; drover.ini:9: [supervisor] workers: "
	                   "too large\n");
	cr_assert_eq(reloads_asked, 2);
	expect("stop\n", "ok\n");
	cr_assert_eq(stops_asked, 1, "stop stops once the answer is out");
}

Test(control, upgrade_answers_ok_or_why_it_was_refused, .init = setup, .fini = teardown)
{
	expect("upgrade\n", "ok\n");
	upgrade_error = "/usr/sbin/drover -t -c /etc/drover/drover.ini refused it (exit 78): drover.ini:3: bad\n";
	expect("upgrade\n", "error: /usr/sbin/drover -t -c /etc/drover/drover.ini refused it (exit 78): drover.ini:3: "
	                    "bad\n");
	cr_assert_eq(upgrades_asked, 2);
}

/* ---- stats, metrics, health --------------------------------------------- */

static json_t *stats_object(void)
{
	char *text = run("stats\n");
	size_t len = strlen(text);
	cr_assert(len > 0 && text[len - 1] == '\n' && strchr(text, '\n') == text + len - 1, "one line: %s", text);
	json_error_t error;
	json_t *root = json_loads(text, 0, &error);
	cr_assert_not_null(root, "not JSON (%s): %s", error.text, text);
	free(text);
	return root;
}

Test(control, stats_has_the_pool_and_every_slot, .init = setup, .fini = teardown)
{
	json_t *root = stats_object();
	cr_assert_eq(json_integer_value(json_object_get(root, "pid")), getpid());
	cr_assert_str_eq(json_string_value(json_object_get(root, "backend")), "spool");
	cr_assert_str_eq(json_string_value(json_object_get(root, "spool_dir")), spool);
	cr_assert_eq(json_integer_value(json_object_get(root, "config_generation")), 2);
	cr_assert_str_eq(json_string_value(json_object_get(root, "last_reload")), "ok");
	cr_assert_eq(json_integer_value(json_object_get(root, "workers_desired")), 3);
	cr_assert_eq(json_integer_value(json_object_get(root, "workers_alive")), 1);
	cr_assert_eq(json_integer_value(json_object_get(root, "jobs_lost")), 3);
	json_t *jobs = json_object_get(root, "jobs");
	cr_assert_eq(json_integer_value(json_object_get(jobs, "completed")), 15, "10 retired + 5 live");
	cr_assert_eq(json_integer_value(json_object_get(jobs, "in_flight")), 2);

	json_t *workers = json_object_get(root, "workers");
	cr_assert_eq(json_array_size(workers), SLOTS);
	json_t *w0 = json_array_get(workers, 0), *w1 = json_array_get(workers, 1), *w2 = json_array_get(workers, 2);
	cr_assert_str_eq(json_string_value(json_object_get(w0, "state")), "running");
	cr_assert(json_is_true(json_object_get(w0, "ready")));
	cr_assert_eq(json_integer_value(json_object_get(w0, "in_flight")), 2);
	json_t *running = json_object_get(w0, "jobs");
	cr_assert_eq(json_array_size(running), 2);
	cr_assert_str_eq(json_string_value(json_object_get(json_array_get(running, 1), "id")), "job-b");
	cr_assert_eq(json_integer_value(json_object_get(json_array_get(running, 1), "attempt")), 2);
	cr_assert(json_is_null(json_object_get(w0, "fault")));

	cr_assert_str_eq(json_string_value(json_object_get(w1, "state")), "failed");
	cr_assert_str_eq(json_string_value(json_object_get(w1, "fault_cause")), "config");
	cr_assert_str_eq(json_string_value(json_object_get(w1, "last_exit")), "exit 78: configuration refused");

	cr_assert_str_eq(json_string_value(json_object_get(w2, "state")), "backoff");
	cr_assert_eq(json_integer_value(json_object_get(w2, "restarts")), 4);
	json_int_t left = json_integer_value(json_object_get(w2, "backoff_ms"));
	cr_assert(left > 0 && left <= 60000, "backoff_ms %lld", (long long)left);
	json_decref(root);
}

Test(control, stats_show_persistent_handler_processes, .init = setup, .fini = teardown)
{
	struct scoreboard_slot *board = scoreboard_slot(sup.scoreboard, 0);
	cfg.handler_mode = HANDLER_MODE_PERSISTENT;
	scoreboard_write_begin(board);
	board->handlers_ready = 0;
	board->handler_count = 2;
	board->handlers[0] = (struct scoreboard_handler){ .pid = 4242, .state = HANDLER_READY, .jobs = 17 };
	board->handlers[1] = (struct scoreboard_handler){ .pid = 4243, .state = HANDLER_RECYCLING, .jobs = 100 };
	board->counters.handler_restarts = 2;
	board->counters.handler_recycles = 1;
	board->counters.handler_protocol_errors = 1;
	scoreboard_write_end(board);

	json_t *root = stats_object();
	json_t *w0 = json_array_get(json_object_get(root, "workers"), 0);
	cr_assert(json_is_false(json_object_get(w0, "ready")), "no handler process ready yet: the worker is not");
	json_t *handlers = json_object_get(w0, "handlers");
	cr_assert_eq(json_array_size(handlers), 2);
	json_t *h1 = json_array_get(handlers, 1);
	cr_assert_eq(json_integer_value(json_object_get(h1, "pid")), 4243);
	cr_assert_str_eq(json_string_value(json_object_get(h1, "state")), "recycling");
	cr_assert_eq(json_integer_value(json_object_get(h1, "jobs")), 100);
	cr_assert_eq(json_integer_value(json_object_get(w0, "handler_restarts")), 2);
	cr_assert_eq(json_integer_value(json_object_get(w0, "handler_recycles")), 1);
	cr_assert_eq(json_integer_value(json_object_get(w0, "handler_protocol_errors")), 1);
	json_decref(root);

	char *text = run("metrics\n");
	cr_assert_not_null(strstr(text, "drover_handler_processes_total{event=\"restarted\"} 2\n"), "%s", text);
	cr_assert_not_null(strstr(text, "drover_handler_processes_total{event=\"protocol_error\"} 1\n"), "%s", text);
	free(text);
	cfg.handler_mode = HANDLER_MODE_EXEC;
}

Test(control, metrics_count_slots_by_state_and_jobs_by_outcome, .init = setup, .fini = teardown)
{
	char *text = run("metrics\n");
	const char *lines[] = {
		"# TYPE drover_workers gauge\n",
		"drover_workers{state=\"starting\"} 0\n",
		"drover_workers{state=\"running\"} 1\n",
		"drover_workers{state=\"backoff\"} 1\n",
		"drover_workers{state=\"stopped\"} 0\n",
		"drover_workers{state=\"failed\"} 1\n",
		"drover_workers{state=\"fault\"} 0\n",
		"drover_workers_desired 3\n",
		"drover_worker_restarts_total 4\n",
		"drover_jobs_total{outcome=\"completed\"} 15\n",
		"drover_jobs_total{outcome=\"failed\"} 1\n",
		"drover_jobs_in_flight 2\n",
		"drover_jobs_lost_total 3\n",
		"drover_job_duration_seconds_bucket{le=\"+Inf\"} 1\n",
		"drover_config_generation 2\n",
		"drover_build_info{version=\"" DROVER_VERSION "\"} 1\n",
	};
	for (size_t i = 0; i < sizeof(lines) / sizeof(lines[0]); i++)
		cr_assert_not_null(strstr(text, lines[i]), "no %s in:\n%s", lines[i], text);
	cr_assert_null(strstr(text, "drover_kafka_consumer_lag"), "no lag on the spool");
	free(text);
}

Test(control, health_names_what_keeps_the_pool_from_progress, .init = setup, .fini = teardown)
{
	expect("health\n", "ok\n");
	table[0].state = SLOT_DRAINING; /* the only running worker goes: the failed slot is the reason */
	expect("health\n", "error: no worker can make progress: worker 1: exit 78: configuration refused; not "
	                   "restarted until a reload or scale\n");
	table[1].state = SLOT_STOPPED;
	expect("health\n", "error: no worker can make progress: every worker is restarting (last exit: signal 9)\n");
	sup.stopping = true;
	expect("health\n", "ok\n");
	sup.stopping = false;
}

/* ---- per-job control (jobctl.c) --------------------------------------------- */

static void make_queue_dirs(void)
{
	char path[sizeof(spool) + 16];
	snprintf(path, sizeof(path), "%s/incoming", spool);
	cr_assert_eq(mkdir(path, 0700), 0);
	snprintf(path, sizeof(path), "%s/failed", spool);
	cr_assert_eq(mkdir(path, 0700), 0);
}

static char cancelled[3][64];
static int cancel_count;

static void record_cancel(const char *id, void *arg)
{
	if (cancel_count < 3)
		snprintf(cancelled[cancel_count], sizeof(cancelled[0]), "%s", id);
	cancel_count++;
}

Test(control, pause_and_resume_set_the_flag_workers_read_and_stats_show, .init = setup, .fini = teardown)
{
	expect("pause\n", "ok: intake paused\n");
	cr_assert(scoreboard_intake_paused(), "the workers' flag");
	char *stats = run("stats");
	json_t *doc = json_loads(stats, 0, NULL);
	cr_assert(json_is_true(json_object_get(doc, "paused")), "%s", stats);
	json_decref(doc);
	free(stats);
	char *metrics = run("metrics");
	cr_assert_not_null(strstr(metrics, "\ndrover_intake_paused 1\n"), "%s", metrics);
	free(metrics);
	expect("pause\n", "ok: intake paused\n"); /* idempotent */
	expect("resume\n", "ok: intake resumed\n");
	cr_assert(!scoreboard_intake_paused());
	expect("pause now\n", "error: pause takes no argument\n");
}

Test(control, cancel_of_a_running_job_asks_its_worker, .init = setup, .fini = teardown)
{
	uint64_t seen = scoreboard_request_serial();
	expect("cancel job-b\n", "ok: cancelling job-b (attempt 2 on worker 0)\n");
	cancel_count = 0;
	scoreboard_each_cancel(1, &seen, record_cancel, NULL);
	cr_assert_eq(cancel_count, 0, "a request for worker 0 only");
	seen = 0;
	scoreboard_each_cancel(0, &seen, record_cancel, NULL);
	cr_assert_eq(cancel_count, 1);
	cr_assert_str_eq(cancelled[0], "job-b");
	scoreboard_each_cancel(0, &seen, record_cancel, NULL);
	cr_assert_eq(cancel_count, 1, "each request is seen once");
	expect("cancel\n", "error: usage: cancel ID\n");
	expect("retry\n", "error: usage: retry ID\n");
}

Test(control, cancel_and_retry_of_unknown_jobs_say_so, .init = setup, .fini = teardown)
{
	make_queue_dirs();
	expect("cancel nobody\n", "error: no job nobody is running or waiting\n");
	expect("retry nobody\n", "error: no failed job nobody\n");
}

Test(control, jobs_lists_running_jobs_with_their_worker_and_the_queue, .init = setup, .fini = teardown)
{
	make_queue_dirs();
	scoreboard_job_set_message(scoreboard_slot(sup.scoreboard, 0), 0, "half way");
	char *answer = run("jobs");
	json_t *doc = json_loads(answer, 0, NULL);
	cr_assert_not_null(doc, "%s", answer);
	json_t *running = json_object_get(doc, "running");
	cr_assert_eq(json_array_size(running), 2, "%s", answer);
	json_t *first = json_array_get(running, 0);
	cr_assert_str_eq(json_string_value(json_object_get(first, "id")), "job-a");
	cr_assert_eq(json_integer_value(json_object_get(first, "worker")), 0);
	cr_assert_str_eq(json_string_value(json_object_get(first, "message")), "half way");
	cr_assert_eq(json_integer_value(json_object_get(json_object_get(doc, "queued"), "count")), 0, "%s", answer);
	cr_assert_eq(json_integer_value(json_object_get(json_object_get(doc, "failed"), "count")), 0, "%s", answer);
	cr_assert(json_is_false(json_object_get(doc, "paused")));
	json_decref(doc);
	free(answer);
}

Test(control, a_progress_message_cut_to_the_slot_stays_valid_text, .init = setup, .fini = teardown)
{
	char message[SCOREBOARD_MESSAGE_MAX + 8];
	make_queue_dirs();
	memset(message, 'a', SCOREBOARD_MESSAGE_MAX - 2);
	snprintf(message + SCOREBOARD_MESSAGE_MAX - 2, 8, "\xc3\xa9 tail"); /* é across the cut */
	scoreboard_job_set_message(scoreboard_slot(sup.scoreboard, 0), 0, message);
	char *answer = run("jobs");
	json_t *doc = json_loads(answer, 0, NULL);
	json_t *first = json_array_get(json_object_get(doc, "running"), 0);
	const char *shown = json_string_value(json_object_get(first, "message"));
	cr_assert_not_null(shown, "%s", answer);
	cr_assert_eq(strlen(shown), SCOREBOARD_MESSAGE_MAX - 2, "%s", shown);
	cr_assert_eq(strspn(shown, "a"), SCOREBOARD_MESSAGE_MAX - 2);
	json_decref(doc);
	free(answer);
}
