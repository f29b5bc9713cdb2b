/*
 * orphans: see orphans.h. /proc/PID/environ is the environment a process was
 * started with, which its descendants inherit unless they replace it; we read
 * it only for our own children, which we may (same uid, our children).
 */
#include "shared/orphans.h"
#include "shared/util.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define ENVIRON_CHUNK 8192
/* An entry longer than this cannot be a token; only its start is kept while reading. */
#define TOKEN_ENTRY_MAX 96
#define CHILDREN_FIRST_CAP 256

/* ---- tokens ---------------------------------------------------------------- */

int attempt_token_format(char *buf, size_t len, const struct attempt_token *token)
{
	int n = snprintf(buf, len, "%s=%lld.%llu.%llu", ATTEMPT_TOKEN_VAR, token->supervisor, token->worker,
	                 token->attempt);
	return n < 0 || (size_t)n >= len ? -1 : 0;
}

static int parse_number(const char **p, char stop, unsigned long long *out)
{
	char *end;
	if (**p < '0' || **p > '9')
		return -1;
	errno = 0;
	*out = strtoull(*p, &end, 10);
	if (errno != 0 || *end != stop)
		return -1;
	*p = end + (stop != '\0');
	return 0;
}

int attempt_token_parse(const char *value, struct attempt_token *token)
{
	unsigned long long supervisor;
	const char *p = value;
	if (parse_number(&p, '.', &supervisor) < 0 || supervisor > INT32_MAX ||
	    parse_number(&p, '.', &token->worker) < 0 || parse_number(&p, '\0', &token->attempt) < 0)
		return -1;
	token->supervisor = (long long)supervisor;
	return 0;
}

/* One NUL-terminated environment entry (possibly cut at TOKEN_ENTRY_MAX): 1 when it is a token. */
static int entry_token(const char *entry, size_t len, struct attempt_token *token)
{
	size_t name_len = strlen(ATTEMPT_TOKEN_VAR);
	if (len <= name_len || len >= TOKEN_ENTRY_MAX || memcmp(entry, ATTEMPT_TOKEN_VAR, name_len) != 0 ||
	    entry[name_len] != '=')
		return 0;
	return attempt_token_parse(entry + name_len + 1, token) == 0;
}

/* Streams the environment: it may be large, the token is one short entry anywhere in it. */
static int scan_environ(int fd, struct attempt_token *token)
{
	char chunk[ENVIRON_CHUNK], entry[TOKEN_ENTRY_MAX + 1];
	size_t entry_len = 0;
	int found = 0;
	for (;;) {
		ssize_t n = read_some(fd, chunk, sizeof(chunk));
		if (n <= 0)
			return found; /* EOF, or the process is gone */
		for (ssize_t i = 0; i < n; i++) {
			if (chunk[i] != '\0') {
				if (entry_len < TOKEN_ENTRY_MAX)
					entry[entry_len] = chunk[i];
				if (entry_len <= TOKEN_ENTRY_MAX)
					entry_len++;
				continue;
			}
			entry[entry_len < TOKEN_ENTRY_MAX ? entry_len : TOKEN_ENTRY_MAX] = '\0';
			if (entry_token(entry, entry_len, token))
				found = 1;
			entry_len = 0;
		}
	}
}

int attempt_token_of(pid_t pid, struct attempt_token *token)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/environ", (int)pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	int found = scan_environ(fd, token);
	close(fd);
	return found;
}

/* ---- children ---------------------------------------------------------------- */

struct children {
	int fd;
	char *text;
	size_t text_cap;
	pid_t *pids;
	size_t cap;
};

struct children *children_open(void)
{
	char path[64];
	struct children *c = calloc(1, sizeof(*c));
	if (c == NULL)
		return NULL;
	snprintf(path, sizeof(path), "/proc/self/task/%d/children", (int)gettid());
	c->fd = open(path, O_RDONLY | O_CLOEXEC);
	if (c->fd < 0) {
		int saved = errno;
		free(c);
		errno = saved;
		return NULL;
	}
	return c;
}

/* The whole file from offset 0 into c->text (NUL-terminated), growing the buffer until it fits. */
static ssize_t children_read(struct children *c)
{
	if (c->text == NULL) {
		c->text = malloc(CHILDREN_FIRST_CAP);
		if (c->text == NULL)
			return -1;
		c->text_cap = CHILDREN_FIRST_CAP;
	}
	for (;;) {
		ssize_t n;
		do
			n = pread(c->fd, c->text, c->text_cap - 1, 0);
		while (n < 0 && errno == EINTR);
		if (n < 0)
			return -1;
		if ((size_t)n < c->text_cap - 1) {
			c->text[n] = '\0';
			return n;
		}
		if (c->text_cap > SIZE_MAX / 2) {
			errno = EOVERFLOW;
			return -1;
		}
		char *grown = realloc(c->text, c->text_cap * 2);
		if (grown == NULL)
			return -1;
		c->text = grown;
		c->text_cap *= 2;
	}
}

static int children_push(struct children *c, size_t count, pid_t pid)
{
	if (count == c->cap) {
		size_t cap = c->cap == 0 ? 64 : c->cap * 2;
		pid_t *grown = realloc(c->pids, cap * sizeof(*grown));
		if (grown == NULL)
			return -1;
		c->pids = grown;
		c->cap = cap;
	}
	c->pids[count] = pid;
	return 0;
}

int children_list(struct children *c, const pid_t **pids, size_t *count)
{
	if (children_read(c) < 0)
		return -1;
	size_t n = 0;
	for (char *p = c->text, *end; *p != '\0'; p = end) {
		long pid = strtol(p, &end, 10);
		if (end == p)
			break;
		if (pid > 0 && children_push(c, n, (pid_t)pid) < 0)
			return -1;
		n += pid > 0;
	}
	*pids = c->pids;
	*count = n;
	return 0;
}

void children_close(struct children *c)
{
	if (c == NULL)
		return;
	close(c->fd);
	free(c->text);
	free(c->pids);
	free(c);
}

/* ---- killing ------------------------------------------------------------------ */

bool orphan_kill(pid_t pid)
{
	/* Its group first: what it started in its own session would otherwise be orphaned in turn. */
	if (getpgid(pid) == pid)
		kill(-pid, SIGKILL);
	return kill(pid, SIGKILL) == 0;
}
