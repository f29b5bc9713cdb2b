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

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define KILL_PASSES 3
#define TREE_DEPTH_MAX 4 /* instance / attempt: deeper is not drover's */
#define SETTLE_STEP_MS 10

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

void cgroupfs_settle(int max_ms)
{
	for (int waited = 0; cgroupfs_collect() && waited < max_ms; waited += SETTLE_STEP_MS) {
		const struct timespec pause = { 0, SETTLE_STEP_MS * 1000L * 1000L };
		nanosleep(&pause, NULL); /* EINTR only shortens one step */
	}
}

/* ---- instance directories --------------------------------------------------------- */

/* The start time (clock ticks after boot, field 22 of /proc/PID/stat) of pid; -1 when it does not run. */
static long long start_time(long long pid)
{
	char path[64], text[1024];
	snprintf(path, sizeof(path), "/proc/%lld", pid);
	if (cgroupfs_read(path, "stat", text, sizeof(text)) < 0)
		return -1;
	const char *p = strrchr(text, ')'); /* comm may hold spaces and parentheses */
	unsigned long long ticks;
	if (p == NULL || sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d %*d %*d %*d %llu",
	                        &ticks) != 1)
		return -1;
	return (long long)ticks;
}

int cgroupfs_instance_name(char *buf, size_t cap)
{
	long long pid = getpid(), started = start_time(pid);
	if (started < 0 || snprintf(buf, cap, "drover.%lld.%lld", pid, started) >= (int)cap)
		return -1;
	return 0;
}

bool cgroupfs_instance_stale(const char *name)
{
	static const char prefix[] = "drover.";
	long long pid, started;
	int used = 0;
	if (strncmp(name, prefix, sizeof(prefix) - 1) != 0 ||
	    strspn(name + sizeof(prefix) - 1, "0123456789.") != strlen(name + sizeof(prefix) - 1))
		return false; /* digits only: sscanf alone would take signs and spaces */
	if (sscanf(name, "drover.%lld.%lld%n", &pid, &started, &used) != 2 || name[used] != '\0' || pid <= 0 ||
	    pid > INT_MAX || pid == getpid())
		return false;
	if (kill((pid_t)pid, 0) < 0 && errno == ESRCH)
		return true;
	long long now = start_time(pid);
	return now >= 0 && now != started; /* unreadable (another pid namespace's /proc?): alive, to be safe */
}

static void remove_children(const char *path, int depth)
{
	DIR *dir = opendir(path);
	if (dir == NULL)
		return;
	const struct dirent *de;
	char child[PATH_MAX];
	while ((de = readdir(dir)) != NULL) {
		if (de->d_type != DT_DIR || strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0 ||
		    join_path(child, sizeof(child), path, de->d_name, NULL) < 0)
			continue;
		if (depth < TREE_DEPTH_MAX)
			remove_children(child, depth + 1);
		cgroupfs_remove(child);
	}
	closedir(dir);
}

void cgroupfs_remove_tree(const char *path, bool use_cgroup_kill)
{
	if (use_cgroup_kill && cgroupfs_write(path, "cgroup.kill", "1") < 0 && errno != ENOENT)
		log_warn("cgroup: cannot write cgroup.kill of %s", path); /* the passes below do it then */
	remove_children(path, 1);
	cgroupfs_remove(path); /* queued after its children: retried until they are gone */
}

bool cgroupfs_release_tree(const char *path, bool use_cgroup_kill, int max_ms, const char *what)
{
	struct stat st;
	cgroupfs_remove_tree(path, use_cgroup_kill);
	cgroupfs_settle(max_ms);
	if (stat(path, &st) < 0)
		return true;
	log_warnx("%s: %s is left behind: processes in it did not exit", what, path);
	return false;
}

void cgroupfs_sweep_stale(const char *parent, bool use_cgroup_kill, const char *what)
{
	DIR *dir = opendir(parent);
	if (dir == NULL) {
		log_warn("%s: cannot list %s", what, parent);
		return;
	}
	const struct dirent *de;
	char path[PATH_MAX];
	while ((de = readdir(dir)) != NULL) {
		if (de->d_type != DT_DIR || !cgroupfs_instance_stale(de->d_name) ||
		    join_path(path, sizeof(path), parent, de->d_name, NULL) < 0)
			continue;
		log_info("%s: removing %s, left by a drover instance that is gone", what, path);
		cgroupfs_remove_tree(path, use_cgroup_kill);
	}
	closedir(dir);
}
