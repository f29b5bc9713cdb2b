/*
 * durable: see durable.h. The order is what makes the write durable and safe:
 * data fsynced before the rename (a crash never exposes a torn file under
 * the final name), the directory fsynced after it (the new name itself
 * survives a power cut).
 */
#include "shared/durable.h"
#include "shared/log.h"
#include "shared/util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

int fsync_retry(int fd)
{
	int rc;

	do
		rc = fsync(fd);
	while (rc < 0 && errno == EINTR);
	return rc;
}

int fsync_dir(const char *dir)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	int rc = fsync_retry(fd);
	int saved = errno;
	close(fd);
	errno = saved;
	return rc;
}

static int flock_retry(int fd, int op)
{
	int rc;

	do
		rc = flock(fd, op);
	while (rc < 0 && errno == EINTR);
	return rc;
}

/* The directory part of path ("." for a bare name), for its fsync. */
static int dir_of(const char *path, char *out, size_t cap)
{
	const char *slash = strrchr(path, '/');
	size_t n = slash == NULL ? 0 : (size_t)(slash - path);

	if (slash == NULL)
		return snprintf(out, cap, ".") < (int)cap ? 0 : -1;
	if (n == 0)
		n = 1; /* "/name": the root */
	if (n >= cap) {
		errno = ENAMETOOLONG;
		return -1;
	}
	memcpy(out, path, n);
	out[n] = '\0';
	return 0;
}

/*
 * A file kept locked (hold_lock) is locked from just after its creation until
 * after its rename, so that whoever sweeps the scratch directory can tell a
 * live writer's file (locked) from a dead one's; an unlocked one is closed
 * before its rename, so that a watcher of the final directory sees the name
 * once, complete. A failed chown is not an error: the file is still ours.
 */
static int write_and_rename(const char *tmp_path, const char *final_path, const void *data, size_t len,
                            const struct durable_how *how)
{
	int fd = open(tmp_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, how->mode);
	int rc = 0;

	if (fd < 0)
		return -1;
	if (how->hold_lock)
		rc = flock_retry(fd, LOCK_EX);
	if (rc == 0)
		rc = write_all(fd, data, len);
	if (rc == 0 && how->owner != NULL && fchown(fd, how->owner->st_uid, how->owner->st_gid) < 0)
		log_debug("durable: chown %s: %s", tmp_path, strerror(errno));
	if (rc == 0)
		rc = fsync_retry(fd);
	if (!how->hold_lock && close(fd) < 0 && rc == 0)
		rc = -1;
	if (rc == 0)
		rc = rename(tmp_path, final_path);
	if (rc < 0) {
		int saved = errno;
		unlink(tmp_path);
		if (how->hold_lock)
			close(fd);
		errno = saved;
		return -1;
	}
	return how->hold_lock ? close(fd) : 0;
}

int durable_write(const char *tmp_path, const char *final_path, const void *data, size_t len,
                  const struct durable_how *how)
{
	char dir[PATH_MAX];

	if (write_and_rename(tmp_path, final_path, data, len, how) < 0)
		return -1;
	if (how->defer_dir_sync)
		return 0;
	if (dir_of(final_path, dir, sizeof(dir)) < 0)
		return -1;
	return fsync_dir(dir);
}
