/*
 * spool: the embedded durable queue of spec section 6, a maildir-style
 * directory shared by any number of workers and supervisors on one host.
 *
 *   tmp/         files being written (by producers, and our outcome files)
 *   incoming/    jobs waiting; names starting with '.' are ignored
 *   processing/  jobs claimed by a live worker
 *   complete/    <id>.json outcome documents (spec section 4)
 *   failed/      <id>.json outcome documents
 *
 * Names. spool_enqueue names a job "<unix ms, 13 digits>-<pid>-<counter>.json";
 * other producers may use any name. The attempts a job has started are kept
 * in its name, so that they survive any crash: after attempt N starts the file
 * is called "<name>;a=N" (no suffix = none yet). The job id is the payload's
 * "id" string, else the name without that suffix and without ".json".
 *
 * Claims. A worker claims incoming/F by opening it, taking flock(LOCK_EX|NB)
 * and only then renaming it to processing/F; it keeps the descriptor (and so
 * the lock) open until the job is finished or released. Every move of a job
 * file out of incoming/ or processing/ is done by the holder of its lock, so
 * a job is claimed by exactly one worker at a time, and a processing/ file
 * whose lock can be taken belongs to a dead worker: it goes back to incoming/
 * under its current name, attempt count included. Holders unlink before they
 * close, so a reclaimer that wins the lock of a finishing job finds nothing.
 *
 * Durability. A job counts as enqueued once its rename into incoming/ is
 * fsynced; it leaves processing/ only after its outcome file is fsynced in
 * complete/ or failed/. Outcome files are replaced, so the duplicates that
 * at-least-once delivery can produce end as one file. An outcome file is
 * named <id>.json when the id is made of [A-Za-z0-9._-] (not leading '.') and
 * at most 160 bytes long; otherwise those bytes are kept, the others become
 * '_', and "-<fnv1a-32 of the id, 8 hex>" follows, so that distinct ids do
 * not share a file. An outcome that cannot be written leaves the job queued
 * (cb.settled says not durable; it goes back to incoming/) and the spool takes
 * no job for a few seconds, its fault showing.
 *
 * Waking. inotify on incoming/ (through libev) marks the list of candidates
 * stale and calls cb.ready; a 1 s timer rescans as a safety net, reclaims
 * dead claims and checks the directories. Candidates are taken oldest first:
 * by mtime (which rename keeps, so a requeued job keeps its place), then name.
 */
#include "spool.h"
#include "events.h"
#include "log.h"
#include "util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define SPOOL_DIR_MODE 0770
#define SPOOL_TMP_STALE_S 3600
#define SPOOL_FILE_MODE 0640
#define SPOOL_MAX_PAYLOAD (16u * 1024 * 1024)
#define SPOOL_INVALID_PREFIX 4096     /* bytes of an oversized payload kept for the failed document */
#define SPOOL_RESCAN_S 1.0            /* safety-net rescan and reclaim period */
#define SPOOL_MIN_RESCAN_MS 200       /* a stale but non-empty list is rescanned at most this often */
#define SPOOL_FAULT_HOLD_MS 5000      /* after a failed write, take nothing for this long */
#define SPOOL_OUTCOME_ID_MAX 160      /* bytes of the id kept in an outcome file name */
#define SPOOL_UNREADABLE_WARN_MS 60000

#define ATTEMPT_MARK ";a="
#define JSON_SUFFIX ".json"

static const char *const spool_subdirs[] = { "tmp", "incoming", "processing", "complete", "failed" };

struct candidate {
	struct timespec mtime;
	char *name;
};

struct spool {
	char *dir;
	char incoming[PATH_MAX];
	char processing[PATH_MAX];
	char tmp[PATH_MAX];
	struct ev_loop *loop;
	struct source_callbacks cb;
	int slot;

	int inotify_fd;
	bool watching; /* the watch on incoming/ exists (it ends if the directory goes) */
	ev_io inotify_watcher;
	ev_timer rescan_timer;
	ev_timer kick_timer; /* cb.ready from the loop, never from inside a call of ours */

	struct candidate *list; /* incoming/ at the last scan, oldest first */
	size_t count;
	size_t cursor;
	bool stale;
	long long last_scan_ms;
	long long scan_cost_ms; /* of the last scan: a huge backlog makes rescans rarer */

	bool paused;
	size_t out; /* jobs handed out, not yet finished or released */
	char fault[512];
	long long fault_until_ms; /* a write failure keeps the fault at least until then */
	long long unreadable_warned_ms;
};

/* A claimed job's backend state: the locked descriptor and its current name in processing/. */
struct spool_claim {
	int fd;
	char name[NAME_MAX + 1];
	size_t base_len; /* name without the attempt suffix */
};

static unsigned long name_counter;

/* ---- names --------------------------------------------------------------- */

static int join_path(char *buf, size_t len, const char *dir, const char *sub, const char *name)
{
	int n = name == NULL ? snprintf(buf, len, "%s/%s", dir, sub) : snprintf(buf, len, "%s/%s/%s", dir, sub, name);
	if (n < 0 || (size_t)n >= len) {
		errno = ENAMETOOLONG;
		return -1;
	}
	return 0;
}

/* Attempts recorded in name (its ";a=N" suffix), and the length of the name without it. */
static int name_attempts(const char *name, size_t *base_len)
{
	const char *mark = strstr(name, ATTEMPT_MARK);
	const char *next;

	*base_len = strlen(name);
	/* The last mark counts, and only when digits alone follow it. */
	while (mark != NULL && (next = strstr(mark + 1, ATTEMPT_MARK)) != NULL)
		mark = next;
	if (mark == NULL)
		return 0;
	const char *digits = mark + strlen(ATTEMPT_MARK);
	if (*digits == '\0' || strspn(digits, "0123456789") != strlen(digits) || strlen(digits) > 6)
		return 0;
	*base_len = (size_t)(mark - name);
	return atoi(digits);
}

/* The id a job has when its payload carries none: its file name minus suffix and ".json". */
static char *id_from_name(const char *name, size_t base_len)
{
	size_t suffix = strlen(JSON_SUFFIX);

	if (base_len > suffix && memcmp(name + base_len - suffix, JSON_SUFFIX, suffix) == 0)
		base_len -= suffix;
	return strndup(name, base_len);
}

static uint32_t fnv1a(const char *s)
{
	uint32_t h = 2166136261u;

	for (; *s != '\0'; s++)
		h = (h ^ (unsigned char)*s) * 16777619u;
	return h;
}

/*
 * The outcome file name for id: [A-Za-z0-9._-] kept, anything else '_', a
 * leading '.' made '_' (no hidden files), length capped. When that changed
 * the id, a hash of the real id follows, so two distinct ids do not share a
 * file (short of a 32-bit hash collision) while the same id always maps to
 * the same one.
 */
static void outcome_name(const char *id, char *buf, size_t len)
{
	char safe[SPOOL_OUTCOME_ID_MAX + 1];
	size_t n = 0;
	bool changed = false;

	for (const char *p = id; *p != '\0'; p++) {
		char c = *p;
		bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
		          c == '_' || (c == '.' && n > 0);
		if (n == SPOOL_OUTCOME_ID_MAX) {
			changed = true;
			break;
		}
		if (!ok)
			changed = true;
		safe[n++] = ok ? c : '_';
	}
	if (n == 0) {
		safe[n++] = '_';
		changed = true;
	}
	safe[n] = '\0';
	if (changed)
		snprintf(buf, len, "%s-%08x%s", safe, (unsigned)fnv1a(id), JSON_SUFFIX);
	else
		snprintf(buf, len, "%s%s", safe, JSON_SUFFIX);
}

/* A name unique on this host among our own files: "<ms>-<pid>-<counter><suffix>". */
static void unique_name(char *buf, size_t len, const char *suffix)
{
	snprintf(buf, len, "%013lld-%ld-%lu%s", wall_ms(), (long)getpid(), ++name_counter, suffix);
}

/* ---- files --------------------------------------------------------------- */

static int close_keep_errno(int fd)
{
	int saved = errno;
	int rc = close(fd);
	errno = saved;
	return rc;
}

/* True when fd is still the file at path (the name was not taken over meanwhile). */
static bool fd_is_path(int fd, const char *path)
{
	struct stat by_fd, by_path;

	if (fstat(fd, &by_fd) < 0 || lstat(path, &by_path) < 0)
		return false;
	return by_fd.st_dev == by_path.st_dev && by_fd.st_ino == by_path.st_ino;
}

/*
 * Writes data to tmp_path, fsyncs, renames it over final_path and fsyncs
 * final_dir. When root writes into a spool owned by someone else (droverctl
 * submit run by root), the file is given the spool's owner so that workers
 * running as that user can read it.
 */
static int write_durably(const char *tmp_path, const char *final_path, const char *final_dir, const void *data,
                         size_t len)
{
	struct stat dir_st;
	int fd = open(tmp_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, SPOOL_FILE_MODE);
	int rc;

	if (fd < 0)
		return -1;
	rc = write_all(fd, data, len);
	if (rc == 0 && geteuid() == 0 && stat(final_dir, &dir_st) == 0 && dir_st.st_uid != 0 &&
	    fchown(fd, dir_st.st_uid, dir_st.st_gid) < 0)
		log_debug("spool: chown %s", tmp_path);
	while (rc == 0 && fsync(fd) < 0) {
		if (errno != EINTR)
			rc = -1;
	}
	if (close(fd) < 0 && rc == 0)
		rc = -1;
	if (rc == 0 && rename(tmp_path, final_path) < 0)
		rc = -1;
	if (rc < 0) {
		int saved = errno;
		unlink(tmp_path);
		errno = saved;
		return -1;
	}
	return fsync_dir(final_dir);
}

/* Reads a claimed job's bytes; NULL with EFBIG when larger than the cap. */
static char *read_payload(int fd, size_t *len_out)
{
	size_t cap = 4096, len = 0;
	char *buf = malloc(cap + 1);

	while (buf != NULL) {
		if (len == cap) {
			if (cap > SPOOL_MAX_PAYLOAD) { /* one byte past the cap was read */
				*len_out = len;
				buf[len] = '\0';
				errno = EFBIG;
				return buf; /* the caller keeps a prefix for the failed document */
			}
			cap = cap * 2 > SPOOL_MAX_PAYLOAD ? SPOOL_MAX_PAYLOAD + 1 : cap * 2;
			char *grown = realloc(buf, cap + 1);
			if (grown == NULL) {
				free(buf);
				return NULL;
			}
			buf = grown;
		}
		ssize_t n = pread(fd, buf + len, cap - len, (off_t)len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			free(buf);
			return NULL;
		}
		if (n == 0)
			break;
		len += (size_t)n;
	}
	if (buf != NULL) {
		buf[len] = '\0';
		*len_out = len;
		errno = 0;
	}
	return buf;
}

/* ---- directories --------------------------------------------------------- */

static int check_dirs(const char *dir, bool create, char *err, size_t errlen)
{
	char path[PATH_MAX];
	struct stat st;

	if (dir == NULL || *dir == '\0') {
		snprintf(err, errlen, "spool: no directory configured");
		return -1;
	}
	if (create && mkdir_p(dir, SPOOL_DIR_MODE) < 0) {
		snprintf(err, errlen, "spool: cannot create %s: %s", dir, strerror(errno));
		return -1;
	}
	for (size_t i = 0; i < ARRAY_LEN(spool_subdirs); i++) {
		if (join_path(path, sizeof(path), dir, spool_subdirs[i], NULL) < 0) {
			snprintf(err, errlen, "spool: %s: path too long", dir);
			return -1;
		}
		if (create && mkdir(path, SPOOL_DIR_MODE) < 0 && errno != EEXIST) {
			snprintf(err, errlen, "spool: cannot create %s: %s", path, strerror(errno));
			return -1;
		}
		if (stat(path, &st) < 0) {
			snprintf(err, errlen, "spool: %s: %s", path, strerror(errno));
			return -1;
		}
		if (!S_ISDIR(st.st_mode)) {
			snprintf(err, errlen, "spool: %s: not a directory", path);
			return -1;
		}
		if (faccessat(AT_FDCWD, path, W_OK | X_OK | R_OK, AT_EACCESS) < 0) {
			snprintf(err, errlen, "spool: %s: not writable: %s", path, strerror(errno));
			return -1;
		}
	}
	return 0;
}

/*
 * tmp/ holds only files on their way to a rename (an enqueue, an outcome). One
 * still there after SPOOL_TMP_STALE_S was left by a crash between write and
 * rename: its job is still in incoming/ or processing/, so the file is garbage.
 * The age guard keeps the sweep away from another process's write in progress.
 */
static void sweep_tmp(const char *dir)
{
	char tmp[PATH_MAX], path[PATH_MAX];
	struct stat st;
	time_t cutoff = time(NULL) - SPOOL_TMP_STALE_S;

	if (join_path(tmp, sizeof(tmp), dir, "tmp", NULL) < 0)
		return;
	DIR *d = opendir(tmp);
	if (d == NULL)
		return;
	for (struct dirent *e = readdir(d); e != NULL; e = readdir(d)) {
		if (e->d_name[0] == '.')
			continue;
		if (join_path(path, sizeof(path), dir, "tmp", e->d_name) < 0 || lstat(path, &st) < 0)
			continue;
		if (S_ISREG(st.st_mode) && st.st_mtime < cutoff && unlink(path) == 0)
			log_info("spool: removed %s, left in tmp/ by an interrupted write", path);
	}
	closedir(d);
}

int spool_prepare(const char *dir, char *err, size_t errlen)
{
	if (check_dirs(dir, true, err, errlen) < 0)
		return -1;
	sweep_tmp(dir);
	return 0;
}

int spool_health(const char *dir, char *err, size_t errlen)
{
	return check_dirs(dir, false, err, errlen);
}

int spool_enqueue(const char *dir, const char *payload, size_t len, char *id_out, size_t id_len)
{
	char name[96], tmp_path[PATH_MAX], final_path[PATH_MAX], incoming[PATH_MAX];
	char *id;

	unique_name(name, sizeof(name), JSON_SUFFIX);
	if (join_path(tmp_path, sizeof(tmp_path), dir, "tmp", name) < 0 ||
	    join_path(final_path, sizeof(final_path), dir, "incoming", name) < 0 ||
	    join_path(incoming, sizeof(incoming), dir, "incoming", NULL) < 0)
		return -1;
	id = event_job_id(payload, len);
	if (id == NULL)
		id = id_from_name(name, strlen(name));
	if (id == NULL)
		return -1;
	/* Refuse before writing: a job enqueued without telling its id would be a lie. */
	if (strlen(id) >= id_len) {
		free(id);
		errno = ENAMETOOLONG;
		return -1;
	}
	memcpy(id_out, id, strlen(id) + 1);
	free(id);
	return write_durably(tmp_path, final_path, incoming, payload, len);
}

/*
 * Moves processing/name back to incoming/ if its claim is dead (its lock can
 * be taken). 1 moved, 0 live or gone, -1 error.
 */
static int reclaim_one(const char *processing, const char *incoming, const char *name)
{
	char from[PATH_MAX], to[PATH_MAX];
	int fd, rc = 0;

	if (snprintf(from, sizeof(from), "%s/%s", processing, name) >= (int)sizeof(from) ||
	    snprintf(to, sizeof(to), "%s/%s", incoming, name) >= (int)sizeof(to))
		return -1;
	fd = open(from, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
	if (fd < 0)
		return errno == ENOENT ? 0 : -1;
	if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		rc = errno == EWOULDBLOCK ? 0 : -1;
	} else if (fd_is_path(fd, from)) {
		if (rename(from, to) == 0) {
			rc = 1;
			log_info("spool: reclaimed %s from a dead worker", name);
		} else if (errno != ENOENT) {
			rc = -1;
		}
	}
	close_keep_errno(fd);
	return rc;
}

/* Reclaims every dead claim; the number moved, or -1 when processing/ cannot be read. */
static int reclaim_dead(const char *processing, const char *incoming)
{
	DIR *d = opendir(processing);
	struct dirent *de;
	int moved = 0;

	if (d == NULL)
		return -1;
	while ((errno = 0, de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		int rc = reclaim_one(processing, incoming, de->d_name);
		if (rc > 0)
			moved++;
		else if (rc < 0)
			log_warn("spool: reclaim %s/%s", processing, de->d_name);
	}
	closedir(d);
	if (moved > 0 && (fsync_dir(incoming) < 0 || fsync_dir(processing) < 0))
		log_warn("spool: fsync after reclaim");
	return moved;
}

int spool_reclaim(const char *dir)
{
	char processing[PATH_MAX], incoming[PATH_MAX];

	if (join_path(processing, sizeof(processing), dir, "processing", NULL) < 0 ||
	    join_path(incoming, sizeof(incoming), dir, "incoming", NULL) < 0)
		return -1;
	return reclaim_dead(processing, incoming);
}

/* ---- candidates ---------------------------------------------------------- */

static void list_clear(struct spool *sp)
{
	for (size_t i = 0; i < sp->count; i++)
		free(sp->list[i].name);
	free(sp->list);
	sp->list = NULL;
	sp->count = sp->cursor = 0;
}

static int candidate_cmp(const void *a, const void *b)
{
	const struct candidate *x = a, *y = b;

	if (x->mtime.tv_sec != y->mtime.tv_sec)
		return x->mtime.tv_sec < y->mtime.tv_sec ? -1 : 1;
	if (x->mtime.tv_nsec != y->mtime.tv_nsec)
		return x->mtime.tv_nsec < y->mtime.tv_nsec ? -1 : 1;
	/* Timestamps are coarse (a jiffy): equal ones are common, so names break ties, numbers in order. */
	return strverscmp(x->name, y->name);
}

static void set_fault(struct spool *sp, long long hold_ms, const char *fmt, const char *what, int err)
{
	snprintf(sp->fault, sizeof(sp->fault), fmt, what, strerror(err));
	if (hold_ms > 0)
		sp->fault_until_ms = now_ms() + hold_ms;
}

/* One readdir of incoming/ into the sorted candidate list. 0, or -1 (fault set). */
static int scan_incoming(struct spool *sp)
{
	DIR *d = opendir(sp->incoming);
	struct dirent *de;
	struct candidate *list = NULL;
	size_t count = 0, cap = 0;
	long long started = now_ms();
	int rc = 0;

	if (d == NULL) {
		set_fault(sp, 0, "spool: cannot read %.400s: %s", sp->incoming, errno);
		return -1;
	}
	while ((errno = 0, de = readdir(d)) != NULL) {
		struct stat st;
		if (de->d_name[0] == '.')
			continue;
		if (de->d_type != DT_REG && de->d_type != DT_UNKNOWN)
			continue;
		if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISREG(st.st_mode))
			continue;
		if (count == cap) {
			size_t grown_cap = cap == 0 ? 64 : cap * 2;
			struct candidate *grown = realloc(list, grown_cap * sizeof(*list));
			if (grown == NULL) {
				rc = -1;
				break;
			}
			list = grown;
			cap = grown_cap;
		}
		list[count].mtime = st.st_mtim;
		list[count].name = strdup(de->d_name);
		if (list[count].name == NULL) {
			rc = -1;
			break;
		}
		count++;
	}
	if (rc == 0 && errno != 0)
		rc = -1;
	closedir(d);
	if (rc < 0) {
		set_fault(sp, 0, "spool: cannot list %.400s: %s", sp->incoming, errno);
		for (size_t i = 0; i < count; i++)
			free(list[i].name);
		free(list);
		return -1;
	}
	if (count > 1)
		qsort(list, count, sizeof(*list), candidate_cmp);
	list_clear(sp);
	sp->list = list;
	sp->count = count;
	sp->stale = false;
	sp->scan_cost_ms = now_ms() - started;
	sp->last_scan_ms = now_ms();
	return 0;
}

/* How long a list stays good enough: scanning must not eat more than a tenth of the time. */
static long long rescan_interval_ms(const struct spool *sp, long long floor_ms)
{
	return sp->scan_cost_ms * 10 > floor_ms ? sp->scan_cost_ms * 10 : floor_ms;
}

/* ---- claiming ------------------------------------------------------------ */

static void claim_free(struct spool_claim *claim)
{
	if (claim == NULL)
		return;
	if (claim->fd >= 0)
		close(claim->fd);
	free(claim);
}

/* Builds the job for a claimed, locked file. NULL on memory exhaustion. */
static struct job *job_from_claim(struct spool_claim *claim)
{
	struct job *job = calloc(1, sizeof(*job));
	size_t len = 0;

	if (job == NULL)
		return NULL;
	job->attempts_done = name_attempts(claim->name, &claim->base_len);
	job->payload = read_payload(claim->fd, &len);
	if (job->payload == NULL && errno == ENOMEM) {
		free(job);
		return NULL;
	}
	if (job->payload == NULL) {
		/* Unreadable (EIO...): fail it with a reason rather than retrying forever. */
		log_warn("spool: read %s", claim->name);
		job->payload = strdup("");
		job->invalid = true;
	} else if (errno == EFBIG) {
		log_warnx("spool: %s is larger than %u bytes: invalid job", claim->name, SPOOL_MAX_PAYLOAD);
		len = len > SPOOL_INVALID_PREFIX ? SPOOL_INVALID_PREFIX : len;
		char *prefix = realloc(job->payload, len + 1);
		if (prefix != NULL)
			job->payload = prefix;
		job->payload[len] = '\0';
		job->invalid = true;
	} else {
		job->invalid = !event_payload_is_object(job->payload, len);
	}
	if (job->payload == NULL) {
		free(job);
		return NULL;
	}
	job->payload_len = len;
	job->id = job->invalid ? NULL : event_job_id(job->payload, len);
	if (job->id == NULL)
		job->id = id_from_name(claim->name, claim->base_len);
	if (job->id == NULL) {
		job_free(job);
		return NULL;
	}
	job->backend = claim;
	return job;
}

/*
 * Tries to claim incoming/name: 0 and *job_out when it is ours, 1 when it is
 * gone, locked by another claimer or not claimable, -1 on memory exhaustion.
 */
static int claim_candidate(struct spool *sp, const char *name, struct job **job_out)
{
	char from[PATH_MAX], to[PATH_MAX];
	struct spool_claim *claim;
	struct job *job;
	int fd;

	if (snprintf(from, sizeof(from), "%s/%s", sp->incoming, name) >= (int)sizeof(from) ||
	    snprintf(to, sizeof(to), "%s/%s", sp->processing, name) >= (int)sizeof(to) || strlen(name) > NAME_MAX)
		return 1;
	fd = open(from, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
	if (fd < 0) {
		if (errno != ENOENT && now_ms() - sp->unreadable_warned_ms >= SPOOL_UNREADABLE_WARN_MS) {
			log_warn("spool: cannot open %s (skipped)", from);
			sp->unreadable_warned_ms = now_ms();
		}
		return 1;
	}
	/* Lock first, then check the name still holds this file: only then may we move it. */
	if (flock(fd, LOCK_EX | LOCK_NB) < 0 || !fd_is_path(fd, from) || rename(from, to) < 0) {
		close(fd);
		return 1;
	}
	claim = calloc(1, sizeof(*claim));
	if (claim == NULL) {
		if (rename(to, from) < 0)
			log_warn("spool: give back %s", name);
		close(fd);
		return -1;
	}
	claim->fd = fd;
	memcpy(claim->name, name, strlen(name) + 1);
	job = job_from_claim(claim);
	if (job == NULL) {
		if (rename(to, from) < 0)
			log_warn("spool: give back %s", name);
		claim_free(claim);
		return -1;
	}
	*job_out = job;
	return 0;
}

static bool fault_active(struct spool *sp)
{
	return sp->fault[0] != '\0';
}

static int spool_take(struct source *src, struct job **job)
{
	struct spool *sp = (struct spool *)src;

	if (sp->paused || fault_active(sp))
		return 1;
	for (;;) {
		bool exhausted = sp->cursor >= sp->count;
		if (sp->stale &&
		    (exhausted || now_ms() - sp->last_scan_ms >= rescan_interval_ms(sp, SPOOL_MIN_RESCAN_MS))) {
			if (scan_incoming(sp) < 0)
				return 1; /* the fault shows; the rescan timer retries */
			exhausted = sp->count == 0;
		}
		if (exhausted)
			return 1;
		int rc = claim_candidate(sp, sp->list[sp->cursor++].name, job);
		if (rc <= 0) {
			if (rc == 0)
				sp->out++;
			return rc;
		}
	}
}

/* ---- per job --------------------------------------------------------------- */

static int spool_attempt(struct source *src, struct job *job, int attempt)
{
	struct spool *sp = (struct spool *)src;
	struct spool_claim *claim = job->backend;
	char name[NAME_MAX + 1 + 16], from[PATH_MAX], to[PATH_MAX];

	int n = attempt > 0 ? snprintf(name, sizeof(name), "%.*s%s%d", (int)claim->base_len, claim->name,
	                               ATTEMPT_MARK, attempt)
	                    : snprintf(name, sizeof(name), "%.*s", (int)claim->base_len, claim->name);
	if (n < 0 || n > NAME_MAX) {
		/* The count then survives only in memory: a crash would repeat attempts, not lose the job. */
		log_warnx("spool: %s: name too long to record attempt %d", claim->name, attempt);
		return 0;
	}
	if (snprintf(from, sizeof(from), "%s/%s", sp->processing, claim->name) >= (int)sizeof(from) ||
	    snprintf(to, sizeof(to), "%s/%s", sp->processing, name) >= (int)sizeof(to)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	if (rename(from, to) < 0) {
		log_warn("spool: record attempt %d of %s", attempt, job->id);
		return -1;
	}
	memcpy(claim->name, name, (size_t)n + 1);
	if (fsync_dir(sp->processing) < 0)
		log_warn("spool: fsync %s", sp->processing);
	return 0;
}

static void spool_status(struct source *src, struct job *job, const char *doc, size_t len)
{
	/* The spool keeps outcomes only; live progress is in stats. */
}

/* Frees a job that left our hands; the claim's fd closes, releasing its lock. */
static void drop_job(struct spool *sp, struct job *job)
{
	claim_free(job->backend);
	job->backend = NULL;
	job_free(job);
	if (sp->out > 0)
		sp->out--;
}

/* Renames the claimed file back to incoming/ (attempt count kept) and drops the job. */
static void give_back(struct spool *sp, struct job *job)
{
	struct spool_claim *claim = job->backend;
	char from[PATH_MAX], to[PATH_MAX];
	bool moved = false;

	if (snprintf(from, sizeof(from), "%s/%s", sp->processing, claim->name) < (int)sizeof(from) &&
	    snprintf(to, sizeof(to), "%s/%s", sp->incoming, claim->name) < (int)sizeof(to)) {
		moved = rename(from, to) == 0;
		if (moved)
			sp->stale = true; /* ours to take again without waiting for inotify */
		else
			log_warn("spool: release %s (the rescan will reclaim it)", claim->name);
	}
	/* Unlock before the fsyncs so that a worker woken by the rename can claim it at once. */
	drop_job(sp, job);
	if (moved && (fsync_dir(sp->incoming) < 0 || fsync_dir(sp->processing) < 0))
		log_warn("spool: fsync after release");
}

static void spool_release(struct source *src, struct job *job)
{
	give_back((struct spool *)src, job);
}

/* Writes the outcome document durably into complete/ or failed/. 0 or -1. */
static int write_outcome(struct spool *sp, struct job *job, bool completed, const char *doc, size_t len)
{
	const char *sub = completed ? "complete" : "failed";
	char tmp_name[96], file[SPOOL_OUTCOME_ID_MAX + 32];
	char tmp_path[PATH_MAX], final_path[PATH_MAX], final_dir[PATH_MAX];

	unique_name(tmp_name, sizeof(tmp_name), ".outcome");
	outcome_name(job->id, file, sizeof(file));
	if (join_path(tmp_path, sizeof(tmp_path), sp->dir, "tmp", tmp_name) < 0 ||
	    join_path(final_path, sizeof(final_path), sp->dir, sub, file) < 0 ||
	    join_path(final_dir, sizeof(final_dir), sp->dir, sub, NULL) < 0)
		return -1;
	return write_durably(tmp_path, final_path, final_dir, doc, len);
}

static void spool_finish(struct source *src, struct job *job, bool completed, const char *doc, size_t len)
{
	struct spool *sp = (struct spool *)src;
	struct spool_claim *claim = job->backend;
	char path[PATH_MAX];

	if (write_outcome(sp, job, completed, doc, len) < 0) {
		/* Not durable: the job stays queued and runs again; stop taking jobs for a while. */
		set_fault(sp, SPOOL_FAULT_HOLD_MS, "spool: cannot write the outcome of %.200s: %s", job->id, errno);
		log_error("%s", sp->fault);
		sp->cb.settled(job, false, sp->cb.arg);
		give_back(sp, job);
		return;
	}
	/* Unlink before close: a reclaimer that wins our lock must find no file. */
	if (snprintf(path, sizeof(path), "%s/%s", sp->processing, claim->name) >= (int)sizeof(path) ||
	    unlink(path) < 0)
		log_warn("spool: remove %s/%s", sp->processing, claim->name);
	else if (fsync_dir(sp->processing) < 0)
		log_warn("spool: fsync %s", sp->processing);
	sp->cb.settled(job, true, sp->cb.arg);
	drop_job(sp, job);
}

/* ---- the source ------------------------------------------------------------ */

static void schedule_ready(struct spool *sp)
{
	if (!ev_is_active(&sp->kick_timer)) {
		ev_timer_set(&sp->kick_timer, 0., 0.);
		ev_timer_start(sp->loop, &sp->kick_timer);
	}
}

static void kick_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct spool *sp = w->data;

	if (!sp->paused && !fault_active(sp) && sp->cb.ready != NULL)
		sp->cb.ready(sp->cb.arg);
}

static void inotify_cb(struct ev_loop *loop, ev_io *w, int revents);

/* Watches incoming/ if not watching yet (at open, and again after the directory was recreated). */
static void ensure_watch(struct spool *sp)
{
	if (sp->inotify_fd < 0 || sp->watching)
		return;
	if (inotify_add_watch(sp->inotify_fd, sp->incoming, IN_MOVED_TO | IN_CLOSE_WRITE | IN_CREATE) < 0) {
		log_warn("spool: inotify on %s (the 1 s rescan remains)", sp->incoming);
		return;
	}
	sp->watching = true;
	if (!ev_is_active(&sp->inotify_watcher))
		ev_io_start(sp->loop, &sp->inotify_watcher);
}

static void inotify_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct spool *sp = w->data;
	char buf[8192] __attribute__((aligned(__alignof__(struct inotify_event))));
	ssize_t n;

	while ((n = read_some(sp->inotify_fd, buf, sizeof(buf))) > 0) {
		for (char *p = buf; p < buf + n;) {
			const struct inotify_event *ev = (const struct inotify_event *)p;
			/* The watch ends when incoming/ goes away: the rescan timer watches again. */
			if (ev->mask & IN_IGNORED)
				sp->watching = false;
			p += sizeof(*ev) + ev->len;
		}
	}
	if (n < 0 && errno != EAGAIN) {
		log_warn("spool: read inotify");
		ev_io_stop(loop, w);
		return;
	}
	sp->stale = true;
	if (!sp->paused && !fault_active(sp) && sp->cb.ready != NULL)
		sp->cb.ready(sp->cb.arg);
}

/* The safety net: directory health, dead claims, missed wakes. */
static void rescan_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct spool *sp = w->data;
	char err[sizeof(sp->fault)];
	bool had_fault = fault_active(sp);

	if (check_dirs(sp->dir, false, err, sizeof(err)) < 0) {
		if (strcmp(err, sp->fault) != 0)
			log_error("%s", err);
		snprintf(sp->fault, sizeof(sp->fault), "%s", err);
		return;
	}
	if (had_fault && now_ms() < sp->fault_until_ms)
		return;
	if (had_fault) {
		log_info("spool: %s is usable again", sp->dir);
		sp->fault[0] = '\0';
	}
	ensure_watch(sp);
	if (reclaim_dead(sp->processing, sp->incoming) < 0)
		log_warn("spool: reclaim in %s", sp->processing);
	if (sp->paused)
		return;
	/* A fresh list with candidates left needs no scan to know there may be work. */
	bool fresh = sp->cursor < sp->count &&
	             now_ms() - sp->last_scan_ms < rescan_interval_ms(sp, (long long)(SPOOL_RESCAN_S * 1000));
	if (!fresh && scan_incoming(sp) < 0)
		return;
	if (sp->count > sp->cursor && sp->cb.ready != NULL)
		sp->cb.ready(sp->cb.arg);
}

static void free_spool(struct spool *sp)
{
	if (sp == NULL)
		return;
	list_clear(sp);
	if (sp->inotify_fd >= 0)
		close(sp->inotify_fd);
	free(sp->dir);
	free(sp);
}

static struct source *spool_open(const struct config *cfg, struct ev_loop *loop, int slot,
                                 const struct source_callbacks *cb, char *err, size_t errlen)
{
	struct spool *sp = calloc(1, sizeof(*sp));

	if (sp == NULL || (sp->dir = strdup(cfg->spool_dir)) == NULL) {
		snprintf(err, errlen, "spool: out of memory");
		free(sp);
		return NULL;
	}
	sp->inotify_fd = -1;
	if (errlen > 0)
		err[0] = '\0';
	if (spool_prepare(sp->dir, err, errlen) < 0 ||
	    join_path(sp->incoming, sizeof(sp->incoming), sp->dir, "incoming", NULL) < 0 ||
	    join_path(sp->processing, sizeof(sp->processing), sp->dir, "processing", NULL) < 0 ||
	    join_path(sp->tmp, sizeof(sp->tmp), sp->dir, "tmp", NULL) < 0) {
		if (err[0] == '\0')
			snprintf(err, errlen, "spool: %s: path too long", sp->dir);
		free_spool(sp);
		return NULL;
	}
	sp->loop = loop;
	sp->cb = *cb;
	sp->slot = slot;
	sp->stale = true;

	sp->inotify_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (sp->inotify_fd < 0)
		log_warn("spool: inotify (the 1 s rescan remains)");
	ev_io_init(&sp->inotify_watcher, inotify_cb, sp->inotify_fd, EV_READ);
	sp->inotify_watcher.data = sp;
	ensure_watch(sp);
	ev_timer_init(&sp->rescan_timer, rescan_cb, SPOOL_RESCAN_S, SPOOL_RESCAN_S);
	sp->rescan_timer.data = sp;
	ev_timer_start(loop, &sp->rescan_timer);
	ev_timer_init(&sp->kick_timer, kick_cb, 0., 0.);
	sp->kick_timer.data = sp;

	if (reclaim_dead(sp->processing, sp->incoming) < 0)
		log_warn("spool: reclaim in %s", sp->processing);
	schedule_ready(sp);
	return (struct source *)sp;
}

static void spool_pause(struct source *src)
{
	((struct spool *)src)->paused = true;
}

static void spool_resume(struct source *src)
{
	struct spool *sp = (struct spool *)src;

	if (!sp->paused)
		return;
	/* Whatever arrived meanwhile was noted by inotify: no rescan needed. */
	sp->paused = false;
	schedule_ready(sp);
}

static size_t spool_pending(struct source *src)
{
	return 0; /* finish() is durable before it returns */
}

static const char *spool_fault(struct source *src)
{
	return ((struct spool *)src)->fault;
}

static void spool_close(struct source *src)
{
	struct spool *sp = (struct spool *)src;

	if (sp == NULL)
		return;
	if (sp->out > 0)
		log_warnx("spool: closing with %zu jobs still out (they will be reclaimed)", sp->out);
	ev_io_stop(sp->loop, &sp->inotify_watcher);
	ev_timer_stop(sp->loop, &sp->rescan_timer);
	ev_timer_stop(sp->loop, &sp->kick_timer);
	free_spool(sp);
}

const struct source_ops spool_source_ops = {
	.name = "spool",
	.open = spool_open,
	.take = spool_take,
	.attempt = spool_attempt,
	.status = spool_status,
	.finish = spool_finish,
	.release = spool_release,
	.pause = spool_pause,
	.resume = spool_resume,
	.pending = spool_pending,
	.fault = spool_fault,
	.close = spool_close,
};
