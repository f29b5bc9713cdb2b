/*
 * memcg: per-attempt cgroup v1 memory cgroups for memory_max (see memcg.h).
 *
 * Each instance's attempt cgroups live in <own>/drover.<pid>.<start time>
 * (cgroupfs.h), removed at exit. The sweep at start is conservative: only an
 * instance directory whose supervisor is gone (no process with that pid and
 * start time) is touched, its processes killed, then it is removed children
 * first. Anything else (a live instance's, a name of another form) is left
 * alone.
 */
#include "worker/memcg.h"
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

#define SWEEP_SETTLE_MS 2000 /* at start and exit: killed processes exiting */

struct memcg {
	char path[PATH_MAX];
	int procs_fd;
};

static char jobs_dir[PATH_MAX]; /* "" = disabled */

bool memcg_enabled(void)
{
	return jobs_dir[0] != '\0';
}

const char *memcg_jobs_dir(void)
{
	return jobs_dir;
}

/* ---- parsing ------------------------------------------------------------------ */

/* Whether the comma-separated list has word as one of its items. */
static bool has_item(const char *list, const char *word)
{
	size_t len = strlen(word);
	for (const char *p = list; (p = strstr(p, word)) != NULL; p += len) {
		if ((p == list || p[-1] == ',') && (p[len] == ',' || p[len] == '\0' || p[len] == ' ' || p[len] == '\n'))
			return true;
	}
	return false;
}

int memcg_parse_mountinfo(const char *line, char *mount, size_t mount_cap, char *root, size_t root_cap)
{
	/* "ID PARENT MAJ:MIN ROOT POINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTS" */
	const char *sep = strstr(line, " - cgroup ");
	char fs_root[PATH_MAX], point[PATH_MAX], source[256], super[1024];
	if (sep == NULL || sscanf(line, "%*s %*s %*s %4095s %4095s", fs_root, point) != 2 ||
	    sscanf(sep, " - cgroup %255s %1023s", source, super) != 2 || !has_item(super, "memory"))
		return -1;
	if (snprintf(mount, mount_cap, "%s", point) >= (int)mount_cap ||
	    snprintf(root, root_cap, "%s", fs_root) >= (int)root_cap)
		return -1;
	return 0;
}

int memcg_parse_cgroup(const char *line, char *path, size_t cap)
{
	/* "ID:CONTROLLERS:PATH"; v2's line has ID 0 and no controllers. */
	const char *first = strchr(line, ':');
	const char *second = first != NULL ? strchr(first + 1, ':') : NULL;
	if (second == NULL || second == first + 1)
		return -1;
	char controllers[256];
	size_t len = (size_t)(second - first - 1);
	if (len >= sizeof(controllers))
		return -1;
	memcpy(controllers, first + 1, len);
	controllers[len] = '\0';
	if (!has_item(controllers, "memory"))
		return -1;
	size_t plen = strcspn(second + 1, "\n");
	if (plen == 0 || plen >= cap)
		return -1;
	memcpy(path, second + 1, plen);
	path[plen] = '\0';
	return 0;
}

long long memcg_parse_oom_kills(const char *text)
{
	static const char key[] = "oom_kill ";
	const char *line = text;
	while (strncmp(line, key, sizeof(key) - 1) != 0) {
		line = strchr(line, '\n');
		if (line == NULL)
			return -1;
		line++;
	}
	char *end;
	long long n = strtoll(line + sizeof(key) - 1, &end, 10);
	return end != line + sizeof(key) - 1 ? n : -1;
}

/* ---- small file helpers ---------------------------------------------------------- */

static long long read_number(const char *dir, const char *name)
{
	char text[64], *end;
	if (cgroupfs_read(dir, name, text, sizeof(text)) < 0)
		return -1;
	long long value = strtoll(text, &end, 10);
	return end != text ? value : -1;
}

/* ---- finding the hierarchy ---------------------------------------------------------- */

static int find_mount(char *mount, size_t cap, char *root, size_t root_cap)
{
	FILE *f = fopen("/proc/self/mountinfo", "re");
	if (f == NULL)
		return -1;
	char line[4096];
	int rc = -1;
	while (rc < 0 && fgets(line, sizeof(line), f) != NULL)
		rc = memcg_parse_mountinfo(line, mount, cap, root, root_cap);
	fclose(f);
	return rc;
}

static int own_memory_cgroup(char *path, size_t cap)
{
	FILE *f = fopen("/proc/self/cgroup", "re");
	if (f == NULL)
		return -1;
	char line[PATH_MAX + 64];
	int rc = -1;
	while (rc < 0 && fgets(line, sizeof(line), f) != NULL)
		rc = memcg_parse_cgroup(line, path, cap);
	fclose(f);
	return rc;
}

/* drover's own v1 memory cgroup as a directory. */
static int own_dir(char *dir, size_t cap, char *why, size_t why_cap)
{
	char mount[PATH_MAX], root[PATH_MAX], own[PATH_MAX];
	if (find_mount(mount, sizeof(mount), root, sizeof(root)) < 0) {
		snprintf(why, why_cap, "no cgroup v1 memory hierarchy is mounted");
		return -1;
	}
	if (own_memory_cgroup(own, sizeof(own)) < 0) {
		snprintf(why, why_cap, "/proc/self/cgroup names no cgroup v1 memory cgroup");
		return -1;
	}
	/* A mount of a sub-cgroup shows paths from the hierarchy's root: strip its own root. */
	const char *rel = own;
	size_t root_len = strlen(root);
	if (strcmp(root, "/") != 0 && strncmp(own, root, root_len) == 0)
		rel = own + root_len;
	if (strcmp(rel, "/") == 0)
		rel = "";
	if (snprintf(dir, cap, "%s%s", mount, rel) >= (int)cap) {
		snprintf(why, why_cap, "the path of drover's memory cgroup is too long");
		return -1;
	}
	char procs[PATH_MAX + 16];
	snprintf(procs, sizeof(procs), "%s/cgroup.procs", dir);
	if (access(dir, W_OK) < 0 || access(procs, W_OK) < 0) {
		snprintf(why, why_cap, "the cgroup v1 memory cgroup %s is not writable", dir);
		return -1;
	}
	return 0;
}

/* ---- ending cgroups ------------------------------------------------------------------- */

/* Kills what is left in path and removes it (later while killed processes are still exiting). */
static void end_cgroup(const char *path)
{
	cgroupfs_remove(path);
}

void memcg_end_prefix(const char *prefix)
{
	if (!memcg_enabled())
		return;
	DIR *dir = opendir(jobs_dir);
	if (dir == NULL) {
		log_warn("memcg: cannot list %s", jobs_dir);
		return;
	}
	char path[PATH_MAX];
	const struct dirent *de;
	while ((de = readdir(dir)) != NULL) {
		if (strncmp(de->d_name, prefix, strlen(prefix)) != 0 ||
		    snprintf(path, sizeof(path), "%s/%s", jobs_dir, de->d_name) >= (int)sizeof(path))
			continue;
		log_info("memcg: ending %s, left by a worker that is gone", path);
		end_cgroup(path);
	}
	closedir(dir);
	(void)cgroupfs_collect();
}

/* ---- start-up ------------------------------------------------------------------------------ */

bool memcg_prepare(char *why, size_t why_cap)
{
	char own[PATH_MAX];
	jobs_dir[0] = '\0';
	if (own_dir(own, sizeof(own), why, why_cap) < 0)
		return false;
	char instance[64];
	cgroupfs_sweep_stale(own, false, "memcg");
	cgroupfs_settle(SWEEP_SETTLE_MS);
	if (cgroupfs_instance_name(instance, sizeof(instance)) < 0 ||
	    snprintf(jobs_dir, sizeof(jobs_dir), "%s/%s", own, instance) >= (int)sizeof(jobs_dir) ||
	    (mkdir(jobs_dir, 0755) < 0 && errno != EEXIST)) {
		snprintf(why, why_cap, "cannot create a memory cgroup for drover's jobs under %s: %s", own, strerror(errno));
		jobs_dir[0] = '\0';
		return false;
	}
	return true;
}

void memcg_release(void)
{
	if (!memcg_enabled())
		return;
	(void)cgroupfs_release_tree(jobs_dir, false, SWEEP_SETTLE_MS, "memcg");
	jobs_dir[0] = '\0';
}

/* ---- one attempt ------------------------------------------------------------------------------ */

static int write_limits(const char *path, long long memory_max)
{
	char value[32];
	snprintf(value, sizeof(value), "%lld", memory_max);
	if (cgroupfs_write(path, "memory.limit_in_bytes", value) < 0) {
		log_warn("memcg: cannot write memory.limit_in_bytes of %s", path);
		return -1;
	}
	/* memory+swap: without it the handler's pages go to swap and the limit is dodged. */
	if (cgroupfs_write(path, "memory.memsw.limit_in_bytes", value) < 0 && errno != ENOENT)
		log_warn("memcg: cannot write memory.memsw.limit_in_bytes of %s; swap is not bounded", path);
	return 0;
}

struct memcg *memcg_attempt_create(const char *name, long long memory_max)
{
	if (!memcg_enabled() || memory_max < 0)
		return NULL;
	struct memcg *cg = calloc(1, sizeof(*cg));
	if (cg == NULL)
		return NULL;
	cg->procs_fd = -1;
	if (snprintf(cg->path, sizeof(cg->path), "%s/%s", jobs_dir, name) >= (int)sizeof(cg->path) ||
	    mkdir(cg->path, 0755) < 0) {
		log_warn("memcg: cannot create %s/%s; the attempt runs without memory_max", jobs_dir, name);
		free(cg);
		return NULL;
	}
	char procs[PATH_MAX + 16];
	snprintf(procs, sizeof(procs), "%s/cgroup.procs", cg->path);
	if (write_limits(cg->path, memory_max) < 0 || (cg->procs_fd = open(procs, O_WRONLY | O_CLOEXEC)) < 0) {
		log_warn("memcg: cannot set up %s; the attempt runs without memory_max", cg->path);
		if (rmdir(cg->path) < 0)
			log_warn("memcg: cannot remove %s", cg->path);
		free(cg);
		return NULL;
	}
	return cg;
}

int memcg_procs_fd(const struct memcg *cg)
{
	return cg != NULL ? cg->procs_fd : -1;
}

static bool oom_acted(const char *path, bool handler_sigkilled)
{
	char text[512];
	long long kills = cgroupfs_read(path, "memory.oom_control", text, sizeof(text)) == 0 ? memcg_parse_oom_kills(text)
	                                                                                 : -1;
	if (kills >= 0)
		return kills > 0;
	/* Before 4.13 no counter: the limit was hit and the handler died of SIGKILL, which is the OOM killer's. */
	return handler_sigkilled && read_number(path, "memory.failcnt") > 0;
}

void memcg_attempt_end(struct memcg *cg, bool handler_sigkilled, struct memcg_outcome *out)
{
	out->peak_bytes = -1;
	out->oom_killed = false;
	if (cg == NULL)
		return;
	out->peak_bytes = read_number(cg->path, "memory.max_usage_in_bytes");
	out->oom_killed = oom_acted(cg->path, handler_sigkilled);
	close(cg->procs_fd);
	end_cgroup(cg->path);
	free(cg);
	(void)cgroupfs_collect();
}
