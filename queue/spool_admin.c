/*
 * spool_admin: the spool's queue_ops (source.h), what the supervisor and
 * droverctl do with the spool directory as a whole: prepare it at start,
 * reclaim dead workers' claims, probe that it takes a write, check its
 * health, and enqueue droverctl's jobs (the per-job commands are in
 * spool_jobs.c).
 */
#include "queue/spool.h"
#include "shared/util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>
#include <unistd.h>


static int spool_ops_prepare(const struct config *cfg, char *err, size_t errlen)
{
	char why[512] = "";

	if (spool_prepare(cfg->spool_dir, why, sizeof(why)) == 0)
		return 0;
	snprintf(err, errlen, "spool %s: %s", cfg->spool_dir, why);
	return -1;
}

static int spool_ops_reclaim(const struct config *cfg)
{
	return spool_reclaim(cfg->spool_dir);
}

/* A write probe in tmp/: catches a full disk or a read-only mount that access(2) does not. */
static int spool_ops_probe(const struct config *cfg, char *why, size_t len)
{
	char path[PATH_MAX];
	const char *dir = cfg->spool_dir;

	if (snprintf(path, sizeof(path), "%s/tmp/.health-%d", dir, (int)getpid()) >= (int)sizeof(path)) {
		snprintf(why, len, "spool %s is not writable: path too long", dir);
		return -1;
	}
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0) {
		snprintf(why, len, "spool %s is not writable: %s", dir, strerror(errno));
		return -1;
	}
	int rc = write_all(fd, "h", 1) < 0 || fsync(fd) < 0 ? -1 : 0;
	int saved = errno;
	close(fd);
	unlink(path);
	if (rc < 0)
		snprintf(why, len, "spool %s is not writable: %s", dir, strerror(saved));
	return rc;
}

static int spool_ops_health(const struct config *cfg, FILE *out)
{
	char err[1024] = "";

	if (spool_health(cfg->spool_dir, err, sizeof(err)) < 0) {
		fprintf(stderr, "droverctl: error: spool %s: %s\n", cfg->spool_dir, err[0] != '\0' ? err : "unhealthy");
		return EX_UNAVAILABLE;
	}
	fprintf(out, "ok: spool %s\n", cfg->spool_dir);
	return 0;
}

/* Errors that mean the spool itself is missing or closed to us, rather than one job's trouble. */
static int enqueue_exit_code(int err)
{
	return (err == ENOENT || err == ENOTDIR || err == EACCES || err == EPERM || err == EROFS) ? EX_UNAVAILABLE
	                                                                                         : EXIT_FAILURE;
}

static bool blank(const char *s, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r')
			return false;
	return true;
}

/* Enqueues one line; prints its id, or the refusal naming the line. An exit code. */
static int submit_line(const char *dir, const char *line, size_t len, unsigned long lineno, FILE *out)
{
	char id[256];

	if (spool_enqueue(dir, line, len, id, sizeof(id)) < 0) {
		int saved = errno;
		const char *refusal = saved == EINVAL ? spool_enqueue_refusal(line, len) : NULL;
		fprintf(stderr, "droverctl: error: line %lu: cannot enqueue into %s: %s\n", lineno, dir,
		        refusal != NULL ? refusal : strerror(saved));
		return enqueue_exit_code(saved);
	}
	fprintf(out, "%s\n", id);
	return fflush(out) != 0 ? EXIT_FAILURE : 0;
}

/* One job per non-empty line; each is durable in incoming/ before its id is printed. */
static int spool_ops_submit(const struct config *cfg, FILE *in, FILE *out)
{
	char *line = NULL;
	size_t cap = 0;
	ssize_t len;
	int rc = 0;
	unsigned long lineno = 0;

	while (rc == 0 && (len = getline(&line, &cap, in)) >= 0) {
		lineno++;
		while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
			line[--len] = '\0';
		if (!blank(line, (size_t)len))
			rc = submit_line(cfg->spool_dir, line, (size_t)len, lineno, out);
	}
	if (rc == 0 && ferror(in)) {
		fprintf(stderr, "droverctl: error: reading input: %s\n", strerror(errno));
		rc = EXIT_FAILURE;
	}
	free(line);
	return rc;
}

const struct queue_ops spool_queue_ops = {
	.name = "spool",
	.prepare = spool_ops_prepare,
	.reclaim = spool_ops_reclaim,
	.probe = spool_ops_probe,
	.health = spool_ops_health,
	.submit = spool_ops_submit,
	.jobs = spool_jobs_list,
	.cancel_queued = spool_cancel_queued,
	.retry_failed = spool_retry_failed,
};
