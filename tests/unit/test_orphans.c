/*
 * Unit tests of orphans: attempt tokens written and read back (also from a
 * real child's environment, past a large environment), the calling thread's
 * child list re-read without reopening, and orphan_kill taking the group a
 * child leads with it. Every process started here is killed and reaped by pid.
 */
#include <criterion/criterion.h>

#include "shared/orphans.h"
#include "shared/util.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define DEADLINE_MS 10000

TestSuite(orphans, .timeout = 30);

/* report_fd >= 0: the child gets it as its fd 3. */
static pid_t spawn_with_env(char *const argv[], char *const envp[], bool own_group, int report_fd)
{
	posix_spawnattr_t attr;
	posix_spawn_file_actions_t actions;
	pid_t pid;
	cr_assert_eq(posix_spawn_file_actions_init(&actions), 0);
	if (report_fd >= 0)
		cr_assert_eq(posix_spawn_file_actions_adddup2(&actions, report_fd, 3), 0);
	cr_assert_eq(posix_spawnattr_init(&attr), 0);
	if (own_group) {
		cr_assert_eq(posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP), 0);
		cr_assert_eq(posix_spawnattr_setpgroup(&attr, 0), 0);
	}
	cr_assert_eq(posix_spawn(&pid, argv[0], &actions, &attr, argv, envp), 0);
	posix_spawnattr_destroy(&attr);
	posix_spawn_file_actions_destroy(&actions);
	return pid;
}

static bool listed(struct children *c, pid_t pid)
{
	const pid_t *pids;
	size_t count;
	cr_assert_eq(children_list(c, &pids, &count), 0, "children_list: %s", strerror(errno));
	for (size_t i = 0; i < count; i++) {
		if (pids[i] == pid)
			return true;
	}
	return false;
}

/* Gone, or dead and waiting for whoever it was reparented to: either way no longer running. */
static bool dead(pid_t pid)
{
	char path[64], buf[512];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	FILE *f = fopen(path, "r");
	if (f == NULL)
		return true;
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	char *paren = strrchr(buf, ')');
	return paren == NULL || paren[1] != ' ' || paren[2] == 'Z' || paren[2] == 'X';
}

static void pause_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

Test(orphans, tokens_round_trip_and_garbage_is_refused)
{
	struct attempt_token in = { .supervisor = 4242, .worker = 7, .attempt = 18446744073709551615ULL }, out;
	char buf[128];
	cr_assert_eq(attempt_token_format(buf, sizeof(buf), &in), 0);
	cr_assert_str_eq(buf, "DROVER_ATTEMPT_TOKEN=4242.7.18446744073709551615");
	cr_assert_eq(attempt_token_parse(buf + strlen(ATTEMPT_TOKEN_VAR) + 1, &out), 0);
	cr_assert(out.supervisor == 4242 && out.worker == 7 && out.attempt == in.attempt);
	cr_assert_eq(attempt_token_format(buf, 20, &in), -1, "a cut token must not be written");

	const char *bad[] = { "", "1.2", "1.2.3.4", "1.2.3x", "a.b.c", "-1.2.3", "1..3", "1.2.", " 1.2.3",
	                      "99999999999.1.1", "1.2.99999999999999999999999" };
	for (size_t i = 0; i < ARRAY_LEN(bad); i++)
		cr_assert_eq(attempt_token_parse(bad[i], &out), -1, "\"%s\" parsed", bad[i]);
}

Test(orphans, a_childs_token_is_read_from_its_environment)
{
	/* Half a mebibyte of environment before the token: it is read in chunks, not in one gulp.
	 * (One string may not exceed 128 KiB: five of 100 KiB.) */
	size_t filler_len = 100 * 1024;
	char *filler = malloc(filler_len + 1);
	cr_assert_not_null(filler);
	memset(filler, 'f', filler_len);
	memcpy(filler, "FILLER=", 7);
	filler[filler_len] = '\0';
	char *with_token[] = { filler, filler, filler, filler, filler, "NOT_A_TOKEN_DROVER_ATTEMPT_TOKEN=1.1.1",
	                       "DROVER_ATTEMPT_TOKEN=31.4.159", NULL };
	char *without[] = { "PATH=/bin", "DROVER_ATTEMPT_TOKEN=not-a-token", NULL };
	char *argv[] = { "/bin/sleep", "30", NULL };

	pid_t marked = spawn_with_env(argv, with_token, false, -1);
	pid_t plain = spawn_with_env(argv, without, false, -1);
	free(filler);
	struct attempt_token token = { 0 };
	int found = 0;
	/* posix_spawn returns once the child's exec released our memory, which is before the kernel
	 * publishes the new image's environment (env_start is set later in the ELF load): until then
	 * /proc/PID/environ reads empty. Poll, with a deadline, as the sweep would see it a moment later. */
	for (int tries = 0; tries < 500 && (found = attempt_token_of(marked, &token)) == 0; tries++)
		pause_ms(10);
	int plain_found = attempt_token_of(plain, &token) == 1 ? 1 : 0;
	int gone_found = attempt_token_of(999999999, &token);
	kill(marked, SIGKILL);
	kill(plain, SIGKILL);
	waitpid_retry(marked, NULL, 0);
	waitpid_retry(plain, NULL, 0);
	cr_assert_eq(found, 1);
	cr_assert(token.supervisor == 31 && token.worker == 4 && token.attempt == 159);
	cr_assert_eq(plain_found, 0, "a malformed token was taken for one");
	cr_assert_eq(gone_found, 0);
}

Test(orphans, the_child_list_follows_births_and_reaping)
{
	struct children *c = children_open();
	cr_assert_not_null(c, "children_open: %s", strerror(errno));
	char *argv[] = { "/bin/sleep", "30", NULL };
	pid_t pids[40];
	/* Enough children that the list outgrows the first buffer. */
	for (int i = 0; i < 40; i++)
		pids[i] = spawn_with_env(argv, (char *[]){ NULL }, false, -1);
	for (int i = 0; i < 40; i++)
		cr_assert(listed(c, pids[i]), "child %d not listed", (int)pids[i]);
	for (int i = 0; i < 40; i++) {
		kill(pids[i], SIGKILL);
		waitpid_retry(pids[i], NULL, 0);
	}
	for (int i = 0; i < 40; i++)
		cr_assert_not(listed(c, pids[i]), "reaped child %d still listed", (int)pids[i]);
	children_close(c);
}

Test(orphans, orphan_kill_takes_the_group_it_leads)
{
	/* A group leader with a member that ignores TERM: both must go. */
	char *argv[] = { "/bin/sh", "-c", "(trap '' TERM; exec sleep 30) & echo $! >&3; exec sleep 30", NULL };
	int p[2];
	cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
	pid_t leader = spawn_with_env(argv, (char *[]){ "PATH=/bin:/usr/bin", NULL }, true, p[1]);
	close(p[1]);
	char buf[32] = { 0 };
	cr_assert_gt(read_some(p[0], buf, sizeof(buf) - 1), 0); /* one line; the pipe stays open in the group */
	close(p[0]);
	pid_t member = (pid_t)atoi(buf);
	cr_assert_gt(member, 0);
	cr_assert_eq(getpgid(member), leader);

	cr_assert(orphan_kill(leader));
	int status;
	cr_assert_eq(waitpid_retry(leader, &status, 0), leader);
	cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
	long long deadline = now_ms() + DEADLINE_MS;
	while (!dead(member) && now_ms() < deadline)
		pause_ms(2);
	cr_assert(dead(member), "the group's other member survived");
	cr_assert_not(orphan_kill(leader), "a reaped pid was killed again");
}
