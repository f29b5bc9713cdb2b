/*
 * spool_jobs: the spool's per-job commands (queue_ops jobs, cancel_queued,
 * retry_failed in source.h), which the supervisor runs for droverctl jobs,
 * cancel and retry. They work on whole files with the same rules as the
 * workers: a waiting job is only touched under its flock (a worker claiming
 * it holds that lock, so the two never both win), and every move writes the
 * new file durably before the old one goes, so a crash in between leaves a
 * duplicate, never a lost job (at-least-once).
 */
#include "queue/spool.h"
#include "queue/events.h"
#include "shared/durable.h"
#include "shared/util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#define JOB_READ_MAX (16u << 20) /* the spool's payload cap: a larger file is no job a worker would run */
#define DOC_READ_MAX (32u << 20) /* a failed document embeds its job */

struct entry {
	char *name;
	struct timespec mtime;
};

struct listing {
	struct entry *entries;
	size_t count, cap;
};

static void listing_free(struct listing *l)
{
	for (size_t i = 0; i < l->count; i++)
		free(l->entries[i].name);
	free(l->entries);
	memset(l, 0, sizeof(*l));
}

static int listing_push(struct listing *l, const char *name, const struct stat *st)
{
	if (l->count == l->cap) {
		size_t cap = l->cap == 0 ? 64 : l->cap * 2;
		struct entry *grown = realloc(l->entries, cap * sizeof(*grown));
		if (grown == NULL)
			return -1;
		l->entries = grown;
		l->cap = cap;
	}
	char *copy = strdup(name);
	if (copy == NULL)
		return -1;
	l->entries[l->count++] = (struct entry){ .name = copy, .mtime = st->st_mtim };
	return 0;
}

/* The regular files of dir/sub whose names do not start with '.' (and end with suffix, when given). */
static int list_files(const char *dir, const char *sub, const char *suffix, struct listing *out)
{
	char path[PATH_MAX];
	if (snprintf(path, sizeof(path), "%s/%s", dir, sub) >= (int)sizeof(path)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	DIR *d = opendir(path);
	if (d == NULL)
		return -1;
	struct dirent *de;
	int rc = 0;
	while (rc == 0 && (errno = 0, de = readdir(d)) != NULL) {
		size_t len = strlen(de->d_name), slen = suffix != NULL ? strlen(suffix) : 0;
		struct stat st;
		if (de->d_name[0] == '.' || (suffix != NULL && (len < slen || strcmp(de->d_name + len - slen, suffix) != 0)))
			continue;
		if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISREG(st.st_mode))
			continue; /* gone meanwhile (claimed), or no job */
		rc = listing_push(out, de->d_name, &st);
	}
	int saved = errno;
	closedir(d);
	errno = saved;
	return rc < 0 || saved != 0 ? -1 : 0;
}

static int compare_time(const struct entry *a, const struct entry *b)
{
	if (a->mtime.tv_sec != b->mtime.tv_sec)
		return a->mtime.tv_sec < b->mtime.tv_sec ? -1 : 1;
	if (a->mtime.tv_nsec != b->mtime.tv_nsec)
		return a->mtime.tv_nsec < b->mtime.tv_nsec ? -1 : 1;
	return strcmp(a->name, b->name);
}

/* The order workers take jobs in: oldest first, then by name. */
static int oldest_first(const void *a, const void *b)
{
	return compare_time(a, b);
}

static int newest_first(const void *a, const void *b)
{
	return compare_time(b, a);
}

static long long ms_of(const struct timespec *ts)
{
	return (long long)ts->tv_sec * 1000 + ts->tv_nsec / 1000000;
}

static char *read_in(const char *dir, const char *sub, const char *name, size_t max, size_t *len)
{
	char path[PATH_MAX];
	if (snprintf(path, sizeof(path), "%s/%s/%s", dir, sub, name) >= (int)sizeof(path)) {
		errno = ENAMETOOLONG;
		return NULL;
	}
	return read_file(path, max, len);
}

/* ---- jobs: what waits and what failed ------------------------------------- */

static json_t *queued_entry(const char *dir, const struct entry *e, long long now)
{
	size_t len = 0;
	char *payload = read_in(dir, "incoming", e->name, JOB_READ_MAX, &len);
	/* Unreadable or too large: the worker names it by its file, and so do we. */
	char *id = spool_job_id(e->name, payload != NULL ? payload : "", payload != NULL ? len : 0);
	free(payload);
	json_t *entry = json_pack("{s:s, s:s?, s:i, s:I}", "file", e->name, "id", id, "attempts",
	                          spool_name_attempts(e->name), "age_ms", (json_int_t)(now - ms_of(&e->mtime)));
	free(id);
	return entry;
}

static json_t *failed_entry(const char *dir, const struct entry *e)
{
	size_t len = 0;
	char *text = read_in(dir, "failed", e->name, DOC_READ_MAX, &len);
	json_t *doc = text != NULL ? json_loadb(text, len, 0, NULL) : NULL;
	free(text);
	json_t *error = json_object_get(doc, "error");
	json_t *entry = json_pack("{s:s, s:s?, s:s?, s:s?, s:O?, s:s?}", "file", e->name, "id",
	                          json_string_value(json_object_get(doc, "id")), "reason",
	                          json_string_value(json_object_get(error, "reason")), "message",
	                          json_string_value(json_object_get(error, "message")), "attempts",
	                          json_object_get(doc, "attempts"), "failed_at",
	                          json_string_value(json_object_get(doc, "failed_at")));
	json_decref(doc);
	return entry;
}

/* {"count": N, "jobs": [the first max of sub/ in order]}, or NULL and why. */
static json_t *list_section(const struct config *cfg, const char *sub, size_t max, char *why, size_t why_len)
{
	struct listing l = { 0 };
	bool queued = strcmp(sub, "incoming") == 0;
	if (list_files(cfg->spool_dir, sub, queued ? NULL : ".json", &l) < 0) {
		snprintf(why, why_len, "spool %s/%s: %s", cfg->spool_dir, sub, strerror(errno));
		listing_free(&l);
		return NULL;
	}
	if (l.count > 1) /* an empty listing has no array: qsort must not see NULL */
		qsort(l.entries, l.count, sizeof(*l.entries), queued ? oldest_first : newest_first);
	json_t *jobs = json_array();
	long long now = wall_ms();
	for (size_t i = 0; jobs != NULL && i < l.count && i < max; i++) {
		json_t *entry = queued ? queued_entry(cfg->spool_dir, &l.entries[i], now)
		                       : failed_entry(cfg->spool_dir, &l.entries[i]);
		if (entry == NULL || json_array_append_new(jobs, entry) < 0) {
			json_decref(jobs);
			jobs = NULL;
		}
	}
	json_t *section = jobs != NULL ? json_pack("{s:I, s:o}", "count", (json_int_t)l.count, "jobs", jobs) : NULL;
	listing_free(&l);
	if (section == NULL)
		snprintf(why, why_len, "out of memory");
	return section;
}

json_t *spool_jobs_list(const struct config *cfg, size_t queued_max, size_t failed_max, char *why,
                               size_t len)
{
	json_t *queued = list_section(cfg, "incoming", queued_max, why, len);
	json_t *failed = queued != NULL ? list_section(cfg, "failed", failed_max, why, len) : NULL;
	if (failed == NULL) {
		json_decref(queued);
		return NULL;
	}
	json_t *out = json_pack("{s:o, s:o}", "queued", queued, "failed", failed);
	if (out == NULL)
		snprintf(why, len, "out of memory");
	return out;
}

/* ---- cancel: a waiting job fails with reason cancelled -------------------- */

/*
 * Under the file's lock (a worker that claims it needs the same lock): the
 * failed document is made durable in failed/, then the job leaves incoming/.
 */
static enum queue_job_result cancel_locked(const struct config *cfg, const char *name, const char *path,
                                           const char *id, const struct event_origin *origin, char *why,
                                           size_t len)
{
	size_t payload_len = 0;
	char *payload = read_file(path, JOB_READ_MAX, &payload_len);
	struct failure failure = { .reason = "cancelled", .exit_code = -1,
	                           .message = "cancelled by the operator (droverctl cancel) before it ran" };
	char *doc = event_failed(origin, id, &failure, spool_name_attempts(name), payload != NULL ? payload : "",
	                         payload != NULL ? payload_len : 0, wall_ms());
	free(payload);
	char outcome[NAME_MAX + 1];
	spool_outcome_file(id, outcome, sizeof(outcome));
	int rc = doc != NULL ? spool_write_new(cfg->spool_dir, "failed", outcome, doc, strlen(doc), true) : -1;
	free(doc);
	if (rc < 0) {
		snprintf(why, len, "cannot write the failed outcome of %s: %s", id, strerror(errno));
		return QUEUE_JOB_ERROR;
	}
	char incoming[PATH_MAX];
	snprintf(incoming, sizeof(incoming), "%s/incoming", cfg->spool_dir);
	if (unlink(path) < 0 || fsync_dir(incoming) < 0) {
		snprintf(why, len, "%s failed as cancelled, but %s stays: %s", id, path, strerror(errno));
		return QUEUE_JOB_ERROR;
	}
	return QUEUE_JOB_DONE;
}

static enum queue_job_result cancel_file(const struct config *cfg, const char *name, const char *id,
                                         const struct event_origin *origin, char *why, size_t len)
{
	char path[PATH_MAX];
	if (snprintf(path, sizeof(path), "%s/incoming/%s", cfg->spool_dir, name) >= (int)sizeof(path))
		return QUEUE_JOB_UNKNOWN;
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
	if (fd < 0)
		return errno == ENOENT ? QUEUE_JOB_BUSY : QUEUE_JOB_ERROR; /* ENOENT: just claimed */
	struct stat by_fd, by_path;
	enum queue_job_result result;
	int rc;
	do
		rc = flock(fd, LOCK_EX | LOCK_NB);
	while (rc < 0 && errno == EINTR);
	/* Locked by a worker claiming it, or the name moved on before our lock: busy either way. */
	if (rc < 0 || fstat(fd, &by_fd) < 0 || lstat(path, &by_path) < 0 || by_fd.st_ino != by_path.st_ino ||
	    by_fd.st_dev != by_path.st_dev)
		result = QUEUE_JOB_BUSY;
	else
		result = cancel_locked(cfg, name, path, id, origin, why, len);
	close(fd); /* the lock goes last: a worker that opened the file before the unlink finds the name gone */
	if (result == QUEUE_JOB_BUSY)
		snprintf(why, len, "job %s is being claimed by a worker: try again (it may be running now)", id);
	return result;
}

/* Whether incoming/name holds the job called id (its bytes are read: the id may be in them). */
static bool file_is_job(const char *dir, const char *name, const char *id)
{
	size_t len = 0;
	char *payload = read_in(dir, "incoming", name, JOB_READ_MAX, &len);
	char *its = spool_job_id(name, payload != NULL ? payload : "", payload != NULL ? len : 0);
	bool same = its != NULL && strcmp(its, id) == 0;
	free(its);
	free(payload);
	return same;
}

enum queue_job_result spool_cancel_queued(const struct config *cfg, const char *id,
                                                 const struct event_origin *origin, char *why, size_t len)
{
	struct listing l = { 0 };
	if (list_files(cfg->spool_dir, "incoming", NULL, &l) < 0) {
		snprintf(why, len, "spool %s/incoming: %s", cfg->spool_dir, strerror(errno));
		listing_free(&l);
		return QUEUE_JOB_ERROR;
	}
	enum queue_job_result result = QUEUE_JOB_UNKNOWN;
	for (size_t i = 0; i < l.count && result == QUEUE_JOB_UNKNOWN; i++)
		if (file_is_job(cfg->spool_dir, l.entries[i].name, id))
			result = cancel_file(cfg, l.entries[i].name, id, origin, why, len);
	listing_free(&l);
	return result;
}

/* ---- retry: a failed job goes back to incoming/ ------------------------- */

/* The job a failed document carries, as bytes (a string job as it was, an object as compact JSON). */
static char *job_of_document(json_t *doc, size_t *len)
{
	json_t *job = json_object_get(doc, "job");
	char *bytes = NULL;
	if (json_is_string(job)) {
		bytes = strndup(json_string_value(job), json_string_length(job));
		*len = json_string_length(job);
	} else if (job != NULL) {
		bytes = json_dumps(job, JSON_COMPACT | JSON_PRESERVE_ORDER);
		*len = bytes != NULL ? strlen(bytes) : 0;
	}
	return bytes;
}

/*
 * The job goes back under a name that gives it the same id: a job with an
 * "id" field under a fresh name (as droverctl submit would), one without
 * under "<id>.json", since its id is its file name. No ";a=" suffix: its
 * attempts start again.
 */
static int requeue(const struct config *cfg, const char *id, const char *job, size_t len)
{
	char *field = event_job_id(job, len);
	bool has_id = field != NULL && strcmp(field, id) == 0;
	free(field);
	char name[NAME_MAX + 1];
	if (has_id)
		snprintf(name, sizeof(name), "%013lld-%ld-retry.json", wall_ms(), (long)getpid());
	else if (snprintf(name, sizeof(name), "%s.json", id) >= (int)sizeof(name) || strchr(id, '/') != NULL) {
		errno = ENAMETOOLONG;
		return -1;
	}
	return spool_write_new(cfg->spool_dir, "incoming", name, job, len, false);
}

enum queue_job_result spool_retry_failed(const struct config *cfg, const char *id, char *why, size_t len)
{
	char outcome[NAME_MAX + 1], path[PATH_MAX], failed[PATH_MAX];
	spool_outcome_file(id, outcome, sizeof(outcome));
	snprintf(failed, sizeof(failed), "%s/failed", cfg->spool_dir);
	if (snprintf(path, sizeof(path), "%s/%s", failed, outcome) >= (int)sizeof(path))
		return QUEUE_JOB_UNKNOWN;
	size_t doc_len = 0;
	char *text = read_file(path, DOC_READ_MAX, &doc_len);
	if (text == NULL && errno == ENOENT)
		return QUEUE_JOB_UNKNOWN;
	json_t *doc = text != NULL ? json_loadb(text, doc_len, 0, NULL) : NULL;
	free(text);
	const char *its = json_string_value(json_object_get(doc, "id"));
	if (its == NULL || strcmp(its, id) != 0) { /* another id sharing the file name (hash), or unreadable */
		json_decref(doc);
		return QUEUE_JOB_UNKNOWN;
	}
	size_t job_len = 0;
	char *job = job_of_document(doc, &job_len);
	json_decref(doc);
	int rc = job != NULL ? requeue(cfg, id, job, job_len) : -1;
	free(job);
	if (rc < 0) {
		snprintf(why, len, "cannot put %s back into %s/incoming: %s", id, cfg->spool_dir,
		         errno == EEXIST ? "a job of that name is waiting there already" : strerror(errno));
		return QUEUE_JOB_ERROR;
	}
	/* The new entry is durable: only now may the failed record go. */
	if (unlink(path) < 0 || fsync_dir(failed) < 0) {
		snprintf(why, len, "%s is queued again, but its failed record %s stays: %s", id, path, strerror(errno));
		return QUEUE_JOB_ERROR;
	}
	return QUEUE_JOB_DONE;
}
