/*
 * Unit tests of the spool queue (queue/spool.c) on real temporary
 * directories: durable enqueue, oldest-first claims, exactly-once claiming
 * among competing processes, reclaim of dead claims (and only dead ones),
 * attempt counts in names, outcome files, release, invalid payloads, outcome
 * name sanitizing, inotify wake-ups and faults, finished job files reused
 * as outcome files (spares).
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <regex.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "shared/config.h"
#include "queue/source.h"
#include "queue/spool.h"
#include "shared/util.h"

static char spool_dir[64];
static struct config test_cfg;

/* What the callbacks saw. */
static int ready_calls;
static int settled_calls;
static bool settled_durable;
static char settled_id[256];

static void on_ready(void *arg)
{
	ready_calls++;
}

static void on_settled(struct job *job, bool durable, void *arg)
{
	settled_calls++;
	settled_durable = durable;
	snprintf(settled_id, sizeof(settled_id), "%s", job->id);
}

static const struct source_callbacks callbacks = { .ready = on_ready, .settled = on_settled, .arg = NULL };

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	return remove(path);
}

static void setup(void)
{
	char err[256];

	snprintf(spool_dir, sizeof(spool_dir), "/tmp/drover-spool-test-XXXXXX");
	cr_assert_not_null(mkdtemp(spool_dir));
	cr_assert_eq(spool_prepare(spool_dir, err, sizeof(err)), 0, "%s", err);
	memset(&test_cfg, 0, sizeof(test_cfg));
	test_cfg.spool_dir = spool_dir;
	ready_calls = settled_calls = 0;
	settled_durable = false;
	settled_id[0] = '\0';
}

static void teardown(void)
{
	if (spool_dir[0] != '\0')
		nftw(spool_dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

TestSuite(spool, .init = setup, .fini = teardown, .timeout = 60);

/* ---- helpers ------------------------------------------------------------- */

static void sub_path(char *buf, size_t len, const char *sub, const char *name)
{
	if (name != NULL)
		snprintf(buf, len, "%s/%s/%s", spool_dir, sub, name);
	else
		snprintf(buf, len, "%s/%s", spool_dir, sub);
}

/* Number of entries (hidden ones included) in a spool subdirectory; the first name in first. */
static int count_entries(const char *sub, char *first, size_t first_len)
{
	char path[512];
	DIR *d;
	struct dirent *de;
	int n = 0;

	sub_path(path, sizeof(path), sub, NULL);
	d = opendir(path);
	cr_assert_not_null(d, "opendir %s", path);
	while ((de = readdir(d)) != NULL) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		if (n == 0 && first != NULL)
			snprintf(first, first_len, "%s", de->d_name);
		n++;
	}
	closedir(d);
	return n;
}

static void enqueue(const char *payload, char *id, size_t id_len)
{
	char local[2048];

	if (id == NULL) {
		id = local;
		id_len = sizeof(local);
	}
	cr_assert_eq(spool_enqueue(spool_dir, payload, strlen(payload), id, id_len), 0, "enqueue: %s",
	             strerror(errno));
}

/* A producer that does not use droverctl: a file written straight under its own name. */
static void put_incoming(const char *name, const char *payload, time_t mtime)
{
	char path[512];
	int fd;

	sub_path(path, sizeof(path), "incoming", name);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	cr_assert_geq(fd, 0);
	cr_assert_eq(write_all(fd, payload, strlen(payload)), 0);
	if (mtime != 0) {
		struct timespec times[2] = { { mtime, 0 }, { mtime, 0 } };
		cr_assert_eq(futimens(fd, times), 0);
	}
	close(fd);
}

static char *slurp(const char *sub, const char *name)
{
	char path[512];
	size_t len;

	sub_path(path, sizeof(path), sub, name);
	return read_file(path, 1 << 20, &len);
}

static bool exists(const char *sub, const char *name)
{
	char path[512];

	sub_path(path, sizeof(path), sub, name);
	return access(path, F_OK) == 0;
}

/* open() as a worker calls it; board may be NULL. */
static struct source *spool_open_at(struct ev_loop *loop, int slot, const struct source_callbacks *cb,
                                    struct scoreboard_slot *board, char *err, size_t errlen)
{
	struct source_params params = { .cfg = &test_cfg, .loop = loop, .slot = slot, .board = board, .cb = cb };
	return spool_source_ops.open(&params, err, errlen);
}

static struct source *open_source(struct ev_loop *loop)
{
	char err[256] = "";
	struct source *src = spool_open_at(loop, 1, &callbacks, NULL, err, sizeof(err));
	cr_assert_not_null(src, "open: %s", err);
	return src;
}

static struct job *take_one(struct source *src)
{
	struct job *job = NULL;
	cr_assert_eq(spool_source_ops.take(src, &job), SOURCE_TAKEN, "expected a job");
	cr_assert_not_null(job);
	return job;
}

static void expect_none(struct source *src)
{
	struct job *job = NULL;
	cr_assert_eq(spool_source_ops.take(src, &job), SOURCE_EMPTY, "expected no job, got %s", job ? job->id : "?");
}

/* Runs loop iterations until every outcome handed to finish() is committed (the group commit runs before the loop sleeps). */
static void commit(struct ev_loop *loop, struct source *src)
{
	for (int i = 0; i < 10 && spool_source_ops.pending(src) > 0; i++)
		ev_run(loop, EVRUN_NOWAIT);
	cr_assert_eq(spool_source_ops.pending(src), 0, "outcomes still uncommitted after 10 loop iterations");
}

static void finish_ok(struct ev_loop *loop, struct source *src, struct job *job)
{
	static const char doc[] = "{\"done\":true}";
	spool_source_ops.finish(src, job, true, doc, strlen(doc));
	commit(loop, src);
}

/* Runs the loop until *flag becomes true or the deadline passes; false on timeout. */
struct deadline {
	ev_timer timer;
	bool expired;
};

static void deadline_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	((struct deadline *)w)->expired = true;
	ev_break(loop, EVBREAK_ALL);
}

static bool run_until(struct ev_loop *loop, const bool *flag, double seconds)
{
	struct deadline d = { .expired = false };

	ev_timer_init(&d.timer, deadline_cb, seconds, 0.);
	ev_timer_start(loop, &d.timer);
	while (!*flag && !d.expired)
		ev_run(loop, EVRUN_ONCE);
	ev_timer_stop(loop, &d.timer);
	return *flag;
}

/* ---- directories and enqueue ----------------------------------------------- */

Test(spool, prepare_creates_and_health_checks)
{
	char err[256], path[512];

	sub_path(path, sizeof(path), "fresh/deeper", NULL);
	cr_assert_neq(spool_health(path, err, sizeof(err)), 0, "health of a missing spool must fail");
	cr_assert_eq(spool_prepare(path, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(spool_health(path, err, sizeof(err)), 0, "%s", err);
	static const char *subs[] = { "tmp", "incoming", "processing", "complete", "failed" };
	for (size_t i = 0; i < 5; i++) {
		char sub[600];
		struct stat st;
		snprintf(sub, sizeof(sub), "%s/%s", path, subs[i]);
		cr_assert_eq(stat(sub, &st), 0, "%s missing", sub);
		cr_assert(S_ISDIR(st.st_mode));
	}
	/* A subdirectory replaced by a file is reported by name. */
	char failed[600];
	snprintf(failed, sizeof(failed), "%s/failed", path);
	cr_assert_eq(rmdir(failed), 0);
	cr_assert_eq(close(open(failed, O_WRONLY | O_CREAT, 0644)), 0);
	cr_assert_neq(spool_health(path, err, sizeof(err)), 0);
	cr_assert_not_null(strstr(err, "failed"), "error names the directory: %s", err);
	cr_assert_neq(spool_prepare(path, err, sizeof(err)), 0);
}

Test(spool, prepare_sweeps_only_stale_files_from_tmp)
{
	char err[256], stale[600], fresh[600];

	cr_assert_eq(spool_prepare(spool_dir, err, sizeof(err)), 0, "%s", err);
	snprintf(stale, sizeof(stale), "%s/tmp/crashed.outcome", spool_dir);
	snprintf(fresh, sizeof(fresh), "%s/tmp/being-written.json", spool_dir);
	cr_assert_eq(close(open(stale, O_WRONLY | O_CREAT, 0644)), 0);
	cr_assert_eq(close(open(fresh, O_WRONLY | O_CREAT, 0644)), 0);
	struct timespec two_hours_ago[2] = { { time(NULL) - 7200, 0 }, { time(NULL) - 7200, 0 } };
	cr_assert_eq(utimensat(AT_FDCWD, stale, two_hours_ago, 0), 0);
	cr_assert_eq(spool_prepare(spool_dir, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(access(stale, F_OK), -1, "a stale tmp/ file must be swept");
	cr_assert_eq(access(fresh, F_OK), 0, "a recent tmp/ file may be another process's write in progress");
}

Test(spool, enqueue_is_a_rename_into_incoming_with_an_id)
{
	char id[256], name[256], expected[300];
	regex_t re;
	static const char payload[] = "{\"prompt\":\"a cat\"}";

	enqueue(payload, id, sizeof(id));
	cr_assert_eq(count_entries("tmp", NULL, 0), 0, "nothing left in tmp/");
	cr_assert_eq(count_entries("incoming", name, sizeof(name)), 1);
	cr_assert_eq(regcomp(&re, "^[0-9]{13}-[0-9]+-[0-9]+\\.json$", REG_EXTENDED | REG_NOSUB), 0);
	cr_assert_eq(regexec(&re, name, 0, NULL, 0), 0, "name %s", name);
	regfree(&re);
	/* No "id" field: the file name without .json. */
	snprintf(expected, sizeof(expected), "%.*s", (int)(strlen(name) - 5), name);
	cr_assert_str_eq(id, expected);
	char *content = slurp("incoming", name);
	cr_assert_str_eq(content, payload);
	free(content);

	enqueue("{\"id\":\"job-42\",\"prompt\":\"x\"}", id, sizeof(id));
	cr_assert_str_eq(id, "job-42");
	cr_assert_eq(count_entries("incoming", NULL, 0), 2);
}

Test(spool, enqueue_names_are_unique_and_ordered)
{
	char a[64], b[64];

	enqueue("{}", a, sizeof(a));
	enqueue("{}", b, sizeof(b));
	cr_assert_str_neq(a, b);
	cr_assert_lt(strverscmp(a, b), 0, "%s before %s", a, b);
}

Test(spool, enqueue_refuses_an_id_that_does_not_fit_before_writing)
{
	char small[4];
	static const char payload[] = "{\"id\":\"much-too-long\"}";

	cr_assert_eq(spool_enqueue(spool_dir, payload, strlen(payload), small, sizeof(small)), -1);
	cr_assert_eq(count_entries("incoming", NULL, 0), 0, "a job whose id was not returned must not be queued");
	cr_assert_eq(count_entries("tmp", NULL, 0), 0);
}

Test(spool, enqueue_into_a_missing_spool_fails)
{
	char id[64], path[512];

	sub_path(path, sizeof(path), "nope", NULL);
	cr_assert_eq(spool_enqueue(path, "{}", 2, id, sizeof(id)), -1);
}

/* ---- taking ------------------------------------------------------------------ */

Test(spool, takes_oldest_first_by_mtime_then_name)
{
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	time_t now = time(NULL);

	put_incoming("c.json", "{\"id\":\"newest\"}", now - 10);
	put_incoming("a.json", "{\"id\":\"middle\"}", now - 100);
	put_incoming("z.json", "{\"id\":\"oldest\"}", now - 1000);
	/* Same mtime: names in numeric order (job-9 before job-10). */
	put_incoming("job-10.json", "{\"id\":\"tie-2\"}", now - 5);
	put_incoming("job-9.json", "{\"id\":\"tie-1\"}", now - 5);
	put_incoming(".hidden.json", "{\"id\":\"hidden\"}", now - 5000);

	struct source *src = open_source(loop);
	static const char *order[] = { "oldest", "middle", "newest", "tie-1", "tie-2" };
	for (size_t i = 0; i < 5; i++) {
		struct job *job = take_one(src);
		cr_assert_str_eq(job->id, order[i]);
		cr_assert_eq(job->attempts_done, 0);
		cr_assert_not(job->invalid);
		finish_ok(loop, src, job);
	}
	expect_none(src);
	cr_assert(exists("incoming", ".hidden.json"), "hidden files are left alone");
	spool_source_ops.close(src);
	ev_loop_destroy(loop);
}

Test(spool, claim_moves_the_file_and_reads_the_payload)
{
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	char name[256];
	static const char payload[] = "{\"id\":\"p1\",\"prompt\":\"a boat\"}";

	enqueue(payload, NULL, 0);
	count_entries("incoming", name, sizeof(name));
	struct source *src = open_source(loop);
	struct job *job = take_one(src);
	cr_assert_str_eq(job->id, "p1");
	cr_assert_eq(job->payload_len, strlen(payload));
	cr_assert_str_eq(job->payload, payload);
	cr_assert_not(exists("incoming", name));
	/* Claimed straight under the name of the attempt about to start: one rename. */
	char claimed[300];
	snprintf(claimed, sizeof(claimed), "%s;a=1", name);
	cr_assert(exists("processing", claimed), "processing/%s", claimed);
	expect_none(src);
	finish_ok(loop, src, job);
	spool_source_ops.close(src);
	ev_loop_destroy(loop);
}

Test(spool, pause_stops_taking_and_resume_wakes)
{
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	struct source *src = open_source(loop);

	enqueue("{\"id\":\"paused\"}", NULL, 0);
	spool_source_ops.pause(src);
	expect_none(src);
	ready_calls = 0;
	spool_source_ops.resume(src);
	/* cb.ready comes from the loop, never from inside resume(). */
	cr_assert_eq(ready_calls, 0);
	bool woke = false;
	for (int i = 0; i < 100 && !woke; i++) {
		ev_run(loop, EVRUN_NOWAIT);
		woke = ready_calls > 0;
	}
	cr_assert(woke, "resume must be followed by cb.ready");
	struct job *job = take_one(src);
	cr_assert_str_eq(job->id, "paused");
	cr_assert_eq(spool_source_ops.pending(src), 0);
	cr_assert_str_eq(spool_source_ops.fault(src), "");
	finish_ok(loop, src, job);
	spool_source_ops.close(src);
	ev_loop_destroy(loop);
}

/* ---- invalid payloads ------------------------------------------------------------ */

Test(spool, payloads_that_are_not_objects_are_invalid)
{
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	time_t now = time(NULL);

	put_incoming("1-text.json", "not json at all", now - 30);
	put_incoming("2-array.json", "[1,2,3]", now - 20);
	put_incoming("3-empty", "", now - 10);
	put_incoming("4-object.json", "{\"id\":7}", now - 5);

	struct source *src = open_source(loop);
	static const char *ids[] = { "1-text", "2-array", "3-empty", "4-object" };
	for (size_t i = 0; i < 4; i++) {
		struct job *job = take_one(src);
		cr_assert_str_eq(job->id, ids[i], "a non-string id falls back to the file name");
		cr_assert_eq(job->invalid, i < 3, "%s invalid=%d", job->id, job->invalid);
		spool_source_ops.finish(src, job, false, "{}", 2);
	}
	commit(loop, src);
	cr_assert(exists("failed", "1-text.json"));
	cr_assert(exists("failed", "3-empty.json"));
	spool_source_ops.close(src);
	ev_loop_destroy(loop);
}

Test(spool, an_oversized_payload_is_invalid_and_bounded)
{
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	char path[512];
	size_t size = 17u * 1024 * 1024;
	char *big = malloc(size);

	cr_assert_not_null(big);
	memset(big, ' ', size);
	big[0] = '{';
	big[size - 1] = '}';
	sub_path(path, sizeof(path), "incoming", "big.json");
	int fd = open(path, O_WRONLY | O_CREAT, 0644);
	cr_assert_geq(fd, 0);
	cr_assert_eq(write_all(fd, big, size), 0);
	close(fd);
	free(big);

	struct source *src = open_source(loop);
	struct job *job = take_one(src);
	cr_assert(job->invalid);
	cr_assert_str_eq(job->id, "big");
	cr_assert_leq(job->payload_len, 4096);
	cr_assert_eq(strlen(job->payload), job->payload_len);
	spool_source_ops.finish(src, job, false, "{}", 2);
	commit(loop, src);
	cr_assert(exists("failed", "big.json"));
	cr_assert_eq(count_entries("processing", NULL, 0), 0);
	spool_source_ops.close(src);
	ev_loop_destroy(loop);
}

/* ---- attempts, finish, release ----------------------------------------------------- */

Test(spool, attempt_renames_the_claim_and_keeps_the_id)
{
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	char name[256], with_attempt[300];

	enqueue("{\"prompt\":\"no id\"}", NULL, 0);
	count_entries("incoming", name, sizeof(name));
	struct source *src = open_source(loop);
	struct job *job = take_one(src);
	char *id = strdup(job->id);

	/* The claim already carries attempt 1: starting it renames nothing. */
	snprintf(with_attempt, sizeof(with_attempt), "%s;a=1", name);
	cr_assert(exists("processing", with_attempt), "processing/%s", with_attempt);
	cr_assert_eq(spool_source_ops.attempt(src, job, 1), 0);
	cr_assert(exists("processing", with_attempt), "processing/%s", with_attempt);
	cr_assert_not(exists("processing", name));

	cr_assert_eq(spool_source_ops.attempt(src, job, 2), 0);
	snprintf(with_attempt, sizeof(with_attempt), "%s;a=2", name);
	cr_assert(exists("processing", with_attempt));
	cr_assert_eq(count_entries("processing", NULL, 0), 1);
	cr_assert_str_eq(job->id, id);

	/* Released: back in incoming/ with the count; the next delivery knows 2 were made. */
	spool_source_ops.release(src, job);
	cr_assert(exists("incoming", with_attempt));
	cr_assert_eq(count_entries("processing", NULL, 0), 0);
	job = take_one(src);
	cr_assert_eq(job->attempts_done, 2);
	cr_assert_str_eq(job->id, id, "the id never carries the attempt suffix");
	snprintf(with_attempt, sizeof(with_attempt), "%s;a=3", name);
	cr_assert(exists("processing", with_attempt), "processing/%s", with_attempt);
	cr_assert_eq(spool_source_ops.attempt(src, job, 3), 0);

	/* A start that did not happen is taken back (the worker does so on a spawn fault). */
	cr_assert_eq(spool_source_ops.attempt(src, job, 2), 0);
	snprintf(with_attempt, sizeof(with_attempt), "%s;a=2", name);
	cr_assert(exists("processing", with_attempt), "processing/%s", with_attempt);
	cr_assert_eq(count_entries("processing", NULL, 0), 1);
	cr_assert_eq(spool_source_ops.attempt(src, job, 3), 0);
	finish_ok(loop, src, job);
	char outcome[300];
	snprintf(outcome, sizeof(outcome), "%s.json", id);
	cr_assert(exists("complete", outcome), "complete/%s", outcome);
	free(id);
	spool_source_ops.close(src);
	ev_loop_destroy(loop);
}

Test(spool, finish_writes_the_document_and_removes_the_claim)
{
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	static const char doc_ok[] = "{\"id\":\"ok-1\",\"result\":{\"image\":\"/x.ppm\"}}";
	static const char doc_bad[] = "{\"id\":\"bad-1\",\"error\":{\"reason\":\"exit_code\"}}";

	enqueue("{\"id\":\"ok-1\"}", NULL, 0);
	enqueue("{\"id\":\"bad-1\"}", NULL, 0);
	struct source *src = open_source(loop);

	struct job *job = take_one(src);
	cr_assert_str_eq(job->id, "ok-1");
	spool_source_ops.finish(src, job, true, doc_ok, strlen(doc_ok));
	cr_assert_eq(settled_calls, 0, "settled only once the directory is fsynced");
	commit(loop, src);
	cr_assert_eq(settled_calls, 1);
	cr_assert(settled_durable);
	cr_assert_str_eq(settled_id, "ok-1");
	char *content = slurp("complete", "ok-1.json");
	cr_assert_not_null(content);
	cr_assert_str_eq(content, doc_ok);
	free(content);

	job = take_one(src);
	spool_source_ops.finish(src, job, false, doc_bad, strlen(doc_bad));
	commit(loop, src);
	cr_assert_eq(settled_calls, 2);
	content = slurp("failed", "bad-1.json");
	cr_assert_not_null(content);
	cr_assert_str_eq(content, doc_bad);
	free(content);

	cr_assert_eq(count_entries("processing", NULL, 0), 0);
	cr_assert_eq(count_entries("incoming", NULL, 0), 0);
	cr_assert_eq(count_entries("complete", NULL, 0), 1);
	cr_assert_eq(count_entries("failed", NULL, 0), 1);
	spool_source_ops.close(src);
	cr_assert_eq(count_entries("tmp", NULL, 0), 0, "a closed source leaves nothing in tmp/, spares included");
	ev_loop_destroy(loop);
}

Test(spool, a_duplicate_outcome_replaces_the_first)
{
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);

	enqueue("{\"id\":\"dup\",\"n\":1}", NULL, 0);
	struct source *src = open_source(loop);
	struct job *job = take_one(src);
	spool_source_ops.finish(src, job, true, "{\"n\":1}", 7);
	commit(loop, src);
	enqueue("{\"id\":\"dup\",\"n\":2}", NULL, 0);
	spool_source_ops.close(src);
	src = open_source(loop);
	job = take_one(src);
	spool_source_ops.finish(src, job, true, "{\"n\":2}", 7);
	commit(loop, src);
	cr_assert_eq(count_entries("complete", NULL, 0), 1);
	char *content = slurp("complete", "dup.json");
	cr_assert_str_eq(content, "{\"n\":2}");
	free(content);
	spool_source_ops.close(src);
	ev_loop_destroy(loop);
}

Test(spool, outcome_names_are_sanitized)
{
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	char name[512], longid[1200];
	regex_t re;

	enqueue("{\"id\":\"../../evil/x y\"}", NULL, 0);
	/* An id of 1000 'k's. */
	char ks[1001];
	memset(ks, 'k', 1000);
	ks[1000] = '\0';
	snprintf(longid, sizeof(longid), "{\"id\":\"%s\"}", ks);
	enqueue(longid, NULL, 0);
	enqueue("{\"id\":\"a/b\"}", NULL, 0);
	enqueue("{\"id\":\"a_b\"}", NULL, 0);

	struct source *src = open_source(loop);
	for (int i = 0; i < 4; i++)
		finish_ok(loop, src, take_one(src));
	cr_assert_eq(count_entries("complete", NULL, 0), 4, "distinct ids keep distinct outcome files");
	cr_assert(exists("complete", "a_b.json"), "a clean id is used as is");

	cr_assert_eq(regcomp(&re, "^[A-Za-z0-9_-][A-Za-z0-9._-]*\\.json$", REG_EXTENDED | REG_NOSUB), 0);
	char path[512];
	sub_path(path, sizeof(path), "complete", NULL);
	DIR *d = opendir(path);
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.' && (de->d_name[1] == '\0' || strcmp(de->d_name, "..") == 0))
			continue;
		snprintf(name, sizeof(name), "%s", de->d_name);
		cr_assert_eq(regexec(&re, name, 0, NULL, 0), 0, "unsafe outcome name %s", name);
		cr_assert_leq(strlen(name), 200, "capped: %zu", strlen(name));
	}
	closedir(d);
	regfree(&re);
	/* Nothing escaped the spool. */
	cr_assert_neq(access("/tmp/evil", F_OK), 0);
	sub_path(path, sizeof(path), "evil", NULL);
	cr_assert_neq(access(path, F_OK), 0);
	spool_source_ops.close(src);
	ev_loop_destroy(loop);
}

/* Runs the loop until cond(src) holds or seconds pass; false on timeout. */
static bool loop_until(struct ev_loop *loop, struct source *src, bool (*cond)(struct source *), double seconds)
{
	bool never = false;
	long long deadline = now_ms() + (long long)(seconds * 1000);

	while (!cond(src) && now_ms() < deadline)
		run_until(loop, &never, 0.05);
	return cond(src);
}

static bool has_fault(struct source *src)
{
	return spool_source_ops.fault(src)[0] != '\0';
}

static bool settled_and_healthy(struct source *src)
{
	return settled_calls > 0 && !has_fault(src);
}

Test(spool, an_outcome_that_cannot_be_written_stays_claimed_and_is_written_later)
{
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	char complete[512], aside[512];

	enqueue("{\"id\":\"stuck\"}", NULL, 0);
	enqueue("{\"id\":\"waiting\"}", NULL, 0);
	struct source *src = open_source(loop);
	struct job *job = take_one(src);
	sub_path(complete, sizeof(complete), "complete", NULL);
	sub_path(aside, sizeof(aside), "complete-aside", NULL);
	cr_assert_eq(rename(complete, aside), 0);
	cr_assert_eq(close(open(complete, O_WRONLY | O_CREAT, 0644)), 0); /* a file where the directory was */

	spool_source_ops.finish(src, job, true, "{\"done\":1}", 10);
	for (int i = 0; i < 5; i++)
		ev_run(loop, EVRUN_NOWAIT);
	cr_assert_eq(settled_calls, 0, "not durable, so not settled");
	cr_assert_eq(count_entries("processing", NULL, 0), 1, "the job stays claimed");
	cr_assert_eq(count_entries("incoming", NULL, 0), 1, "only the other job waits");
	cr_assert_eq(count_entries("tmp", NULL, 0), 0, "no temporary file left");
	cr_assert_not_null(strstr(spool_source_ops.fault(src), "stuck"), "the fault shows: '%s'",
	                   spool_source_ops.fault(src));
	expect_none(src);

	/* The directory is back: the next safety pass writes the outcome, and the fault clears. */
	cr_assert_eq(unlink(complete), 0);
	cr_assert_eq(rename(aside, complete), 0);
	cr_assert(loop_until(loop, src, settled_and_healthy, 10.0), "never written: fault '%s'",
	          spool_source_ops.fault(src));
	cr_assert(settled_durable);
	cr_assert_str_eq(settled_id, "stuck");
	char *content = slurp("complete", "stuck.json");
	cr_assert_not_null(content);
	cr_assert_str_eq(content, "{\"done\":1}");
	free(content);
	cr_assert_eq(count_entries("processing", NULL, 0), 0);
	job = take_one(src);
	cr_assert_str_eq(job->id, "waiting");
	finish_ok(loop, src, job);
	spool_source_ops.close(src);
	ev_loop_destroy(loop);
}

Test(spool, closing_gives_back_an_outcome_never_written)
{
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	char failed[512], name[256];

	enqueue("{\"id\":\"unlucky\"}", NULL, 0);
	struct source *src = open_source(loop);
	struct job *job = take_one(src);
	sub_path(failed, sizeof(failed), "failed", NULL);
	cr_assert_eq(rmdir(failed), 0);
	spool_source_ops.finish(src, job, false, "{}", 2);
	cr_assert_eq(spool_source_ops.pending(src), 0, "a stuck outcome does not hold a stop");
	spool_source_ops.close(src);
	cr_assert_eq(settled_calls, 1);
	cr_assert_not(settled_durable);
	cr_assert_eq(count_entries("processing", NULL, 0), 0);
	cr_assert_eq(count_entries("incoming", name, sizeof(name)), 1, "the job goes back to run again");
	cr_assert_not_null(strstr(name, ";a=1"), "with its attempt count: %s", name);
	ev_loop_destroy(loop);
}

Test(spool, outcomes_finished_together_share_one_directory_fsync)
{
	enum { JOBS = 20 };
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	struct spool_counters counts;
	char payload[64];

	for (int i = 0; i < JOBS + 1; i++) {
		snprintf(payload, sizeof(payload), "{\"id\":\"g%02d\"}", i);
		enqueue(payload, NULL, 0);
	}
	struct source *src = open_source(loop);
	struct job *jobs[JOBS];
	for (int i = 0; i < JOBS; i++)
		jobs[i] = take_one(src);
	/* All finished within one loop iteration, like handlers reaped together. */
	for (int i = 0; i < JOBS; i++)
		spool_source_ops.finish(src, jobs[i], i % 2 == 0, "{}", 2);
	cr_assert_eq(spool_source_ops.pending(src), JOBS);
	cr_assert_eq(settled_calls, 0);
	cr_assert_eq(count_entries("processing", NULL, 0), JOBS, "claims stay until the commit");
	cr_assert_eq(count_entries("complete", NULL, 0) + count_entries("failed", NULL, 0), JOBS,
	             "outcome files are in place before the commit");
	spool_source_counters(src, &counts);
	cr_assert_eq(counts.dir_fsyncs, 0);
	commit(loop, src);
	spool_source_counters(src, &counts);
	cr_assert_eq(counts.dir_fsyncs, 2, "one fsync of complete/ and one of failed/ for %d outcomes, got %lu",
	             JOBS, counts.dir_fsyncs);
	cr_assert_eq(settled_calls, JOBS);
	cr_assert_eq(count_entries("processing", NULL, 0), 0);

	/* A lone outcome pays its own. */
	finish_ok(loop, src, take_one(src));
	spool_source_counters(src, &counts);
	cr_assert_eq(counts.dir_fsyncs, 3);
	spool_source_ops.close(src);
	ev_loop_destroy(loop);
}

/* ---- claims among processes ---------------------------------------------------------- */

/* Takes and finishes jobs until none is left; writes each id taken to fd, one per line. */
static void drain_into(struct ev_loop *loop, struct source *src, int fd)
{
	struct job *job;
	char line[300];

	while (spool_source_ops.take(src, &job) == SOURCE_TAKEN) {
		int n = snprintf(line, sizeof(line), "%s\n", job->id);
		if (write_all(fd, line, (size_t)n) < 0)
			_exit(3);
		finish_ok(loop, src, job);
	}
}

/* A forked helper that must not outlive its test process, even when an assertion ends it early. */
static pid_t fork_helper(void)
{
	pid_t parent = getpid();
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0 && (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent))
		_exit(4);
	return pid;
}

static pid_t fork_drainer(int start_fd, const char *out_path)
{
	pid_t pid = fork_helper();
	if (pid == 0) {
		char go;
		struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
		char err[256];
		int out = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		if (loop == NULL || out < 0 || read_full(start_fd, &go, 1) != 1)
			_exit(2);
		struct source *src = spool_open_at(loop, 2, &callbacks, NULL, err, sizeof(err));
		if (src == NULL)
			_exit(2);
		drain_into(loop, src, out);
		close(out);
		spool_source_ops.close(src);
		_exit(0);
	}
	return pid;
}

static int count_lines_into(const char *path, char ids[][32], int have)
{
	size_t len;
	char *text = read_file(path, 1 << 20, &len);
	cr_assert_not_null(text, "%s", path);
	for (char *line = strtok(text, "\n"); line != NULL; line = strtok(NULL, "\n"))
		snprintf(ids[have++], 32, "%s", line);
	free(text);
	return have;
}

static int cmp_ids(const void *a, const void *b)
{
	return strcmp(a, b);
}

Test(spool, competing_processes_claim_each_job_exactly_once)
{
	enum { JOBS = 200, CHILDREN = 2 };
	char payload[64], out_paths[CHILDREN + 1][600];
	static char ids[JOBS * 2][32];
	int start[2];
	pid_t pids[CHILDREN];

	for (int i = 0; i < JOBS; i++) {
		snprintf(payload, sizeof(payload), "{\"id\":\"j%03d\"}", i);
		enqueue(payload, NULL, 0);
	}
	cr_assert_eq(pipe(start), 0);
	for (int c = 0; c <= CHILDREN; c++)
		sub_path(out_paths[c], sizeof(out_paths[c]), "tmp", c == 0 ? ".taken-parent" : c == 1 ? ".taken-1" : ".taken-2");
	for (int c = 0; c < CHILDREN; c++)
		pids[c] = fork_drainer(start[0], out_paths[c + 1]);

	/* The parent competes too, with two sources of its own in one process. */
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	struct source *a = open_source(loop), *b = open_source(loop);
	int out = open(out_paths[0], O_WRONLY | O_CREAT | O_TRUNC, 0644);
	cr_assert_geq(out, 0);
	cr_assert_eq(write_all(start[1], "gg", CHILDREN), 0);
	struct job *job;
	bool more = true;
	while (more) {
		more = false;
		for (int s = 0; s < 2; s++) {
			if (spool_source_ops.take(s == 0 ? a : b, &job) == 0) {
				char line[64];
				int n = snprintf(line, sizeof(line), "%s\n", job->id);
				cr_assert_eq(write_all(out, line, (size_t)n), 0);
				finish_ok(loop, s == 0 ? a : b, job);
				more = true;
			}
		}
	}
	close(out);
	for (int c = 0; c < CHILDREN; c++) {
		int status;
		cr_assert_eq(waitpid_retry(pids[c], &status, 0), pids[c]);
		cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "drainer %d: status %d", c, status);
	}
	int total = 0;
	for (int c = 0; c <= CHILDREN; c++)
		total = count_lines_into(out_paths[c], ids, total);
	cr_assert_eq(total, JOBS, "claims: %d for %d jobs", total, JOBS);
	qsort(ids, (size_t)total, sizeof(ids[0]), cmp_ids);
	for (int i = 1; i < total; i++)
		cr_assert_str_neq(ids[i - 1], ids[i], "job %s claimed twice", ids[i]);
	cr_assert_eq(count_entries("complete", NULL, 0), JOBS);
	cr_assert_eq(count_entries("incoming", NULL, 0), 0);
	cr_assert_eq(count_entries("processing", NULL, 0), 0);
	spool_source_ops.close(a);
	spool_source_ops.close(b);
	ev_loop_destroy(loop);
}

/* A worker that claims one job, starts attempt 2 and dies without any cleanup. */
static pid_t fork_dying_claimer(int report_fd)
{
	pid_t pid = fork_helper();
	if (pid == 0) {
		struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
		char err[256];
		struct job *job;
		struct source *src = spool_open_at(loop, 3, &callbacks, NULL, err, sizeof(err));
		if (src == NULL || spool_source_ops.take(src, &job) != SOURCE_TAKEN || spool_source_ops.attempt(src, job, 2) != 0)
			_exit(2);
		if (report_fd >= 0) {
			/* Tell the parent, then hold the claim until killed. */
			if (write_all(report_fd, "c", 1) < 0)
				_exit(2);
			for (;;)
				pause();
		}
		_exit(0);
	}
	return pid;
}

Test(spool, a_dead_claim_is_reclaimed_with_its_attempt_count)
{
	int status;
	char name[256];

	enqueue("{\"id\":\"orphan\"}", NULL, 0);
	pid_t pid = fork_dying_claimer(-1);
	cr_assert_eq(waitpid_retry(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	cr_assert_eq(count_entries("processing", name, sizeof(name)), 1);
	cr_assert_not_null(strstr(name, ";a=2"), "processing/%s", name);
	cr_assert_eq(count_entries("incoming", NULL, 0), 0);

	cr_assert_eq(spool_reclaim(spool_dir), 1);
	cr_assert_eq(count_entries("processing", NULL, 0), 0);
	cr_assert(exists("incoming", name), "back under the same name: %s", name);
	cr_assert_eq(spool_reclaim(spool_dir), 0);

	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	struct source *src = open_source(loop);
	struct job *job = take_one(src);
	cr_assert_str_eq(job->id, "orphan");
	cr_assert_eq(job->attempts_done, 2);
	finish_ok(loop, src, job);
	spool_source_ops.close(src);
	ev_loop_destroy(loop);
}

Test(spool, a_live_claim_is_never_reclaimed)
{
	int report[2], status;
	char c, name[256];

	enqueue("{\"id\":\"held\"}", NULL, 0);
	cr_assert_eq(pipe(report), 0);
	pid_t pid = fork_dying_claimer(report[1]);
	cr_assert_eq(read_full(report[0], &c, 1), 1, "claimer failed");

	cr_assert_eq(spool_reclaim(spool_dir), 0);
	cr_assert_eq(count_entries("processing", name, sizeof(name)), 1);
	/* Nor does another worker's source take it, or its periodic rescan move it. */
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	struct source *src = open_source(loop);
	expect_none(src);
	bool never = false;
	run_until(loop, &never, 3.0); /* past one backstop of the safety pass */
	cr_assert_eq(count_entries("processing", NULL, 0), 1);
	cr_assert_eq(count_entries("incoming", NULL, 0), 0);

	/* Once the holder dies, the rescan of the live source reclaims it by itself. */
	cr_assert_eq(kill(pid, SIGKILL), 0);
	cr_assert_eq(waitpid_retry(pid, &status, 0), pid);
	ready_calls = 0;
	struct job *job = NULL;
	for (int i = 0; i < 100 && job == NULL; i++) {
		run_until(loop, &never, 0.1);
		if (ready_calls > 0 && spool_source_ops.take(src, &job) != SOURCE_TAKEN)
			job = NULL;
	}
	cr_assert_not_null(job, "the dead claim was not reclaimed (and announced) within 10 s");
	cr_assert_str_eq(job->id, "held");
	cr_assert_eq(job->attempts_done, 2);
	finish_ok(loop, src, job);
	spool_source_ops.close(src);
	ev_loop_destroy(loop);
	close(report[0]);
	close(report[1]);
}

/* ---- waking ------------------------------------------------------------------------ */

struct wake_test {
	struct source *src;
	struct job *job;
	bool got;
	ev_timer enqueue_timer;
};

static struct wake_test wake;

static void wake_ready(void *arg)
{
	if (wake.src != NULL && wake.job == NULL && spool_source_ops.take(wake.src, &wake.job) == 0)
		wake.got = true;
}

static void enqueue_later(struct ev_loop *loop, ev_timer *w, int revents)
{
	enqueue("{\"id\":\"woken\"}", NULL, 0);
}

Test(spool, inotify_wakes_the_loop_before_the_rescan)
{
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	struct source_callbacks cb = { .ready = wake_ready, .settled = on_settled, .arg = NULL };
	char err[256];

	memset(&wake, 0, sizeof(wake));
	wake.src = spool_open_at(loop, 1, &cb, NULL, err, sizeof(err));
	cr_assert_not_null(wake.src, "%s", err);
	ev_timer_init(&wake.enqueue_timer, enqueue_later, 0.05, 0.);
	ev_timer_start(loop, &wake.enqueue_timer);
	cr_assert(run_until(loop, &wake.got, 5.0), "never woken");
	struct spool_counters counts;
	spool_source_counters(wake.src, &counts);
	/* Woken, and the name taken, with no safety pass and no readdir beyond the first (empty) one. */
	cr_assert_eq(counts.safety_passes, 0, "woken by the safety pass, not inotify");
	cr_assert_eq(counts.scans, 1, "inotify's name needs no rescan, got %lu scans", counts.scans);
	cr_assert_str_eq(wake.job->id, "woken");
	finish_ok(loop, wake.src, wake.job);
	spool_source_ops.close(wake.src);
	ev_loop_destroy(loop);
}

Test(spool, the_rescan_reports_a_vanished_directory_and_recovers)
{
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	struct source *src = open_source(loop);
	char incoming[512], aside[512];

	cr_assert_str_eq(spool_source_ops.fault(src), "");
	sub_path(incoming, sizeof(incoming), "incoming", NULL);
	sub_path(aside, sizeof(aside), "incoming-aside", NULL);
	cr_assert_eq(rename(incoming, aside), 0);
	bool never = false;
	for (int i = 0; i < 100 && spool_source_ops.fault(src)[0] == '\0'; i++)
		run_until(loop, &never, 0.1);
	cr_assert_not_null(strstr(spool_source_ops.fault(src), "incoming"), "fault: '%s'",
	                   spool_source_ops.fault(src));
	expect_none(src);

	cr_assert_eq(rename(aside, incoming), 0);
	enqueue("{\"id\":\"after\"}", NULL, 0);
	ready_calls = 0;
	for (int i = 0; i < 100 && (spool_source_ops.fault(src)[0] != '\0' || ready_calls == 0); i++)
		run_until(loop, &never, 0.1);
	cr_assert_str_eq(spool_source_ops.fault(src), "");
	cr_assert_gt(ready_calls, 0);
	struct job *job = take_one(src);
	cr_assert_str_eq(job->id, "after");
	finish_ok(loop, src, job);
	spool_source_ops.close(src);
	ev_loop_destroy(loop);
}

Test(spool, inotify_watches_a_recreated_incoming_directory)
{
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	struct source *src = open_source(loop);
	char incoming[512];
	bool never = false;

	sub_path(incoming, sizeof(incoming), "incoming", NULL);
	cr_assert_eq(rmdir(incoming), 0);
	for (int i = 0; i < 200 && spool_source_ops.fault(src)[0] == '\0'; i++)
		run_until(loop, &never, 0.05);
	cr_assert_str_neq(spool_source_ops.fault(src), "", "a missing incoming/ is a fault");
	cr_assert_eq(mkdir(incoming, 0770), 0); /* a new directory: the old watch is gone */
	for (int i = 0; i < 200 && spool_source_ops.fault(src)[0] != '\0'; i++)
		run_until(loop, &never, 0.05);
	cr_assert_str_eq(spool_source_ops.fault(src), "");

	/* The fault cleared in a safety pass just now: a wake without another pass is inotify's. */
	long long cleared = now_ms();
	struct spool_counters before, after;
	spool_source_counters(src, &before);
	enqueue("{\"id\":\"rewatched\"}", NULL, 0);
	ready_calls = 0;
	struct job *job = NULL;
	while (job == NULL && now_ms() - cleared < 3000) {
		run_until(loop, &never, 0.02);
		if (ready_calls > 0 && spool_source_ops.take(src, &job) != SOURCE_TAKEN)
			job = NULL;
	}
	cr_assert_not_null(job, "never woken");
	spool_source_counters(src, &after);
	cr_assert_eq(after.safety_passes, before.safety_passes, "woken by a safety pass: incoming/ is not watched again");
	cr_assert_str_eq(job->id, "rewatched");
	finish_ok(loop, src, job);
	spool_source_ops.close(src);
	ev_loop_destroy(loop);
}

/* ---- hostile input ------------------------------------------------------------------- */

Test(spool, a_dropped_job_with_a_bad_id_is_invalid_under_its_file_name)
{
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	time_t now = time(NULL);
	static char long_id[2100];

	memset(long_id, 0, sizeof(long_id));
	strcpy(long_id, "{\"id\":\"");
	memset(long_id + strlen(long_id), 'x', 1100);
	strcat(long_id, "\"}");
	put_incoming("1-long.json", long_id, now - 40);
	put_incoming("2-newline.json", "{\"id\":\"a\\nforged log line\"}", now - 30);
	put_incoming("3-nul.json", "{\"id\":\"a\\u0001b\"}", now - 20);
	put_incoming("4-ok.json", "{\"id\":\"fine-id\"}", now - 10);
	put_incoming("5-bad\nname.json", "{\"x\":1}", now - 5);

	struct source *src = open_source(loop);
	static const char *ids[] = { "1-long", "2-newline", "3-nul", "fine-id", "5-bad_name" };
	for (size_t i = 0; i < 5; i++) {
		struct job *job = take_one(src);
		cr_assert_str_eq(job->id, ids[i]);
		cr_assert_eq(job->invalid, i < 3, "%s invalid=%d", job->id, job->invalid);
		spool_source_ops.finish(src, job, false, "{}", 2);
	}
	commit(loop, src);
	cr_assert(exists("failed", "1-long.json"));
	cr_assert(exists("failed", "2-newline.json"));
	spool_source_ops.close(src);
	ev_loop_destroy(loop);
}

Test(spool, enqueue_refuses_what_would_be_an_invalid_job)
{
	char id[256], big[2200];
	static const char *bad[] = { "not json", "[1,2]", "\"a string\"", "{\"id\":\"tab\\there\"}",
	                             "{\"id\":\"nul\\u0000\"}", NULL };

	snprintf(big, sizeof(big), "{\"id\":\"%01100d\"}", 7);
	for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
		const char *payload = bad[i] != NULL ? bad[i] : big;
		errno = 0;
		cr_assert_eq(spool_enqueue(spool_dir, payload, strlen(payload), id, sizeof(id)), -1, "%s accepted",
		             payload);
		cr_assert_eq(errno, EINVAL, "%s: errno %d", payload, errno);
		const char *why = spool_enqueue_refusal(payload, strlen(payload));
		cr_assert_not_null(why, "%s: no reason given", payload);
	}
	cr_assert_not_null(strstr(spool_enqueue_refusal("[1]", 3), "JSON object"));
	cr_assert_not_null(strstr(spool_enqueue_refusal(big, strlen(big)), "1024"));
	cr_assert_eq(count_entries("incoming", NULL, 0), 0, "nothing refused was queued");
	cr_assert_eq(count_entries("tmp", NULL, 0), 0);
	cr_assert_null(spool_enqueue_refusal("{\"id\":\"ok\"}", 11));
	cr_assert_null(spool_enqueue_refusal("{}", 2));
	enqueue("{\"id\":\"ok\"}", id, sizeof(id));
	cr_assert_str_eq(id, "ok");
}

/* ---- faults in stats ------------------------------------------------------------------- */

Test(spool, the_fault_shows_in_the_scoreboard_and_clears)
{
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	struct scoreboard_slot *slot = calloc(1, sizeof(*slot));
	char failed[512], aside[512];

	cr_assert_not_null(slot);
	enqueue("{\"id\":\"f1\"}", NULL, 0);
	char err[256] = "";
	struct source *src = spool_open_at(loop, 1, &callbacks, slot, err, sizeof(err));
	cr_assert_not_null(src, "open: %s", err);
	cr_assert_str_eq(slot->fault, "");
	cr_assert(slot->ready, "a spool source is ready at once");
	struct job *job = take_one(src);
	sub_path(failed, sizeof(failed), "failed", NULL);
	sub_path(aside, sizeof(aside), "failed-aside", NULL);
	cr_assert_eq(rename(failed, aside), 0);
	spool_source_ops.finish(src, job, false, "{}", 2);
	cr_assert_not_null(strstr(slot->fault, "f1"), "scoreboard fault: '%s'", slot->fault);
	cr_assert_eq(rename(aside, failed), 0);
	cr_assert(loop_until(loop, src, settled_and_healthy, 10.0), "fault never cleared: '%s'", spool_source_ops.fault(src));
	cr_assert_str_eq(slot->fault, "", "cleared in stats too");

	/* A fault the worker wrote (its handler cannot start) is not the spool's to clear. */
	snprintf(slot->fault, sizeof(slot->fault), "handler /x cannot be started");
	bool never = false;
	run_until(loop, &never, 1.5);
	cr_assert_str_eq(slot->fault, "handler /x cannot be started");
	spool_source_ops.close(src);
	cr_assert_str_eq(slot->fault, "handler /x cannot be started");
	free(slot);
	ev_loop_destroy(loop);
}

/* ---- tmp/ ------------------------------------------------------------------------------ */

/* A writer of an outcome file: creates it, locks it as the spool does, writes, then holds it until killed. */
static pid_t fork_outcome_writer(const char *path, int report_fd)
{
	pid_t pid = fork_helper();
	if (pid == 0) {
		int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0640);
		if (fd < 0 || flock(fd, LOCK_EX) < 0 || write_all(fd, "{}", 2) < 0 || write_all(report_fd, "w", 1) < 0)
			_exit(2);
		for (;;)
			pause();
	}
	return pid;
}

Test(spool, tmp_outcomes_of_dead_writers_go_at_once_live_ones_stay)
{
	char live[512], dead[512], fresh_empty[512], producer[512];
	int report[2], status;
	char c;

	sub_path(live, sizeof(live), "tmp", "1-live.outcome");
	sub_path(dead, sizeof(dead), "tmp", "2-dead.outcome");
	sub_path(fresh_empty, sizeof(fresh_empty), "tmp", "3-creating.outcome");
	sub_path(producer, sizeof(producer), "tmp", "4-producer.json");
	cr_assert_eq(pipe(report), 0);
	pid_t writer = fork_outcome_writer(live, report[1]);
	cr_assert_eq(read_full(report[0], &c, 1), 1, "writer failed");
	pid_t victim = fork_outcome_writer(dead, report[1]);
	cr_assert_eq(read_full(report[0], &c, 1), 1, "writer failed");
	cr_assert_eq(kill(victim, SIGKILL), 0);
	cr_assert_eq(waitpid_retry(victim, &status, 0), victim);
	cr_assert_eq(close(open(fresh_empty, O_WRONLY | O_CREAT, 0640)), 0); /* created, lock not yet taken */
	cr_assert_eq(close(open(producer, O_WRONLY | O_CREAT, 0640)), 0);

	cr_assert_geq(spool_reclaim(spool_dir), 0); /* what the supervisor runs when a worker died */
	cr_assert_eq(access(dead, F_OK), -1, "a dead writer's outcome must go at once");
	cr_assert_eq(access(live, F_OK), 0, "a live writer's outcome must stay");
	cr_assert_eq(access(fresh_empty, F_OK), 0, "an empty new file may be a writer about to lock it");
	cr_assert_eq(access(producer, F_OK), 0, "a producer's recent file stays");

	cr_assert_eq(kill(writer, SIGKILL), 0);
	cr_assert_eq(waitpid_retry(writer, &status, 0), writer);
	char err[256];
	cr_assert_eq(spool_prepare(spool_dir, err, sizeof(err)), 0, "%s", err); /* a new worker's start sweeps too */
	cr_assert_eq(access(live, F_OK), -1, "its writer is dead now");
	close(report[0]);
	close(report[1]);
}

/* ---- names from inotify ------------------------------------------------------------------ */

Test(spool, names_from_inotify_are_taken_without_a_rescan)
{
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	struct spool_counters before, after;
	struct source *src = open_source(loop);

	expect_none(src); /* the first, empty, scan */
	spool_source_counters(src, &before);
	for (int i = 0; i < 5; i++) {
		char payload[32];
		snprintf(payload, sizeof(payload), "{\"id\":\"n%d\"}", i);
		enqueue(payload, NULL, 0);
	}
	ready_calls = 0;
	for (int i = 0; i < 100 && ready_calls == 0; i++)
		ev_run(loop, EVRUN_NOWAIT);
	cr_assert_gt(ready_calls, 0, "inotify never woke the loop");
	for (int i = 0; i < 5; i++) {
		struct job *job = take_one(src);
		char expected[16];
		snprintf(expected, sizeof(expected), "n%d", i);
		cr_assert_str_eq(job->id, expected, "in arrival order");
		finish_ok(loop, src, job);
	}
	expect_none(src);
	spool_source_counters(src, &after);
	cr_assert_eq(after.scans, before.scans, "%lu readdirs of incoming/ for 5 names inotify reported",
	             after.scans - before.scans);
	spool_source_ops.close(src);
	ev_loop_destroy(loop);
}

Test(spool, a_reused_name_never_overwrites_a_claimed_job)
{
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);

	put_incoming("dup.json", "{\"id\":\"first\"}", 0);
	struct source *a = open_source(loop), *b = open_source(loop);
	struct job *first = take_one(a);
	cr_assert_eq(spool_source_ops.attempt(a, first, 1), 0);
	cr_assert(exists("processing", "dup.json;a=1"));

	/* A producer reuses the name while the first job runs. */
	put_incoming("dup.json", "{\"id\":\"second\"}", 0);
	struct job *second = NULL;
	if (spool_source_ops.take(b, &second) == 0)
		spool_source_ops.attempt(b, second, 1);
	char *content = slurp("processing", "dup.json;a=1");
	cr_assert_not_null(content);
	cr_assert_str_eq(content, "{\"id\":\"first\"}", "the running job's file was replaced");
	free(content);
	cr_assert_eq(count_entries("processing", NULL, 0) + count_entries("incoming", NULL, 0), 2,
	             "both jobs still queued");
	cr_assert_null(second, "the second may wait, but not take the first one's name");

	finish_ok(loop, a, first);
	second = take_one(b);
	cr_assert_str_eq(second->id, "second");
	finish_ok(loop, b, second);
	spool_source_ops.close(a);
	spool_source_ops.close(b);
	ev_loop_destroy(loop);
}

/* ---- spares: finished job files reused for outcomes ------------------------------------- */

/* Entries of sub whose name ends with suffix. */
static int count_suffix(const char *sub, const char *suffix)
{
	char path[512];
	struct dirent *de;
	int n = 0;

	sub_path(path, sizeof(path), sub, NULL);
	DIR *d = opendir(path);
	cr_assert_not_null(d, "opendir %s", path);
	while ((de = readdir(d)) != NULL) {
		size_t len = strlen(de->d_name), slen = strlen(suffix);
		n += len >= slen && strcmp(de->d_name + len - slen, suffix) == 0;
	}
	closedir(d);
	return n;
}

/* Enqueues n jobs "<prefix>-<i>" padded to pad bytes, so that their files are larger than their outcomes. */
static void enqueue_padded(const char *prefix, int n, size_t pad)
{
	char *payload = malloc(pad + 128);

	cr_assert_not_null(payload);
	for (int i = 0; i < n; i++) {
		int len = snprintf(payload, pad + 128, "{\"id\":\"%s-%d\",\"pad\":\"", prefix, i);
		memset(payload + len, 'x', pad);
		snprintf(payload + len + pad, 128, "\"}");
		enqueue(payload, NULL, 0);
	}
	free(payload);
}

/* Takes one job and writes "{"id":..., "n":i}" as its outcome, committed. */
static void run_one(struct ev_loop *loop, struct source *src, char *doc, size_t doc_len)
{
	struct job *job = take_one(src);
	snprintf(doc, doc_len, "{\"id\":\"%s\",\"done\":true}", job->id);
	spool_source_ops.finish(src, job, true, doc, strlen(doc));
	commit(loop, src);
}

static unsigned long recycled(struct source *src)
{
	struct spool_counters counts;

	spool_source_counters(src, &counts);
	return counts.recycled;
}

Test(spool, an_outcome_in_a_reused_job_file_holds_exactly_the_new_document)
{
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	enum { JOBS = 20 };
	char doc[JOBS][128], name[160];

	enqueue_padded("big", JOBS, 3000); /* job files of 3 KB, outcomes of 30 bytes */
	struct source *src = open_source(loop);
	for (int i = 0; i < JOBS; i++)
		run_one(loop, src, doc[i], sizeof(doc[i]));
	cr_assert_gt(recycled(src), 0, "no outcome went into a finished job's file");
	for (int i = 0; i < JOBS; i++) {
		snprintf(name, sizeof(name), "big-%d.json", i);
		char *content = slurp("complete", name);
		cr_assert_not_null(content, "%s", name);
		cr_assert_str_eq(content, doc[i], "%s holds more or other than its document", name);
		free(content);
	}
	cr_assert_eq(count_entries("processing", NULL, 0), 0);
	cr_assert_eq(count_suffix("tmp", ".outcome"), 0);
	spool_source_ops.close(src);
	cr_assert_eq(count_entries("tmp", NULL, 0), 0, "close gives the spares up");
	ev_loop_destroy(loop);
}

Test(spool, a_job_file_is_overwritten_only_after_processing_is_fsynced)
{
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	struct spool_counters counts;
	char doc[128];

	enqueue_padded("j", 10, 10);
	struct source *src = open_source(loop);
	/* The test config has max_concurrent 0: batches of 8 spares (SPARES_MIN). */
	for (int i = 0; i < 7; i++)
		run_one(loop, src, doc, sizeof(doc));
	spool_source_counters(src, &counts);
	cr_assert_eq(counts.spare_syncs, 0);
	cr_assert_eq(counts.recycled, 0, "a spare was overwritten before its leaving processing/ was durable");
	cr_assert_eq(count_suffix("tmp", ".spare"), 7);
	run_one(loop, src, doc, sizeof(doc));
	spool_source_counters(src, &counts);
	cr_assert_eq(counts.spare_syncs, 1, "one fsync of processing/ for the batch");
	run_one(loop, src, doc, sizeof(doc));
	cr_assert_eq(recycled(src), 1);
	spool_source_ops.close(src);
	ev_loop_destroy(loop);
}

Test(spool, spares_stay_bounded_and_an_idle_worker_gives_them_up)
{
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	enum { BATCH = 20, ROUNDS = 3 };
	struct job *jobs[BATCH];
	char doc[BATCH][128];

	enqueue_padded("b", BATCH * ROUNDS, 10);
	struct source *src = open_source(loop);
	for (int r = 0; r < ROUNDS; r++) {
		for (int i = 0; i < BATCH; i++)
			jobs[i] = take_one(src);
		for (int i = 0; i < BATCH; i++) { /* all finished together: one group commit */
			snprintf(doc[i], sizeof(doc[i]), "{\"id\":\"%s\"}", jobs[i]->id);
			spool_source_ops.finish(src, jobs[i], true, doc[i], strlen(doc[i]));
		}
		commit(loop, src);
		cr_assert_leq(count_suffix("tmp", ".spare"), 16, "more spares than 2 x 8 (max_concurrent 0)");
	}
	cr_assert_eq(count_entries("complete", NULL, 0), BATCH * ROUNDS);
	cr_assert_gt(count_suffix("tmp", ".spare"), 0);
	/* No outcome for a whole safety pass: they go (take() runs the pass once a second). */
	struct job *none = NULL;
	double deadline = ev_time() + 10;
	while (count_suffix("tmp", ".spare") > 0 && ev_time() < deadline) {
		cr_assert_eq(spool_source_ops.take(src, &none), SOURCE_EMPTY);
		ev_sleep(0.05);
		ev_now_update(loop);
	}
	cr_assert_eq(count_entries("tmp", NULL, 0), 0, "an idle worker keeps no spare");
	spool_source_ops.close(src);
	ev_loop_destroy(loop);
}

Test(spool, a_job_file_with_another_link_is_never_reused)
{
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	char job_path[512], keep[512], doc[128];
	static const char payload[] = "{\"id\":\"linked\",\"keep\":\"this text\"}";

	put_incoming("linked.json", payload, 0);
	sub_path(job_path, sizeof(job_path), "incoming", "linked.json");
	snprintf(keep, sizeof(keep), "%s/kept-copy.json", spool_dir);
	cr_assert_eq(link(job_path, keep), 0);
	enqueue_padded("after", 12, 10);
	struct source *src = open_source(loop);
	for (int i = 0; i < 13; i++)
		run_one(loop, src, doc, sizeof(doc));
	cr_assert_gt(recycled(src), 0);
	FILE *f = fopen(keep, "r");
	cr_assert_not_null(f);
	char back[256] = "";
	cr_assert_not_null(fgets(back, sizeof(back), f));
	fclose(f);
	cr_assert_str_eq(back, payload, "the producer's other name must keep the job");
	spool_source_ops.close(src);
	unlink(keep);
	ev_loop_destroy(loop);
}

/* A worker with spares in tmp/ that waits on report_fd's peer, then dies (no close). */
static pid_t fork_spare_keeper(int report_fd, int hold_fd)
{
	pid_t pid = fork_helper();
	if (pid == 0) {
		struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
		char doc[128];
		struct source *src = open_source(loop);
		for (int i = 0; i < 3; i++)
			run_one(loop, src, doc, sizeof(doc));
		char c = 'k';
		if (write_all(report_fd, &c, 1) < 0 || read_full(hold_fd, &c, 1) < 0)
			_exit(2);
		_exit(0); /* dies without closing its source: its locks go with it */
	}
	return pid;
}

Test(spool, spares_of_a_dead_worker_are_swept_and_a_live_one_keeps_its_own)
{
	int report[2], hold[2], status;
	char c;

	enqueue_padded("d", 3, 10);
	cr_assert_eq(pipe(report), 0);
	cr_assert_eq(pipe(hold), 0);
	pid_t keeper = fork_spare_keeper(report[1], hold[0]);
	cr_assert_eq(read_full(report[0], &c, 1), 1, "keeper failed");
	cr_assert_eq(count_suffix("tmp", ".spare"), 3);
	cr_assert_geq(spool_reclaim(spool_dir), 0); /* another worker died: the sweep runs */
	cr_assert_eq(count_suffix("tmp", ".spare"), 3, "a live worker's spares must stay");
	cr_assert_eq(write_all(hold[1], "x", 1), 0);
	cr_assert_eq(waitpid_retry(keeper, &status, 0), keeper);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	cr_assert_geq(spool_reclaim(spool_dir), 0);
	cr_assert_eq(count_entries("tmp", NULL, 0), 0, "a dead worker's spares go at once");
	cr_assert_eq(count_entries("complete", NULL, 0), 3);
	close(report[0]);
	close(report[1]);
	close(hold[0]);
	close(hold[1]);
}
