/*
 * argv: splits the [jobs] handler string into an argv vector. Words are
 * separated by spaces and tabs; "double quotes" group words (adjacent quoted
 * and unquoted parts join into one word, "" is an empty argument); inside
 * quotes \" and \\ are escapes and any other backslash is literal. Outside
 * quotes a backslash is an ordinary character. No shell, no globbing, no
 * variables: the handler gets exactly these words.
 */
#include "shared/argv.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

static bool is_separator(char c)
{
	return c == ' ' || c == '\t';
}

/*
 * Copies the word starting at *pos into out (which has room for the whole
 * line) and advances *pos past it. Returns false on an unterminated quote.
 */
static bool take_word(const char **pos, char *out)
{
	const char *p = *pos;
	bool quoted = false;

	while (*p != '\0' && (quoted || !is_separator(*p))) {
		if (*p == '"') {
			quoted = !quoted;
			p++;
		} else if (quoted && *p == '\\' && (p[1] == '"' || p[1] == '\\')) {
			*out++ = p[1];
			p += 2;
		} else {
			*out++ = *p++;
		}
	}
	*out = '\0';
	*pos = p;
	return !quoted;
}

static const char *skip_separators(const char *p)
{
	while (is_separator(*p))
		p++;
	return p;
}

char **argv_split(const char *line, const char **error)
{
	const char *ignored = NULL;
	const char **err = error != NULL ? error : &ignored;
	size_t len = strlen(line);
	/* n words need at least n-1 separators, so len/2 + 2 slots always suffice. */
	size_t slots = len / 2 + 2;
	char **argv = calloc(slots, sizeof(*argv));
	char *word = malloc(len + 1);
	size_t count = 0;

	if (argv == NULL || word == NULL) {
		free(argv);
		free(word);
		*err = "out of memory";
		return NULL;
	}
	const char *p = skip_separators(line);
	while (*p != '\0') {
		if (!take_word(&p, word)) {
			*err = "unterminated quote";
			goto fail;
		}
		argv[count] = strdup(word);
		if (argv[count] == NULL) {
			*err = "out of memory";
			goto fail;
		}
		count++;
		p = skip_separators(p);
	}
	free(word);
	if (count == 0) {
		*err = "empty";
		free(argv);
		return NULL;
	}
	return argv;
fail:
	free(word);
	argv_free(argv);
	return NULL;
}

void argv_free(char **argv)
{
	if (argv == NULL)
		return;
	for (char **p = argv; *p != NULL; p++)
		free(*p);
	free(argv);
}

size_t argv_count(char *const *argv)
{
	size_t n = 0;
	while (argv != NULL && argv[n] != NULL)
		n++;
	return n;
}
