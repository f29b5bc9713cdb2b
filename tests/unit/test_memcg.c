/*
 * Unit tests of memcg's parsing: which /proc/self/mountinfo line is the
 * cgroup v1 memory hierarchy (not cgroup2, not another v1 controller, not a
 * controller whose name merely contains "memory"), drover's own memory
 * cgroup from /proc/self/cgroup (alone or co-mounted with others), and the
 * OOM killer's counter of memory.oom_control (absent before kernel 4.13).
 */
#include <criterion/criterion.h>

#include "worker/memcg.h"

#include <limits.h>
#include <string.h>

TestSuite(memcg, .timeout = 10);

static const char *const hybrid_mountinfo[] = {
	"31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n",
	"32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n",
	"41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n",
	"40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd\n",
};

Test(memcg, mountinfo_finds_only_the_v1_memory_hierarchy)
{
	char mount[PATH_MAX], root[PATH_MAX];
	for (size_t i = 0; i < sizeof(hybrid_mountinfo) / sizeof(hybrid_mountinfo[0]); i++)
		cr_expect_eq(memcg_parse_mountinfo(hybrid_mountinfo[i], mount, sizeof(mount), root, sizeof(root)), -1,
		             "%s", hybrid_mountinfo[i]);
	const char *memory = "35 31 0:32 / /sys/fs/cgroup/memory rw,nosuid,nodev shared:12 - cgroup cgroup rw,memory\n";
	cr_assert_eq(memcg_parse_mountinfo(memory, mount, sizeof(mount), root, sizeof(root)), 0);
	cr_expect_str_eq(mount, "/sys/fs/cgroup/memory");
	cr_expect_str_eq(root, "/");
}

Test(memcg, mountinfo_takes_co_mounted_and_sub_cgroup_mounts)
{
	char mount[PATH_MAX], root[PATH_MAX];
	/* A container's view: the mount shows a sub-cgroup of the hierarchy, co-mounted with cpuacct. */
	const char *line = "900 800 0:32 /docker/abc /sys/fs/cgroup/memory ro - cgroup cgroup rw,cpuacct,memory,clone\n";
	cr_assert_eq(memcg_parse_mountinfo(line, mount, sizeof(mount), root, sizeof(root)), 0);
	cr_expect_str_eq(mount, "/sys/fs/cgroup/memory");
	cr_expect_str_eq(root, "/docker/abc");
	const char *lookalike = "901 800 0:40 / /mnt/x rw - cgroup cgroup rw,name=memoryish\n";
	cr_expect_eq(memcg_parse_mountinfo(lookalike, mount, sizeof(mount), root, sizeof(root)), -1);
	cr_expect_eq(memcg_parse_mountinfo("garbage\n", mount, sizeof(mount), root, sizeof(root)), -1);
}

Test(memcg, cgroup_file_gives_the_memory_line)
{
	char path[PATH_MAX];
	cr_assert_eq(memcg_parse_cgroup("4:memory:/process_api/d568b6\n", path, sizeof(path)), 0);
	cr_expect_str_eq(path, "/process_api/d568b6");
	cr_assert_eq(memcg_parse_cgroup("7:cpuacct,memory:/\n", path, sizeof(path)), 0);
	cr_expect_str_eq(path, "/");
	cr_expect_eq(memcg_parse_cgroup("0::/\n", path, sizeof(path)), -1, "the v2 line");
	cr_expect_eq(memcg_parse_cgroup("9:name=systemd:/user.slice\n", path, sizeof(path)), -1);
	cr_expect_eq(memcg_parse_cgroup("8:pids:/\n", path, sizeof(path)), -1);
	cr_expect_eq(memcg_parse_cgroup("4:memory:\n", path, sizeof(path)), -1, "no path");
	char tiny[4];
	cr_expect_eq(memcg_parse_cgroup("4:memory:/too/long\n", tiny, sizeof(tiny)), -1);
}

Test(memcg, oom_control_counter)
{
	cr_expect_eq(memcg_parse_oom_kills("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n"), 3);
	cr_expect_eq(memcg_parse_oom_kills("oom_kill_disable 0\nunder_oom 0\noom_kill 0\n"), 0);
	cr_expect_eq(memcg_parse_oom_kills("oom_kill_disable 0\nunder_oom 1\n"), -1, "before kernel 4.13");
	cr_expect_eq(memcg_parse_oom_kills(""), -1);
}

Test(memcg, v2_memory_events_counter)
{
	/* cgroup v2's memory.events: oom_group_kill must not be taken for oom_kill. */
	cr_expect_eq(memcg_parse_oom_kills("low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n"), 1);
	cr_expect_eq(memcg_parse_oom_kills("low 0\nhigh 0\nmax 0\noom 0\noom_group_kill 2\noom_kill 0\n"), 0);
}
