/*
 * proctitle: overwrites the argv block so that `ps` tells the supervisor from
 * its workers (after nginx's ngx_setproctitle.c and PostgreSQL's
 * ps_status.c). The kernel shows the argv strings as /proc/PID/cmdline, and
 * goes on into the environment strings that follow them when the last argv
 * byte is no longer a NUL; so a title may use both, once what any caller
 * still needs of them lives on the heap. The environment is overwritten only
 * as far as a long title needs: /proc/PID/environ stays readable otherwise.
 */
#include "shared/proctitle.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#define TITLE_PREFIX "drover: "

static char *title_block; /* argv[0]'s old place; NULL until proctitle_init succeeded */
static size_t argv_size;  /* the argv strings: always cleared by a new title */
static size_t block_size; /* argv and the environment strings that follow them */
static size_t title_used; /* the furthest a title has reached into the block */
/* The moved environment, in one block: the array environ starts as, then a
 * copy of its pointers. Both halves stay reachable from here after an
 * unsetenv() takes a string out of environ or a setenv() replaces the array:
 * LeakSanitizer does not count environ as a root. */
static char **volatile moved_env; /* volatile: kept although nothing reads it */

/* The end of the strings that follow start without a gap. */
static char *contiguous_end(char *start, char **strings, size_t count)
{
	char *end = start;
	for (size_t i = 0; i < count && strings[i] != NULL; i++)
		if (strings[i] == end)
			end = strings[i] + strlen(strings[i]) + 1;
	return end;
}

/* A heap copy of the environment array and its strings; environ points at it. */
static int move_environ(size_t count)
{
	char **block = calloc(2 * (count + 1), sizeof(*block));
	if (block == NULL)
		return -1;
	for (size_t i = 0; i < count; i++) {
		block[i] = block[count + 1 + i] = strdup(environ[i]);
		if (block[i] == NULL) {
			while (i > 0)
				free(block[--i]);
			free(block);
			return -1;
		}
	}
	moved_env = block;
	environ = block; /* the old array lives on the stack: nothing to free */
	return 0;
}

/* Points argv[] (and glibc's program name, which error() prints) at heap copies. */
static int move_argv(int argc, char **argv)
{
	for (int i = 0; i < argc; i++) {
		char *copy = strdup(argv[i]);
		if (copy == NULL)
			return -1; /* the ones moved so far are valid copies */
		argv[i] = copy;
	}
	program_invocation_name = argv[0];
	const char *slash = strrchr(argv[0], '/');
	program_invocation_short_name = (char *)(slash != NULL ? slash + 1 : argv[0]);
	return 0;
}

int proctitle_init(int argc, char **argv)
{
	if (argc < 1 || argv[0] == NULL || title_block != NULL)
		return -1;
	size_t env_count = 0;
	while (environ != NULL && environ[env_count] != NULL)
		env_count++;
	char *start = argv[0];
	char *args_end = contiguous_end(start, argv, (size_t)argc);
	char *end = contiguous_end(args_end, environ, env_count);
	if (move_environ(env_count) < 0 || move_argv(argc, argv) < 0)
		return -1;
	title_block = start;
	argv_size = (size_t)(args_end - start);
	block_size = (size_t)(end - start);
	title_used = argv_size;
	return 0;
}

void proctitle_set(const char *comm, const char *fmt, ...)
{
	/* Best effort: without comm, `ps -e` shows the program's name. */
	if (comm != NULL && prctl(PR_SET_NAME, comm, 0, 0, 0) < 0)
		errno = 0;
	if (title_block == NULL || block_size < 2)
		return;
	char title[256];
	va_list ap;
	va_start(ap, fmt);
	int n = snprintf(title, sizeof(title), "%s", TITLE_PREFIX);
	if (n >= 0 && (size_t)n < sizeof(title))
		vsnprintf(title + n, sizeof(title) - (size_t)n, fmt, ap);
	va_end(ap);
	size_t len = strnlen(title, block_size - 1);
	/* A shorter title must not leave the tail of the arguments or of a longer title. */
	memset(title_block, 0, title_used);
	memcpy(title_block, title, len);
	/* A title that reaches into an environment string ends it: the kernel
	 * shows the block up to the first NUL past the argv strings. */
	size_t used = len;
	while (used < block_size && title_block[used] != '\0')
		title_block[used++] = '\0';
	if (used + 1 > title_used)
		title_used = used + 1 < block_size ? used + 1 : block_size;
}
