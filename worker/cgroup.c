/*
 * cgroup: per-attempt cgroups under a delegated subtree (see cgroup.h).
 *
 * Layout, after the "no internal processes" rule of cgroup v2 (a cgroup with
 * controllers enabled for its children holds no processes itself; systemd's
 * Delegate= documentation and runc/crun do the same): when drover's own
 * cgroup is the delegated one, the supervisor first moves itself into
 * <base>/supervisor (its workers, forked later, follow it), and attempts get
 * <base>/<instance>/<attempt token>, <instance> being cgroupfs.h's
 * "drover.<pid>.<start time>" so that several instances can share a
 * cgroup_root and each can tell a dead one's directory from a live one's. A
 * configured cgroup_root that drover is not in needs no move. At exit
 * (cgroup_release) the tree is left as it was found: the instance directory
 * goes, and so do the controllers drover enabled and its supervisor leaf when
 * nothing else uses them. The hierarchy's root cgroup is never taken over: it is
 * shared with the whole system, so drover running there is "not delegated"
 * (a container's root cgroup, seen through a cgroup namespace, is not the
 * hierarchy's: it is used).
 */
#include "worker/cgroup.h"
#include "worker/cgroupfs.h"

#include "shared/log.h"
#include "shared/util.h"
#include "worker/memcg.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#ifndef CGROUP2_SUPER_MAGIC
#define CGROUP2_SUPER_MAGIC 0x63677270
#endif

#define CONTROLLER_COUNT 3
#define SWEEP_SETTLE_MS 2000 /* at start and exit: killed processes of a dead instance exiting */
static const char *const controller_names[CONTROLLER_COUNT] = { "memory", "cpu", "pids" };
enum { CTL_MEMORY, CTL_CPU, CTL_PIDS };

struct job_cgroup {
	char path[PATH_MAX];
	int procs_fd;
};

static char jobs_dir[PATH_MAX]; /* <base>/<instance>; "" = disabled */
static char base_dir[PATH_MAX];
static bool moved_into_leaf;                     /* the supervisor left base_dir for base_dir/supervisor */
static bool controller_on[CONTROLLER_COUNT];     /* in the attempts' cgroups */
static bool enabled_in_base[CONTROLLER_COUNT];   /* base_dir's subtree_control had it off before us */

bool cgroup_enabled(void)
{
	return jobs_dir[0] != '\0';
}

/* ---- small file helpers --------------------------------------------------- */

/* The first line of dir/name, without its newline; -1 when it cannot be read. */
static int read_line(const char *dir, const char *name, char *buf, size_t cap)
{
	if (cgroupfs_read(dir, name, buf, cap) < 0)
		return -1;
	buf[strcspn(buf, "\n")] = '\0';
	return 0;
}

static bool has_word(const char *list, const char *word)
{
	size_t len = strlen(word);
	for (const char *p = list; (p = strstr(p, word)) != NULL; p += len) {
		if ((p == list || p[-1] == ' ') && (p[len] == ' ' || p[len] == '\0'))
			return true;
	}
	return false;
}

/* ---- finding the hierarchy ------------------------------------------------- */

/* The cgroup2 mount point (and the cgroup path its root shows) from /proc/self/mountinfo. */
static int find_mount(char *mount, size_t cap, char *mount_root, size_t root_cap)
{
	FILE *f = fopen("/proc/self/mountinfo", "re");
	if (f == NULL)
		return -1;
	char line[4096];
	int rc = -1;
	while (rc < 0 && fgets(line, sizeof(line), f) != NULL) {
		char root[PATH_MAX], point[PATH_MAX];
		const char *sep = strstr(line, " - cgroup2 ");
		if (sep == NULL || sscanf(line, "%*s %*s %*s %4095s %4095s", root, point) != 2)
			continue;
		snprintf(mount, cap, "%s", point);
		snprintf(mount_root, root_cap, "%s", root);
		rc = 0;
	}
	fclose(f);
	return rc;
}

/* drover's own cgroup v2 path ("0::/path" in /proc/self/cgroup). */
static int own_cgroup(char *path, size_t cap)
{
	FILE *f = fopen("/proc/self/cgroup", "re");
	if (f == NULL)
		return -1;
	char line[PATH_MAX + 16];
	int rc = -1;
	while (rc < 0 && fgets(line, sizeof(line), f) != NULL) {
		if (strncmp(line, "0::", 3) != 0)
			continue;
		line[strcspn(line, "\n")] = '\0';
		rc = snprintf(path, cap, "%s", line + 3) < (int)cap ? 0 : -1;
		break;
	}
	fclose(f);
	return rc;
}

/* Our own cgroup as a directory, or "" when it is the hierarchy's root (never delegated). */
static int own_dir(char *dir, size_t cap, char *why, size_t why_cap)
{
	char mount[PATH_MAX], mount_root[PATH_MAX], own[PATH_MAX];
	if (find_mount(mount, sizeof(mount), mount_root, sizeof(mount_root)) < 0) {
		snprintf(why, why_cap, "no cgroup2 file system is mounted");
		return -1;
	}
	if (own_cgroup(own, sizeof(own)) < 0) {
		snprintf(why, why_cap, "/proc/self/cgroup names no cgroup v2");
		return -1;
	}
	/* A bind mount of a sub-cgroup shows paths from the hierarchy's root: strip its own root. */
	const char *rel = own;
	size_t root_len = strlen(mount_root);
	if (strcmp(mount_root, "/") != 0 && strncmp(own, mount_root, root_len) == 0)
		rel = own + root_len;
	bool at_top = rel[0] == '\0' || strcmp(rel, "/") == 0;
	if (snprintf(dir, cap, "%s%s", mount, at_top ? "" : rel) >= (int)cap) {
		snprintf(why, why_cap, "the path of drover's cgroup is too long");
		return -1;
	}
	/* Only the hierarchy's real root lacks cgroup.type; a container's root (cgroup namespace) has it. */
	char type[PATH_MAX + 16];
	snprintf(type, sizeof(type), "%s/cgroup.type", dir);
	if (access(type, F_OK) < 0) {
		snprintf(why, why_cap, "drover runs in the root cgroup of %s, which is not delegated", mount);
		return -1;
	}
	return 0;
}

static bool writable_cgroup2(const char *dir, char *why, size_t why_cap)
{
	struct statfs fs;
	if (statfs(dir, &fs) < 0 || fs.f_type != CGROUP2_SUPER_MAGIC) {
		snprintf(why, why_cap, "%s is not a cgroup v2 directory", dir);
		return false;
	}
	char procs[PATH_MAX + 16];
	snprintf(procs, sizeof(procs), "%s/cgroup.procs", dir);
	if (access(dir, W_OK) < 0 || access(procs, W_OK) < 0) {
		snprintf(why, why_cap, "%s is not writable (delegate it: systemd Delegate=yes)", dir);
		return false;
	}
	return true;
}

/* ---- start-up --------------------------------------------------------------- */

/* The supervisor leaves base for base/supervisor, so that base may enable controllers for its children. */
static int move_into_leaf(const char *base)
{
	char leaf[PATH_MAX], pid[32];
	if (snprintf(leaf, sizeof(leaf), "%s/supervisor", base) >= (int)sizeof(leaf)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	if (mkdir(leaf, 0755) < 0 && errno != EEXIST)
		return -1;
	snprintf(pid, sizeof(pid), "%d", (int)getpid());
	return cgroupfs_write(leaf, "cgroup.procs", pid);
}

/* Enables what base offers of memory, cpu, pids for base's and jobs' children; records what jobs got. * What base had on before is remembered: cgroup_release turns off only what drover turned on. */
static void enable_controllers(const char *base)
{
	char offered[512] = "", before[512] = "";
	(void)read_line(base, "cgroup.controllers", offered, sizeof(offered));
	(void)read_line(base, "cgroup.subtree_control", before, sizeof(before));
	for (int i = 0; i < CONTROLLER_COUNT; i++) {
		char plus[32];
		snprintf(plus, sizeof(plus), "+%s", controller_names[i]);
		bool in_base = has_word(offered, controller_names[i]) &&
		               cgroupfs_write(base, "cgroup.subtree_control", plus) == 0;
		enabled_in_base[i] = in_base && !has_word(before, controller_names[i]);
		controller_on[i] = in_base && cgroupfs_write(jobs_dir, "cgroup.subtree_control", plus) == 0;
	}
}

static bool is_own_dir(const char *base)
{
	char own[PATH_MAX], why[256];
	return own_dir(own, sizeof(own), why, sizeof(why)) == 0 && strcmp(own, base) == 0;
}

static void report(const char *base, const struct cgroup_limits *wanted)
{
	char missing[128] = "";
	const long long limit[CONTROLLER_COUNT] = { wanted->memory_max, wanted->cpu_max, wanted->pids_max };
	static const char *const key[CONTROLLER_COUNT] = { "memory_max", "cpu_max", "pids_max" };
	for (int i = 0; i < CONTROLLER_COUNT; i++) {
		if (controller_on[i])
			continue;
		size_t n = strlen(missing);
		snprintf(missing + n, sizeof(missing) - n, "%s%s", n > 0 ? ", " : "", controller_names[i]);
		if (limit[i] >= 0 && i != CTL_MEMORY) /* memory: prepare_memory says who enforces it */
			log_warnx("cgroup: [jobs] %s is set but the %s controller is not available under %s: not enforced",
			          key[i], controller_names[i], base);
	}
	log_info("cgroup: each job attempt runs in its own cgroup under %s%s%s", jobs_dir,
	         missing[0] != '\0' ? "; controllers not available: " : "", missing);
}

static bool cgroup_prepare_v2(const char *root, const struct cgroup_limits *wanted);

/* Says once which hierarchy enforces memory_max: v2's memory.max, else a v1 memory cgroup per attempt, else none. */
static void prepare_memory(long long memory_max)
{
	char why[PATH_MAX + 128];
	if (memory_max < 0)
		return;
	if (cgroup_enabled() && controller_on[CTL_MEMORY]) {
		log_info("cgroup: memory_max is enforced by cgroup v2 (memory.max) under %s", jobs_dir);
		return;
	}
	if (memcg_prepare(why, sizeof(why))) {
		log_info("cgroup: memory_max is enforced by the cgroup v1 memory controller under %s", memcg_jobs_dir());
		return;
	}
	log_warnx("cgroup: [jobs] memory_max is set but the memory controller is not available (cgroup v2: %s; "
	          "cgroup v1: %s): not enforced",
	          cgroup_enabled() ? "no memory controller for the jobs' cgroups" : "no delegated cgroup", why);
}

bool cgroup_prepare(const char *root, const struct cgroup_limits *wanted)
{
	bool enabled = cgroup_prepare_v2(root, wanted);
	prepare_memory(wanted->memory_max);
	return enabled;
}

/* After an upgrade (exec) the supervisor is already in <base>/supervisor: its base is the parent. */
static void leave_own_leaf(char *own)
{
	char *slash = strrchr(own, '/');
	if (slash != NULL && strcmp(slash, "/supervisor") == 0) {
		*slash = '\0';
		moved_into_leaf = true;
	}
}

static bool cgroup_prepare_v2(const char *root, const struct cgroup_limits *wanted)
{
	char base[PATH_MAX], why[PATH_MAX + 128], instance[64];
	jobs_dir[0] = '\0';
	if (root != NULL && root[0] != '\0')
		snprintf(base, sizeof(base), "%s", root);
	else if (own_dir(base, sizeof(base), why, sizeof(why)) < 0)
		goto fallback;
	else
		leave_own_leaf(base);
	if (!writable_cgroup2(base, why, sizeof(why)))
		goto fallback;
	/* An upgrade re-runs this with drover already in the leaf: base is then no longer its own cgroup. */
	if (!moved_into_leaf && is_own_dir(base)) {
		if (move_into_leaf(base) < 0) {
			snprintf(why, sizeof(why), "cannot move drover into %s/supervisor: %s", base, strerror(errno));
			goto fallback;
		}
		moved_into_leaf = true;
	}
	cgroupfs_sweep_stale(base, true, "cgroup");
	cgroupfs_settle(SWEEP_SETTLE_MS);
	if (cgroupfs_instance_name(instance, sizeof(instance)) < 0 ||
	    snprintf(jobs_dir, sizeof(jobs_dir), "%s/%s", base, instance) >= (int)sizeof(jobs_dir) ||
	    (mkdir(jobs_dir, 0755) < 0 && errno != EEXIST)) {
		snprintf(why, sizeof(why), "cannot create a cgroup for drover's jobs under %s: %s", base, strerror(errno));
		jobs_dir[0] = '\0';
		goto fallback;
	}
	snprintf(base_dir, sizeof(base_dir), "%s", base);
	enable_controllers(base);
	report(base, wanted);
	return true;

fallback:
	log_info("cgroup: %s; jobs are contained by process groups only", why);
	return false;
}

/* ---- one attempt -------------------------------------------------------------- */

static void write_limit(struct job_cgroup *cg, int controller, const char *file, long long value, const char *text)
{
	char buf[64];
	if (value < 0 || !controller_on[controller])
		return;
	if (text == NULL) {
		snprintf(buf, sizeof(buf), "%lld", value);
		text = buf;
	}
	if (cgroupfs_write(cg->path, file, text) < 0)
		log_warn("cgroup: cannot write %s of %s", file, cg->path);
}

struct job_cgroup *cgroup_attempt_create(const char *name, const struct cgroup_limits *limits)
{
	if (!cgroup_enabled())
		return NULL;
	struct job_cgroup *cg = calloc(1, sizeof(*cg));
	if (cg == NULL)
		return NULL;
	cg->procs_fd = -1;
	if (snprintf(cg->path, sizeof(cg->path), "%s/%s", jobs_dir, name) >= (int)sizeof(cg->path) ||
	    mkdir(cg->path, 0755) < 0) {
		log_warn("cgroup: cannot create %s/%s; the attempt runs without", jobs_dir, name);
		free(cg);
		return NULL;
	}
	char cpu[64];
	/* cpu.max is "quota period": percent of one CPU over a 100 ms period. */
	snprintf(cpu, sizeof(cpu), "%lld 100000", limits->cpu_max * 1000);
	write_limit(cg, CTL_MEMORY, "memory.max", limits->memory_max, NULL);
	write_limit(cg, CTL_CPU, "cpu.max", limits->cpu_max, cpu);
	write_limit(cg, CTL_PIDS, "pids.max", limits->pids_max, NULL);
	char procs[PATH_MAX + 16];
	snprintf(procs, sizeof(procs), "%s/cgroup.procs", cg->path);
	cg->procs_fd = open(procs, O_WRONLY | O_CLOEXEC);
	if (cg->procs_fd < 0) {
		log_warn("cgroup: cannot open %s; the attempt runs without", procs);
		if (rmdir(cg->path) < 0)
			log_warn("cgroup: cannot remove %s", cg->path);
		free(cg);
		return NULL;
	}
	return cg;
}

int cgroup_attempt_procs_fd(const struct job_cgroup *cg)
{
	return cg != NULL ? cg->procs_fd : -1;
}

static long long read_peak(const char *path)
{
	char line[64];
	if (!controller_on[CTL_MEMORY] || read_line(path, "memory.peak", line, sizeof(line)) < 0)
		return -1;
	char *end;
	long long peak = strtoll(line, &end, 10);
	return end != line ? peak : -1;
}

/* Kills every process in path and removes it (later, while they are still exiting). */
static void end_cgroup(const char *path)
{
	if (cgroupfs_write(path, "cgroup.kill", "1") < 0 && errno != ENOENT)
		log_warn("cgroup: cannot write cgroup.kill of %s", path); /* the kill passes below do it then */
	cgroupfs_remove(path);
}

/* Whether the OOM killer acted in path or below (memory.events counts its subtree; a new cgroup starts at 0). */
static bool read_oom_killed(const char *path)
{
	char text[512];
	return controller_on[CTL_MEMORY] && cgroupfs_read(path, "memory.events", text, sizeof(text)) == 0 &&
	       memcg_parse_oom_kills(text) > 0;
}

long long cgroup_attempt_end(struct job_cgroup *cg, bool *oom_killed)
{
	if (oom_killed != NULL)
		*oom_killed = false;
	if (cg == NULL)
		return -1;
	long long peak = read_peak(cg->path);
	if (oom_killed != NULL)
		*oom_killed = read_oom_killed(cg->path);
	close(cg->procs_fd);
	end_cgroup(cg->path);
	free(cg);
	cgroup_collect();
	return peak;
}

void cgroup_end_worker(long long supervisor_pid, unsigned long long worker_serial)
{
	char prefix[64], path[PATH_MAX];
	int len = snprintf(prefix, sizeof(prefix), "%lld.%llu.", supervisor_pid, worker_serial);
	memcg_end_prefix(prefix);
	if (!cgroup_enabled())
		return;
	DIR *dir = opendir(jobs_dir);
	if (dir == NULL) {
		log_warn("cgroup: cannot list %s", jobs_dir);
		return;
	}
	const struct dirent *de;
	while ((de = readdir(dir)) != NULL) {
		if (strncmp(de->d_name, prefix, (size_t)len) != 0 ||
		    snprintf(path, sizeof(path), "%s/%s", jobs_dir, de->d_name) >= (int)sizeof(path))
			continue;
		log_info("cgroup: ending %s, left by a worker that is gone", path);
		end_cgroup(path);
	}
	closedir(dir);
	cgroup_collect();
}

void cgroup_collect(void)
{
	(void)cgroupfs_collect(); /* the v1 memory cgroups' too */
}

/* ---- exit ------------------------------------------------------------------------- */

/* Whether base has a child cgroup other than drover's supervisor leaf (another instance's, the admin's). */
static bool base_has_others(void)
{
	DIR *dir = opendir(base_dir);
	if (dir == NULL)
		return true;
	bool others = false;
	const struct dirent *de;
	while (!others && (de = readdir(dir)) != NULL)
		others = de->d_type == DT_DIR && strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0 &&
		         !(moved_into_leaf && strcmp(de->d_name, "supervisor") == 0);
	closedir(dir);
	return others;
}

/* The controllers drover turned on in base, and its move into base/supervisor, undone when nothing else needs them. */
static void restore_base(void)
{
	if (base_has_others())
		return;
	for (int i = 0; i < CONTROLLER_COUNT; i++) {
		char minus[32];
		snprintf(minus, sizeof(minus), "-%s", controller_names[i]);
		if (enabled_in_base[i] && cgroupfs_write(base_dir, "cgroup.subtree_control", minus) < 0)
			log_debug("cgroup: cannot turn the %s controller off in %s: %s", controller_names[i], base_dir,
			          strerror(errno));
	}
	if (!moved_into_leaf)
		return;
	char pid[32], leaf[PATH_MAX + 16];
	snprintf(pid, sizeof(pid), "%d", (int)getpid());
	snprintf(leaf, sizeof(leaf), "%s/supervisor", base_dir);
	if (cgroupfs_write(base_dir, "cgroup.procs", pid) < 0 || rmdir(leaf) < 0)
		log_info("cgroup: %s stays: %s", leaf, strerror(errno)); /* a process that outlived drover is in it */
}

void cgroup_release(void)
{
	memcg_release();
	if (!cgroup_enabled())
		return;
	if (cgroupfs_release_tree(jobs_dir, true, SWEEP_SETTLE_MS, "cgroup"))
		restore_base();
	jobs_dir[0] = '\0';
}
