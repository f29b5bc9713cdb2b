/*
 * Unit tests of argv_split: the one way a handler line becomes an argv
 * (words, "double quotes", \" and \\ escapes inside quotes, no shell).
 */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "shared/argv.h"

/* Splits line and checks the words against the NULL-terminated expected list. */
static void expect_split(const char *line, const char *const *expected)
{
	const char *error = "untouched";
	char **argv = argv_split(line, &error);
	cr_assert_not_null(argv, "split of [%s] failed: %s", line, error);
	size_t n = 0;
	while (expected[n] != NULL)
		n++;
	cr_assert_eq(argv_count(argv), n, "[%s]: %zu words, expected %zu", line, argv_count(argv), n);
	for (size_t i = 0; i < n; i++)
		cr_assert_str_eq(argv[i], expected[i], "[%s] word %zu", line, i);
	cr_assert_null(argv[n]);
	argv_free(argv);
}

static void expect_failure(const char *line, const char *why)
{
	const char *error = NULL;
	char **argv = argv_split(line, &error);
	cr_assert_null(argv, "[%s] should not split", line);
	cr_assert_not_null(error);
	cr_assert_str_eq(error, why);
}

Test(argv, plain_words)
{
	expect_split("/usr/bin/demo --size 256", (const char *[]){ "/usr/bin/demo", "--size", "256", NULL });
	expect_split("one", (const char *[]){ "one", NULL });
}

Test(argv, spaces_and_tabs_separate_and_are_trimmed)
{
	expect_split("  a \t b\t\tc   ", (const char *[]){ "a", "b", "c", NULL });
	expect_split("\ta", (const char *[]){ "a", NULL });
}

Test(argv, double_quotes_group_words)
{
	expect_split("prog \"two words\" x", (const char *[]){ "prog", "two words", "x", NULL });
	expect_split("prog \"tab\tinside\"", (const char *[]){ "prog", "tab\tinside", NULL });
}

Test(argv, quoted_and_unquoted_parts_join)
{
	expect_split("prog --name=\"a b\"c", (const char *[]){ "prog", "--name=a bc", NULL });
	expect_split("\"/opt/my app/run\"", (const char *[]){ "/opt/my app/run", NULL });
}

Test(argv, empty_quotes_are_an_empty_argument)
{
	expect_split("prog \"\" x", (const char *[]){ "prog", "", "x", NULL });
	expect_split("\"\"", (const char *[]){ "", NULL });
}

Test(argv, escapes_inside_quotes)
{
	expect_split("prog \"say \\\"hi\\\"\"", (const char *[]){ "prog", "say \"hi\"", NULL });
	expect_split("prog \"back\\\\slash\"", (const char *[]){ "prog", "back\\slash", NULL });
	/* other backslashes stay literal, like \n */
	expect_split("prog \"a\\nb\"", (const char *[]){ "prog", "a\\nb", NULL });
}

Test(argv, backslash_outside_quotes_is_literal)
{
	expect_split("prog a\\b c\\", (const char *[]){ "prog", "a\\b", "c\\", NULL });
}

Test(argv, no_shell_meaning)
{
	expect_split("prog $HOME *.png 'single' ; rm -rf / | x",
		     (const char *[]){ "prog", "$HOME", "*.png", "'single'", ";", "rm", "-rf", "/", "|", "x", NULL });
}

Test(argv, unterminated_quote_fails)
{
	expect_failure("prog \"open", "unterminated quote");
	expect_failure("\"", "unterminated quote");
	expect_failure("prog \"escaped at end\\\"", "unterminated quote");
}

Test(argv, empty_line_fails)
{
	expect_failure("", "empty");
	expect_failure(" \t  ", "empty");
}

Test(argv, error_pointer_is_optional)
{
	cr_assert_null(argv_split("\"", NULL));
	char **argv = argv_split("a b", NULL);
	cr_assert_eq(argv_count(argv), 2);
	argv_free(argv);
}

Test(argv, many_tiny_words_fit)
{
	/* the vector is sized from the line length: the densest inputs must fit (ASan checks) */
	char line[401];
	for (int i = 0; i < 200; i++) {
		line[2 * i] = 'x';
		line[2 * i + 1] = ' ';
	}
	line[400] = '\0';
	char **argv = argv_split(line, NULL);
	cr_assert_eq(argv_count(argv), 200);
	argv_free(argv);

	char empties[301];
	for (int i = 0; i < 100; i++)
		memcpy(empties + 3 * i, "\"\" ", 3);
	empties[299] = '\0'; /* drop the last separator */
	argv = argv_split(empties, NULL);
	cr_assert_eq(argv_count(argv), 100);
	for (size_t i = 0; i < 100; i++)
		cr_assert_str_eq(argv[i], "");
	argv_free(argv);
}

Test(argv, count_and_free_accept_null)
{
	cr_assert_eq(argv_count(NULL), 0);
	argv_free(NULL);
}
