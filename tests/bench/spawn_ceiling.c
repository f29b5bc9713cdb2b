/*
 * spawn_ceiling: the plain spawn loop that `make bench` holds drover against
 * (issue 7). P processes, each with K jobs in flight; a job is pipe2 x2,
 * posix_spawn of the handler, one write of the job on its stdin, stdout read
 * to EOF, waitpid. The jobs come from memory, so nothing but spawning is
 * measured: this is the ceiling a pool running the same handler can reach.
 *
 *   spawn_ceiling -p PROCESSES -k IN_FLIGHT -n JOBS [-s JOB_BYTES] HANDLER [ARG...]
 *
 * Prints one JSON line: {"jobs","processes","in_flight","elapsed_ns","failed_processes"}.
 * Exit 0 when every handler exited 0 and echoed the whole job back, 1 otherwise.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_IN_FLIGHT 64
#define MAX_PROCESSES 64
#define MAX_JOB_BYTES 4096

extern char **environ;

struct slot {
	pid_t pid;      /* 0: free */
	int out_fd;     /* the handler's stdout, read to EOF */
	size_t got;     /* bytes read back */
};

struct options {
	int processes;
	int in_flight;
	long jobs;
	size_t job_bytes;
	char **handler;
};

static void usage(void)
{
	fprintf(stderr, "usage: spawn_ceiling -p PROCESSES -k IN_FLIGHT -n JOBS [-s JOB_BYTES] HANDLER [ARG...]\n");
	exit(64);
}

static long parse_long(const char *s, long lo, long hi)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno != 0 || *end != '\0' || v < lo || v > hi)
		usage();
	return v;
}

static struct options parse_options(int argc, char **argv)
{
	struct options o = { .processes = 2, .in_flight = 4, .jobs = 1000, .job_bytes = 200 };
	int c;
	while ((c = getopt(argc, argv, "+p:k:n:s:")) != -1) {
		switch (c) {
		case 'p': o.processes = (int)parse_long(optarg, 1, MAX_PROCESSES); break;
		case 'k': o.in_flight = (int)parse_long(optarg, 1, MAX_IN_FLIGHT); break;
		case 'n': o.jobs = parse_long(optarg, 1, 100000000); break;
		case 's': o.job_bytes = (size_t)parse_long(optarg, 16, MAX_JOB_BYTES); break;
		default: usage();
		}
	}
	if (optind >= argc)
		usage();
	o.handler = argv + optind;
	return o;
}

/* A JSON job of exactly len bytes (newline included), as a queue would hand it over. */
static size_t format_job(char *buf, size_t len, int process, long n)
{
	int head = snprintf(buf, len, "{\"id\":\"ceiling-%d-%ld\",\"prompt\":\"", process, n);
	if (head < 0 || (size_t)head + 3 > len)
		return 0;
	size_t pad = len - (size_t)head - 3;
	memset(buf + head, 'x', pad);
	buf[len - 3] = '"';
	buf[len - 2] = '}';
	buf[len - 1] = '\n';
	return len;
}

static int write_all(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t w = write(fd, buf, len);
		if (w < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			return -1;
		}
		buf += w;
		len -= (size_t)w;
	}
	return 0;
}

static void close_quietly(int fd)
{
	if (fd >= 0)
		(void)close(fd);
}

/* Spawns one handler with the job on its stdin; the slot then waits for its stdout's EOF. 0 or -1. */
static int start_job(struct slot *s, char **handler, const char *job, size_t len)
{
	int in[2] = { -1, -1 }, out[2] = { -1, -1 };
	posix_spawn_file_actions_t fa;
	pid_t pid;
	int rc = -1;

	s->pid = 0; /* posix_spawn leaves pid unspecified when it fails */
	if (pipe2(in, O_CLOEXEC) < 0 || pipe2(out, O_CLOEXEC) < 0)
		goto done;
	if (posix_spawn_file_actions_init(&fa) != 0)
		goto done;
	if (posix_spawn_file_actions_adddup2(&fa, in[0], 0) == 0 &&
	    posix_spawn_file_actions_adddup2(&fa, out[1], 1) == 0 &&
	    posix_spawn(&pid, handler[0], &fa, NULL, handler, environ) == 0)
		rc = 0;
	posix_spawn_file_actions_destroy(&fa);
	if (rc < 0)
		goto done;
	s->pid = pid;
	/* A job of a few hundred bytes fits the pipe: one write, then EOF for the handler. */
	rc = write_all(in[1], job, len);
	s->out_fd = out[0];
	out[0] = -1;
	s->got = 0;
done:
	close_quietly(in[0]);
	close_quietly(in[1]);
	close_quietly(out[0]);
	close_quietly(out[1]);
	return rc;
}

static int reap(pid_t pid)
{
	int status;
	while (waitpid(pid, &status, 0) < 0) {
		if (errno != EINTR)
			return -1;
	}
	return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
}

/* Reads what is there; at EOF reaps the handler and frees the slot. Returns 1 when the job ended, -1 on failure. */
static int drain_slot(struct slot *s, size_t expected)
{
	char buf[MAX_JOB_BYTES];
	ssize_t r = read(s->out_fd, buf, sizeof(buf));
	if (r < 0)
		return (errno == EINTR || errno == EAGAIN) ? 0 : -1;
	if (r > 0) {
		s->got += (size_t)r;
		return 0;
	}
	close_quietly(s->out_fd);
	s->out_fd = -1;
	int rc = reap(s->pid);
	s->pid = 0;
	return (rc == 0 && s->got == expected) ? 1 : -1;
}

/* One process's share: jobs are numbered from 0 to count-1. Returns the failed count. */
static long run_share(const struct options *o, int process, long count)
{
	struct slot slots[MAX_IN_FLIGHT] = { { 0 } };
	struct pollfd pfd[MAX_IN_FLIGHT];
	char job[MAX_JOB_BYTES];
	long next = 0, done = 0, failed = 0;

	while (done < count) {
		int n = 0;
		for (int i = 0; i < o->in_flight; i++) {
			if (slots[i].pid == 0 && next < count) {
				size_t len = format_job(job, o->job_bytes, process, next++);
				if (len == 0 || start_job(&slots[i], o->handler, job, len) < 0) {
					failed++;
					done++;
					if (slots[i].pid > 0) {
						close_quietly(slots[i].out_fd);
						(void)reap(slots[i].pid);
						slots[i].pid = 0;
					}
					continue;
				}
			}
			if (slots[i].pid > 0)
				pfd[n++] = (struct pollfd){ .fd = slots[i].out_fd, .events = POLLIN };
		}
		if (n == 0)
			continue;
		if (poll(pfd, (nfds_t)n, -1) < 0) {
			if (errno == EINTR)
				continue;
			return failed + (count - done);
		}
		for (int i = 0; i < o->in_flight; i++) {
			if (slots[i].pid == 0)
				continue;
			for (int j = 0; j < n; j++) {
				if (pfd[j].fd != slots[i].out_fd || pfd[j].revents == 0)
					continue;
				int r = drain_slot(&slots[i], o->job_bytes);
				if (r != 0) {
					done++;
					failed += r < 0;
				}
				break;
			}
		}
	}
	return failed;
}

static long long now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Forks the P processes, each with its share of the jobs; returns the failed count (all jobs if a fork failed). */
static long run_pool(const struct options *o)
{
	pid_t pids[MAX_PROCESSES];
	long failed = 0;
	for (int p = 0; p < o->processes; p++) {
		long share = o->jobs / o->processes + (p < o->jobs % o->processes);
		pids[p] = fork();
		if (pids[p] < 0)
			return o->jobs;
		if (pids[p] == 0)
			_exit(run_share(o, p, share) == 0 ? 0 : 1);
	}
	for (int p = 0; p < o->processes; p++) {
		if (reap(pids[p]) < 0)
			failed++;
	}
	return failed;
}

int main(int argc, char **argv)
{
	struct options o = parse_options(argc, argv);
	/* A handler that exits without reading its stdin must fail that job, not kill the loop. */
	if (signal(SIGPIPE, SIG_IGN) == SIG_ERR)
		return 70;
	long long t0 = now_ns();
	long failed_processes = run_pool(&o);
	long long elapsed = now_ns() - t0;
	printf("{\"jobs\":%ld,\"processes\":%d,\"in_flight\":%d,\"elapsed_ns\":%lld,\"failed_processes\":%ld}\n",
	       o.jobs, o.processes, o.in_flight, elapsed, failed_processes);
	return failed_processes == 0 ? 0 : 1;
}
