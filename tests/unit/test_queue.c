/*
 * test_queue: the queue layer's backend table (queue/source.h): the choice
 * from the configuration, what each backend offers, the state names of typed
 * status events, and the spool's operations as the supervisor and droverctl
 * call them (prepare, reclaim, probe, submit). No broker is needed.
 */
#include <criterion/criterion.h>

#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "queue/source.h"
#include "queue/spool.h"

static char dir[64];
static struct config cfg;

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	return remove(path);
}

static void setup(void)
{
	memset(&cfg, 0, sizeof(cfg));
	snprintf(dir, sizeof(dir), "/tmp/drover-queue-test-XXXXXX");
	cr_assert_not_null(mkdtemp(dir));
	cfg.backend = BACKEND_SPOOL;
	cfg.spool_dir = dir;
}

static void teardown(void)
{
	nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

TestSuite(queue, .init = setup, .fini = teardown, .timeout = 30);

static size_t entries(const char *sub)
{
	char path[256];
	size_t n = 0;
	snprintf(path, sizeof(path), "%s/%s", dir, sub);
	DIR *d = opendir(path);
	cr_assert_not_null(d, "%s", path);
	for (struct dirent *e = readdir(d); e != NULL; e = readdir(d))
		n += e->d_name[0] != '.';
	closedir(d);
	return n;
}

Test(queue, the_backend_is_chosen_from_the_configuration)
{
	const struct queue_ops *spool = queue_ops_for(&cfg);
	cr_assert_str_eq(spool->name, "spool");
	cr_expect(!spool->has_partitions);
	cr_expect(spool->prepare != NULL && spool->reclaim != NULL && spool->probe != NULL);
	cr_expect(spool->topics_create == NULL && spool->topics_list == NULL, "a spool has no topics");

	cfg.backend = BACKEND_KAFKA;
	const struct queue_ops *kafka = queue_ops_for(&cfg);
	cr_assert_str_eq(kafka->name, "kafka");
	cr_expect(kafka->has_partitions);
	cr_expect(kafka->check != NULL, "drover -t checks the librdkafka properties");
	cr_expect(kafka->reclaim == NULL && kafka->probe == NULL, "the supervisor never talks to the brokers");
	cr_expect(kafka->topics_create != NULL && kafka->topics_list != NULL);

	cr_expect_eq(queue_ops_named("kafka"), kafka);
	cr_expect_eq(queue_ops_named("spool"), spool);
	cr_expect_null(queue_ops_named("redis"));
	cr_expect_str_eq(source_for(&cfg)->name, "kafka");
}

Test(queue, status_states_have_the_event_names)
{
	cr_expect_str_eq(job_state_name(JOB_STARTED), "started");
	cr_expect_str_eq(job_state_name(JOB_PROGRESS), "progress");
	cr_expect_str_eq(job_state_name(JOB_RETRYING), "retrying");
	cr_expect_str_eq(job_state_name(JOB_COMPLETED), "completed");
	cr_expect_str_eq(job_state_name(JOB_FAILED), "failed");
}

Test(queue, spool_prepare_names_the_directory_and_probe_writes)
{
	const struct queue_ops *queue = queue_ops_for(&cfg);
	char err[512] = "", why[512] = "";
	cr_assert_eq(queue->prepare(&cfg, err, sizeof(err)), 0, "%s", err);
	cr_expect_eq(queue->probe(&cfg, why, sizeof(why)), 0, "%s", why);
	cr_expect_eq(entries("tmp"), 0, "the probe leaves nothing behind");
	cr_expect_eq(queue->reclaim(&cfg), 0);

	char file[128];
	snprintf(file, sizeof(file), "%s/a-file", dir);
	cr_assert_eq(close(creat(file, 0644)), 0);
	struct config at_file = cfg;
	at_file.spool_dir = file;
	cr_expect_eq(queue->prepare(&at_file, err, sizeof(err)), -1);
	cr_expect(strncmp(err, "spool ", 6) == 0 && strstr(err, file) != NULL, "error: %s", err);
	cr_expect_eq(queue->probe(&at_file, why, sizeof(why)), -1);
	cr_expect(strstr(why, "not writable") != NULL, "why: %s", why);
}

Test(queue, spool_submit_enqueues_each_line_and_stops_at_a_refused_one)
{
	const struct queue_ops *queue = queue_ops_for(&cfg);
	char err[512] = "";
	cr_assert_eq(queue->prepare(&cfg, err, sizeof(err)), 0, "%s", err);
	static char input[] = "{\"id\":\"a\"}\n\n  \n{\"id\":\"b\"}\r\n[1,2]\n{\"id\":\"c\"}\n";
	FILE *in = fmemopen(input, strlen(input), "r");
	char *printed = NULL;
	size_t printed_len = 0;
	FILE *out = open_memstream(&printed, &printed_len);
	cr_assert(in != NULL && out != NULL);
	int rc = queue->submit(&cfg, in, out);
	fclose(in);
	fclose(out);
	cr_expect_eq(rc, 1, "a refused line fails the command");
	cr_expect_str_eq(printed, "a\nb\n", "each id once its job is durable, none after the refusal");
	cr_expect_eq(entries("incoming"), 2);
	free(printed);
}
