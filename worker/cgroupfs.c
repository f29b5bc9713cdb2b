/*
 * cgroupfs: control-file I/O and removal of per-attempt cgroups, shared by
 * the cgroup v2 (cgroup.c) and v1 memory (memcg.c) paths. A removal that
 * meets EBUSY (processes still exiting) waits in a list that the worker's
 * heartbeat and the end of each attempt retry; any other error is logged
 * once and the cgroup is left behind.
 */
#include "worker/cgroupfs.h"
#include "shared/log.h"
#include "shared/util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define KILL_PASSES 3

struct pending {
	struct pending *next;
	char path[];
};

static struct pending *pending_removal;

int cgroupfs_write(const char *dir, const char *name, const char *text)
{
	char path[PATH_MAX];
	if (join_path(path, sizeof(path), dir, name, NULL) < 0)
		return -1;
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	int rc = write_all(fd, text, strlen(text)) < 0 ? -1 : 0;
	int saved = errno;
	close(fd);
	errno = saved;
	return rc;
}

int cgroupfs_read(const char *dir, const char *name, char *buf, size_t cap)
{
	char path[PATH_MAX];
	if (cap == 0 || join_path(path, sizeof(path), dir, name, NULL) < 0)
		return -1;
	FILE *f = fopen(path, "re");
	if (f == NULL)
		return -1;
	size_t n = fread(buf, 1, cap - 1, f);
	int failed = ferror(f);
	fclose(f);
	buf[n] = '\0';
	return failed ? -1 : 0;
}

void cgroupfs_kill_all(const char *path)
{
	char procs[PATH_MAX];
	if (join_path(procs, sizeof(procs), path, "cgroup.procs", NULL) < 0)
		return;
	for (int pass = 0; pass < KILL_PASSES; pass++) {
		FILE *f = fopen(procs, "re");
		if (f == NULL)
			return;
		int pid, found = 0;
		while (fscanf(f, "%d", &pid) == 1) {
			found++;
			if (kill(pid, SIGKILL) < 0 && errno != ESRCH)
				log_warn("cgroup: cannot kill pid %d of %s", pid, path);
		}
		fclose(f);
		if (found == 0)
			return;
	}
}

static void remove_later(const char *path)
{
	size_t len = strlen(path) + 1;
	struct pending *p = malloc(sizeof(*p) + len);
	if (p == NULL) {
		log_error("cgroup: out of memory; %s is left behind", path);
		return;
	}
	memcpy(p->path, path, len);
	p->next = pending_removal;
	pending_removal = p;
}

void cgroupfs_remove(const char *path)
{
	cgroupfs_kill_all(path);
	if (rmdir(path) < 0 && errno != ENOENT)
		remove_later(path);
}

bool cgroupfs_collect(void)
{
	struct pending **link = &pending_removal;
	while (*link != NULL) {
		struct pending *p = *link;
		cgroupfs_kill_all(p->path); /* a fork that raced the last pass */
		if (rmdir(p->path) == 0 || errno == ENOENT) {
			*link = p->next;
			free(p);
		} else if (errno != EBUSY) {
			log_warn("cgroup: cannot remove %s (left behind)", p->path);
			*link = p->next;
			free(p);
		} else {
			link = &p->next;
		}
	}
	return pending_removal != NULL;
}
