/*
 * durable: the one way drover writes a file that must survive a crash or a
 * power cut: a new file in a scratch name (O_EXCL | O_NOFOLLOW, so neither a
 * symlink nor another writer's file is ever followed or truncated), fsynced,
 * renamed over the final name, and the final directory fsynced (unless the
 * caller batches that fsync for several files: a group commit).
 */
#ifndef DROVER_DURABLE_H
#define DROVER_DURABLE_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/stat.h>

struct durable_how {
	mode_t mode;              /* of the new file, less the umask */
	const struct stat *owner; /* give the file this st_uid/st_gid (root writing for another user); NULL: ours */
	bool hold_lock;           /* flock(LOCK_EX) from creation until after the rename, else closed before it */
	bool defer_dir_sync;      /* the caller fsyncs final_path's directory itself (group commit) */
};

/*
 * Writes data to tmp_path (which must not exist), fsyncs it, renames it over
 * final_path and, unless how->defer_dir_sync, fsyncs final_path's directory.
 * 0, or -1 with errno; on failure nothing is left at tmp_path (the rename may
 * have happened when only the directory fsync failed).
 */
int durable_write(const char *tmp_path, const char *final_path, const void *data, size_t len,
                  const struct durable_how *how);

/* fsync that retries EINTR. 0 or -1/errno. */
int fsync_retry(int fd);
/* fsync the directory holding a just-renamed/created entry, so the entry itself is durable. 0 or -1/errno. */
int fsync_dir(const char *dir);

#endif
