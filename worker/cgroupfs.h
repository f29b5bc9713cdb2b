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

#endif
