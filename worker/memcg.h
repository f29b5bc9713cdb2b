/*
 * memcg: [jobs] memory_max through the cgroup v1 memory controller, for hosts
 * whose cgroup2 hierarchy has no memory controller (hybrid layouts: cgroup2
 * at /sys/fs/cgroup/unified, memory on v1 at /sys/fs/cgroup/memory).
 *
 * Each attempt gets <own memory cgroup>/<instance>/<attempt token> with
 * memory.limit_in_bytes (and memory.memsw.limit_in_bytes, so swap does not
 * dodge it); the handler joins it before exec through a pre-opened
 * cgroup.procs fd. v1 lets an inner cgroup hold processes, so drover itself
 * stays where it is. At the end the cgroup tells the peak and whether the
 * kernel's OOM killer acted in it; what is left in it is killed and it is
 * removed. The hierarchy is found from /proc/self/mountinfo and
 * /proc/self/cgroup, never assumed.
 *
 * cgroup.c drives it (cgroup_prepare, cgroup_end_worker, cgroup_collect);
 * worker.c makes one per attempt.
 */
#ifndef DROVER_MEMCG_H
#define DROVER_MEMCG_H

#include <stdbool.h>
#include <stddef.h>

/*
 * One line of /proc/self/mountinfo: 0 and the mount point and the path of
 * its root when it is a cgroup v1 mount with the memory controller, else -1.
 */
int memcg_parse_mountinfo(const char *line, char *mount, size_t mount_cap, char *root, size_t root_cap);
/* One line of /proc/self/cgroup: 0 and the path when it is the v1 memory line ("4:memory:/a/b"), else -1. */
int memcg_parse_cgroup(const char *line, char *path, size_t cap);
/* The "oom_kill N" counter of a memory.oom_control (v1) or memory.events (v2) text; -1 when it has none
 * (v1 before 4.13). */
long long memcg_parse_oom_kills(const char *text);

/*
 * Finds drover's own v1 memory cgroup, sweeps what instances that are gone
 * left there and creates <own>/<instance> (cgroupfs.h). Returns true when attempts will
 * get a v1 memory cgroup; false (why in why) otherwise.
 */
bool memcg_prepare(char *why, size_t why_cap);
bool memcg_enabled(void);
/* <own>/<instance>, "" when disabled. */
const char *memcg_jobs_dir(void);

struct memcg;

struct memcg_outcome {
	long long peak_bytes; /* memory.max_usage_in_bytes; -1 = unknown */
	bool oom_killed;      /* the OOM killer killed a process of the attempt */
};

/* The attempt's memory cgroup with its limit written; NULL when disabled or on error (logged). */
struct memcg *memcg_attempt_create(const char *name, long long memory_max);
/* An fd of its cgroup.procs: the child writes "0" to it before exec; -1 for NULL. */
int memcg_procs_fd(const struct memcg *cg);
/*
 * Reads the peak and the OOM verdict (handler_sigkilled: the handler died of
 * SIGKILL, which with memory.failcnt > 0 stands for the counter older
 * kernels lack), kills what is left, removes the cgroup (later, when it is
 * still busy) and frees cg. NULL: out says unknown.
 */
void memcg_attempt_end(struct memcg *cg, bool handler_sigkilled, struct memcg_outcome *out);
/* Ends every attempt cgroup whose name starts with prefix ("<supervisor pid>.<worker serial>."). */
void memcg_end_prefix(const char *prefix);
/* At the supervisor's exit: ends and removes <own>/<instance> and what is in it. */
void memcg_release(void);

#endif
