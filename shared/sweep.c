/*
 * sweep: see sweep.h. /proc/PID/environ is the environment a process was
 * started with, which its descendants inherit unless they replace it: a good
 * enough mark for a job's escaped processes, and readable for our own uid.
 */
#include "sweep.h"
#include "log.h"
#include "util.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define ENVIRON_MAX (256 * 1024)

static bool has_entry(const char *environ, size_t len, const char *entry)
{
	size_t entry_len = strlen(entry);
	for (size_t at = 0; at < len;) {
		size_t n = strnlen(environ + at, len - at);
		if (n == entry_len && memcmp(environ + at, entry, n) == 0)
			return true;
		at += n + 1;
	}
	return false;
}

static bool carries_marks(pid_t pid, const char *job_mark, const char *worker_mark, char *buf)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/environ", (int)pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	ssize_t len = read_full(fd, buf, ENVIRON_MAX);
	close(fd);
	if (len <= 0)
		return false;
	return has_entry(buf, (size_t)len, job_mark) && has_entry(buf, (size_t)len, worker_mark);
}

int sweep_job_processes(const char *job_id, int slot)
{
	char *job_mark = NULL, worker_mark[48];
	pid_t self = getpid();
	uid_t uid = geteuid();
	int killed = 0;

	if (asprintf(&job_mark, "DROVER_JOB_ID=%s", job_id) < 0)
		return -1;
	snprintf(worker_mark, sizeof(worker_mark), "DROVER_WORKER=%d", slot);
	char *buf = malloc(ENVIRON_MAX);
	DIR *proc = buf != NULL ? opendir("/proc") : NULL;
	if (proc == NULL) {
		free(buf);
		free(job_mark);
		return -1;
	}
	for (struct dirent *e = readdir(proc); e != NULL; e = readdir(proc)) {
		if (!isdigit((unsigned char)e->d_name[0]))
			continue;
		pid_t pid = (pid_t)strtol(e->d_name, NULL, 10);
		struct stat st;
		if (pid == self || fstatat(dirfd(proc), e->d_name, &st, 0) < 0 || (uid != 0 && st.st_uid != uid))
			continue;
		if (carries_marks(pid, job_mark, worker_mark, buf) && kill(pid, SIGKILL) == 0) {
			log_info("job %s: killed pid %d, which had left the job's process group", job_id, (int)pid);
			killed++;
		}
	}
	closedir(proc);
	free(buf);
	free(job_mark);
	return killed;
}
