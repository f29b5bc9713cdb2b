/*
 * test_durable: the one durable write (shared/durable.c) never follows a
 * symlink nor touches a file that already holds the scratch name, leaves
 * nothing behind when it fails, and replaces the final file whole.
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

#include "shared/durable.h"
#include "shared/util.h"

static char dir[] = "/tmp/drover-durable-test-XXXXXX";
static char tmp_path[PATH_MAX], final_path[PATH_MAX];

static void setup(void)
{
	cr_assert_not_null(mkdtemp(dir));
	snprintf(tmp_path, sizeof(tmp_path), "%s/tmp-file", dir);
	snprintf(final_path, sizeof(final_path), "%s/final", dir);
}

static void teardown(void)
{
	char path[PATH_MAX];
	const char *names[] = { "tmp-file", "final", "victim" };
	for (size_t i = 0; i < ARRAY_LEN(names); i++) {
		snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
		unlink(path);
	}
	rmdir(dir);
}

static void put(const char *path, const char *text)
{
	FILE *fp = fopen(path, "w");
	cr_assert_not_null(fp);
	cr_assert_eq(fputs(text, fp) >= 0, true);
	cr_assert_eq(fclose(fp), 0);
}

static char *get(const char *path)
{
	char *text = read_file(path, 4096, NULL);
	cr_assert_not_null(text, "cannot read %s: %s", path, strerror(errno));
	return text;
}

static const struct durable_how plain = { .mode = 0640 };

TestSuite(durable, .init = setup, .fini = teardown);

Test(durable, writes_the_final_file_and_leaves_no_scratch)
{
	struct stat st;
	mode_t mask = umask(0);
	umask(mask);

	cr_assert_eq(durable_write(tmp_path, final_path, "hello", 5, &plain), 0);
	char *text = get(final_path);
	cr_assert_str_eq(text, "hello");
	free(text);
	cr_assert_eq(stat(final_path, &st), 0);
	cr_assert_eq(st.st_mode & 07777, 0640 & ~mask);
	cr_assert_eq(access(tmp_path, F_OK), -1, "the scratch name is gone");
}

Test(durable, replaces_an_existing_final_file_whole)
{
	put(final_path, "an older and longer text");
	struct durable_how how = { .mode = 0640, .hold_lock = true, .defer_dir_sync = true };
	cr_assert_eq(durable_write(tmp_path, final_path, "new", 3, &how), 0);
	char *text = get(final_path);
	cr_assert_str_eq(text, "new");
	free(text);
}

Test(durable, never_follows_a_symlink_at_the_scratch_name)
{
	char victim[PATH_MAX];
	snprintf(victim, sizeof(victim), "%s/victim", dir);
	put(victim, "precious");
	cr_assert_eq(symlink(victim, tmp_path), 0);

	cr_assert_eq(durable_write(tmp_path, final_path, "evil", 4, &plain), -1);
	cr_assert_eq(errno, EEXIST);
	char *text = get(victim);
	cr_assert_str_eq(text, "precious", "the symlink's target is untouched");
	free(text);
	cr_assert_eq(access(final_path, F_OK), -1);
}

Test(durable, never_truncates_another_writers_scratch_file)
{
	put(tmp_path, "someone else's half-written job");
	cr_assert_eq(durable_write(tmp_path, final_path, "mine", 4, &plain), -1);
	cr_assert_eq(errno, EEXIST);
	char *text = get(tmp_path);
	cr_assert_str_eq(text, "someone else's half-written job");
	free(text);
}

Test(durable, a_failed_rename_leaves_nothing_in_scratch)
{
	char missing[PATH_MAX];
	snprintf(missing, sizeof(missing), "%s/no-such-dir/final", dir);
	cr_assert_eq(durable_write(tmp_path, missing, "data", 4, &plain), -1);
	cr_assert_eq(errno, ENOENT);
	cr_assert_eq(access(tmp_path, F_OK), -1, "the scratch file was removed");
}

Test(durable, a_bare_final_name_syncs_the_current_directory)
{
	char cwd[PATH_MAX];
	cr_assert_not_null(getcwd(cwd, sizeof(cwd)));
	cr_assert_eq(chdir(dir), 0);
	int rc = durable_write("tmp-file", "final", "x", 1, &plain);
	cr_assert_eq(chdir(cwd), 0);
	cr_assert_eq(rc, 0);
	char *text = get(final_path);
	cr_assert_str_eq(text, "x");
	free(text);
}
