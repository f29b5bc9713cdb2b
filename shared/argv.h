/*
 * argv: splits the [jobs] handler string into an argv vector, the way
 * README (Configuration, [jobs] handler) and drover.ini(5) promise: words
 * separated by spaces/tabs, "double quotes" group (with \" and \\ escapes
 * inside them). No shell, no globbing, no variables.
 */
#ifndef DROVER_ARGV_H
#define DROVER_ARGV_H

#include <stddef.h>

/*
 * Returns a NULL-terminated malloc'd vector (free with argv_free), or NULL
 * with *error set to a static message ("unterminated quote", "empty") on bad
 * input or memory exhaustion.
 */
char **argv_split(const char *line, const char **error);
void argv_free(char **argv);
size_t argv_count(char *const *argv);

#endif
