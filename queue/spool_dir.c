/*
 * spool_dir: the spool directory itself (README: The spool; the layout, the
 * names and the durability rules are described at the top of spool.c): its
 * checks, tmp/ sweep, enqueue and the reclaim of dead claims. Nothing here
 * needs a worker, so droverctl and the supervisor link this file and not the
 * job source in spool.c.
 */
#include "queue/spool.h"
#include "queue/spool_dir.h"
#include "queue/events.h"
#include "shared/durable.h"
#include "shared/log.h"
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
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

static const char *const spool_subdirs[] = { "tmp", "incoming", "processing", "complete", "failed" };
static unsigned long name_counter;

/* ---- names --------------------------------------------------------------- */

/* Attempts recorded in name (its ";a=N" suffix), and the length of the name without it. */
int spool_name_split(const char *name, size_t *base_len)
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
void spool_outcome_file(const char *id, char *buf, size_t len)
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

/*
 * The id a job has when its payload carries none (or a bad one): its file
 * name minus suffix and ".json". A file name may hold control characters,
 * which no id may (events.h): those become '_'.
 */
char *spool_id_from_name(const char *name, size_t base_len)
{
	size_t suffix = strlen(JSON_SUFFIX);

	if (base_len > suffix && memcmp(name + base_len - suffix, JSON_SUFFIX, suffix) == 0)
		base_len -= suffix;
	char *id = strndup(name, base_len);
	for (char *p = id; p != NULL && *p != '\0'; p++) {
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			*p = '_';
	}
	return id;
}

/* A name unique on this host among our own files: "<ms>-<pid>-<counter><suffix>". */
void spool_unique_name(char *buf, size_t len, pid_t pid, const char *suffix)
{
	snprintf(buf, len, "%013lld-%ld-%lu%s", wall_ms(), (long)pid, ++name_counter, suffix);
}

bool spool_has_suffix(const char *name, const char *suffix)
{
	size_t n = strlen(name), s = strlen(suffix);
	return n >= s && strcmp(name + n - s, suffix) == 0;
}

static int close_keep_errno(int fd)
{
	int saved = errno;
	int rc = close(fd);
	errno = saved;
	return rc;
}

/* True when fd is still the file at path (the name was not taken over meanwhile); *st is fd's. */
bool spool_fd_is_path(int fd, const char *path, struct stat *st)
{
	struct stat by_path;

	if (fstat(fd, st) < 0 || lstat(path, &by_path) < 0)
		return false;
	return st->st_dev == by_path.st_dev && st->st_ino == by_path.st_ino;
}

/*
 * rename() that never replaces an existing file, so that one job cannot
 * overwrite another that happens to share its name. Filesystems without
 * RENAME_NOREPLACE get a plain rename.
 */
int spool_move_noreplace(const char *from, const char *to)
{
	if (renameat2(AT_FDCWD, from, AT_FDCWD, to, RENAME_NOREPLACE) == 0)
		return 0;
	if (errno != EINVAL && errno != ENOSYS)
		return -1;
	return rename(from, to);
}

/* Who should own the files written into dir: NULL unless root writes into someone else's spool. */
const struct stat *spool_foreign_owner(uid_t euid, const char *dir, struct stat *st)
{
	if (euid != 0 || stat(dir, st) < 0 || st->st_uid == 0)
		return NULL;
	return st;
}

int spool_check_dirs(const char *dir, bool create, char *err, size_t errlen)
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
 * Free space and inodes as the writer can use them (root may use the
 * reserve): below SPOOL_MIN_FREE_BYTES, or no inode left, outcomes would not
 * fit. 0, or -1 and err. A filesystem that cannot tell is taken as fine.
 */
int spool_check_space(const char *dir, uid_t euid, char *err, size_t errlen)
{
	struct statvfs vfs;

	if (statvfs(dir, &vfs) < 0)
		return 0;
	unsigned long long blocks = euid == 0 ? vfs.f_bfree : vfs.f_bavail;
	unsigned long long bytes = blocks * (unsigned long long)vfs.f_frsize;
	unsigned long long inodes = euid == 0 ? vfs.f_ffree : vfs.f_favail;
	if (bytes < SPOOL_MIN_FREE_BYTES) {
		snprintf(err, errlen, "spool: %.300s: no space left on the filesystem (%llu bytes free)", dir, bytes);
		return -1;
	}
	if (vfs.f_files > 0 && inodes == 0) {
		snprintf(err, errlen, "spool: %.300s: no inode left on the filesystem", dir);
		return -1;
	}
	return 0;
}

/*
 * Whether our outcome file tmp/<name> (opened as fd) was left by a writer
 * that is gone: our writers lock it from creation to rename, so one we can
 * lock is dead, unless it is empty and new (created, not yet locked). The
 * name is checked to still be this file once the lock is ours.
 */
static bool outcome_abandoned(int fd, const char *path, time_t now)
{
	struct stat st;

	if (flock(fd, LOCK_EX | LOCK_NB) < 0 || !spool_fd_is_path(fd, path, &st) || !S_ISREG(st.st_mode))
		return false;
	return st.st_size > 0 || st.st_mtime < now - SPOOL_TMP_NEW_S;
}

/* Whether tmp/<name> is garbage: an outcome of a dead writer, or anything else an hour old. */
static bool tmp_file_abandoned(int dir_fd, const char *path, const char *name, time_t now)
{
	struct stat st;

	/* A spare is locked from its rename into tmp/ on, like an outcome from its creation. */
	if (!spool_has_suffix(name, OUTCOME_SUFFIX) && !spool_has_suffix(name, SPARE_SUFFIX)) /* a producer's write: only age tells */
		return fstatat(dir_fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode) &&
		       st.st_mtime < now - SPOOL_TMP_STALE_S;
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
	if (fd < 0)
		return false;
	bool abandoned = outcome_abandoned(fd, path, now);
	close(fd);
	return abandoned;
}

/* Removes what dead writers left in tmp/ (see tmp/ above). */
void spool_sweep_tmp(const char *dir)
{
	char tmp[PATH_MAX], path[PATH_MAX];
	time_t now = time(NULL);

	if (join_path(tmp, sizeof(tmp), dir, "tmp", NULL) < 0)
		return;
	DIR *d = opendir(tmp);
	if (d == NULL)
		return;
	for (struct dirent *e = readdir(d); e != NULL; e = readdir(d)) {
		if (e->d_name[0] == '.' || join_path(path, sizeof(path), dir, "tmp", e->d_name) < 0)
			continue;
		/* An outcome is unlinked while we hold its lock: no writer can be using that name. */
		if (tmp_file_abandoned(dirfd(d), path, e->d_name, now) && unlink(path) == 0)
			log_info("spool: removed %s, left in tmp/ by an interrupted write", path);
	}
	closedir(d);
}

int spool_prepare(const char *dir, char *err, size_t errlen)
{
	if (spool_check_dirs(dir, true, err, errlen) < 0)
		return -1;
	spool_sweep_tmp(dir);
	return 0;
}

int spool_health(const char *dir, char *err, size_t errlen)
{
	return spool_check_dirs(dir, false, err, errlen);
}

/*
 * Parses payload once: NULL when it is a JSON object whose "id" (if any) is
 * acceptable, with that id in *id_out (malloc'd; NULL when there is none or
 * it is empty), else a static sentence saying why not.
 */
const char *spool_payload_verdict(const char *payload, size_t len, char **id_out)
{
	json_t *doc = json_loadb(payload, len, 0, NULL);
	const char *problem = NULL;

	*id_out = NULL;
	if (!json_is_object(doc)) {
		json_decref(doc);
		return "the message is not a JSON object";
	}
	json_t *id = json_object_get(doc, "id");
	/* An empty id cannot name anything: the name fallback applies. */
	if (json_is_string(id) && json_string_length(id) > 0) {
		problem = event_job_id_problem(json_string_value(id), json_string_length(id));
		if (problem == NULL)
			*id_out = strndup(json_string_value(id), json_string_length(id));
	}
	json_decref(doc);
	return problem;
}

const char *spool_enqueue_refusal(const char *payload, size_t len)
{
	char *id;
	const char *problem = spool_payload_verdict(payload, len, &id);

	free(id);
	return problem;
}

int spool_enqueue(const char *dir, const char *payload, size_t len, char *id_out, size_t id_len)
{
	char name[96], tmp_path[PATH_MAX], final_path[PATH_MAX], incoming[PATH_MAX];
	struct stat owner;
	char *id;

	spool_unique_name(name, sizeof(name), getpid(), JSON_SUFFIX);
	if (join_path(tmp_path, sizeof(tmp_path), dir, "tmp", name) < 0 ||
	    join_path(final_path, sizeof(final_path), dir, "incoming", name) < 0 ||
	    join_path(incoming, sizeof(incoming), dir, "incoming", NULL) < 0)
		return -1;
	/* What a worker would fail as invalid_job is refused here, where the submitter sees why. */
	if (spool_payload_verdict(payload, len, &id) != NULL) {
		free(id);
		errno = EINVAL;
		return -1;
	}
	if (id == NULL)
		id = spool_id_from_name(name, strlen(name));
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
	/* Closed before its rename: a watcher of incoming/ sees the name once, complete. */
	struct durable_how how = { .mode = SPOOL_FILE_MODE, .owner = spool_foreign_owner(geteuid(), incoming, &owner) };
	return durable_write(tmp_path, final_path, payload, len, &how);
}

enum reclaim_result {
	RECLAIM_MOVED, /* the claim was dead: back in incoming/ */
	RECLAIM_LEFT,  /* live (locked) or gone */
	RECLAIM_ERROR, /* errno says why */
};

/* Moves processing/name back to incoming/ if its claim is dead (its lock can be taken). */
static enum reclaim_result reclaim_one(const char *processing, const char *incoming, const char *name)
{
	char from[PATH_MAX], to[PATH_MAX];
	struct stat st;
	enum reclaim_result rc = RECLAIM_LEFT;
	int fd;

	if (join_path(from, sizeof(from), processing, name, NULL) < 0 ||
	    join_path(to, sizeof(to), incoming, name, NULL) < 0)
		return RECLAIM_ERROR;
	fd = open(from, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
	if (fd < 0)
		return errno == ENOENT ? RECLAIM_LEFT : RECLAIM_ERROR;
	if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		rc = errno == EWOULDBLOCK ? RECLAIM_LEFT : RECLAIM_ERROR;
	} else if (spool_fd_is_path(fd, from, &st)) {
		if (spool_move_noreplace(from, to) == 0) {
			rc = RECLAIM_MOVED;
			log_info("spool: reclaimed %s from a dead worker", name);
		} else if (errno != ENOENT && errno != EEXIST) {
			rc = RECLAIM_ERROR;
		}
	}
	close_keep_errno(fd);
	return rc;
}

/* Reclaims every dead claim (no fsync: see Durability); the number moved, or -1 when processing/ cannot be read. */
int spool_reclaim_dead(const char *processing, const char *incoming)
{
	DIR *d = opendir(processing);
	struct dirent *de;
	int moved = 0;

	if (d == NULL)
		return -1;
	while ((errno = 0, de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		enum reclaim_result rc = reclaim_one(processing, incoming, de->d_name);
		if (rc == RECLAIM_MOVED)
			moved++;
		else if (rc == RECLAIM_ERROR)
			log_warn("spool: reclaim %s/%s", processing, de->d_name);
	}
	closedir(d);
	return moved;
}

int spool_reclaim(const char *dir)
{
	char processing[PATH_MAX], incoming[PATH_MAX];

	if (join_path(processing, sizeof(processing), dir, "processing", NULL) < 0 ||
	    join_path(incoming, sizeof(incoming), dir, "incoming", NULL) < 0)
		return -1;
	/* A worker died: what it was writing in tmp/ is garbage now. */
	spool_sweep_tmp(dir);
	return spool_reclaim_dead(processing, incoming);
}


/* ---- what spool_jobs.c needs of the names (spool.h) ------------------------- */

char *spool_job_id(const char *name, const char *payload, size_t len)
{
	char *id = NULL;
	size_t base_len;

	if (spool_payload_verdict(payload, len, &id) != NULL) {
		free(id);
		id = NULL;
	}
	if (id != NULL)
		return id;
	(void)spool_name_split(name, &base_len);
	return spool_id_from_name(name, base_len);
}

int spool_name_attempts(const char *name)
{
	size_t base_len;
	return spool_name_split(name, &base_len);
}

int spool_write_new(const char *dir, const char *sub, const char *name, const void *data, size_t len, bool replace)
{
	char tmp_name[96], tmp_path[PATH_MAX], final_path[PATH_MAX], final_dir[PATH_MAX];
	struct stat owner, st;

	spool_unique_name(tmp_name, sizeof(tmp_name), getpid(), JSON_SUFFIX);
	if (join_path(tmp_path, sizeof(tmp_path), dir, "tmp", tmp_name) < 0 ||
	    join_path(final_path, sizeof(final_path), dir, sub, name) < 0 ||
	    join_path(final_dir, sizeof(final_dir), dir, sub, NULL) < 0)
		return -1;
	/* Only a retried job's "<id>.json" can be taken, by a job of the same id waiting already. */
	if (!replace && lstat(final_path, &st) == 0) {
		errno = EEXIST;
		return -1;
	}
	struct durable_how how = { .mode = SPOOL_FILE_MODE, .owner = spool_foreign_owner(geteuid(), final_dir, &owner) };
	return durable_write(tmp_path, final_path, data, len, &how);
}
