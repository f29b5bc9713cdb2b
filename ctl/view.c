/*
 * view: see view.h. Every line goes through emit(), which cuts it at the
 * width (counted in characters, cut between UTF-8 sequences), so a long job
 * id or message shortens its own line instead of wrapping the screen.
 */
#include "ctl/view.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#define VIEW_MAX_WIDTH 1000
#define JOBS_SHOWN_PER_WORKER 8

int view_width(int fd)
{
	struct winsize ws;
	long width = 0;
	if (isatty(fd) && ioctl(fd, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) {
		width = ws.ws_col;
	} else {
		const char *columns = getenv("COLUMNS");
		char *end = NULL;
		width = columns != NULL ? strtol(columns, &end, 10) : 0;
		if (columns == NULL || end == columns || *end != '\0')
			width = 80;
	}
	if (width < VIEW_MIN_WIDTH)
		width = VIEW_MIN_WIDTH;
	return width > VIEW_MAX_WIDTH ? VIEW_MAX_WIDTH : (int)width;
}

/* Bytes of s that hold at most width characters (UTF-8 continuation bytes take no column). */
static size_t fit(const char *s, int width)
{
	int columns = 0;
	size_t i = 0;
	for (; s[i] != '\0'; i++) {
		unsigned char c = (unsigned char)s[i];
		if ((c & 0xC0) == 0x80)
			continue;
		if (columns == width)
			break;
		columns++;
	}
	return i;
}

/* One line, cut at width; control characters (a message is the handler's text) shown as '?'. */
static void emit(FILE *out, int width, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void emit(FILE *out, int width, const char *fmt, ...)
{
	char line[4 * VIEW_MAX_WIDTH + 8];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	for (char *p = line; *p != '\0'; p++)
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			*p = '?';
	size_t len = fit(line, width);
	while (len > 0 && line[len - 1] == ' ')
		len--;
	fprintf(out, "%.*s\n", (int)len, line);
}

static long long int_of(json_t *obj, const char *key)
{
	json_t *v = json_object_get(obj, key);
	return json_is_integer(v) ? (long long)json_integer_value(v) : 0;
}

static const char *str_of(json_t *obj, const char *key)
{
	const char *s = json_string_value(json_object_get(obj, key));
	return s != NULL ? s : "";
}

static void duration(long long ms, char *out, size_t cap)
{
	long long s = ms > 0 ? ms / 1000 : 0;
	if (s < 60)
		snprintf(out, cap, "%llds", s);
	else if (s < 3600)
		snprintf(out, cap, "%lldm%02llds", s / 60, s % 60);
	else if (s < 86400)
		snprintf(out, cap, "%lldh%02lldm", s / 3600, s % 3600 / 60);
	else
		snprintf(out, cap, "%lldd%02lldh", s / 86400, s % 86400 / 3600);
}

/* "[#####.....]  50%" in cells + 7 bytes, or blanks of the same width when the handler reported none. */
static void progress_bar(json_t *progress, int cells, char *out, size_t cap)
{
	if (!json_is_number(progress)) {
		snprintf(out, cap, "[%*s]   - ", cells, "");
		return;
	}
	double p = json_number_value(progress);
	p = p < 0 ? 0 : p > 1 ? 1 : p;
	int full = (int)(p * cells + 0.5);
	size_t o = 0;
	out[o++] = '[';
	for (int i = 0; i < cells && o + 8 < cap; i++)
		out[o++] = i < full ? '#' : '.';
	snprintf(out + o, cap - o, "] %3.0f%%", p * 100.0);
}

/* ---- status ------------------------------------------------------------- */

static long long count_of(json_t *jobs, const char *section)
{
	return int_of(json_object_get(jobs, section), "count");
}

static void status_header(FILE *out, json_t *stats, json_t *jobs, int width)
{
	char up[32];
	duration(int_of(stats, "uptime_ms"), up, sizeof(up));
	json_t *totals = json_object_get(stats, "jobs");
	json_t *workers = json_object_get(stats, "workers");
	long long faulted = 0;
	size_t i;
	json_t *w;
	for (i = 0; i < json_array_size(workers) && (w = json_array_get(workers, i)) != NULL; i++)
		faulted += json_is_string(json_object_get(w, "fault"));
	bool paused = json_is_true(json_object_get(stats, "paused"));
	emit(out, width, "drover %s  pid %lld  up %s  %s  workers %lld/%lld%s%s", str_of(stats, "version"),
	     int_of(stats, "pid"), up, str_of(stats, "backend"), int_of(stats, "workers_alive"),
	     int_of(stats, "workers_desired"), json_is_true(json_object_get(stats, "stopping")) ? "  STOPPING" : "",
	     paused ? "  INTAKE PAUSED" : "");
	char queued[48] = "?";
	if (jobs != NULL)
		snprintf(queued, sizeof(queued), "%lld", count_of(jobs, "queued"));
	emit(out, width, "jobs: %lld running  %s queued  %lld done  %lld failed  %lld retried  %lld faulted",
	     int_of(totals, "in_flight"), queued, int_of(totals, "completed"), int_of(totals, "failed"),
	     int_of(totals, "retried"), faulted);
	const char *reload = str_of(stats, "last_reload");
	if (reload[0] != '\0' && strcmp(reload, "ok") != 0)
		emit(out, width, "last reload failed: %s", reload);
}

/* One running job: "  > id  a2  12s  [####......]  40%  message". */
static void status_job(FILE *out, json_t *job, int width)
{
	char age[32], bar[160];
	duration(int_of(job, "age_ms"), age, sizeof(age));
	int id_cells = width >= 120 ? 40 : 24;
	int bar_cells = width >= 120 ? 30 : 12;
	progress_bar(json_object_get(job, "progress"), bar_cells, bar, sizeof(bar));
	const char *id = str_of(job, "id");
	size_t id_len = fit(id, id_cells);
	emit(out, width, "   > %-*.*s a%-2lld %6s %s  %s", id_cells, (int)id_len, id, int_of(job, "attempt"), age, bar,
	     str_of(job, "message"));
}

static void status_worker(FILE *out, json_t *w, int width)
{
	char up[32] = "-", pid[24] = "-";
	if (int_of(w, "pid") > 0) {
		snprintf(pid, sizeof(pid), "%lld", int_of(w, "pid"));
		duration(int_of(w, "uptime_ms"), up, sizeof(up));
	}
	const char *fault = str_of(w, "fault");
	emit(out, width, "%-4lld %-8s %-9s %-8s %6lld %6lld %8lld%s%s", int_of(w, "slot"), pid, str_of(w, "state"), up,
	     int_of(w, "completed"), int_of(w, "failed"), int_of(w, "restarts"), fault[0] != '\0' ? "  fault: " : "",
	     fault);
	json_t *jobs = json_object_get(w, "jobs");
	size_t i;
	json_t *job;
	for (i = 0; i < json_array_size(jobs) && (job = json_array_get(jobs, i)) != NULL; i++) {
		if (i == JOBS_SHOWN_PER_WORKER) {
			emit(out, width, "   > ... %zu more", json_array_size(jobs) - i);
			break;
		}
		status_job(out, job, width);
	}
}

void view_status(FILE *out, json_t *stats, json_t *jobs, int width)
{
	status_header(out, stats, jobs, width);
	emit(out, width, "%-4s %-8s %-9s %-8s %6s %6s %8s", "SLOT", "PID", "STATE", "UPTIME", "DONE", "FAILED",
	     "RESTARTS");
	json_t *workers = json_object_get(stats, "workers");
	for (size_t i = 0; i < json_array_size(workers); i++)
		status_worker(out, json_array_get(workers, i), width);
}

/* ---- jobs ----------------------------------------------------------------- */

static void jobs_running(FILE *out, json_t *running, int width)
{
	emit(out, width, "RUNNING %zu", json_array_size(running));
	size_t i;
	json_t *job;
	for (i = 0; i < json_array_size(running) && (job = json_array_get(running, i)) != NULL; i++) {
		char age[32], progress[16] = "-";
		duration(int_of(job, "age_ms"), age, sizeof(age));
		json_t *p = json_object_get(job, "progress");
		if (json_is_number(p))
			snprintf(progress, sizeof(progress), "%.0f%%", json_number_value(p) * 100.0);
		emit(out, width, "  %s  worker %lld  attempt %lld  %s  %s  %s", str_of(job, "id"), int_of(job, "worker"),
		     int_of(job, "attempt"), age, progress, str_of(job, "message"));
	}
}

static void jobs_queued(FILE *out, json_t *queued, int width)
{
	json_t *list = json_object_get(queued, "jobs");
	json_t *partitions = json_object_get(queued, "partitions");
	emit(out, width, "QUEUED %lld%s", int_of(queued, "count"), partitions != NULL ? " (lag)" : "");
	size_t i;
	json_t *e;
	for (i = 0; i < json_array_size(list) && (e = json_array_get(list, i)) != NULL; i++) {
		char age[32];
		duration(int_of(e, "age_ms"), age, sizeof(age));
		emit(out, width, "  %s  waiting %s  attempts %lld  (%s)", str_of(e, "id"), age, int_of(e, "attempts"),
		     str_of(e, "file"));
	}
	if ((long long)json_array_size(list) < int_of(queued, "count") && partitions == NULL)
		emit(out, width, "  ... %lld more", int_of(queued, "count") - (long long)json_array_size(list));
	for (i = 0; i < json_array_size(partitions) && (e = json_array_get(partitions, i)) != NULL; i++)
		emit(out, width, "  %s[%lld]  lag %lld  worker %lld", str_of(e, "topic"), int_of(e, "partition"),
		     int_of(e, "lag"), int_of(e, "worker"));
}

static void jobs_failed(FILE *out, json_t *failed, int width)
{
	json_t *list = json_object_get(failed, "jobs");
	emit(out, width, "FAILED %lld (newest first)", int_of(failed, "count"));
	size_t i;
	json_t *e;
	for (i = 0; i < json_array_size(list) && (e = json_array_get(list, i)) != NULL; i++)
		emit(out, width, "  %s  %s  attempts %lld  %s  %s", str_of(e, "id"), str_of(e, "reason"),
		     int_of(e, "attempts"), str_of(e, "failed_at"), str_of(e, "message"));
	if ((long long)json_array_size(list) < int_of(failed, "count"))
		emit(out, width, "  ... %lld more", int_of(failed, "count") - (long long)json_array_size(list));
}

void view_jobs(FILE *out, json_t *jobs, int width)
{
	if (json_is_true(json_object_get(jobs, "paused")))
		emit(out, width, "INTAKE PAUSED (droverctl resume)");
	jobs_running(out, json_object_get(jobs, "running"), width);
	jobs_queued(out, json_object_get(jobs, "queued"), width);
	if (json_object_get(jobs, "failed") != NULL)
		jobs_failed(out, json_object_get(jobs, "failed"), width);
}
