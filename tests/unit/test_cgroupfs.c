/*
 * Unit tests of the ownership rule of drover's instance directories
 * (cgroupfs.h): "drover.<pid>.<start time>" is stale only when no process
 * has that pid with that start time; our own, a live process's and any
 * other name are never stale. Uses real processes: this one, and a reaped
 * child whose pid runs no more.
 */
#include <criterion/criterion.h>

#include "worker/cgroupfs.h"

#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

TestSuite(cgroupfs, .timeout = 10);

/* pid's start time, field 22 of /proc/PID/stat (cgroupfs does not expose its reader). */
static long long start_time_of(pid_t pid)
{
	char path[64], text[1024];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	FILE *f = fopen(path, "re");
	cr_assert_not_null(f);
	size_t n = fread(text, 1, sizeof(text) - 1, f);
	fclose(f);
	text[n] = '\0';
	unsigned long long ticks;
	cr_assert_eq(sscanf(strrchr(text, ')') + 1,
	                    " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d %*d %*d %*d %llu", &ticks),
	             1);
	return (long long)ticks;
}

Test(cgroupfs, own_name_is_ours_and_not_stale)
{
	char name[64], expected[64];
	cr_assert_eq(cgroupfs_instance_name(name, sizeof(name)), 0);
	snprintf(expected, sizeof(expected), "drover.%d.%lld", (int)getpid(), start_time_of(getpid()));
	cr_expect_str_eq(name, expected);
	cr_expect_not(cgroupfs_instance_stale(name));
	char tiny[8];
	cr_expect_eq(cgroupfs_instance_name(tiny, sizeof(tiny)), -1);
}

Test(cgroupfs, live_process_with_its_start_time_is_not_stale)
{
	pid_t parent = getppid();
	char name[64];
	snprintf(name, sizeof(name), "drover.%d.%lld", (int)parent, start_time_of(parent));
	cr_expect_not(cgroupfs_instance_stale(name));
	/* The same pid with another start time: the pid was reused, the instance is gone. */
	snprintf(name, sizeof(name), "drover.%d.%lld", (int)parent, start_time_of(parent) + 1);
	cr_expect(cgroupfs_instance_stale(name));
}

Test(cgroupfs, pid_that_runs_no_more_is_stale)
{
	pid_t child = fork();
	cr_assert_geq(child, 0);
	if (child == 0)
		_exit(0);
	int status;
	cr_assert_eq(waitpid(child, &status, 0), child);
	char name[64];
	snprintf(name, sizeof(name), "drover.%d.12345", (int)child);
	cr_expect(cgroupfs_instance_stale(name));
}

Test(cgroupfs, other_names_are_never_stale)
{
	static const char *const names[] = { "jobs", "supervisor", "drover-jobs", "drover.1", "drover.x.1",
		                             "drover.4294967296.1", "drover.-3.1", "drover. 3.1", "drover.3.+1", "drover.3.1.tail",
		                             "1.2.3", "" };
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		cr_expect_not(cgroupfs_instance_stale(names[i]), "%s", names[i]);
}
