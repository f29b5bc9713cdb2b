/*
 * test_util: the one bounded file reader never blocks on a FIFO nor reads
 * /dev/zero without end, and the one secret-file reader keeps one rule (one
 * trailing line end stripped, empty or NUL refused).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "shared/util.h"

static char dir[] = "/tmp/drover-util-test-XXXXXX";
static char path[PATH_MAX];

static void setup(void)
{
	cr_assert_not_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/file", dir);
}

static void teardown(void)
{
	unlink(path);
	rmdir(dir);
}

static void put(const char *text, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	cr_assert_geq(fd, 0);
	cr_assert_eq(write_all(fd, text, len), 0);
	cr_assert_eq(close(fd), 0);
}

TestSuite(read_file, .init = setup, .fini = teardown, .timeout = 20);

Test(read_file, reads_a_whole_file)
{
	size_t len = 0;
	put("abc\n", 4);
	char *text = read_file(path, 16, &len);
	cr_assert_not_null(text);
	cr_assert_eq(len, 4);
	cr_assert_str_eq(text, "abc\n");
	free(text);
}

Test(read_file, refuses_a_file_larger_than_max)
{
	put("0123456789", 10);
	cr_assert_null(read_file(path, 9, NULL));
	cr_assert_eq(errno, EFBIG);
	char *text = read_file(path, 10, NULL);
	cr_assert_str_eq(text, "0123456789");
	free(text);
}

Test(read_file, refuses_a_fifo_without_blocking)
{
	cr_assert_eq(mkfifo(path, 0600), 0);
	const char *refusal = NULL;
	cr_assert_eq(open_bounded(path, 16, NULL, &refusal), -1);
	cr_assert_str_eq(refusal, "not a regular file");
	cr_assert_null(read_file(path, 16, NULL)); /* nobody writes to it: the old reader hung here */
	cr_assert_eq(errno, EINVAL);
}

Test(read_file, refuses_dev_zero_and_reads_dev_null_as_empty)
{
	size_t len = 1;
	cr_assert_null(read_file("/dev/zero", 16, NULL));
	cr_assert_eq(errno, EINVAL);
	char *text = read_file("/dev/null", 16, &len);
	cr_assert_not_null(text);
	cr_assert_eq(len, 0);
	free(text);
}

TestSuite(secret_file, .init = setup, .fini = teardown, .timeout = 20);

static char *secret_of(const char *text, size_t len, char *err, size_t errlen)
{
	put(text, len);
	return read_secret_file(path, err, errlen);
}

Test(secret_file, strips_exactly_one_line_end)
{
	char err[256];
	const char *cases[][2] = {
		{ "pw", "pw" }, { "pw\n", "pw" }, { "pw\r\n", "pw" }, { "pw\n\n", "pw\n" }, { "a\nb\n", "a\nb" },
		{ " pw \n", " pw " },
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		char *secret = secret_of(cases[i][0], strlen(cases[i][0]), err, sizeof(err));
		cr_assert_not_null(secret, "%s", err);
		cr_expect_str_eq(secret, cases[i][1], "case %zu", i);
		secret_free(secret);
	}
}

Test(secret_file, refuses_empty_and_nul)
{
	char err[256];
	const char *empties[] = { "", "\n", "\r\n" };
	for (size_t i = 0; i < ARRAY_LEN(empties); i++) {
		cr_assert_null(secret_of(empties[i], strlen(empties[i]), err, sizeof(err)));
		cr_expect_eq(errno, EBADMSG);
		cr_expect(strstr(err, "is empty") != NULL, "err: %s", err);
	}
	cr_assert_null(secret_of("p\0w\n", 4, err, sizeof(err)));
	cr_expect_eq(errno, EBADMSG);
	cr_expect(strstr(err, "contains a NUL byte") != NULL, "err: %s", err);
}

Test(secret_file, names_the_file_it_cannot_read)
{
	char err[PATH_MAX + 64];
	cr_assert_null(read_secret_file(path, err, sizeof(err)));
	cr_expect_eq(errno, ENOENT);
	cr_expect(strstr(err, path) != NULL && strstr(err, strerror(ENOENT)) != NULL, "err: %s", err);
	cr_assert_eq(mkfifo(path, 0600), 0);
	cr_assert_null(read_secret_file(path, err, sizeof(err)), "a FIFO is refused at once");
}

Test(join_path, joins_two_or_three_parts_and_refuses_what_does_not_fit)
{
	char buf[16];
	cr_assert_eq(join_path(buf, sizeof(buf), "/d", "tmp", NULL), 0);
	cr_assert_str_eq(buf, "/d/tmp");
	cr_assert_eq(join_path(buf, sizeof(buf), "/d", "tmp", "x.json"), 0);
	cr_assert_str_eq(buf, "/d/tmp/x.json");
	cr_assert_eq(join_path(buf, sizeof(buf), "/d", "tmp", "x.json.long"), -1);
	cr_assert_eq(errno, ENAMETOOLONG);
	cr_assert_eq(join_path(buf, 7, "/d", "tmp", NULL), 0, "exactly fits with its NUL");
	cr_assert_eq(join_path(buf, 6, "/d", "tmp", NULL), -1);
}
