/*
 * util: see util.h. Everything here is async-signal-unaware plain code; the
 * only state is errno.
 */
#include "shared/util.h"

#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int write_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;
	while (len > 0) {
		ssize_t n = write(fd, p, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

ssize_t read_full(int fd, void *buf, size_t len)
{
	char *p = buf;
	size_t got = 0;
	while (got < len) {
		ssize_t n = read(fd, p + got, len - got);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		if (n == 0)
			break;
		got += (size_t)n;
	}
	return (ssize_t)got;
}

ssize_t read_some(int fd, void *buf, size_t len)
{
	ssize_t n;
	do
		n = read(fd, buf, len);
	while (n < 0 && errno == EINTR);
	return n;
}

ssize_t write_some(int fd, const void *buf, size_t len)
{
	ssize_t n;
	do
		n = write(fd, buf, len);
	while (n < 0 && errno == EINTR);
	return n;
}

int fd_set_nonblock(int fd)
{
	int flags = fcntl(fd, F_GETFL);
	if (flags < 0)
		return -1;
	return fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

int fd_set_cloexec(int fd)
{
	int flags = fcntl(fd, F_GETFD);
	if (flags < 0)
		return -1;
	return fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
}

int join_path(char *buf, size_t len, const char *dir, const char *sub, const char *name)
{
	int n = name == NULL ? snprintf(buf, len, "%s/%s", dir, sub) : snprintf(buf, len, "%s/%s/%s", dir, sub, name);
	if (n < 0 || (size_t)n >= len) {
		errno = ENAMETOOLONG;
		return -1;
	}
	return 0;
}

int mkdir_p(const char *path, mode_t mode)
{
	char buf[PATH_MAX];
	size_t len = strlen(path);
	if (len == 0 || len >= sizeof(buf)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	memcpy(buf, path, len + 1);
	for (char *p = buf + 1; *p != '\0'; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(buf, mode) < 0 && errno != EEXIST)
			return -1;
		*p = '/';
	}
	if (mkdir(buf, mode) < 0 && errno != EEXIST)
		return -1;
	return 0;
}

int open_bounded(const char *path, size_t max, struct stat *st, const char **refusal)
{
	struct stat own;
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);

	*refusal = NULL;
	if (st == NULL)
		st = &own;
	if (fd < 0)
		return -1;
	int flags = -1;
	if (fstat(fd, st) < 0)
		goto fail;
	if (!S_ISREG(st->st_mode) && !(S_ISCHR(st->st_mode) && st->st_rdev == makedev(1, 3))) {
		*refusal = "not a regular file"; /* /dev/null reads as an empty file */
		errno = EINVAL;
		goto fail;
	}
	if ((uintmax_t)st->st_size > max) {
		*refusal = "too large";
		errno = EFBIG;
		goto fail;
	}
	flags = fcntl(fd, F_GETFL);
	if (flags < 0 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) < 0)
		goto fail;
	return fd;
fail:;
	int saved = errno;
	close(fd);
	errno = saved;
	return -1;
}

/*
 * Sized from fstat, so a file that does not grow meanwhile is read without a
 * realloc (no copy of a secret left behind in freed memory); one byte past
 * max is asked for, to see a file that grew past it.
 */
static char *read_bounded_fd(int fd, off_t size, size_t max, size_t *len_out)
{
	size_t cap = (size_t)size < max ? (size_t)size + 1 : max + 1;
	size_t len = 0;
	char *buf = malloc(cap + 1);

	while (buf != NULL) {
		ssize_t n = read_full(fd, buf + len, cap - len);
		if (n < 0) {
			free(buf);
			return NULL;
		}
		len += (size_t)n;
		if (len > max) {
			free(buf);
			errno = EFBIG;
			return NULL;
		}
		if (len < cap)
			break;
		cap = cap * 2 > max + 1 ? max + 1 : cap * 2;
		char *grown = realloc(buf, cap + 1);
		if (grown == NULL)
			free(buf);
		buf = grown;
	}
	if (buf != NULL) {
		buf[len] = '\0';
		*len_out = len;
	}
	return buf;
}

char *read_file(const char *path, size_t max, size_t *len_out)
{
	struct stat st;
	const char *refusal;
	size_t len = 0;
	int fd = open_bounded(path, max, &st, &refusal);

	if (fd < 0)
		return NULL;
	char *buf = read_bounded_fd(fd, st.st_size, max, &len);
	int saved = errno;
	close(fd);
	errno = saved;
	if (buf != NULL && len_out != NULL)
		*len_out = len;
	return buf;
}

char *read_secret_file(const char *path, char *err, size_t errlen)
{
	size_t len = 0;
	char *secret = read_file(path, SECRET_FILE_MAX, &len);

	if (secret == NULL) {
		snprintf(err, errlen, "cannot read \"%s\": %s", path, strerror(errno));
		return NULL;
	}
	if (len > 0 && secret[len - 1] == '\n') {
		secret[--len] = '\0';
		if (len > 0 && secret[len - 1] == '\r')
			secret[--len] = '\0';
	}
	if (len == 0 || strlen(secret) != len) {
		snprintf(err, errlen, "\"%s\" %s", path, len == 0 ? "is empty" : "contains a NUL byte");
		explicit_bzero(secret, len);
		free(secret);
		errno = EBADMSG;
		return NULL;
	}
	return secret;
}

void secret_free(char *secret)
{
	if (secret == NULL)
		return;
	explicit_bzero(secret, strlen(secret));
	free(secret);
}

long long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

long long wall_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

pid_t waitpid_retry(pid_t pid, int *status, int options)
{
	pid_t rc;
	do
		rc = waitpid(pid, status, options);
	while (rc < 0 && errno == EINTR);
	return rc;
}

void describe_wait_status(int status, char *buf, size_t len)
{
	if (WIFEXITED(status))
		snprintf(buf, len, "exit %d", WEXITSTATUS(status));
	else if (WIFSIGNALED(status))
		snprintf(buf, len, "signal %d%s", WTERMSIG(status), WCOREDUMP(status) ? " (core)" : "");
	else
		snprintf(buf, len, "status 0x%x", (unsigned)status);
}

char *str_printf(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	char *out = NULL;
	int rc = vasprintf(&out, fmt, ap);
	va_end(ap);
	return rc < 0 ? NULL : out;
}
