/*
 * cgroup: one cgroup v2 per job attempt, where the host delegates a subtree
 * to drover (systemd Delegate=yes; a container with a writable cgroup). The
 * attempt's handler joins its cgroup before exec, the configured limits
 * (memory.max, cpu.max, pids.max) apply to the whole tree of processes it
 * starts, and at the end cgroup.kill ends every one of them, including a
 * descendant that left the process group and cleared its environment.
 *
 * The hierarchy is found from /proc/self/mountinfo, never assumed at
 * /sys/fs/cgroup. Without delegation everything here is a no-op and jobs are
 * contained by their process groups (runner.c) and the orphan sweep.
 *
 * memory_max without a v2 memory controller goes to the cgroup v1 memory
 * controller where one is mounted (memcg.h): cgroup_prepare sets that up too
 * and says once which hierarchy enforces memory_max, if any.
 *
 * cgroup_prepare runs once in the supervisor before the workers are forked;
 * the workers inherit what it found.
 */
#ifndef DROVER_CGROUP_H
#define DROVER_CGROUP_H

#include <stdbool.h>

struct cgroup_limits {
	long long memory_max; /* bytes; < 0 = none */
	long long cpu_max;    /* percent of one CPU; < 0 = none */
	long long pids_max;   /* < 0 = none */
};

/*
 * root: the delegated cgroup to use ("" = drover's own cgroup). Says once what
 * it found (info), and which controllers a configured limit lacks (warn).
 * Returns true when attempts will get cgroups.
 */
bool cgroup_prepare(const char *root, const struct cgroup_limits *wanted);
bool cgroup_enabled(void);

struct job_cgroup;

/* A cgroup for one attempt, limits written; NULL when disabled or on error (logged; the attempt runs without). */
struct job_cgroup *cgroup_attempt_create(const char *name, const struct cgroup_limits *limits);
/* An fd of its cgroup.procs: the child writes "0" to it to join before exec. */
int cgroup_attempt_procs_fd(const struct job_cgroup *cg);
/*
 * Ends the attempt's cgroup: kills whatever is left in it (cgroup.kill, or
 * SIGKILL to each pid of cgroup.procs where the kernel has no cgroup.kill),
 * reads its peak memory, removes it (later, from cgroup_collect, while killed
 * processes are still exiting) and frees cg. Returns the peak in bytes, or -1
 * when unknown; *oom_killed (when not NULL) says whether the kernel's OOM
 * killer acted in it (oom_kill of memory.events above 0).
 */
long long cgroup_attempt_end(struct job_cgroup *cg, bool *oom_killed);
/* Removes the cgroups of ended attempts whose processes have all exited. */
void cgroup_collect(void);
/*
 * In the supervisor, when a worker is gone: ends every process in the cgroups
 * of its attempts (named "<supervisor pid>.<worker serial>.<attempt>", as its
 * attempt tokens) and removes them, as cgroup_attempt_end would have.
 */
void cgroup_end_worker(long long supervisor_pid, unsigned long long worker_serial);
/*
 * In the supervisor, at exit (not across an upgrade's exec), after the last
 * worker: ends and removes drover's own cgroups (v2 and v1), children first,
 * and undoes what it changed in the cgroup it was given when nothing else
 * uses it, so that the tree is left as it was found.
 */
void cgroup_release(void);

#endif
