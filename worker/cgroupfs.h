/*
 * cgroupfs: the file operations the per-attempt cgroups share, on cgroup v2
 * (cgroup.c) and on the v1 memory controller (memcg.c): writing and reading
 * a control file, killing what a cgroup holds, and removing cgroups whose
 * last processes are still exiting (rmdir says EBUSY until they are gone).
 */
#ifndef DROVER_CGROUPFS_H
#define DROVER_CGROUPFS_H

#include <stdbool.h>
#include <stddef.h>

/* Writes text to dir/name. 0, or -1 with errno. */
int cgroupfs_write(const char *dir, const char *name, const char *text);
/* dir/name's text into buf (cgroup files report size 0: read until EOF or cap - 1). 0, or -1. */
int cgroupfs_read(const char *dir, const char *name, char *buf, size_t cap);
/* SIGKILL to every pid in path/cgroup.procs, a few passes (a fork can race one). */
void cgroupfs_kill_all(const char *path);
/* Kills what path holds and removes it, now or, while its processes exit, on a later cgroupfs_collect(). */
void cgroupfs_remove(const char *path);
/* Retries the removals still waiting; whether any is left waiting. */
bool cgroupfs_collect(void);
/* Retries the waiting removals for up to max_ms while any is left (at start and at exit only). */
void cgroupfs_settle(int max_ms);

/*
 * Each drover instance puts its cgroups in a directory of its own,
 * "drover.<supervisor pid>.<its start time in clock ticks>", so that whose it
 * is can be decided: it is stale when no process has that pid with that
 * start time (a pid reused by another program does not keep it alive).
 */
int cgroupfs_instance_name(char *buf, size_t cap);
/* Whether name is an instance directory's name whose instance is gone. */
bool cgroupfs_instance_stale(const char *name);
/*
 * Removes the directory tree at path, children first, killing what is in it
 * (kill_first: cgroup v2's cgroup.kill of path, which reaches every
 * descendant, before the per-cgroup passes). What is still busy waits for
 * cgroupfs_collect.
 */
void cgroupfs_remove_tree(const char *path, bool use_cgroup_kill);
/*
 * At exit: removes the tree at path (cgroupfs_remove_tree) and waits up to
 * max_ms for what is in it to exit. True when it is gone; false, after a
 * warning naming it (what: the log's prefix), when processes kept it.
 */
bool cgroupfs_release_tree(const char *path, bool use_cgroup_kill, int max_ms, const char *what);
/* Removes every stale instance directory in parent (see cgroupfs_instance_stale); what says the log. */
void cgroupfs_sweep_stale(const char *parent, bool use_cgroup_kill, const char *what);

#endif
