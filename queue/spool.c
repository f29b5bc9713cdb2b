/*
 * spool: the embedded durable queue of README "The spool", a maildir-style
 * directory shared by any number of workers and supervisors on one host.
 *
 *   tmp/         files being written (by producers, and our outcome files)
 *   incoming/    jobs waiting; names starting with '.' are ignored
 *   processing/  jobs claimed by a live worker
 *   complete/    <id>.json outcome documents (README: The spool)
 *   failed/      <id>.json outcome documents
 *
 * Names. spool_enqueue names a job "<unix ms, 13 digits>-<pid>-<counter>.json";
 * other producers may use any name. The attempts a job has started are kept
 * in its name, so that they survive any crash: once attempt N may start the
 * file is called "<name>;a=N" (no suffix = none yet). The job id is the
 * payload's "id" string, else the name without that suffix and without
 * ".json" (control characters made '_').
 *
 * Claims. A worker claims incoming/F by opening it, taking flock(LOCK_EX|NB)
 * and only then renaming it straight to processing/F;a=N (N = the attempt
 * about to start: one rename, and attempt() then has nothing to do); it keeps
 * the descriptor (and so the lock) open until the job is finished or
 * released. Every move of a job file out of incoming/ or processing/ is done
 * by the holder of its lock, so a job is claimed by exactly one worker at a
 * time, and a processing/ file whose lock can be taken belongs to a dead
 * worker: it goes back to incoming/ under its current name, attempt count
 * included. Holders unlink before they close, so a reclaimer that wins the
 * lock of a finishing job finds nothing. Moves between incoming/ and
 * processing/ never replace a file (RENAME_NOREPLACE): a producer that reuses
 * a name cannot make one job overwrite another.
 *
 * Durability: only the fsyncs the contract needs.
 *  - Enqueue: the job file is fsynced, renamed into incoming/, and incoming/
 *    is fsynced before spool_enqueue returns: a submitted job survives a
 *    power cut.
 *  - Claim, attempt, release, reclaim: renames, never fsynced. A worker crash
 *    loses nothing (a rename is visible to every process at once); a rename
 *    lost to a power cut leaves the job under its previous name, so it runs
 *    again or with a lower attempt count, which at-least-once allows.
 *  - Outcome: the document is written in tmp/ and fsynced, then renamed into
 *    complete/ or failed/. That directory is fsynced once for all the outcomes
 *    finished in the same loop iteration (group commit: an ev_prepare runs the
 *    batch before the loop sleeps again); only then do the jobs' files leave
 *    processing/ (unlinked, or kept as spares: see spares below) and
 *    cb.settled is called. That is not fsynced: if a power cut undoes it, the
 *    finished job runs again and its outcome file is replaced. Outcome files
 *    are replaced, so the duplicates that at-least-once delivery can produce
 *    end as one file. A worker that dies between the outcome's rename and the
 *    job file's removal leaves both; the redelivery's spool_finish_recorded
 *    finds that outcome and the job only leaves (after the same directory
 *    fsync) instead of running again, or failing as worker_lost when it has
 *    no attempt left: one job never ends in both complete/ and failed/. An
 *    outcome file is named <id>.json when the id is made
 *    of [A-Za-z0-9._-] (not leading '.') and at most 160 bytes long;
 *    otherwise those bytes are kept, the others become '_', and "-<fnv1a-32
 *    of the id, 8 hex>" follows, so that distinct ids do not share a file.
 *  - An outcome that cannot be written (disk full, directory gone) stays in
 *    memory with its job, still claimed in processing/; it is written again
 *    on every safety pass until it succeeds. Meanwhile the fault shows and no
 *    job is taken; if the worker stops or dies first, the job goes back to
 *    incoming/ and runs again.
 *
 * tmp/. Our outcome files there are written under an flock held from just
 * after their creation until their rename, and our spares (<unique>.spare,
 * finished job files kept to hold later outcomes) are locked all the time
 * they are there: one that is lockable and not empty (or older than a few
 * seconds) was left by a dead worker and is removed by the next sweep (at
 * start, on a supervisor's reclaim after a worker died, on each safety pass).
 * Other files (producers' writes) are removed only once an hour old.
 *
 * Waking. One readdir of incoming/ fills a candidate list, oldest first (by
 * mtime, which rename keeps, so a requeued job keeps its place, then name).
 * inotify on incoming/ reports the names that arrive, appended to the list
 * without a rescan; incoming/ is read again only when the list has run dry
 * after an inotify overflow, without a watch, or on a safety pass. The safety
 * pass checks the directories and free space, reclaims dead claims, sweeps
 * tmp/, retries outcomes that could not be written and rescans an exhausted
 * list. It runs at most once a second, from take() when that is called often
 * enough (a worker's heartbeat calls it every second, so an idle worker wakes
 * for nothing else), else from a backstop timer.
 */
#include "queue/spool.h"
#include "queue/spool_dir.h"
#include "queue/events.h"
#include "shared/durable.h"
#include "shared/log.h"
#include "shared/scoreboard.h"
#include "shared/util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/inotify.h>
#include <sys/queue.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#define SPOOL_MAX_PAYLOAD (16u * 1024 * 1024)
#define SPOOL_MAX_PAYLOAD_TEXT "16 MiB"
#define SPOOL_INVALID_PREFIX 4096     /* bytes of an oversized payload kept for the failed document */
#define SPOOL_SAFETY_S 1.0            /* a safety pass at most this often */
#define SPOOL_BACKSTOP_S 2.5          /* ...and at least this often, while healthy, when take() is not called */
#define SPOOL_MIN_RESCAN_MS 200       /* without inotify, an exhausted list is reread at most this often */
#define SPOOL_UNREADABLE_WARN_MS 60000
#define SPOOL_BACKLOG_MIN_MS 1000     /* incoming/ is counted for stats at most this often... */
#define SPOOL_BACKLOG_SHARE 20        /* ...and rarely enough that counting takes at most 1/20 of the time */

#define SPARES_MIN 8  /* a batch of spares shares one fsync of processing/: at least this many */
#define SPARES_MAX 32 /* ...and at most this many wait, plus as many ready: bounded open files */


struct candidate {
	struct timespec mtime;
	char *name;
};

/*
 * A claimed job's backend state: the locked descriptor, its current name in
 * processing/ and, once finish() was called, its outcome on the way to disk.
 */
struct spool_claim {
	int fd;
	char name[NAME_MAX + 1];
	size_t base_len;  /* name without the attempt suffix */
	int name_attempt; /* the count the name records */
	struct job *job;
	struct stat st; /* the job file's, at claim: may it become a spare */
	bool completed;
	char *doc;
	size_t doc_len;
	SLIST_ENTRY(spool_claim) link; /* in written or stuck */
};

SLIST_HEAD(claim_list, spool_claim);

/* A finished job's file kept in tmp/<name> (locked through fd) to hold a later outcome. */
struct spare {
	int fd;
	off_t size;
	char name[96];
};

struct spool {
	char *dir;
	char incoming[PATH_MAX];
	char processing[PATH_MAX];
	struct ev_loop *loop;
	struct source_callbacks cb;
	uid_t euid;
	pid_t pid; /* a source lives in one process: asked once */
	struct stat owner_st;
	const struct stat *owner; /* whom our outcome files must belong to, NULL = ourselves */
	struct scoreboard_slot *board;
	char published_fault[SCOREBOARD_FAULT_MAX]; /* what we last wrote in board->fault */

	int inotify_fd;
	bool watching; /* the watch on incoming/ exists (it ends if the directory goes) */
	ev_io inotify_watcher;
	ev_timer safety_timer; /* backstop of the safety pass */
	ev_timer kick_timer;   /* cb.ready from the loop, never from inside a call of ours */
	ev_prepare commit_watcher; /* group commit of the outcomes written in this loop iteration */
	double last_safety;    /* ev_now of the last safety pass */

	struct candidate *list; /* incoming/ at the last scan (oldest first), then names inotify reported */
	size_t count, cap;
	size_t cursor;
	bool stale; /* the list may miss names: read incoming/ when it runs dry */
	long long last_scan_ms;
	long long scan_cost_ms; /* of the last scan: a huge backlog makes rescans rarer */
	long long backlog_at_ms;   /* last count of incoming/ for stats (monotonic) */
	long long backlog_cost_ms; /* what it took */

	bool paused;
	size_t out; /* jobs handed out, not yet settled or released */
	struct claim_list written;   /* outcomes renamed into place, their directory not yet fsynced */
	size_t written_count;
	struct claim_list stuck;     /* outcomes that could not be written yet */
	struct spare *fresh;         /* spares whose removal from processing/ is not yet durable */
	struct spare *ready;         /* spares that may be overwritten */
	size_t fresh_count, ready_count, spares_max;
	bool wrote_outcome;          /* since the last safety pass: else the spares are given up */
	uid_t spare_uid;             /* what an outcome file of ours is: a spare must match */
	gid_t spare_gid;
	mode_t spare_mode;
	char write_error[512];       /* why the last outcome write failed */
	char fault[512];
	long long unreadable_warned_ms;
	struct spool_counters counters;
};


/* ---- names --------------------------------------------------------------- */

/* "<base>;a=N" (or base alone for N = 0) into buf; -1 when it would not be a valid name. */
static int name_with_attempt(char *buf, size_t len, const char *name, size_t base_len, int attempt)
{
	int n = attempt > 0 ? snprintf(buf, len, "%.*s%s%d", (int)base_len, name, ATTEMPT_MARK, attempt)
	                    : snprintf(buf, len, "%.*s", (int)base_len, name);
	return n < 0 || (size_t)n >= len || n > NAME_MAX ? -1 : 0;
}

/* ---- files --------------------------------------------------------------- */

/* Reads a claimed job's bytes (size from fstat: one read); NULL with EFBIG when larger than the cap. */
static char *read_payload(int fd, off_t size, size_t *len_out)
{
	size_t cap = size > 0 && (uint64_t)size <= SPOOL_MAX_PAYLOAD ? (size_t)size + 1 : 4096;
	size_t len = 0;
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
		/* A short read of a regular file is its end: no second read to see EOF. */
		if (len < cap && len >= (size_t)size)
			break;
	}
	if (buf != NULL) {
		buf[len] = '\0';
		*len_out = len;
		errno = 0;
	}
	return buf;
}

/* ---- directories --------------------------------------------------------- */

/* ---- what a job may be ------------------------------------------------------ */

/* ---- candidates ---------------------------------------------------------- */

static void list_clear(struct spool *sp)
{
	for (size_t i = sp->cursor; i < sp->count; i++)
		free(sp->list[i].name);
	free(sp->list);
	sp->list = NULL;
	sp->count = sp->cap = sp->cursor = 0;
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

/* Appends a copy of name to *list. 0, or -1 on memory exhaustion. */
static int candidate_push(struct candidate **list, size_t *count, size_t *cap, const char *name,
                          const struct timespec *mtime)
{
	if (*count == *cap) {
		size_t grown_cap = *cap == 0 ? 64 : *cap * 2;
		struct candidate *grown = realloc(*list, grown_cap * sizeof(**list));
		if (grown == NULL)
			return -1;
		*list = grown;
		*cap = grown_cap;
	}
	(*list)[*count].name = strdup(name);
	if ((*list)[*count].name == NULL)
		return -1;
	(*list)[*count].mtime = *mtime;
	(*count)++;
	return 0;
}

/* One readdir of incoming/ into a sorted list. 0, or -1 with errno. */
static int read_incoming(const char *incoming, struct candidate **list_out, size_t *count_out, size_t *cap_out)
{
	DIR *d = opendir(incoming);
	struct dirent *de;
	struct candidate *list = NULL;
	size_t count = 0, cap = 0;
	int rc = 0;

	if (d == NULL)
		return -1;
	while ((errno = 0, de = readdir(d)) != NULL) {
		struct stat st;
		if (de->d_name[0] == '.' || (de->d_type != DT_REG && de->d_type != DT_UNKNOWN))
			continue;
		if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISREG(st.st_mode))
			continue;
		if (candidate_push(&list, &count, &cap, de->d_name, &st.st_mtim) < 0) {
			rc = -1;
			break;
		}
	}
	if (rc == 0 && errno != 0)
		rc = -1;
	int saved = errno;
	closedir(d);
	if (rc < 0) {
		for (size_t i = 0; i < count; i++)
			free(list[i].name);
		free(list);
		errno = saved;
		return -1;
	}
	if (count > 1)
		qsort(list, count, sizeof(*list), candidate_cmp);
	*list_out = list;
	*count_out = count;
	*cap_out = cap;
	return 0;
}

/* ---- faults ---------------------------------------------------------------- */

static bool fault_active(const struct spool *sp)
{
	return sp->fault[0] != '\0';
}

/*
 * Shows the fault in the worker's scoreboard slot (stats), which the worker
 * also uses for its own faults: only text the spool wrote itself is ever
 * replaced or cleared there.
 */
static void publish_fault(struct spool *sp)
{
	if (sp->board == NULL)
		return;
	char *shown = sp->board->fault;
	char text[SCOREBOARD_FAULT_MAX];
	snprintf(text, sizeof(text), "%.*s", (int)sizeof(text) - 1, sp->fault);
	bool ours = shown[0] == '\0' || strcmp(shown, sp->published_fault) == 0;
	if (!ours || strcmp(shown, text) == 0)
		return;
	scoreboard_write_begin(sp->board);
	memcpy(shown, text, sizeof(text));
	scoreboard_write_end(sp->board);
	memcpy(sp->published_fault, text, sizeof(text));
}

/* Sets (text non-empty) or clears the fault; logs each change once. */
static void fault_update(struct spool *sp, const char *text)
{
	if (strcmp(text, sp->fault) != 0) {
		if (text[0] != '\0')
			log_error("%s", text);
		else
			log_info("spool: %s is usable again", sp->dir);
		snprintf(sp->fault, sizeof(sp->fault), "%s", text);
	}
	publish_fault(sp);
}

static void fault_set_errno(struct spool *sp, const char *what, const char *path, int err)
{
	char text[sizeof(sp->fault)];

	snprintf(text, sizeof(text), "spool: %s %.400s: %s", what, path, strerror(err));
	fault_update(sp, text);
}

/* ---- the candidate list ------------------------------------------------------ */

/* Rereads incoming/ into the candidate list. 0, or -1 (fault set). */
static int scan_incoming(struct spool *sp)
{
	struct candidate *list;
	size_t count, cap;
	long long started = now_ms();

	if (read_incoming(sp->incoming, &list, &count, &cap) < 0) {
		fault_set_errno(sp, "cannot read", sp->incoming, errno);
		return -1;
	}
	list_clear(sp);
	sp->list = list;
	sp->count = count;
	sp->cap = cap;
	sp->stale = false;
	sp->counters.scans++;
	sp->last_scan_ms = now_ms();
	sp->scan_cost_ms = sp->last_scan_ms - started;
	return 0;
}

/* How long a list stays good enough: scanning must not eat more than a tenth of the time. */
static long long rescan_interval_ms(const struct spool *sp, long long floor_ms)
{
	return sp->scan_cost_ms * 10 > floor_ms ? sp->scan_cost_ms * 10 : floor_ms;
}

/* A name inotify reported: appended (it is the newest), no readdir. */
static void list_append(struct spool *sp, const char *name)
{
	static const struct timespec unknown = { 0, 0 };

	if (name[0] == '.')
		return;
	if (sp->cursor == sp->count)
		list_clear(sp); /* all taken: start a fresh array rather than grow a used one */
	if (candidate_push(&sp->list, &sp->count, &sp->cap, name, &unknown) < 0)
		sp->stale = true; /* out of memory: the next dry list rereads the directory */
}

/* ---- claiming ------------------------------------------------------------ */

static void claim_free(struct spool_claim *claim)
{
	if (claim == NULL)
		return;
	if (claim->fd >= 0)
		close(claim->fd);
	free(claim->doc);
	free(claim);
}

/* Fills job's payload from the claimed file; false on memory exhaustion. */
static bool load_payload(struct job *job, const struct spool_claim *claim, off_t size)
{
	size_t len = 0;

	job->payload = read_payload(claim->fd, size, &len);
	if (job->payload == NULL && errno == ENOMEM)
		return false;
	if (job->payload == NULL) {
		/* Unreadable (EIO...): fail it with a reason rather than retrying forever. */
		log_warn("spool: read %s", claim->name);
		job->payload = strdup("");
		job->invalid = true;
		job->invalid_reason = "the job file cannot be read";
	} else if (errno == EFBIG) {
		log_warnx("spool: %s is larger than %u bytes: invalid job", claim->name, SPOOL_MAX_PAYLOAD);
		len = len > SPOOL_INVALID_PREFIX ? SPOOL_INVALID_PREFIX : len;
		char *prefix = realloc(job->payload, len + 1);
		if (prefix != NULL)
			job->payload = prefix;
		job->payload[len] = '\0';
		job->invalid = true;
		job->invalid_reason = "the job file is larger than " SPOOL_MAX_PAYLOAD_TEXT;
	}
	job->payload_len = len;
	return job->payload != NULL;
}

/* Builds the job for a claimed, locked file. NULL on memory exhaustion. */
static struct job *job_from_claim(struct spool_claim *claim, off_t size, int attempts_done)
{
	struct job *job = calloc(1, sizeof(*job));

	if (job == NULL)
		return NULL;
	job->attempts_done = attempts_done;
	if (!load_payload(job, claim, size)) {
		job_free(job);
		return NULL;
	}
	if (!job->invalid) {
		const char *problem = spool_payload_verdict(job->payload, job->payload_len, &job->id);
		if (problem != NULL) {
			/* Failed as invalid_job under the file name's id, which is safe to show and log. */
			log_warnx("spool: %s: %s: invalid job", claim->name, problem);
			job->invalid = true;
			job->invalid_reason = problem;
		}
	}
	if (job->id == NULL)
		job->id = spool_id_from_name(claim->name, claim->base_len);
	if (job->id == NULL) {
		job_free(job);
		return NULL;
	}
	claim->job = job;
	job->backend = claim;
	return job;
}

/*
 * Moves incoming/name to processing/, already named for the attempt that is
 * about to start (so that attempt() has nothing to do); under the plain name
 * when the suffix would not fit. The name used goes into claim.
 */
static int claim_rename(struct spool *sp, const char *from, const char *name, struct spool_claim *claim, int *done_out)
{
	char to[PATH_MAX];
	int done = spool_name_split(name, &claim->base_len);

	*done_out = done;
	claim->name_attempt = done + 1;
	if (name_with_attempt(claim->name, sizeof(claim->name), name, claim->base_len, done + 1) < 0) {
		claim->name_attempt = done;
		snprintf(claim->name, sizeof(claim->name), "%s", name);
	}
	if (join_path(to, sizeof(to), sp->dir, "processing", claim->name) < 0)
		return -1;
	return spool_move_noreplace(from, to);
}

static void give_back_path(const char *from, const char *to, const char *name)
{
	if (spool_move_noreplace(from, to) < 0)
		log_warn("spool: give back %s", name);
}

enum claim_result {
	CLAIM_TAKEN,   /* ours: *job_out is set */
	CLAIM_SKIPPED, /* gone, locked by another claimer, or not claimable */
	CLAIM_FAILED,  /* out of memory (the file stays in incoming/) */
};

/* Tries to claim incoming/name. */
static enum claim_result claim_candidate(struct spool *sp, const char *name, struct job **job_out)
{
	char from[PATH_MAX], to[PATH_MAX];
	struct spool_claim *claim;
	struct stat st;
	struct job *job;
	int fd, done = 0;

	if (strlen(name) > NAME_MAX || join_path(from, sizeof(from), sp->dir, "incoming", name) < 0)
		return CLAIM_SKIPPED;
	fd = open(from, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
	if (fd < 0) {
		if (errno != ENOENT && now_ms() - sp->unreadable_warned_ms >= SPOOL_UNREADABLE_WARN_MS) {
			log_warn("spool: cannot open %s (skipped)", from);
			sp->unreadable_warned_ms = now_ms();
		}
		return CLAIM_SKIPPED;
	}
	claim = calloc(1, sizeof(*claim));
	if (claim == NULL) {
		close(fd);
		return CLAIM_FAILED;
	}
	claim->fd = fd;
	/* Lock first, then check the name still holds this file: only then may we move it. */
	if (flock(fd, LOCK_EX | LOCK_NB) < 0 || !spool_fd_is_path(fd, from, &st) || !S_ISREG(st.st_mode) ||
	    claim_rename(sp, from, name, claim, &done) < 0) {
		claim_free(claim);
		return CLAIM_SKIPPED;
	}
	claim->st = st;
	job = job_from_claim(claim, st.st_size, done);
	if (job == NULL) {
		if (join_path(to, sizeof(to), sp->dir, "processing", claim->name) == 0)
			give_back_path(to, from, name);
		claim_free(claim);
		return CLAIM_FAILED;
	}
	*job_out = job;
	return CLAIM_TAKEN;
}

/* ---- spares: finished job files that hold later outcomes --------------------- */

/*
 * Why: on a busy spool each job freed an inode (its processing/ file) and
 * allocated one (its outcome's tmp/ file); allocating an inode on ext4 without
 * a journal scans past every recently freed one, and a new file's fsync there
 * also writes tmp/. So once a job's outcome is durable its file is renamed
 * from processing/ to tmp/<unique>.spare, still locked (a sweep leaves it
 * alone; if we die the lock goes and the sweep removes it), and a later
 * outcome is written over it: open, write, shrink if shorter, fsync, rename
 * into complete/ or failed/ (the lock is held until after that rename).
 *
 * Overwriting is safe only once the job's name is gone from processing/ for
 * good: were a power cut to bring the name back, the job would come back with
 * another job's outcome as its payload. So a spare waits (fresh) until one
 * fsync of processing/ covers a batch of spares_max of them (at least
 * SPARES_MIN: a fraction of a directory fsync per job); until then outcomes
 * get new files as before. A job file becomes a spare only when it is what an
 * outcome file of ours would be: regular, one link (no other name may ever
 * show the outcome), our owner and group; its mode is set to ours. At most
 * spares_max fresh and spares_max ready; an idle worker (no outcome written
 * since the last safety pass) gives them all up, so an idle tmp/ holds none.
 */

static void discard_spare(struct spool *sp, struct spare *spare)
{
	char path[PATH_MAX];

	/* Unlinked while still locked, like every tmp/ file of ours. */
	if (join_path(path, sizeof(path), sp->dir, "tmp", spare->name) == 0 && unlink(path) < 0 && errno != ENOENT)
		log_warn("spool: remove %s", path);
	close(spare->fd);
	spare->fd = -1;
}

static void discard_spares(struct spool *sp)
{
	while (sp->fresh_count > 0)
		discard_spare(sp, &sp->fresh[--sp->fresh_count]);
	while (sp->ready_count > 0)
		discard_spare(sp, &sp->ready[--sp->ready_count]);
}

/* What an outcome file of ours is (see write_outcome): learnt once, compared per job. */
static void spares_init(struct spool *sp, const struct config *cfg)
{
	char tmp[PATH_MAX];
	struct stat st;
	mode_t mask = umask(0);

	umask(mask); /* only read: a spool worker runs one thread */
	sp->spare_mode = SPOOL_FILE_MODE & ~mask;
	sp->spare_uid = sp->owner != NULL ? sp->owner->st_uid : sp->euid;
	sp->spare_gid = sp->owner != NULL ? sp->owner->st_gid : getegid();
	if (sp->owner == NULL && join_path(tmp, sizeof(tmp), sp->dir, "tmp", NULL) == 0 && stat(tmp, &st) == 0 &&
	    (st.st_mode & S_ISGID))
		sp->spare_gid = st.st_gid; /* new files there take the directory's group */
	size_t max = cfg->max_concurrent > SPARES_MIN ? (size_t)cfg->max_concurrent : SPARES_MIN;
	max = max > SPARES_MAX ? SPARES_MAX : max;
	sp->fresh = calloc(max, sizeof(*sp->fresh));
	sp->ready = calloc(max, sizeof(*sp->ready));
	sp->spares_max = sp->fresh != NULL && sp->ready != NULL ? max : 0; /* none: outcomes get new files */
}

static bool may_be_spare(const struct spool *sp, const struct stat *st)
{
	return S_ISREG(st->st_mode) && st->st_nlink == 1 && st->st_uid == sp->spare_uid &&
	       st->st_gid == sp->spare_gid;
}

/* Moves the finished job's file (processing/ path) into the fresh spares; false when it is not kept. */
static bool keep_as_spare(struct spool *sp, struct spool_claim *claim, const char *path)
{
	char to[PATH_MAX];

	if (sp->fresh_count >= sp->spares_max || claim->fd < 0 || !may_be_spare(sp, &claim->st))
		return false;
	if ((claim->st.st_mode & 07777) != sp->spare_mode && fchmod(claim->fd, sp->spare_mode) < 0)
		return false;
	struct spare *spare = &sp->fresh[sp->fresh_count];
	spool_unique_name(spare->name, sizeof(spare->name), sp->pid, SPARE_SUFFIX);
	if (join_path(to, sizeof(to), sp->dir, "tmp", spare->name) < 0 || spool_move_noreplace(path, to) < 0)
		return false;
	spare->fd = claim->fd; /* the lock comes along */
	spare->size = claim->st.st_size;
	claim->fd = -1;
	sp->fresh_count++;
	return true;
}

/* One fsync of processing/ makes the fresh spares' leaving it durable: then they may be overwritten. */
static void ready_spares(struct spool *sp)
{
	sp->counters.spare_syncs++;
	if (fsync_dir(sp->processing) < 0) {
		log_warn("spool: fsync %s (spares given up)", sp->processing);
		while (sp->fresh_count > 0)
			discard_spare(sp, &sp->fresh[--sp->fresh_count]);
		return;
	}
	while (sp->fresh_count > 0) {
		struct spare *spare = &sp->fresh[--sp->fresh_count];
		if (sp->ready_count < sp->spares_max)
			sp->ready[sp->ready_count++] = *spare;
		else
			discard_spare(sp, spare);
	}
}

static int ftruncate_retry(int fd, off_t len)
{
	int rc;

	do
		rc = ftruncate(fd, len);
	while (rc < 0 && errno == EINTR);
	return rc;
}

/*
 * Writes data over a ready spare and renames it to final_path; the caller
 * fsyncs final's directory. The spare is used up either way; on failure it is
 * removed and the caller writes a new file.
 */
static int write_into_spare(struct spool *sp, struct spare *spare, const char *final_path, const void *data,
                            size_t len)
{
	char path[PATH_MAX];
	int fd = -1, rc = -1;

	if (join_path(path, sizeof(path), sp->dir, "tmp", spare->name) == 0)
		fd = open(path, O_WRONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd >= 0) {
		rc = write_all(fd, data, len);
		/* Shrunk only when shorter: within its block nothing is freed or allocated. */
		if (rc == 0 && (off_t)len < spare->size)
			rc = ftruncate_retry(fd, (off_t)len);
		if (rc == 0)
			rc = fsync_retry(fd);
		if (close(fd) < 0 && rc == 0)
			rc = -1;
		if (rc == 0)
			rc = rename(path, final_path);
	}
	if (rc < 0) {
		log_debug("spool: spare %s: %s (a new file instead)", spare->name, strerror(errno));
		discard_spare(sp, spare);
		return -1;
	}
	close(spare->fd); /* the lock, kept until the rename */
	spare->fd = -1;
	sp->counters.recycled++;
	return 0;
}

/* ---- outcomes: write, group commit, settle ------------------------------------ */

/* Frees a job that left our hands; the claim's fd closes, releasing its lock. */
static void drop_job(struct spool *sp, struct job *job)
{
	claim_free(job->backend);
	job->backend = NULL;
	job_free(job);
	if (sp->out > 0)
		sp->out--;
}

/* Renames the claimed file back to incoming/ (attempt count kept, no fsync) and drops the job. */
static void give_back(struct spool *sp, struct job *job)
{
	struct spool_claim *claim = job->backend;
	char from[PATH_MAX], to[PATH_MAX];

	if (claim == NULL) { /* never: every job we hand out has its claim */
		drop_job(sp, job);
		return;
	}
	if (join_path(from, sizeof(from), sp->dir, "processing", claim->name) < 0 ||
	    join_path(to, sizeof(to), sp->dir, "incoming", claim->name) < 0 || spool_move_noreplace(from, to) < 0)
		log_warn("spool: release %s (the rescan will reclaim it)", claim->name);
	else
		list_append(sp, claim->name); /* ours to take again without waiting for inotify */
	drop_job(sp, job);
}

/* Writes claim's outcome into complete/ or failed/ (not yet its directory's fsync). 0, or -1 and write_error. */
static int write_outcome(struct spool *sp, struct spool_claim *claim)
{
	const char *sub = claim->completed ? "complete" : "failed";
	char tmp_name[96], file[SPOOL_OUTCOME_ID_MAX + 32], tmp_path[PATH_MAX], final_path[PATH_MAX];
	/* Locked until renamed, so that a sweep of tmp/ never takes it for a dead writer's; commit_written syncs. */
	struct durable_how how = { .mode = SPOOL_FILE_MODE, .owner = sp->owner, .hold_lock = true, .defer_dir_sync = true };

	if (claim->doc == NULL)
		return 0; /* recorded by an earlier delivery (spool_finish_recorded): only its directory's fsync is due */
	spool_unique_name(tmp_name, sizeof(tmp_name), sp->pid, OUTCOME_SUFFIX);
	spool_outcome_file(claim->job->id, file, sizeof(file));
	sp->wrote_outcome = true;
	if (join_path(final_path, sizeof(final_path), sp->dir, sub, file) == 0 && sp->ready_count > 0 &&
	    write_into_spare(sp, &sp->ready[--sp->ready_count], final_path, claim->doc, claim->doc_len) == 0)
		return 0;
	if (join_path(tmp_path, sizeof(tmp_path), sp->dir, "tmp", tmp_name) == 0 &&
	    join_path(final_path, sizeof(final_path), sp->dir, sub, file) == 0 &&
	    durable_write(tmp_path, final_path, claim->doc, claim->doc_len, &how) == 0)
		return 0;
	snprintf(sp->write_error, sizeof(sp->write_error), "spool: cannot write the outcome of %.100s into %.80s/: %s",
	         claim->job->id, sub, strerror(errno));
	return -1;
}

static void commit_arm(struct spool *sp)
{
	if (!ev_is_active(&sp->commit_watcher))
		ev_prepare_start(sp->loop, &sp->commit_watcher);
}

static void push_written(struct spool *sp, struct spool_claim *claim)
{
	SLIST_INSERT_HEAD(&sp->written, claim, link);
	sp->written_count++;
	commit_arm(sp);
}

static void push_stuck(struct spool *sp, struct spool_claim *claim)
{
	SLIST_INSERT_HEAD(&sp->stuck, claim, link);
}

/*
 * The job's outcome is durable: its claim leaves processing/ (into the spares
 * if it may become one, else unlinked; before close either way), then the
 * worker hears.
 */
static void settle(struct spool *sp, struct spool_claim *claim)
{
	char path[PATH_MAX];
	struct job *job = claim->job;

	if (join_path(path, sizeof(path), sp->dir, "processing", claim->name) < 0)
		log_warnx("spool: remove %s/%s: path too long", sp->processing, claim->name);
	else if (!keep_as_spare(sp, claim, path) && unlink(path) < 0)
		log_warn("spool: remove %s/%s", sp->processing, claim->name);
	sp->cb.settled(job, true, sp->cb.arg);
	drop_job(sp, job);
}

static int sync_outcome_dir(struct spool *sp, const char *sub)
{
	char dir[PATH_MAX];

	sp->counters.dir_fsyncs++;
	if (join_path(dir, sizeof(dir), sp->dir, sub, NULL) < 0 || fsync_dir(dir) < 0) {
		snprintf(sp->write_error, sizeof(sp->write_error), "spool: cannot fsync %.200s/%s: %s", sp->dir, sub,
		         strerror(errno));
		return -1;
	}
	return 0;
}

/*
 * Group commit: one fsync of complete/ and/or failed/ for every outcome
 * written since the last one, then each job settles. An outcome whose
 * directory could not be synced is written again later (it is replaced).
 */
static void commit_written(struct spool *sp)
{
	struct claim_list batch = sp->written;
	struct spool_claim *c;
	bool need_complete = false, need_failed = false;

	ev_prepare_stop(sp->loop, &sp->commit_watcher);
	SLIST_INIT(&sp->written);
	sp->written_count = 0;
	for (c = SLIST_FIRST(&batch); c != NULL; c = SLIST_NEXT(c, link)) {
		need_complete |= c->completed;
		need_failed |= !c->completed;
	}
	int complete_rc = need_complete ? sync_outcome_dir(sp, "complete") : 0;
	int failed_rc = need_failed ? sync_outcome_dir(sp, "failed") : 0;
	while ((c = SLIST_FIRST(&batch)) != NULL) {
		SLIST_REMOVE_HEAD(&batch, link);
		if ((c->completed ? complete_rc : failed_rc) == 0) {
			settle(sp, c);
		} else {
			push_stuck(sp, c);
			fault_update(sp, sp->write_error);
		}
	}
	if (sp->spares_max > 0 && sp->fresh_count >= sp->spares_max)
		ready_spares(sp);
}

static void commit_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
	commit_written(w->data);
}

/* Writes the outcomes that could not be written before; the fault stays while one remains. */
static void retry_stuck(struct spool *sp)
{
	struct claim_list pending = sp->stuck;
	struct spool_claim *c;

	SLIST_INIT(&sp->stuck);
	while ((c = SLIST_FIRST(&pending)) != NULL) {
		SLIST_REMOVE_HEAD(&pending, link);
		if (write_outcome(sp, c) == 0)
			push_written(sp, c);
		else
			push_stuck(sp, c);
	}
}

/* ---- the safety pass ---------------------------------------------------------- */

static void inotify_cb(struct ev_loop *loop, ev_io *w, int revents);

/* Watches incoming/ if not watching yet (at open, and again after the directory was recreated). */
static void ensure_watch(struct spool *sp)
{
	if (sp->inotify_fd < 0 || sp->watching)
		return;
	if (inotify_add_watch(sp->inotify_fd, sp->incoming, IN_MOVED_TO | IN_CLOSE_WRITE) < 0) {
		log_warn("spool: inotify on %s (the rescan remains)", sp->incoming);
		return;
	}
	sp->watching = true;
	sp->stale = true; /* names may have arrived while nobody watched */
	if (!ev_is_active(&sp->inotify_watcher))
		ev_io_start(sp->loop, &sp->inotify_watcher);
}

/* ---- backlog (stats) ---------------------------------------------------------- */

/* Waiting jobs in incoming/ and the oldest one's mtime (wall ms, 0 = none). 0, or -1 with errno. */
static int count_incoming(const char *incoming, int64_t *count, int64_t *oldest_ms)
{
	DIR *d = opendir(incoming);
	if (d == NULL)
		return -1;
	struct dirent *de;
	*count = 0;
	*oldest_ms = 0;
	while ((errno = 0, de = readdir(d)) != NULL) {
		struct stat st;
		if (de->d_name[0] == '.' || (de->d_type != DT_REG && de->d_type != DT_UNKNOWN))
			continue;
		if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISREG(st.st_mode))
			continue; /* taken meanwhile */
		int64_t mtime_ms = (int64_t)st.st_mtim.tv_sec * 1000 + st.st_mtim.tv_nsec / 1000000;
		if (*count == 0 || mtime_ms < *oldest_ms)
			*oldest_ms = mtime_ms;
		(*count)++;
	}
	int saved = errno;
	closedir(d);
	errno = saved;
	return saved != 0 ? -1 : 0;
}

/*
 * Publishes how many jobs wait and since when, for the saturation figures
 * and the stall check of health. A readdir with a stat per file: from the
 * safety pass only, so at most once a second (every 2.5 s while the worker
 * is busy or idle), and less often when a huge backlog makes it costly.
 */
static void publish_backlog(struct spool *sp)
{
	long long now = now_ms();
	if (sp->board == NULL || now - sp->backlog_at_ms < SPOOL_BACKLOG_MIN_MS ||
	    now - sp->backlog_at_ms < sp->backlog_cost_ms * SPOOL_BACKLOG_SHARE)
		return;
	int64_t count, oldest_ms;
	int rc = count_incoming(sp->incoming, &count, &oldest_ms);
	sp->backlog_at_ms = now_ms();
	sp->backlog_cost_ms = sp->backlog_at_ms - now;
	scoreboard_publish_backlog(sp->board, rc == 0 ? count : -1, rc == 0 ? oldest_ms : 0);
}

/* Healthy, the backstop fires rarely (take() usually runs the pass first); else every second. */
static void safety_rearm(struct spool *sp)
{
	bool healthy = sp->watching && !fault_active(sp) && SLIST_EMPTY(&sp->stuck);

	sp->safety_timer.repeat = healthy ? SPOOL_BACKSTOP_S : SPOOL_SAFETY_S;
	ev_timer_again(sp->loop, &sp->safety_timer);
}

/* Rereads an exhausted list when names may be missing from it (or, without inotify, at a bounded rate). */
static int maybe_rescan(struct spool *sp, bool force)
{
	if (sp->cursor < sp->count)
		return 0;
	if (!force && !sp->stale)
		return 0;
	if (!force && !sp->watching && now_ms() - sp->last_scan_ms < rescan_interval_ms(sp, SPOOL_MIN_RESCAN_MS))
		return 0;
	return scan_incoming(sp);
}

/* Directory health, free space, dead claims, tmp/ leftovers, stuck outcomes, missed names. True when work may wait. */
static bool safety_pass(struct spool *sp)
{
	char err[sizeof(sp->fault)] = "";

	sp->last_safety = ev_now(sp->loop);
	sp->counters.safety_passes++;
	if (spool_check_dirs(sp->dir, false, err, sizeof(err)) == 0) {
		ensure_watch(sp);
		if (spool_reclaim_dead(sp->processing, sp->incoming) < 0)
			log_warn("spool: reclaim in %s", sp->processing);
		if (!sp->wrote_outcome)
			discard_spares(sp); /* idle: no file kept for nothing */
		sp->wrote_outcome = false;
		spool_sweep_tmp(sp->dir);
		retry_stuck(sp);
		if (!SLIST_EMPTY(&sp->stuck))
			snprintf(err, sizeof(err), "%s", sp->write_error);
		else
			spool_check_space(sp->dir, sp->euid, err, sizeof(err));
	}
	if (err[0] == '\0' && !sp->paused && maybe_rescan(sp, true) < 0)
		snprintf(err, sizeof(err), "%s", sp->fault); /* the scan set it */
	fault_update(sp, err);
	publish_backlog(sp);
	safety_rearm(sp);
	return !fault_active(sp) && sp->cursor < sp->count;
}

static bool safety_due(const struct spool *sp)
{
	return ev_now(sp->loop) - sp->last_safety >= SPOOL_SAFETY_S;
}

static void safety_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct spool *sp = w->data;

	if (safety_pass(sp) && !sp->paused && sp->cb.ready != NULL)
		sp->cb.ready(sp->cb.arg);
}

/* ---- taking ------------------------------------------------------------------- */

static enum source_take spool_take(struct source *src, struct job **job)
{
	struct spool *sp = (struct spool *)src;

	if (safety_due(sp))
		safety_pass(sp); /* here rather than on a timer of its own: no extra wake-up */
	if (sp->paused || fault_active(sp))
		return SOURCE_EMPTY;
	for (;;) {
		if (maybe_rescan(sp, false) < 0 || sp->cursor >= sp->count)
			return SOURCE_EMPTY;
		char *name = sp->list[sp->cursor].name;
		sp->list[sp->cursor++].name = NULL;
		enum claim_result rc = claim_candidate(sp, name, job);
		free(name);
		if (rc == CLAIM_TAKEN) {
			sp->out++;
			return SOURCE_TAKEN;
		}
		if (rc == CLAIM_FAILED)
			return SOURCE_ERROR;
	}
}

/* ---- per job --------------------------------------------------------------- */

static int spool_attempt(struct source *src, struct job *job, int attempt)
{
	struct spool *sp = (struct spool *)src;
	struct spool_claim *claim = job->backend;
	char name[NAME_MAX + 1], from[PATH_MAX], to[PATH_MAX];

	if (attempt == claim->name_attempt)
		return 0; /* the claim named it already */
	if (name_with_attempt(name, sizeof(name), claim->name, claim->base_len, attempt) < 0) {
		/* The count then survives only in memory: a crash would repeat attempts, not lose the job. */
		log_warnx("spool: %s: name too long to record attempt %d", claim->name, attempt);
		return 0;
	}
	if (join_path(from, sizeof(from), sp->dir, "processing", claim->name) < 0 ||
	    join_path(to, sizeof(to), sp->dir, "processing", name) < 0)
		return -1;
	/* No fsync: a count lost to a power cut only allows an attempt more. */
	if (spool_move_noreplace(from, to) < 0)
		return -1; /* the worker logs it */
	memcpy(claim->name, name, strlen(name) + 1);
	claim->name_attempt = attempt;
	return 0;
}

static void spool_status(struct source *src, struct job *job, const struct job_status *status)
{
	/* The spool keeps outcomes only; live progress is in stats. */
}

static void spool_release(struct source *src, struct job *job)
{
	give_back((struct spool *)src, job);
}

static void spool_finish(struct source *src, struct job *job, bool completed, const char *doc, size_t len)
{
	struct spool *sp = (struct spool *)src;
	struct spool_claim *claim = job->backend;

	claim->completed = completed;
	claim->doc_len = len;
	claim->doc = malloc(len + 1);
	if (claim->doc == NULL) {
		struct log_fields fields = { .job_id = job->id };
		log_job(LOG_LEVEL_ERROR, &fields, "spool: out of memory keeping the outcome; it goes back to the queue");
		sp->cb.settled(job, false, sp->cb.arg);
		give_back(sp, job);
		return;
	}
	memcpy(claim->doc, doc, len);
	claim->doc[len] = '\0';
	if (write_outcome(sp, claim) == 0) {
		push_written(sp, claim);
		return;
	}
	/* Kept, claimed, and written again on each safety pass; no job is taken meanwhile. */
	push_stuck(sp, claim);
	fault_update(sp, sp->write_error);
	safety_rearm(sp);
}

/*
 * True when sub/<outcome name of job> is this delivery's outcome: same id, an
 * attempt count its delivery has reached, and written after the job file was
 * (rename keeps a file's mtime, so the job file's is its enqueue time): an
 * outcome left by an earlier job with the same id does not count.
 */
static bool outcome_matches(const struct spool *sp, const char *sub, const struct spool_claim *claim,
                            double *duration_s)
{
	const struct job *job = claim->job;
	char file[SPOOL_OUTCOME_ID_MAX + 32], path[PATH_MAX];
	struct stat st;
	const char *refusal;

	spool_outcome_file(job->id, file, sizeof(file));
	if (join_path(path, sizeof(path), sp->dir, sub, file) < 0)
		return false;
	int fd = open_bounded(path, SPOOL_MAX_PAYLOAD, &st, &refusal);
	if (fd < 0)
		return false; /* none (or unreadable: then a new outcome replaces it) */
	bool newer = st.st_mtim.tv_sec > claim->st.st_mtim.tv_sec ||
	             (st.st_mtim.tv_sec == claim->st.st_mtim.tv_sec && st.st_mtim.tv_nsec >= claim->st.st_mtim.tv_nsec);
	json_t *doc = newer ? json_loadfd(fd, JSON_ALLOW_NUL, NULL) : NULL;
	close(fd);
	if (doc == NULL)
		return false;
	const char *id = json_string_value(json_object_get(doc, "id"));
	json_t *attempts = json_object_get(doc, "attempts");
	bool same = id != NULL && strcmp(id, job->id) == 0 && json_is_integer(attempts) &&
	            json_integer_value(attempts) >= 1 && json_integer_value(attempts) <= job->attempts_done;
	json_t *duration_ms = json_object_get(doc, "duration_ms");
	*duration_s = json_is_number(duration_ms) ? json_number_value(duration_ms) / 1000.0 : 0.0;
	json_decref(doc);
	return same;
}

/*
 * A worker died between renaming an outcome into complete/ or failed/ and
 * removing the job's file: the outcome stands, whichever attempt wrote it.
 * Its directory is fsynced by the group commit (the dead worker may not have
 * got that far), and only then does the job leave processing/, as after any
 * outcome. That worker died before counting it (it counts once the job file
 * is gone), so this one counts it, with the document's duration.
 */
static bool spool_finish_recorded(struct source *src, struct job *job)
{
	struct spool *sp = (struct spool *)src;
	struct spool_claim *claim = job->backend;

	double duration_s = 0.0;
	if (outcome_matches(sp, "complete", claim, &duration_s))
		claim->completed = true;
	else if (outcome_matches(sp, "failed", claim, &duration_s))
		claim->completed = false;
	else
		return false;
	log_info("spool: job %.200s: redelivered after attempt %d, its outcome is already in %s/; the job leaves the queue",
	         job->id, job->attempts_done, claim->completed ? "complete" : "failed");
	job->recorded = true;
	job->completed = claim->completed;
	job->duration_s = duration_s;
	push_written(sp, claim);
	return true;
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

/* One batch of inotify events: names appended, lost watches and overflows noted. True when work may wait. */
static bool read_inotify_events(struct spool *sp, const char *buf, ssize_t n)
{
	bool news = false;

	for (const char *p = buf; p < buf + n;) {
		const struct inotify_event *ev = (const struct inotify_event *)(const void *)p;
		if (ev->mask & IN_IGNORED) {
			/* incoming/ went away: the safety pass watches again once it is back. */
			sp->watching = false;
			sp->stale = true;
		}
		if (ev->mask & IN_Q_OVERFLOW)
			sp->stale = true;
		if ((ev->mask & (IN_MOVED_TO | IN_CLOSE_WRITE)) && ev->len > 0 && ev->name[0] != '\0') {
			list_append(sp, ev->name);
			news = true;
		}
		p += sizeof(*ev) + ev->len;
	}
	return news || sp->stale;
}

static void inotify_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct spool *sp = w->data;
	char buf[8192] __attribute__((aligned(__alignof__(struct inotify_event))));
	bool news = false;
	ssize_t n;

	while ((n = read_some(sp->inotify_fd, buf, sizeof(buf))) > 0)
		news |= read_inotify_events(sp, buf, n);
	if (n < 0 && errno != EAGAIN) {
		log_warn("spool: read inotify");
		ev_io_stop(loop, w);
		sp->watching = false;
		sp->stale = true;
		return;
	}
	if (news && !sp->paused && !fault_active(sp) && sp->cb.ready != NULL)
		sp->cb.ready(sp->cb.arg);
}

static void free_spool(struct spool *sp)
{
	if (sp == NULL)
		return;
	list_clear(sp);
	discard_spares(sp);
	free(sp->fresh);
	free(sp->ready);
	if (sp->inotify_fd >= 0)
		close(sp->inotify_fd);
	free(sp->dir);
	free(sp);
}

static void start_watchers(struct spool *sp)
{
	sp->inotify_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (sp->inotify_fd < 0)
		log_warn("spool: inotify (the rescan remains)");
	ev_io_init(&sp->inotify_watcher, inotify_cb, sp->inotify_fd, EV_READ);
	sp->inotify_watcher.data = sp;
	ensure_watch(sp);
	ev_init(&sp->safety_timer, safety_cb);
	sp->safety_timer.data = sp;
	sp->last_safety = ev_now(sp->loop);
	safety_rearm(sp);
	ev_timer_init(&sp->kick_timer, kick_cb, 0., 0.);
	sp->kick_timer.data = sp;
	ev_prepare_init(&sp->commit_watcher, commit_cb);
	sp->commit_watcher.data = sp;
}

static struct source *spool_open(const struct source_params *params, char *err, size_t errlen)
{
	const struct config *cfg = params->cfg;
	struct spool *sp = calloc(1, sizeof(*sp));

	if (sp == NULL || (sp->dir = strdup(cfg->spool_dir)) == NULL) {
		snprintf(err, errlen, "spool: out of memory");
		free(sp);
		errno = ENOMEM;
		return NULL;
	}
	sp->inotify_fd = -1;
	SLIST_INIT(&sp->written);
	SLIST_INIT(&sp->stuck);
	if (errlen > 0)
		err[0] = '\0';
	if (spool_prepare(sp->dir, err, errlen) < 0 ||
	    join_path(sp->incoming, sizeof(sp->incoming), sp->dir, "incoming", NULL) < 0 ||
	    join_path(sp->processing, sizeof(sp->processing), sp->dir, "processing", NULL) < 0) {
		/* source.h: EINVAL only for a dir too long to use; a directory a restart may find usable is EAGAIN. */
		int refused = err[0] == '\0' ? EINVAL : EAGAIN;
		if (err[0] == '\0')
			snprintf(err, errlen, "spool: %s: path too long", sp->dir);
		free_spool(sp);
		errno = refused;
		return NULL;
	}
	sp->loop = params->loop;
	sp->cb = *params->cb;
	sp->board = params->board;
	sp->euid = geteuid();
	sp->pid = getpid();
	sp->owner = spool_foreign_owner(sp->euid, sp->dir, &sp->owner_st);
	sp->stale = true;
	spares_init(sp, cfg);
	start_watchers(sp);
	if (spool_reclaim_dead(sp->processing, sp->incoming) < 0)
		log_warn("spool: reclaim in %s", sp->processing);
	schedule_ready(sp);
	publish_fault(sp);
	publish_backlog(sp);
	if (sp->board != NULL)
		scoreboard_publish_ready(sp->board); /* a directory needs no joining: ready at once */
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
	/* Outcomes written but not yet committed; stuck ones need not hold a stop (see close). */
	return ((struct spool *)src)->written_count;
}

static const char *spool_fault(struct source *src)
{
	return ((struct spool *)src)->fault;
}

/* Outcomes that never became durable: their jobs go back to incoming/ and run again. */
static void give_back_stuck(struct spool *sp)
{
	struct spool_claim *c;

	while ((c = SLIST_FIRST(&sp->stuck)) != NULL) {
		SLIST_REMOVE_HEAD(&sp->stuck, link);
		struct log_fields fields = { .job_id = c->job->id };
		log_job(LOG_LEVEL_WARN, &fields, "spool: the outcome was never written; the job goes back to the queue");
		sp->cb.settled(c->job, false, sp->cb.arg);
		give_back(sp, c->job);
	}
}

static void spool_close(struct source *src)
{
	struct spool *sp = (struct spool *)src;

	if (sp == NULL)
		return;
	if (!SLIST_EMPTY(&sp->written))
		commit_written(sp);
	give_back_stuck(sp);
	if (sp->out > 0)
		log_warnx("spool: closing with %zu jobs still out (they will be reclaimed)", sp->out);
	ev_io_stop(sp->loop, &sp->inotify_watcher);
	ev_timer_stop(sp->loop, &sp->safety_timer);
	ev_timer_stop(sp->loop, &sp->kick_timer);
	ev_prepare_stop(sp->loop, &sp->commit_watcher);
	if (sp->board != NULL && sp->published_fault[0] != '\0') {
		fault_update(sp, ""); /* a fault of ours must not outlive us in the slot */
	}
	free_spool(sp);
}

void spool_source_counters(const struct source *src, struct spool_counters *out)
{
	*out = ((const struct spool *)src)->counters;
}

const struct source_ops spool_source_ops = {
	.name = "spool",
	.open = spool_open,
	.take = spool_take,
	.attempt = spool_attempt,
	.status = spool_status,
	.finish = spool_finish,
	.release = spool_release,
	.finish_recorded = spool_finish_recorded,
	.pause = spool_pause,
	.resume = spool_resume,
	.pending = spool_pending,
	.fault = spool_fault,
	.close = spool_close,
};
