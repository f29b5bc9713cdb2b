/*
 * Unit tests of config: defaults, file parsing (inih with our line-counting
 * reader), every error path with its exact message, environment precedence,
 * topics, librdkafka pass-through, reload equality and secrets. Criterion
 * runs each test in its own process, so setenv/unsetenv here stay local.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <ftw.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "shared/config.h"

extern char **environ;

static char tmpdir[64];

/* Drops every variable config reads, so the caller's environment cannot leak in. */
static void clean_environment(void)
{
	static const char *const seeds[] = { "PROCESSING_WORKER_INSTANCES", "MAX_CONCURRENT_GENERATIONS",
		"GENERATION_TIMEOUT_MS", "USE_KAFKA", "KAFKA_BROKERS", "KAFKA_CLIENT_ID", "KAFKA_CONSUMER_GROUP",
		"KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD", "KAFKA_SSL" };
	for (size_t i = 0; i < sizeof(seeds) / sizeof(seeds[0]); i++)
		unsetenv(seeds[i]);
	for (;;) {
		char name[256] = "";
		for (char **e = environ; *e != NULL; e++) {
			if (strncmp(*e, "DROVER_", 7) == 0) {
				snprintf(name, sizeof(name), "%.*s", (int)strcspn(*e, "="), *e);
				break;
			}
		}
		if (name[0] == '\0')
			break;
		unsetenv(name);
	}
}

static void setup(void)
{
	clean_environment();
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/drover-config-test-XXXXXX");
	cr_assert_not_null(mkdtemp(tmpdir));
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	return remove(path);
}

static void teardown(void)
{
	nftw(tmpdir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

TestSuite(config, .init = setup, .fini = teardown);

/* Writes a file under the test's directory; returns its path (static buffer per call slot). */
static const char *write_file(const char *name, const char *text, mode_t mode)
{
	static char paths[8][256];
	static int next;
	char *path = paths[next++ % 8];
	snprintf(path, 256, "%s/%s", tmpdir, name);
	FILE *f = fopen(path, "w");
	cr_assert_not_null(f, "cannot write %s", path);
	fputs(text, f);
	fclose(f);
	chmod(path, mode);
	return path;
}

static const char *write_config(const char *text)
{
	return write_file("drover.ini", text, 0644);
}

/* A valid file: a handler that exists, plus extra lines. */
static const char *config_with(const char *extra)
{
	char text[8192];
	snprintf(text, sizeof(text), "[jobs]\nhandler = /bin/cat\n%s", extra);
	return write_config(text);
}

static struct config *load_ok(const char *path)
{
	struct config_errors errs = { NULL, 0 };
	struct config *cfg = config_load(path, &errs);
	for (size_t i = 0; i < errs.count; i++)
		cr_log_error("unexpected: %s", errs.lines[i]);
	cr_assert_not_null(cfg, "config %s did not load", path);
	cr_assert_eq(errs.count, 0);
	config_errors_clear(&errs);
	return cfg;
}

/* Loads a file that must fail; the caller checks errs and clears it. */
static void load_fails(const char *path, struct config_errors *errs)
{
	struct config *cfg = config_load(path, errs);
	cr_assert_null(cfg, "config %s should not load", path);
	cr_assert_gt(errs->count, 0);
}

static void expect_error(const struct config_errors *errs, const char *fmt, ...)
{
	char want[2048];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(want, sizeof(want), fmt, ap);
	va_end(ap);
	for (size_t i = 0; i < errs->count; i++)
		if (strcmp(errs->lines[i], want) == 0)
			return;
	for (size_t i = 0; i < errs->count; i++)
		cr_log_error("got:  %s", errs->lines[i]);
	cr_assert_fail("missing error: %s", want);
}

/* Loads a file that must fail with exactly one error, equal to the formatted text. */
static void expect_only_error(const char *path, const char *fmt, ...)
{
	char want[2048];
	struct config_errors errs = { NULL, 0 };
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(want, sizeof(want), fmt, ap);
	va_end(ap);
	load_fails(path, &errs);
	for (size_t i = 0; i < errs.count; i++)
		cr_log_info("got:  %s", errs.lines[i]);
	cr_assert_eq(errs.count, 1, "expected one error: %s", want);
	cr_assert_str_eq(errs.lines[0], want);
	config_errors_clear(&errs);
}

static const struct topic_config *find_topic(const struct config *cfg, const char *name)
{
	for (size_t i = 0; i < cfg->topic_count; i++)
		if (strcmp(cfg->topics[i].name, name) == 0)
			return &cfg->topics[i];
	return NULL;
}

static const char *find_pair(const struct config_pair *pairs, size_t count, const char *key)
{
	for (size_t i = 0; i < count; i++)
		if (strcmp(pairs[i].key, key) == 0)
			return pairs[i].value;
	return NULL;
}

/* ---- defaults ------------------------------------------------------------ */

Test(config, defaults_of_every_option)
{
	struct config *cfg = load_ok(config_with(""));
	char host[256] = "";
	gethostname(host, sizeof(host) - 1);

	cr_assert_eq(cfg->workers, 3);
	cr_assert_str_eq(cfg->control_socket, "/run/drover/drover.sock");
	cr_assert_eq(cfg->control_socket_mode, 0660);
	cr_assert_str_eq(cfg->pid_file, "/run/drover/drover.pid");
	cr_assert_str_eq(cfg->user, "");
	cr_assert_str_eq(cfg->group, "");
	cr_assert_str_eq(cfg->log_file, "-");
	cr_assert_eq(cfg->log_level, LOG_LEVEL_INFO);
	cr_assert_eq(cfg->log_format, LOG_FORMAT_TEXT);
	cr_assert_eq(cfg->shutdown_timeout_ms, 30000);
	cr_assert_eq(cfg->restart_delay_ms, 100);
	cr_assert_eq(cfg->restart_delay_max_ms, 30000);
	cr_assert_eq(cfg->heartbeat_timeout_ms, 60000);

	cr_assert_str_eq(cfg->handler, "/bin/cat");
	cr_assert_eq(cfg->max_concurrent, 10);
	cr_assert_eq(cfg->timeout_ms, 300000);
	cr_assert_eq(cfg->kill_grace_ms, 5000);
	cr_assert_eq(cfg->max_attempts, 3);
	cr_assert_eq(cfg->retry_delay_ms, 1000);
	for (int code = 0; code < 256; code++)
		cr_assert_eq(cfg->no_retry_exit[code], code == 64 || code == 65, "code %d", code);
	cr_assert_eq(cfg->max_result_bytes, 1048576);
	cr_assert_str_eq(cfg->working_dir, "");
	cr_assert_eq(cfg->handler_env_count, 0);

	cr_assert_eq(cfg->backend, BACKEND_SPOOL);
	cr_assert_str_eq(cfg->spool_dir, "/var/lib/drover/spool");

	cr_assert_str_eq(cfg->kafka_brokers, "localhost:9092");
	cr_assert_str_eq(cfg->kafka_client_id, "drover");
	cr_assert_str_eq(cfg->kafka_group_id, "drover-workers");
	cr_assert_str_eq(cfg->requests_topic, "image.generation.requests");
	cr_assert_str_eq(cfg->status_topic, "image.generation.status");
	cr_assert_str_eq(cfg->complete_topic, "image.generation.complete");
	cr_assert_str_eq(cfg->failed_topic, "image.generation.failed");
	cr_assert(cfg->static_membership);
	cr_assert_str_eq(cfg->instance_id, host);
	cr_assert_eq(cfg->security_protocol, SECURITY_PLAINTEXT);
	cr_assert_str_eq(cfg->sasl_mechanism, "SCRAM-SHA-512");
	cr_assert_str_eq(cfg->sasl_username, "");
	cr_assert_str_eq(cfg->sasl_password, "");
	cr_assert_str_eq(cfg->sasl_password_file, "");
	cr_assert_str_eq(cfg->ssl_ca_location, "");
	cr_assert_eq(cfg->librdkafka_count, 0);
	cr_assert_str_eq(cfg->file, config_with(""));
	config_free(cfg);
}

Test(config, default_topics)
{
	struct config *cfg = load_ok(config_with(""));
	cr_assert_eq(cfg->topic_count, 4);
	const struct {
		const char *name;
		int partitions;
		long long retention_ms;
	} want[] = {
		{ "image.generation.requests", 6, 604800000 },
		{ "image.generation.status", 3, 86400000 },
		{ "image.generation.complete", 3, 604800000 },
		{ "image.generation.failed", 3, 604800000 },
	};
	for (size_t i = 0; i < 4; i++) {
		cr_assert_str_eq(cfg->topics[i].name, want[i].name);
		cr_assert_eq(cfg->topics[i].partitions, want[i].partitions, "%s", want[i].name);
		cr_assert_eq(cfg->topics[i].replication_factor, 1);
		cr_assert_eq(cfg->topics[i].retention_ms, want[i].retention_ms, "%s", want[i].name);
		cr_assert_eq(cfg->topics[i].line, 0);
	}
	config_free(cfg);
}

Test(config, default_file_name)
{
	struct config_errors errs = { NULL, 0 };
	struct config *cfg = config_load(NULL, &errs);
	if (access(CONFIG_DEFAULT_FILE, R_OK) == 0) {
		config_free(cfg);
		config_errors_clear(&errs);
		cr_skip_test("%s exists on this machine", CONFIG_DEFAULT_FILE);
	}
	cr_assert_null(cfg);
	expect_error(&errs, "%s: cannot open: %s", CONFIG_DEFAULT_FILE, strerror(ENOENT));
	config_errors_clear(&errs);
}

Test(config, missing_file)
{
	char path[300];
	snprintf(path, sizeof(path), "%s/nope.ini", tmpdir);
	expect_only_error(path, "%s: cannot open: No such file or directory", path);
}

Test(config, reference_file_loads_and_matches_defaults)
{
	const char *reference = "conf/drover.ini";
	if (access(reference, R_OK) != 0)
		reference = "../conf/drover.ini";
	setenv("DROVER_JOBS_HANDLER", "/bin/cat", 1);
	struct config *from_file = load_ok(reference);
	struct config *builtin = load_ok(write_config("[jobs]\n"));
	cr_assert(config_worker_equal(from_file, builtin), "conf/drover.ini must state the defaults");
	cr_assert_eq(from_file->workers, builtin->workers);
	cr_assert_str_eq(from_file->control_socket, builtin->control_socket);
	cr_assert_eq(from_file->control_socket_mode, builtin->control_socket_mode);
	cr_assert_str_eq(from_file->pid_file, builtin->pid_file);
	cr_assert_eq(from_file->shutdown_timeout_ms, builtin->shutdown_timeout_ms);
	cr_assert_eq(from_file->restart_delay_ms, builtin->restart_delay_ms);
	cr_assert_eq(from_file->restart_delay_max_ms, builtin->restart_delay_max_ms);
	cr_assert_eq(from_file->heartbeat_timeout_ms, builtin->heartbeat_timeout_ms);
	cr_assert_eq(from_file->log_level, builtin->log_level);
	cr_assert_eq(from_file->log_format, builtin->log_format);
	config_free(from_file);
	config_free(builtin);
}

Test(config, reference_file_has_every_key)
{
	const char *reference = "conf/drover.ini";
	if (access(reference, R_OK) != 0)
		reference = "../conf/drover.ini";
	char *ini = NULL;
	size_t ini_len = 0;
	FILE *f = fopen(reference, "r");
	cr_assert_not_null(f);
	FILE *mem = open_memstream(&ini, &ini_len);
	char line[1024];
	while (fgets(line, sizeof(line), f) != NULL)
		fputs(line, mem);
	fclose(f);
	fclose(mem);

	char *ref = NULL;
	size_t ref_len = 0;
	mem = open_memstream(&ref, &ref_len);
	config_print_reference(mem);
	fclose(mem);
	int keys = 0;
	for (char *p = ref; *p != '\0'; p = strchr(p, '\n') + 1) {
		char section[64], key[64];
		if (sscanf(p, "[%63[^]]] %63s =", section, key) != 2 || strcmp(section, "librdkafka") == 0 ||
		    strchr(key, '.') != NULL || strcmp(key, ";") == 0)
			continue;
		char header[80], assignment[80];
		snprintf(header, sizeof(header), "\n[%s]", section);
		snprintf(assignment, sizeof(assignment), "\n%s =", key);
		if (strcmp(section, "topic:NAME") == 0)
			snprintf(header, sizeof(header), "\n[topic:");
		char *in_section = strstr(ini, header);
		cr_assert_not_null(in_section, "conf/drover.ini lacks [%s]", section);
		char *at = strstr(in_section, assignment);
		cr_assert_not_null(at, "conf/drover.ini lacks [%s] %s", section, key);
		at += strlen(assignment);
		cr_assert(*at == ' ' || *at == '\n', "conf/drover.ini lacks [%s] %s", section, key);
		keys++;
	}
	cr_assert_geq(keys, 40);
	free(ini);
	free(ref);
}

Test(config, print_reference_lists_the_table)
{
	char *ref = NULL;
	size_t len = 0;
	FILE *mem = open_memstream(&ref, &len);
	config_print_reference(mem);
	fclose(mem);
	cr_assert_not_null(strstr(ref, "[supervisor] workers = 3 ; worker processes (allowed: 1..256; env: "
				       "PROCESSING_WORKER_INSTANCES DROVER_SUPERVISOR_WORKERS)\n"));
	cr_assert_not_null(strstr(ref, "[spool] dir = /var/lib/drover/spool ;"));
	cr_assert_not_null(strstr(ref, "DROVER_SPOOL_DIR)"));
	cr_assert_not_null(strstr(ref, "[jobs] env.NAME = value ;"));
	cr_assert_not_null(strstr(ref, "[topic:NAME] partitions = "));
	cr_assert_not_null(strstr(ref, "[librdkafka] NAME = value ;"));
	free(ref);
}

/* ---- file syntax ------------------------------------------------------------- */

Test(config, inline_comments_are_stripped)
{
	struct config *cfg = load_ok(config_with("max_concurrent = 7        ; MAX_CONCURRENT_GENERATIONS\n"
						 "timeout_ms = 1234\t; tab before the comment\n"
						 "env.GREETING = a;b ; only the second ';' starts a comment\n"
						 "working_dir =        ; empty value\n"
						 "[supervisor]   ; comment after a header\n"
						 "; whole-line comment\n"
						 "# hash comment\n"
						 "workers = 2\n"));
	cr_assert_eq(cfg->max_concurrent, 7);
	cr_assert_eq(cfg->timeout_ms, 1234);
	cr_assert_str_eq(find_pair(cfg->handler_env, cfg->handler_env_count, "GREETING"), "a;b");
	cr_assert_str_eq(cfg->working_dir, "");
	cr_assert_eq(cfg->workers, 2);
	config_free(cfg);
}

Test(config, indented_lines_are_ordinary_lines)
{
	/* inih would take an indented line as a continuation of the previous value */
	struct config *cfg = load_ok(config_with("max_concurrent = 7\n"
						 "    timeout_ms = 99\n"
						 "\tmax_attempts = 5\n"));
	cr_assert_eq(cfg->max_concurrent, 7);
	cr_assert_eq(cfg->timeout_ms, 99);
	cr_assert_eq(cfg->max_attempts, 5);
	config_free(cfg);
}

Test(config, crlf_bom_and_colon)
{
	struct config *cfg = load_ok(write_config("\xEF\xBB\xBF[jobs]\r\nhandler = /bin/cat\r\nmax_attempts: 4\r\n"
						  "[supervisor]\r\nworkers = 5  \r\n"));
	cr_assert_eq(cfg->max_attempts, 4);
	cr_assert_eq(cfg->workers, 5);
	config_free(cfg);
}

Test(config, long_handler_line)
{
	char extra[4200];
	char arg[3001];
	memset(arg, 'a', 3000);
	arg[3000] = '\0';
	snprintf(extra, sizeof(extra), "[jobs]\nhandler = /bin/cat %s --end\n", arg);
	struct config *cfg = load_ok(write_config(extra));
	cr_assert_eq(strlen(cfg->handler_argv[1]), 3000);
	cr_assert_str_eq(cfg->handler_argv[2], "--end");
	config_free(cfg);
}

Test(config, too_long_line)
{
	char text[6000];
	char value[5001];
	memset(value, '7', 5000);
	value[5000] = '\0';
	snprintf(text, sizeof(text), "[jobs]\nhandler = /bin/cat\nmax_result_bytes = %s\nmax_attempts = 2\n", value);
	const char *path = write_config(text);
	expect_only_error(path, "%s:3: line too long (allowed: at most 4096 characters)", path);
}

Test(config, key_outside_section)
{
	const char *path = write_config("workers = 3\n[jobs]\nhandler = /bin/cat\n");
	expect_only_error(path, "%s:1: workers: key outside any section (allowed: after one of [supervisor, jobs, "
			  "queue, spool, kafka, topic:NAME, librdkafka])", path);
}

Test(config, line_without_equals)
{
	const char *path = config_with("[supervisor]\nworkers 3\n");
	expect_only_error(path, "%s:4: syntax error: expected \"key = value\" or \"[section]\"", path);
}

Test(config, section_without_bracket)
{
	const char *path = config_with("[supervisor\nworkers = 3\n");
	struct config_errors errs = { NULL, 0 };
	load_fails(path, &errs);
	expect_error(&errs, "%s:3: syntax error: section header without ']' (allowed: [section])", path);
	cr_assert_eq(errs.count, 1, "its keys are not reported again");
	config_errors_clear(&errs);
}

Test(config, nul_byte)
{
	const char *path = write_file("drover.ini", "", 0644);
	FILE *f = fopen(path, "w");
	fwrite("[jobs]\nhandler = /bin/cat\nmax_attempts = 2\0x\n", 1, 45, f);
	fclose(f);
	expect_only_error(path, "%s:3: syntax error: NUL byte in line", path);
}

Test(config, unknown_section_reported_once)
{
	const char *path = config_with("[nosuch]\na = 1\nb = 2\n[topic:]\nc = 3\n[topic:bad name]\n");
	struct config_errors errs = { NULL, 0 };
	load_fails(path, &errs);
	expect_error(&errs, "%s:3: [nosuch]: unknown section (allowed: supervisor, jobs, queue, spool, kafka, "
		     "topic:NAME, librdkafka)", path);
	expect_error(&errs, "%s:6: [topic:]: unknown section (allowed: supervisor, jobs, queue, spool, kafka, "
		     "topic:NAME, librdkafka)", path);
	expect_error(&errs, "%s:8: [topic:bad name]: unknown section (allowed: supervisor, jobs, queue, spool, "
		     "kafka, topic:NAME, librdkafka)", path);
	cr_assert_eq(errs.count, 3);
	config_errors_clear(&errs);
}

Test(config, unknown_key)
{
	const char *path = config_with("[spool]\ndirectory = /tmp\n");
	expect_only_error(path, "%s:4: [spool] directory: unknown key (allowed: dir)", path);
}

Test(config, unknown_key_in_jobs_mentions_env)
{
	const char *path = config_with("concurrency = 3\n");
	struct config_errors errs = { NULL, 0 };
	load_fails(path, &errs);
	cr_assert_eq(errs.count, 1);
	cr_assert_not_null(strstr(errs.lines[0], ":3: [jobs] concurrency: unknown key (allowed: handler, "));
	cr_assert_not_null(strstr(errs.lines[0], ", env.NAME)"));
	config_errors_clear(&errs);
}

Test(config, duplicate_key)
{
	const char *path = config_with("max_attempts = 2\n\nmax_attempts = 3\n");
	expect_only_error(path, "%s:5: [jobs] max_attempts: duplicate key, first set on line 3 (allowed: each key once)",
			  path);
}

Test(config, duplicate_key_after_a_bad_value)
{
	const char *path = config_with("max_attempts = x\nmax_attempts = 3\n");
	struct config_errors errs = { NULL, 0 };
	load_fails(path, &errs);
	expect_error(&errs, "%s:3: [jobs] max_attempts: \"x\" is not a number (allowed: 1..100)", path);
	expect_error(&errs, "%s:4: [jobs] max_attempts: duplicate key, first set on line 3 (allowed: each key once)",
		     path);
	config_errors_clear(&errs);
}

Test(config, duplicate_key_in_reopened_section)
{
	const char *path = config_with("[spool]\ndir = /a\n[spool]\ndir = /b\n");
	expect_only_error(path, "%s:6: [spool] dir: duplicate key, first set on line 4 (allowed: each key once)", path);
}

/* ---- values ------------------------------------------------------------------- */

Test(config, numbers)
{
	struct config *cfg = load_ok(config_with("max_concurrent = 256\nmax_attempts = +100\nkill_grace_ms = 0\n"
						 "retry_delay_ms = 0\nmax_result_bytes = 1\n"
						 "[supervisor]\nworkers = 1\n"));
	cr_assert_eq(cfg->max_concurrent, 256);
	cr_assert_eq(cfg->max_attempts, 100);
	cr_assert_eq(cfg->kill_grace_ms, 0);
	cr_assert_eq(cfg->retry_delay_ms, 0);
	cr_assert_eq(cfg->max_result_bytes, 1);
	cr_assert_eq(cfg->workers, 1);
	config_free(cfg);
}

Test(config, number_errors)
{
	const char *path = config_with("max_concurrent = 257\n"
				       "max_attempts = 0\n"
				       "timeout_ms = 0\n"
				       "kill_grace_ms = -1\n"
				       "retry_delay_ms = 10s\n"
				       "max_result_bytes = lots\n"
				       "[supervisor]\n"
				       "workers = 99999999999999999999999\n"
				       "shutdown_timeout_ms =\n"
				       "heartbeat_timeout_ms = 1.5\n"
				       "restart_delay_ms = 0x10\n");
	struct config_errors errs = { NULL, 0 };
	load_fails(path, &errs);
	expect_error(&errs, "%s:3: [jobs] max_concurrent: \"257\" is out of range (allowed: 1..256)", path);
	expect_error(&errs, "%s:4: [jobs] max_attempts: \"0\" is out of range (allowed: 1..100)", path);
	expect_error(&errs, "%s:5: [jobs] timeout_ms: \"0\" is out of range (allowed: 1..2592000000 milliseconds)",
		     path);
	expect_error(&errs, "%s:6: [jobs] kill_grace_ms: \"-1\" is out of range (allowed: 0..2592000000 milliseconds)",
		     path);
	expect_error(&errs, "%s:7: [jobs] retry_delay_ms: \"10s\" has junk after the number (allowed: "
		     "0..2592000000 milliseconds)", path);
	expect_error(&errs, "%s:8: [jobs] max_result_bytes: \"lots\" is not a number (allowed: 1..1073741824 bytes, "
		     "K/M/G suffixes)",
		     path);
	expect_error(&errs, "%s:10: [supervisor] workers: \"99999999999999999999999\" is out of range (allowed: "
		     "1..256)", path);
	expect_error(&errs, "%s:11: [supervisor] shutdown_timeout_ms: \"\" is empty (allowed: 1..2592000000 "
		     "milliseconds)", path);
	expect_error(&errs, "%s:12: [supervisor] heartbeat_timeout_ms: \"1.5\" has junk after the number (allowed: "
		     "1..2592000000 milliseconds)", path);
	expect_error(&errs, "%s:13: [supervisor] restart_delay_ms: \"0x10\" has junk after the number (allowed: "
		     "1..2592000000 milliseconds)", path);
	cr_assert_eq(errs.count, 10, "all errors, not only the first");
	config_errors_clear(&errs);
}

Test(config, booleans)
{
	const char *spellings[][2] = { { "true", "1" }, { "yes", "1" }, { "on", "1" }, { "1", "1" }, { "TRUE", "1" },
		{ "false", "0" }, { "no", "0" }, { "off", "0" }, { "0", "0" }, { "Off", "0" } };
	for (size_t i = 0; i < sizeof(spellings) / sizeof(spellings[0]); i++) {
		char extra[128];
		snprintf(extra, sizeof(extra), "[kafka]\nstatic_membership = %s\n", spellings[i][0]);
		struct config *cfg = load_ok(config_with(extra));
		cr_assert_eq(cfg->static_membership, spellings[i][1][0] == '1', "%s", spellings[i][0]);
		config_free(cfg);
	}
}

Test(config, bad_boolean)
{
	const char *path = config_with("[kafka]\nstatic_membership = maybe\n");
	expect_only_error(path, "%s:4: [kafka] static_membership: \"maybe\" is not a boolean (allowed: true, false, yes, "
			  "no, on, off, 1, 0)", path);
}

Test(config, enums)
{
	struct config *cfg = load_ok(config_with("[supervisor]\nlog_level = DEBUG\nlog_format = json\n"
						 "[queue]\nbackend = kafka\n"
						 "[kafka]\nsecurity_protocol = ssl\nsasl_mechanism = scram-sha-256\n"));
	cr_assert_eq(cfg->log_level, LOG_LEVEL_DEBUG);
	cr_assert_eq(cfg->log_format, LOG_FORMAT_JSON);
	cr_assert_eq(cfg->backend, BACKEND_KAFKA);
	cr_assert_eq(cfg->security_protocol, SECURITY_SSL);
	cr_assert_str_eq(cfg->sasl_mechanism, "SCRAM-SHA-256", "stored as librdkafka spells it");
	config_free(cfg);
}

Test(config, persistent_handler_keys)
{
	struct config *cfg = load_ok(config_with(""));
	cr_assert_eq(cfg->handler_mode, HANDLER_MODE_EXEC, "exec stays the default");
	cr_assert_eq(cfg->handler_concurrency, 1);
	cr_assert_eq(cfg->handler_max_jobs, 0);
	cr_assert_eq(cfg->handler_max_rss_mb, 0);
	cr_assert_eq(cfg->handler_start_timeout_ms, 60000);
	config_free(cfg);

	cfg = load_ok(config_with("handler_mode = persistent\nhandler_concurrency = 20\nhandler_max_jobs = 1000\n"
				  "handler_max_jobs_jitter = 50\nhandler_max_rss_mb = 512\nhandler_start_timeout_ms = 5000\n"));
	cr_assert_eq(cfg->handler_mode, HANDLER_MODE_PERSISTENT);
	cr_assert_eq(cfg->handler_concurrency, 20);
	cr_assert_eq(cfg->handler_max_jobs, 1000);
	cr_assert_eq(cfg->handler_max_jobs_jitter, 50);
	cr_assert_eq(cfg->handler_max_rss_mb, 512);
	cr_assert_eq(cfg->handler_start_timeout_ms, 5000);
	config_free(cfg);

	setenv("DROVER_JOBS_HANDLER_MODE", "persistent", 1);
	setenv("DROVER_JOBS_HANDLER_CONCURRENCY", "4", 1);
	cfg = load_ok(config_with("handler_mode = exec\n"));
	cr_assert_eq(cfg->handler_mode, HANDLER_MODE_PERSISTENT, "the environment wins over the file");
	cr_assert_eq(cfg->handler_concurrency, 4);
	config_free(cfg);
}

Test(config, a_recycling_jitter_needs_a_recycling_limit)
{
	const char *path = config_with("handler_mode = persistent\nhandler_max_jobs_jitter = 50\n");
	expect_only_error(path, "%s:4: [jobs] handler_max_jobs_jitter: 50 without handler_max_jobs (allowed: 0 while "
			  "handler_max_jobs is 0)", path);
	struct config *cfg = load_ok(config_with("handler_max_jobs = 100\nhandler_max_jobs_jitter = 50\n"));
	config_free(cfg);
}

Test(config, persistent_handler_keys_are_checked)
{
	const char *path = config_with("handler_mode = warm\nhandler_concurrency = 0\nhandler_max_rss_mb = -1\n");
	struct config_errors errs = { NULL, 0 };
	load_fails(path, &errs);
	expect_error(&errs, "%s:3: [jobs] handler_mode: \"warm\" is not a known value (allowed: exec, persistent)", path);
	cr_assert_eq(errs.count, 3);
	for (size_t i = 1; i < errs.count; i++)
		cr_assert(strstr(errs.lines[i], "[jobs] handler_") != NULL, "%s", errs.lines[i]);
	config_errors_clear(&errs);
}

Test(config, bad_enums)
{
	const char *path = config_with("[supervisor]\nlog_level = loud\nlog_format = xml\n[queue]\nbackend = redis\n"
				       "[kafka]\nsecurity_protocol = tls\nsasl_mechanism = GSSAPI\n");
	struct config_errors errs = { NULL, 0 };
	load_fails(path, &errs);
	expect_error(&errs, "%s:4: [supervisor] log_level: \"loud\" is not a known value (allowed: error, warn, info, "
		     "debug)", path);
	expect_error(&errs, "%s:5: [supervisor] log_format: \"xml\" is not a known value (allowed: text, json)", path);
	expect_error(&errs, "%s:7: [queue] backend: \"redis\" is not a known value (allowed: spool, kafka)", path);
	expect_error(&errs, "%s:9: [kafka] security_protocol: \"tls\" is not a known value (allowed: plaintext, ssl, "
		     "sasl_plaintext, sasl_ssl)", path);
	expect_error(&errs, "%s:10: [kafka] sasl_mechanism: \"GSSAPI\" is not a known value (allowed: PLAIN, "
		     "SCRAM-SHA-256, SCRAM-SHA-512)", path);
	cr_assert_eq(errs.count, 5);
	config_errors_clear(&errs);
}

Test(config, modes)
{
	struct config *cfg = load_ok(config_with("[supervisor]\ncontrol_socket_mode = 600\n"));
	cr_assert_eq(cfg->control_socket_mode, 0600);
	config_free(cfg);
	cfg = load_ok(config_with("[supervisor]\ncontrol_socket_mode = 0777\n"));
	cr_assert_eq(cfg->control_socket_mode, 0777);
	config_free(cfg);
}

Test(config, bad_modes)
{
	const char *bad[] = { "0999", "rw-rw----", "01777", "", "00660" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char extra[128];
		snprintf(extra, sizeof(extra), "[supervisor]\ncontrol_socket_mode = %s\n", bad[i]);
		const char *path = config_with(extra);
		expect_only_error(path, "%s:4: [supervisor] control_socket_mode: \"%s\" is not a permission mode "
				  "(allowed: an octal mode 0000..0777)", path, bad[i]);
	}
}

Test(config, exit_code_lists)
{
	struct config *cfg = load_ok(config_with("no_retry_exit_codes = 1, 2,3\t255\n"));
	for (int code = 0; code < 256; code++)
		cr_assert_eq(cfg->no_retry_exit[code], code == 1 || code == 2 || code == 3 || code == 255, "%d", code);
	config_free(cfg);
	cfg = load_ok(config_with("no_retry_exit_codes =\n"));
	for (int code = 0; code < 256; code++)
		cr_assert_not(cfg->no_retry_exit[code]);
	config_free(cfg);
}

Test(config, bad_exit_code_lists)
{
	const char *bad[][2] = { { "64 300", "300" }, { "0", "0" }, { "64,x", "x" }, { "6a 7", "6a" },
				 { "-1", "-1" } };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char extra[128];
		snprintf(extra, sizeof(extra), "no_retry_exit_codes = %s\n", bad[i][0]);
		const char *path = config_with(extra);
		expect_only_error(path, "%s:3: [jobs] no_retry_exit_codes: \"%s\" is not an exit code (allowed: exit "
				  "codes 1..255 separated by spaces or commas, or empty)", path, bad[i][1]);
	}
}

/* ---- the handler ---------------------------------------------------------------- */

Test(config, handler_is_split)
{
	struct config *cfg = load_ok(write_config("[jobs]\nhandler = /bin/echo --size 256 \"two words\"\n"));
	cr_assert_str_eq(cfg->handler, "/bin/echo --size 256 \"two words\"");
	cr_assert_str_eq(cfg->handler_argv[0], "/bin/echo");
	cr_assert_str_eq(cfg->handler_argv[1], "--size");
	cr_assert_str_eq(cfg->handler_argv[2], "256");
	cr_assert_str_eq(cfg->handler_argv[3], "two words");
	cr_assert_null(cfg->handler_argv[4]);
	config_free(cfg);
}

Test(config, handler_found_through_path)
{
	char bin[300];
	snprintf(bin, sizeof(bin), "%s/bin", tmpdir);
	mkdir(bin, 0755);
	write_file("bin/myhandler", "#!/bin/sh\nexit 0\n", 0755);
	char path_env[700];
	snprintf(path_env, sizeof(path_env), "%s/nonexistent:%s", tmpdir, bin);
	setenv("PATH", path_env, 1);
	struct config *cfg = load_ok(write_config("[jobs]\nhandler = myhandler --x\n"));
	char want[400];
	snprintf(want, sizeof(want), "%s/myhandler", bin);
	cr_assert_str_eq(cfg->handler_argv[0], want);
	cr_assert_str_eq(cfg->handler_argv[1], "--x");
	cr_assert_str_eq(cfg->handler, "myhandler --x", "the text stays as written");
	config_free(cfg);
}

Test(config, relative_handler_becomes_absolute)
{
	cr_assert_eq(chdir(tmpdir), 0);
	write_file("h.sh", "#!/bin/sh\n", 0755);
	struct config *cfg = load_ok(write_config("[jobs]\nhandler = ./h.sh\n"));
	char want[300];
	snprintf(want, sizeof(want), "%s/h.sh", tmpdir);
	cr_assert_str_eq(cfg->handler_argv[0], want);
	config_free(cfg);
}

Test(config, handler_missing)
{
	const char *path = write_config("[jobs]\nhandler = /nonexistent/demo --size 1\n");
	expect_only_error(path, "%s:2: [jobs] handler: cannot run \"/nonexistent/demo\": No such file or directory "
			  "(allowed: an executable file)", path);
}

Test(config, handler_not_in_path)
{
	setenv("PATH", tmpdir, 1);
	const char *path = write_config("[jobs]\nhandler = no-such-handler-xyz\n");
	expect_only_error(path, "%s:2: [jobs] handler: \"no-such-handler-xyz\" not found in PATH (allowed: an "
			  "executable file; a name without '/' is looked up in PATH)", path);
}

Test(config, handler_not_executable)
{
	const char *script = write_file("noexec.sh", "#!/bin/sh\n", 0644);
	char text[400];
	snprintf(text, sizeof(text), "[jobs]\nhandler = %s\n", script);
	const char *path = write_config(text);
	expect_only_error(path, "%s:2: [jobs] handler: cannot run \"%s\": Permission denied (allowed: an executable "
			  "file)", path, script);
}

Test(config, handler_is_a_directory)
{
	char text[400];
	snprintf(text, sizeof(text), "[jobs]\nhandler = %s\n", tmpdir);
	const char *path = write_config(text);
	expect_only_error(path, "%s:2: [jobs] handler: cannot run \"%s\": Is a directory (allowed: an executable file)",
			  path, tmpdir);
}

Test(config, handler_unterminated_quote)
{
	const char *path = write_config("[jobs]\nhandler = /bin/cat \"open\n");
	expect_only_error(path, "%s:2: [jobs] handler: unterminated quote (allowed: a program and its arguments; "
			  "\"double quotes\" group words; a name without '/' is looked up in PATH)", path);
}

Test(config, handler_empty)
{
	const char *path = write_config("[jobs]\nhandler =\n");
	expect_only_error(path, "%s:2: [jobs] handler: empty (allowed: a program and its arguments; \"double quotes\" "
			  "group words; a name without '/' is looked up in PATH)", path);
}

Test(config, default_handler_is_checked)
{
	if (access("/usr/lib/drover/handlers/demo", X_OK) == 0)
		cr_skip_test("drover is installed here");
	const char *path = write_config("[jobs]\n");
	expect_only_error(path, "%s: [jobs] handler: cannot run \"/usr/lib/drover/handlers/demo\": No such file or "
			  "directory (allowed: an executable file)", path);
}

Test(config, handler_env)
{
	struct config *cfg = load_ok(config_with("env.CUDA_VISIBLE_DEVICES = {slot}\nenv.MODEL_DIR = /models/{slot}/x\n"
						 "env._X1 =\n"));
	cr_assert_eq(cfg->handler_env_count, 3);
	cr_assert_str_eq(cfg->handler_env[0].key, "CUDA_VISIBLE_DEVICES");
	cr_assert_str_eq(cfg->handler_env[0].value, "{slot}", "expanded by the worker, not here");
	cr_assert_eq(cfg->handler_env[0].line, 3);
	cr_assert_str_eq(cfg->handler_env[1].key, "MODEL_DIR");
	cr_assert_str_eq(cfg->handler_env[1].value, "/models/{slot}/x");
	cr_assert_str_eq(cfg->handler_env[2].key, "_X1");
	cr_assert_str_eq(cfg->handler_env[2].value, "");
	config_free(cfg);
}

Test(config, handler_env_errors)
{
	const char *path = config_with("env.A = 1\nenv.A = 2\nenv.1X = 3\nenv.A-B = 4\nenv. = 5\n[supervisor]\n"
				       "env.B = 6\n");
	struct config_errors errs = { NULL, 0 };
	load_fails(path, &errs);
	expect_error(&errs, "%s:4: [jobs] env.A: duplicate key, first set on line 3 (allowed: each key once)", path);
	expect_error(&errs, "%s:5: [jobs] env.1X: \"1X\" is not an environment variable name (allowed: env.NAME with "
		     "letters, digits and '_', not starting with a digit)", path);
	expect_error(&errs, "%s:6: [jobs] env.A-B: \"A-B\" is not an environment variable name (allowed: env.NAME with "
		     "letters, digits and '_', not starting with a digit)", path);
	expect_error(&errs, "%s:7: [jobs] env.: \"\" is not an environment variable name (allowed: env.NAME with "
		     "letters, digits and '_', not starting with a digit)", path);
	cr_assert_eq(errs.count, 5);
	cr_assert_not_null(strstr(errs.lines[4], ":9: [supervisor] env.B: unknown key"));
	config_errors_clear(&errs);
}

/* ---- cross-field checks ---------------------------------------------------------- */

Test(config, restart_delay_above_max)
{
	const char *path = config_with("[supervisor]\nrestart_delay_max_ms = 50\n");
	expect_only_error(path, "%s:4: [supervisor] restart_delay_max_ms: 50 is less than restart_delay_ms 100 "
			  "(allowed: at least restart_delay_ms)", path);
	path = config_with("[supervisor]\nrestart_delay_ms = 40000\n");
	expect_only_error(path, "%s:4: [supervisor] restart_delay_ms: 40000 is greater than restart_delay_max_ms 30000 "
			  "(allowed: at most restart_delay_max_ms)", path);
}

Test(config, restart_delay_not_compared_after_a_bad_value)
{
	const char *path = config_with("[supervisor]\nrestart_delay_ms = 12x\nrestart_delay_max_ms = 10\n");
	expect_only_error(path, "%s:4: [supervisor] restart_delay_ms: \"12x\" has junk after the number (allowed: "
			  "1..2592000000 milliseconds)", path);
}

Test(config, kafka_without_brokers)
{
	const char *path = config_with("[queue]\nbackend = kafka\n[kafka]\nbrokers =\n");
	expect_only_error(path, "%s:6: [kafka] brokers: empty while the queue backend is kafka (allowed: "
			  "host:port[,host:port...])", path);
	/* the spool does not need brokers */
	struct config *cfg = load_ok(config_with("[kafka]\nbrokers =\n"));
	config_free(cfg);
}

Test(config, sasl_without_credentials)
{
	const char *path = config_with("[kafka]\nsecurity_protocol = sasl_ssl\n");
	struct config_errors errs = { NULL, 0 };
	load_fails(path, &errs);
	expect_error(&errs, "%s:4: [kafka] security_protocol: sasl_ssl without sasl_username (allowed: set "
		     "sasl_username, or plaintext/ssl)", path);
	expect_error(&errs, "%s:4: [kafka] security_protocol: sasl_ssl without sasl_password or sasl_password_file "
		     "(allowed: set one of them, or plaintext/ssl)", path);
	cr_assert_eq(errs.count, 2);
	config_errors_clear(&errs);

	path = config_with("[kafka]\nsecurity_protocol = sasl_plaintext\nsasl_username = u\n");
	expect_only_error(path, "%s:4: [kafka] security_protocol: sasl_plaintext without sasl_password or "
			  "sasl_password_file (allowed: set one of them, or plaintext/ssl)", path);
}

Test(config, sasl_username_without_sasl_protocol)
{
	const char *path = config_with("[kafka]\nsasl_username = u\n");
	expect_only_error(path, "%s:4: [kafka] sasl_username: set while security_protocol is plaintext, so it would be "
			  "ignored (allowed: security_protocol sasl_plaintext or sasl_ssl)", path);
}

Test(config, sasl_with_password)
{
	struct config *cfg = load_ok(config_with("[kafka]\nsecurity_protocol = sasl_ssl\nsasl_username = u\n"
						 "sasl_password = p4ss\n"));
	cr_assert_eq(cfg->security_protocol, SECURITY_SASL_SSL);
	cr_assert_str_eq(cfg->sasl_password, "p4ss");
	config_free(cfg);
}

Test(config, sasl_password_file_is_read)
{
	const char *secret = write_file("secret", "s3cret value\n", 0600);
	char extra[600];
	snprintf(extra, sizeof(extra), "[kafka]\nsecurity_protocol = sasl_ssl\nsasl_username = u\n"
		 "sasl_password_file = %s\n", secret);
	struct config *cfg = load_ok(config_with(extra));
	cr_assert_str_eq(cfg->sasl_password, "s3cret value", "trailing newline stripped");
	cr_assert_str_eq(cfg->sasl_password_file, secret);
	config_free(cfg);
}

Test(config, sasl_password_and_file_both_set)
{
	const char *secret = write_file("secret", "x\n", 0600);
	char extra[600];
	snprintf(extra, sizeof(extra), "[kafka]\nsecurity_protocol = sasl_ssl\nsasl_username = u\nsasl_password = p\n"
		 "sasl_password_file = %s\n", secret);
	const char *path = config_with(extra);
	expect_only_error(path, "%s:7: [kafka] sasl_password_file: set together with sasl_password (allowed: one of "
			  "sasl_password, sasl_password_file)", path);
}

Test(config, sasl_password_file_unreadable_or_empty)
{
	char missing[300];
	snprintf(missing, sizeof(missing), "%s/missing", tmpdir);
	char extra[600];
	snprintf(extra, sizeof(extra), "[kafka]\nsasl_password_file = %s\n", missing);
	const char *path = config_with(extra);
	expect_only_error(path, "%s:4: [kafka] sasl_password_file: cannot read \"%s\": No such file or directory "
			  "(allowed: a readable file, or empty)", path, missing);

	const char *empty = write_file("empty", "\n", 0600);
	snprintf(extra, sizeof(extra), "[kafka]\nsasl_password_file = %s\n", empty);
	path = config_with(extra);
	expect_only_error(path, "%s:4: [kafka] sasl_password_file: \"%s\" is empty (allowed: a file holding the "
			  "password)", path, empty);
}

Test(config, topic_name_checks)
{
	const char *path = config_with("[kafka]\nrequests_topic =\ncomplete_topic = image.generation.failed\n"
				       "status_topic = bad/name\n");
	struct config_errors errs = { NULL, 0 };
	load_fails(path, &errs);
	expect_error(&errs, "%s:4: [kafka] requests_topic: empty (allowed: a topic name)", path);
	expect_error(&errs, "%s:6: [kafka] status_topic: \"bad/name\" is not a valid topic name (allowed: 1..249 "
		     "letters, digits, '.', '_', '-')", path);
	expect_error(&errs, "%s:5: [kafka] complete_topic: \"image.generation.failed\" is also failed_topic (allowed: "
		     "four different topics)", path);
	cr_assert_eq(errs.count, 3);
	config_errors_clear(&errs);
}

Test(config, control_socket_checks)
{
	char extra[400];
	char longpath[200];
	memset(longpath, 'x', sizeof(longpath) - 1);
	longpath[0] = '/';
	longpath[sizeof(longpath) - 1] = '\0';
	snprintf(extra, sizeof(extra), "[supervisor]\ncontrol_socket = %s\n", longpath);
	const char *path = config_with(extra);
	expect_only_error(path, "%s:4: [supervisor] control_socket: path too long for a Unix socket (allowed: at most "
			  "107 bytes)", path);
	path = config_with("[supervisor]\ncontrol_socket =\n");
	expect_only_error(path, "%s:4: [supervisor] control_socket: empty (allowed: a socket path)", path);
}

Test(config, empty_paths)
{
	const char *path = config_with("[spool]\ndir =\n[supervisor]\nlog_file =\n");
	struct config_errors errs = { NULL, 0 };
	load_fails(path, &errs);
	expect_error(&errs, "%s:4: [spool] dir: empty (allowed: a directory path)", path);
	expect_error(&errs, "%s:6: [supervisor] log_file: empty (allowed: \"-\" for stderr, or a file path)", path);
	cr_assert_eq(errs.count, 2);
	config_errors_clear(&errs);
}

Test(config, working_dir_checks)
{
	char extra[400];
	snprintf(extra, sizeof(extra), "working_dir = %s\n", tmpdir);
	struct config *cfg = load_ok(config_with(extra));
	cr_assert_str_eq(cfg->working_dir, tmpdir);
	config_free(cfg);

	const char *path = config_with("working_dir = /nonexistent/dir\n");
	expect_only_error(path, "%s:3: [jobs] working_dir: cannot use \"/nonexistent/dir\": No such file or directory "
			  "(allowed: an existing directory, or empty)", path);
	path = config_with("working_dir = /bin/cat\n");
	expect_only_error(path, "%s:3: [jobs] working_dir: \"/bin/cat\" is not a directory (allowed: an existing "
			  "directory, or empty)", path);
}

Test(config, user_and_group_must_exist)
{
	struct config *cfg = load_ok(config_with("[supervisor]\nuser = root\ngroup = root\n"));
	cr_assert_str_eq(cfg->user, "root");
	config_free(cfg);
	const char *path = config_with("[supervisor]\nuser = no-such-user-xyz\ngroup = no-such-group-xyz\n");
	struct config_errors errs = { NULL, 0 };
	load_fails(path, &errs);
	expect_error(&errs, "%s:4: [supervisor] user: no such user \"no-such-user-xyz\" (allowed: a user name, or empty)",
		     path);
	expect_error(&errs, "%s:5: [supervisor] group: no such group \"no-such-group-xyz\" (allowed: a group name, or "
		     "empty)", path);
	config_errors_clear(&errs);
}

Test(config, ssl_ca_location_must_be_readable)
{
	const char *path = config_with("[kafka]\nssl_ca_location = /nonexistent/ca.pem\n");
	expect_only_error(path, "%s:4: [kafka] ssl_ca_location: cannot read \"/nonexistent/ca.pem\": No such file or "
			  "directory (allowed: a readable file or directory, or empty)", path);
}

Test(config, all_errors_are_reported)
{
	const char *path = write_config("[supervisor]\nworkers = 0\nlog_level = loud\n[jobs]\nhandler = /nonexistent\n"
					"max_attempts = 1000\n[nosuch]\n[spool]\ndirr = x\n");
	struct config_errors errs = { NULL, 0 };
	load_fails(path, &errs);
	cr_assert_eq(errs.count, 6);
	config_errors_clear(&errs);
}

Test(config, errors_are_appended_and_joined)
{
	struct config_errors errs = { NULL, 0 };
	const char *path = config_with("max_attempts = 0\n[supervisor]\nworkers = 0\n");
	config_load(path, &errs);
	config_load(path, &errs);
	cr_assert_eq(errs.count, 4);
	char joined[4096];
	config_errors_join(&errs, joined, sizeof(joined));
	char want[2048];
	snprintf(want, sizeof(want), "%s; %s; %s; %s", errs.lines[0], errs.lines[1], errs.lines[2], errs.lines[3]);
	cr_assert_str_eq(joined, want);
	char small[20];
	config_errors_join(&errs, small, sizeof(small));
	cr_assert_eq(strlen(small), sizeof(small) - 1, "truncated, still terminated");
	config_errors_clear(&errs);
	cr_assert_eq(errs.count, 0);
	cr_assert_null(errs.lines);
	config_errors_join(&errs, joined, sizeof(joined));
	cr_assert_str_eq(joined, "");
}

Test(config, errs_may_be_null)
{
	cr_assert_null(config_load(config_with("max_attempts = 0\n"), NULL));
	struct config *cfg = config_load(config_with(""), NULL);
	cr_assert_not_null(cfg);
	config_free(cfg);
	config_free(NULL);
}

/* ---- environment ------------------------------------------------------------------- */

Test(config, env_beats_file_beats_default)
{
	setenv("DROVER_JOBS_MAX_ATTEMPTS", "7", 1);
	setenv("DROVER_SPOOL_DIR", "/srv/spool", 1);
	struct config *cfg = load_ok(config_with("max_attempts = 5\ntimeout_ms = 1000\n"));
	cr_assert_eq(cfg->max_attempts, 7, "environment over file");
	cr_assert_eq(cfg->timeout_ms, 1000, "file over default");
	cr_assert_eq(cfg->kill_grace_ms, 5000, "default");
	cr_assert_str_eq(cfg->spool_dir, "/srv/spool");
	config_free(cfg);
}

Test(config, seed_names)
{
	setenv("PROCESSING_WORKER_INSTANCES", "4", 1);
	setenv("MAX_CONCURRENT_GENERATIONS", "2", 1);
	setenv("GENERATION_TIMEOUT_MS", "120000", 1);
	setenv("KAFKA_BROKERS", "b1:9092,b2:9092", 1);
	setenv("KAFKA_CLIENT_ID", "cid", 1);
	setenv("KAFKA_CONSUMER_GROUP", "grp", 1);
	struct config *cfg = load_ok(config_with("max_concurrent = 9\n[supervisor]\nworkers = 8\n"));
	cr_assert_eq(cfg->workers, 4);
	cr_assert_eq(cfg->max_concurrent, 2);
	cr_assert_eq(cfg->timeout_ms, 120000);
	cr_assert_str_eq(cfg->kafka_brokers, "b1:9092,b2:9092");
	cr_assert_str_eq(cfg->kafka_client_id, "cid");
	cr_assert_str_eq(cfg->kafka_group_id, "grp");
	config_free(cfg);
}

Test(config, drover_name_beats_seed_name)
{
	setenv("PROCESSING_WORKER_INSTANCES", "4", 1);
	setenv("DROVER_SUPERVISOR_WORKERS", "6", 1);
	setenv("USE_KAFKA", "true", 1);
	setenv("DROVER_QUEUE_BACKEND", "spool", 1);
	struct config *cfg = load_ok(config_with(""));
	cr_assert_eq(cfg->workers, 6);
	cr_assert_eq(cfg->backend, BACKEND_SPOOL);
	config_free(cfg);
}

Test(config, use_kafka)
{
	setenv("USE_KAFKA", "true", 1);
	struct config *cfg = load_ok(config_with(""));
	cr_assert_eq(cfg->backend, BACKEND_KAFKA);
	config_free(cfg);
	setenv("USE_KAFKA", "false", 1);
	cfg = load_ok(config_with("[queue]\nbackend = kafka\n"));
	cr_assert_eq(cfg->backend, BACKEND_SPOOL);
	config_free(cfg);
	setenv("USE_KAFKA", "", 1);
	cfg = load_ok(config_with("[queue]\nbackend = kafka\n"));
	cr_assert_eq(cfg->backend, BACKEND_KAFKA, "USE_KAFKA= is unset");
	config_free(cfg);
}

Test(config, use_kafka_bad)
{
	setenv("USE_KAFKA", "maybe", 1);
	const char *path = config_with("");
	expect_only_error(path, "env USE_KAFKA: [queue] backend: \"maybe\" is not a boolean (allowed: true, false, yes, "
			  "no, on, off, 1, 0)");
}

Test(config, use_kafka_needs_brokers)
{
	setenv("USE_KAFKA", "1", 1);
	setenv("KAFKA_BROKERS", "", 1);
	const char *path = config_with("");
	expect_only_error(path, "env KAFKA_BROKERS: [kafka] brokers: empty while the queue backend is kafka (allowed: "
			  "host:port[,host:port...])");
}

Test(config, kafka_ssl)
{
	setenv("KAFKA_SSL", "true", 1);
	struct config *cfg = load_ok(config_with(""));
	cr_assert_eq(cfg->security_protocol, SECURITY_SSL);
	config_free(cfg);

	setenv("KAFKA_SASL_USERNAME", "user", 1);
	setenv("KAFKA_SASL_PASSWORD", "pw", 1);
	cfg = load_ok(config_with(""));
	cr_assert_eq(cfg->security_protocol, SECURITY_SASL_SSL);
	cr_assert_str_eq(cfg->sasl_username, "user");
	cr_assert_str_eq(cfg->sasl_password, "pw");
	config_free(cfg);

	setenv("KAFKA_SSL", "false", 1);
	cfg = load_ok(config_with("[kafka]\nsecurity_protocol = sasl_ssl\n"));
	cr_assert_eq(cfg->security_protocol, SECURITY_SASL_PLAINTEXT);
	config_free(cfg);

	unsetenv("KAFKA_SASL_USERNAME");
	unsetenv("KAFKA_SASL_PASSWORD");
	cfg = load_ok(config_with("[kafka]\nsecurity_protocol = ssl\n"));
	cr_assert_eq(cfg->security_protocol, SECURITY_PLAINTEXT);
	config_free(cfg);

	setenv("KAFKA_SSL", "true", 1);
	setenv("DROVER_KAFKA_SECURITY_PROTOCOL", "plaintext", 1);
	cfg = load_ok(config_with(""));
	cr_assert_eq(cfg->security_protocol, SECURITY_PLAINTEXT, "the DROVER_ name wins");
	config_free(cfg);
}

Test(config, kafka_ssl_bad)
{
	setenv("KAFKA_SSL", "tls", 1);
	const char *path = config_with("");
	expect_only_error(path, "env KAFKA_SSL: [kafka] security_protocol: \"tls\" is not a boolean (allowed: true, "
			  "false, yes, no, on, off, 1, 0)");
}

Test(config, env_errors_name_the_variable)
{
	setenv("PROCESSING_WORKER_INSTANCES", "300", 1);
	setenv("DROVER_JOBS_TIMEOUT_MS", "5m", 1);
	setenv("DROVER_SUPERVISOR_CONTROL_SOCKET_MODE", "999", 1);
	const char *path = config_with("");
	struct config_errors errs = { NULL, 0 };
	load_fails(path, &errs);
	expect_error(&errs, "env PROCESSING_WORKER_INSTANCES: [supervisor] workers: \"300\" is out of range (allowed: "
		     "1..256)");
	expect_error(&errs, "env DROVER_JOBS_TIMEOUT_MS: [jobs] timeout_ms: \"5m\" has junk after the number "
		     "(allowed: 1..2592000000 milliseconds)");
	expect_error(&errs, "env DROVER_SUPERVISOR_CONTROL_SOCKET_MODE: [supervisor] control_socket_mode: \"999\" is "
		     "not a permission mode (allowed: an octal mode 0000..0777)");
	cr_assert_eq(errs.count, 3);
	config_errors_clear(&errs);
}

Test(config, env_cross_field_errors_name_the_variable)
{
	setenv("DROVER_SUPERVISOR_RESTART_DELAY_MAX_MS", "10", 1);
	setenv("DROVER_JOBS_HANDLER", "/nonexistent/h", 1);
	const char *path = config_with("");
	struct config_errors errs = { NULL, 0 };
	load_fails(path, &errs);
	expect_error(&errs, "env DROVER_SUPERVISOR_RESTART_DELAY_MAX_MS: [supervisor] restart_delay_max_ms: 10 is less "
		     "than restart_delay_ms 100 (allowed: at least restart_delay_ms)");
	expect_error(&errs, "env DROVER_JOBS_HANDLER: [jobs] handler: cannot run \"/nonexistent/h\": No such file or "
		     "directory (allowed: an executable file)");
	cr_assert_eq(errs.count, 2);
	config_errors_clear(&errs);
}

Test(config, env_fixes_a_bad_handler_in_the_file_but_the_file_error_stays)
{
	setenv("DROVER_JOBS_HANDLER", "/bin/cat", 1);
	const char *path = write_config("[jobs]\nhandler = \"unterminated\n");
	expect_only_error(path, "%s:2: [jobs] handler: unterminated quote (allowed: a program and its arguments; "
			  "\"double quotes\" group words; a name without '/' is looked up in PATH)", path);
}

Test(config, empty_env_means_unset_for_numbers_and_empty_for_text)
{
	setenv("PROCESSING_WORKER_INSTANCES", "", 1);
	setenv("DROVER_KAFKA_STATUS_TOPIC", "", 1);
	setenv("KAFKA_SASL_USERNAME", "", 1);
	struct config *cfg = load_ok(config_with("[supervisor]\nworkers = 5\n"));
	cr_assert_eq(cfg->workers, 5);
	cr_assert_str_eq(cfg->status_topic, "");
	cr_assert_eq(cfg->topic_count, 3, "no status topic");
	cr_assert_null(find_topic(cfg, "image.generation.status"));
	config_free(cfg);
}

Test(config, env_for_every_table_option)
{
	/* every DROVER_<SECTION>_<KEY> the reference lists is accepted */
	char *ref = NULL;
	size_t len = 0;
	FILE *mem = open_memstream(&ref, &len);
	config_print_reference(mem);
	fclose(mem);
	int names = 0;
	for (char *p = strstr(ref, " DROVER_"); p != NULL; p = strstr(p + 1, " DROVER_")) {
		char name[128];
		if (sscanf(p + 1, "%127[A-Z_]", name) != 1 || strncmp(name, "DROVER_LIBRDKAFKA_", 18) == 0)
			continue;
		clean_environment();
		setenv(name, "", 1);
		struct config_errors errs = { NULL, 0 };
		struct config *cfg = config_load(config_with(""), &errs);
		for (size_t i = 0; i < errs.count; i++)
			cr_assert_null(strstr(errs.lines[i], "unknown key"), "%s: %s", name, errs.lines[i]);
		config_free(cfg);
		config_errors_clear(&errs);
		names++;
	}
	cr_assert_eq(names, 58, "one DROVER_ name per table option");
	free(ref);
}

Test(config, env_text_values)
{
	setenv("DROVER_SUPERVISOR_LOG_LEVEL", "debug", 1);
	setenv("DROVER_KAFKA_STATIC_MEMBERSHIP", "off", 1);
	setenv("DROVER_JOBS_NO_RETRY_EXIT_CODES", "3,4", 1);
	setenv("DROVER_JOBS_HANDLER", "/bin/echo \"a b\"", 1);
	setenv("DROVER_KAFKA_INSTANCE_ID", "box-1", 1);
	struct config *cfg = load_ok(config_with(""));
	cr_assert_eq(cfg->log_level, LOG_LEVEL_DEBUG);
	cr_assert_not(cfg->static_membership);
	cr_assert(cfg->no_retry_exit[3] && cfg->no_retry_exit[4] && !cfg->no_retry_exit[64]);
	cr_assert_str_eq(cfg->handler_argv[1], "a b");
	cr_assert_str_eq(cfg->instance_id, "box-1");
	config_free(cfg);
}

Test(config, unknown_drover_env)
{
	setenv("DROVER_SPOOL_DIRR", "/x", 1);
	setenv("DROVER_BUILD", "/elsewhere", 1);  /* not a section: not ours to judge */
	setenv("DROVER_JOB_ID", "abc", 1);
	setenv("DROVER_WORKER", "1", 1);
	const char *path = config_with("");
	expect_only_error(path, "env DROVER_SPOOL_DIRR: [spool] dirr: unknown key (allowed: dir)");
}

/* ---- topics ---------------------------------------------------------------------------- */

Test(config, topic_sections_override_and_add)
{
	struct config *cfg = load_ok(config_with("[topic:image.generation.requests]\npartitions = 12\n"
						 "replication_factor = 3\n"
						 "[topic:audit]\nretention_ms = -1\n"
						 "[topic:image.generation.failed]\nretention_ms = 1000\n"));
	cr_assert_eq(cfg->topic_count, 5);
	const struct topic_config *t = find_topic(cfg, "image.generation.requests");
	cr_assert_eq(t->partitions, 12);
	cr_assert_eq(t->replication_factor, 3);
	cr_assert_eq(t->retention_ms, 604800000, "unset keys keep the role's default");
	cr_assert_eq(t->line, 3);
	t = find_topic(cfg, "image.generation.failed");
	cr_assert_eq(t->partitions, 3);
	cr_assert_eq(t->retention_ms, 1000);
	t = find_topic(cfg, "audit");
	cr_assert_not_null(t);
	cr_assert_eq(t->retention_ms, -1);
	cr_assert_eq(t->partitions, 3);
	cr_assert_eq(t->replication_factor, 1);
	cr_assert_str_eq(cfg->topics[4].name, "audit", "extra topics come after the four");
	config_free(cfg);
}

Test(config, renamed_topics_keep_their_roles)
{
	setenv("DROVER_KAFKA_REQUESTS_TOPIC", "jobs.in", 1);
	struct config *cfg = load_ok(config_with("[kafka]\nstatus_topic =\n[topic:jobs.in]\nreplication_factor = 2\n"));
	cr_assert_eq(cfg->topic_count, 3);
	cr_assert_str_eq(cfg->topics[0].name, "jobs.in");
	cr_assert_eq(cfg->topics[0].partitions, 6);
	cr_assert_eq(cfg->topics[0].replication_factor, 2);
	cr_assert_str_eq(cfg->topics[1].name, "image.generation.complete");
	config_free(cfg);
}

Test(config, topic_errors)
{
	const char *path = config_with("[topic:t1]\npartitions = 0\nreplication_factor = 40000\nretention_ms = -2\n"
				       "size = 1\npartitions = 2\n");
	struct config_errors errs = { NULL, 0 };
	load_fails(path, &errs);
	expect_error(&errs, "%s:4: [topic:t1] partitions: \"0\" is out of range (allowed: 1..100000)", path);
	expect_error(&errs, "%s:5: [topic:t1] replication_factor: \"40000\" is out of range (allowed: 1..32767)", path);
	expect_error(&errs, "%s:6: [topic:t1] retention_ms: \"-2\" is out of range (allowed: -1..3153600000000 "
		     "milliseconds)", path);
	expect_error(&errs, "%s:7: [topic:t1] size: unknown key (allowed: partitions, replication_factor, retention_ms)",
		     path);
	expect_error(&errs, "%s:8: [topic:t1] partitions: duplicate key, first set on line 4 (allowed: each key once)",
		     path);
	cr_assert_eq(errs.count, 5);
	config_errors_clear(&errs);
}

/* ---- librdkafka --------------------------------------------------------------------------- */

Test(config, librdkafka_passthrough)
{
	setenv("DROVER_LIBRDKAFKA_SOCKET_KEEPALIVE_ENABLE", "true", 1);
	setenv("DROVER_LIBRDKAFKA_STATISTICS_INTERVAL_MS", "1000", 1);
	struct config *cfg = load_ok(config_with("[librdkafka]\nstatistics.interval.ms = 5000\n"
						 "message.max.bytes = 2000000\n"));
	cr_assert_eq(cfg->librdkafka_count, 3);
	cr_assert_str_eq(cfg->librdkafka[0].key, "statistics.interval.ms");
	cr_assert_str_eq(cfg->librdkafka[0].value, "1000", "the environment wins");
	cr_assert_eq(cfg->librdkafka[0].line, 0);
	cr_assert_str_eq(cfg->librdkafka[1].key, "message.max.bytes");
	cr_assert_str_eq(cfg->librdkafka[1].value, "2000000");
	cr_assert_eq(cfg->librdkafka[1].line, 5);
	cr_assert_str_eq(find_pair(cfg->librdkafka, cfg->librdkafka_count, "socket.keepalive.enable"), "true");
	config_free(cfg);
}

Test(config, librdkafka_errors)
{
	setenv("DROVER_LIBRDKAFKA_NO_SUCH_THING", "1", 1);
	const char *path = config_with("[librdkafka]\nno.such.prop = 1\nstatistics.interval.ms = x\n"
				       "linger.ms = 5\nlinger.ms = 6\n");
	struct config_errors errs = { NULL, 0 };
	load_fails(path, &errs);
	expect_error(&errs, "%s:4: [librdkafka] no.such.prop: No such configuration property: \"no.such.prop\" "
		     "(allowed: a librdkafka property, see CONFIGURATION.md)", path);
	cr_assert_not_null(strstr(errs.lines[1], ":5: [librdkafka] statistics.interval.ms: "));
	expect_error(&errs, "%s:7: [librdkafka] linger.ms: duplicate key, first set on line 6 (allowed: each key once)",
		     path);
	expect_error(&errs, "env DROVER_LIBRDKAFKA_NO_SUCH_THING: [librdkafka] no.such.thing: No such configuration "
		     "property: \"no.such.thing\" (allowed: a librdkafka property, see CONFIGURATION.md)");
	cr_assert_eq(errs.count, 4);
	config_errors_clear(&errs);
}

/* ---- reload equality, secrets, names ------------------------------------------------------ */

static bool worker_equal_after(const char *a_extra, const char *b_extra)
{
	struct config *a = load_ok(config_with(a_extra));
	struct config *b = load_ok(config_with(b_extra));
	bool equal = config_worker_equal(a, b);
	cr_assert_eq(config_worker_equal(b, a), equal, "symmetric");
	config_free(a);
	config_free(b);
	return equal;
}

Test(config, worker_equal)
{
	cr_assert(worker_equal_after("", ""));
	cr_assert(worker_equal_after("", "[supervisor]\nworkers = 9\nrestart_delay_ms = 5\nheartbeat_timeout_ms = 9\n"
					 "control_socket = /tmp/x.sock\npid_file = /tmp/x.pid\n"),
		  "scaling, restart settings and start-only keys do not replace workers");
	cr_assert_not(worker_equal_after("", "[supervisor]\nlog_level = debug\n"), "workers log at the new level");
	cr_assert_not(worker_equal_after("", "[supervisor]\nlog_format = json\n"));
	cr_assert_not(worker_equal_after("", "[supervisor]\nlog_file = /tmp/other.log\n"));
	cr_assert_not(worker_equal_after("", "[supervisor]\nshutdown_timeout_ms = 5\n"));
	cr_assert_not(worker_equal_after("", "max_concurrent = 2\n"));
	cr_assert_not(worker_equal_after("", "timeout_ms = 2\n"));
	cr_assert_not(worker_equal_after("", "no_retry_exit_codes = 64\n"));
	cr_assert_not(worker_equal_after("", "env.A = 1\n"));
	cr_assert_not(worker_equal_after("env.A = 1\n", "env.A = 2\n"));
	cr_assert_not(worker_equal_after("", "[spool]\ndir = /elsewhere\n"));
	cr_assert_not(worker_equal_after("", "[kafka]\nbrokers = other:9092\n"));
	cr_assert_not(worker_equal_after("", "[kafka]\nstatic_membership = false\n"));
	cr_assert_not(worker_equal_after("", "[topic:image.generation.requests]\npartitions = 7\n"));
	cr_assert_not(worker_equal_after("", "[librdkafka]\nlinger.ms = 5\n"));
	cr_assert_not(worker_equal_after("[librdkafka]\nlinger.ms = 5\n", "[librdkafka]\nlinger.ms = 6\n"));
}

struct change_log {
	char names[16][160];
	unsigned scopes[16];
	size_t count;
};

static void log_change(void *ctx, const char *name, unsigned scope)
{
	struct change_log *log = ctx;
	cr_assert_lt(log->count, 16);
	snprintf(log->names[log->count], sizeof(log->names[0]), "%s", name);
	log->scopes[log->count++] = scope;
}

Test(config, diff_names_each_changed_key_with_its_scope)
{
	struct config *a = load_ok(config_with(""));
	struct config *b = load_ok(config_with("env.A = 1\n[supervisor]\nlog_file = /tmp/l.log\npid_file = /tmp/p.pid\n"
					       "workers = 5\n"));
	struct change_log log = { .count = 0 };
	cr_assert_eq(config_diff(a, b, log_change, &log), 4);
	cr_assert_str_eq(log.names[0], "[supervisor] workers");
	cr_assert_eq(log.scopes[0], CONFIG_SCOPE_SUPERVISOR);
	cr_assert_str_eq(log.names[1], "[supervisor] pid_file");
	cr_assert_eq(log.scopes[1], CONFIG_SCOPE_START);
	cr_assert_str_eq(log.names[2], "[supervisor] log_file");
	cr_assert_eq(log.scopes[2], CONFIG_SCOPE_SUPERVISOR | CONFIG_SCOPE_WORKERS);
	cr_assert_str_eq(log.names[3], "[jobs] env.*");
	cr_assert_eq(log.scopes[3], CONFIG_SCOPE_WORKERS);
	cr_assert_eq(config_changed_scopes(a, a), 0);
	config_free(a);
	config_free(b);
}

Test(config, worker_equal_sees_handler_and_password_file)
{
	struct config *a = load_ok(write_config("[jobs]\nhandler = /bin/cat\n"));
	struct config *b = load_ok(write_config("[jobs]\nhandler = /bin/cat -u\n"));
	cr_assert_not(config_worker_equal(a, b));
	config_free(a);
	config_free(b);

	const char *secret = write_file("secret", "one\n", 0600);
	char extra[600];
	snprintf(extra, sizeof(extra), "[kafka]\nsecurity_protocol = sasl_ssl\nsasl_username = u\n"
		 "sasl_password_file = %s\n", secret);
	a = load_ok(config_with(extra));
	write_file("secret", "two\n", 0600);
	b = load_ok(config_with(extra));
	cr_assert_not(config_worker_equal(a, b), "a changed password file replaces workers");
	config_free(a);
	config_free(b);
}

Test(config, hidden_secrets_leave_environ_but_still_configure)
{
	setenv("KAFKA_SASL_PASSWORD", "pw-from-env", 1);
	setenv("DROVER_LIBRDKAFKA_SSL_KEY_PASSWORD", "key-pw", 1);
	char *entry = NULL;
	for (char **e = environ; *e != NULL; e++)
		if (strncmp(*e, "KAFKA_SASL_PASSWORD=", 20) == 0)
			entry = *e;
	cr_assert_not_null(entry);
	cr_assert_eq(config_hide_secrets(), 0);
	cr_assert_null(getenv("KAFKA_SASL_PASSWORD"));
	cr_assert_null(getenv("DROVER_LIBRDKAFKA_SSL_KEY_PASSWORD"));
	cr_assert_eq(entry[0], '\0', "the bytes that /proc/PID/environ shows are wiped");
	struct config *cfg = load_ok(config_with("[kafka]\nsecurity_protocol = sasl_ssl\nsasl_username = u\n"));
	cr_assert_str_eq(cfg->sasl_password, "pw-from-env", "a reload still sees the hidden override");
	cr_assert_str_eq(find_pair(cfg->librdkafka, cfg->librdkafka_count, "ssl.key.password"), "key-pw");
	config_free(cfg);
}

Test(config, secrets)
{
	cr_assert(config_env_is_secret("KAFKA_SASL_PASSWORD"));
	cr_assert(config_env_is_secret("DROVER_KAFKA_SASL_PASSWORD"));
	cr_assert(config_env_is_secret("DROVER_KAFKA_SASL_PASSWORD_FILE"));
	cr_assert(config_env_is_secret("DROVER_LIBRDKAFKA_SSL_KEY_PASSWORD"));
	cr_assert(config_env_is_secret("DROVER_LIBRDKAFKA_LINGER_MS"));
	cr_assert(config_env_is_secret("AWS_SECRET_ACCESS_KEY"));
	cr_assert(config_env_is_secret("db_password"));
	cr_assert(config_env_is_secret("KAFKA_SASL_PASSWORD=hunter2"), "a NAME=value entry works too");
	cr_assert_not(config_env_is_secret("KAFKA_SASL_USERNAME"));
	cr_assert_not(config_env_is_secret("PATH"));
	cr_assert_not(config_env_is_secret("DROVER_JOB_ID"));
	cr_assert_not(config_env_is_secret("CUDA_VISIBLE_DEVICES=0"));
	cr_assert_not(config_env_is_secret(""));
}

Test(config, names)
{
	cr_assert_str_eq(config_backend_name(BACKEND_SPOOL), "spool");
	cr_assert_str_eq(config_backend_name(BACKEND_KAFKA), "kafka");
	cr_assert_str_eq(config_security_name(SECURITY_PLAINTEXT), "plaintext");
	cr_assert_str_eq(config_security_name(SECURITY_SSL), "ssl");
	cr_assert_str_eq(config_security_name(SECURITY_SASL_PLAINTEXT), "sasl_plaintext");
	cr_assert_str_eq(config_security_name(SECURITY_SASL_SSL), "sasl_ssl");
}

Test(config, instance_id)
{
	struct config *cfg = load_ok(config_with("[kafka]\ninstance_id = gpu-7\n"));
	cr_assert_str_eq(cfg->instance_id, "gpu-7");
	config_free(cfg);
}

Test(config_client, skips_host_checks_of_the_daemon)
{
	char path[] = "/tmp/drover-config-client-XXXXXX";
	int fd = mkstemp(path);
	cr_assert_geq(fd, 0);
	const char *text = "[jobs]\nhandler = /nonexistent/handler --x\nworking_dir = /nonexistent/dir\n"
	                   "[supervisor]\nuser = no-such-user-drover\n[spool]\ndir = /tmp/spool-client\n";
	cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
	struct config_errors errs = { 0 };
	struct config *daemon = config_load(path, &errs);
	cr_assert_null(daemon);
	cr_assert_geq(errs.count, 3, "handler, working_dir and user are errors for the daemon");
	config_errors_clear(&errs);
	struct config *client = config_load_client(path, &errs);
	cr_assert_not_null(client, "%s", errs.count ? errs.lines[0] : "");
	cr_assert_str_eq(client->spool_dir, "/tmp/spool-client");
	config_free(client);
	unlink(path);
}

/* ---- what a configuration file may be ----------------------------------------------------- */

static void refused_with(const char *path, const char *needle)
{
	struct config_errors errs = { NULL, 0 };
	cr_assert_null(config_load(path, &errs), "%s must be refused", path);
	cr_assert_eq(errs.count, 1);
	cr_assert_not_null(strstr(errs.lines[0], needle), "%s", errs.lines[0]);
	config_errors_clear(&errs);
}

Test(config, only_a_bounded_regular_file_is_read, .timeout = 10)
{
	refused_with("/dev/zero", "not a regular file (allowed: a regular file of at most 1048576 bytes)");
	struct config_errors errs = { NULL, 0 };
	struct config *empty = config_load_client("/dev/null", &errs); /* the environment alone */
	cr_assert_not_null(empty, "%s", errs.count > 0 ? errs.lines[0] : "");
	config_free(empty);
	char fifo[] = "/tmp/drover-config-fifo-XXXXXX";
	cr_assert_not_null(mkdtemp(fifo));
	char path[64];
	snprintf(path, sizeof(path), "%s/fifo", fifo);
	cr_assert_eq(mkfifo(path, 0600), 0);
	refused_with(path, "not a regular file"); /* without blocking: nobody writes to it */
	char *found = config_find_control_socket(path);
	cr_assert_null(found, "droverctl's fallback does not block on a FIFO either");
	unlink(path);
	rmdir(fifo);

	size_t big = (1 << 20) + 1;
	char *text = malloc(big + 1);
	cr_assert_not_null(text);
	memset(text, '#', big);
	text[big] = '\0';
	refused_with(write_file("big.ini", text, 0644), "too large");
	free(text);
}

/* ---- observability keys ----------------------------------------------------------- */

Test(config, http_listen_off_by_default_and_accepted_forms)
{
	struct config *cfg = load_ok(config_with(""));
	cr_assert_str_eq(cfg->http_listen, "");
	cr_assert_eq(cfg->stall_timeout_ms, 60000);
	cr_assert_eq(cfg->slow_job_ms, 0);
	config_free(cfg);
	cfg = load_ok(config_with("[supervisor]\nhttp_listen = 127.0.0.1:9464\n"));
	cr_assert_str_eq(cfg->http_listen, "127.0.0.1:9464");
	config_free(cfg);
	cfg = load_ok(config_with("[supervisor]\nhttp_listen = [::1]:9464\n"));
	cr_assert_str_eq(cfg->http_listen, "[::1]:9464");
	config_free(cfg);
}

Test(config, http_listen_errors_name_file_line_and_key)
{
	const char *path = config_with("[supervisor]\nhttp_listen = localhost:9464\n");
	expect_only_error(path, "%s:4: [supervisor] http_listen: \"localhost:9464\": not a numeric IPv4 address (host "
			  "names are not resolved) (allowed: IPV4:PORT or [IPV6]:PORT, numeric, e.g. 127.0.0.1:9464 or "
			  "[::1]:9464; or empty = off)", path);
	path = config_with("[supervisor]\nhttp_listen = ::1:9464\n");
	expect_only_error(path, "%s:4: [supervisor] http_listen: \"::1:9464\": an IPv6 address needs brackets, as in "
			  "[::1]:9464 (allowed: IPV4:PORT or [IPV6]:PORT, numeric, e.g. 127.0.0.1:9464 or [::1]:9464; "
			  "or empty = off)", path);
	path = config_with("[supervisor]\nhttp_listen = 0.0.0.0:99999\n");
	expect_only_error(path, "%s:4: [supervisor] http_listen: \"0.0.0.0:99999\": the port is not a number in "
			  "0..65535 (allowed: IPV4:PORT or [IPV6]:PORT, numeric, e.g. 127.0.0.1:9464 or [::1]:9464; "
			  "or empty = off)", path);
}

Test(config, http_listen_needs_a_restart_and_slow_job_ms_replaces_workers)
{
	struct config *a = load_ok(config_with(""));
	struct config *b = load_ok(config_with("[supervisor]\nhttp_listen = 127.0.0.1:9464\n"));
	cr_assert_eq(config_changed_scopes(a, b), CONFIG_SCOPE_START);
	config_free(b);
	b = load_ok(config_with("[jobs]\nslow_job_ms = 5000\n"));
	cr_assert_eq(b->slow_job_ms, 5000);
	cr_assert_eq(config_changed_scopes(a, b), CONFIG_SCOPE_SUPERVISOR | CONFIG_SCOPE_WORKERS);
	config_free(b);
	b = load_ok(config_with("[supervisor]\nstall_timeout_ms = 2000\n"));
	cr_assert_eq(config_changed_scopes(a, b), CONFIG_SCOPE_SUPERVISOR);
	config_free(b);
	config_free(a);
}

/* ---- per-handler limits -------------------------------------------------- */

Test(config, limits_default_to_inherit)
{
	struct config *cfg = load_ok(config_with(""));
	cr_assert_eq(cfg->rlimit_nofile, CONFIG_LIMIT_UNSET);
	cr_assert_eq(cfg->rlimit_as, CONFIG_LIMIT_UNSET);
	cr_assert_eq(cfg->rlimit_core, CONFIG_LIMIT_UNSET);
	cr_assert_eq(cfg->rlimit_cpu, CONFIG_LIMIT_UNSET);
	cr_assert_eq(cfg->nice, CONFIG_LIMIT_UNSET);
	config_free(cfg);
}

Test(config, limits_with_size_suffixes)
{
	struct config *cfg = load_ok(config_with("rlimit_nofile = 256\nrlimit_as = 2G\nrlimit_core = 0\n"
	                                         "rlimit_cpu = 30\nnice = 19\nmax_result_bytes = 64k\n"));
	cr_assert_eq(cfg->rlimit_nofile, 256);
	cr_assert_eq(cfg->rlimit_as, 2LL << 30);
	cr_assert_eq(cfg->rlimit_core, 0);
	cr_assert_eq(cfg->rlimit_cpu, 30);
	cr_assert_eq(cfg->nice, 19);
	cr_assert_eq(cfg->max_result_bytes, 64 * 1024);
	config_free(cfg);
	cfg = load_ok(config_with("rlimit_as = 512M\nrlimit_core = 1024K\n"));
	cr_assert_eq(cfg->rlimit_as, 512LL << 20);
	cr_assert_eq(cfg->rlimit_core, 1LL << 20);
	config_free(cfg);
}

Test(config, limit_errors_name_file_line_and_key)
{
	const char *path = config_with("nice = 20\nrlimit_as = 12X\nrlimit_cpu = 0\nrlimit_core = G\n"
	                               "rlimit_nofile = -5\n");
	struct config_errors errs = { NULL, 0 };
	load_fails(path, &errs);
	expect_error(&errs, "%s:3: [jobs] nice: \"20\" is out of range (allowed: 0..19, or empty)", path);
	expect_error(&errs, "%s:4: [jobs] rlimit_as: \"12X\" has junk after the number (allowed: "
	             "1048576..1125899906842624 bytes, K/M/G suffixes, or empty)", path);
	expect_error(&errs, "%s:5: [jobs] rlimit_cpu: \"0\" is out of range (allowed: 1..4294967296, or empty)", path);
	expect_error(&errs, "%s:6: [jobs] rlimit_core: \"G\" is not a number (allowed: 0..1125899906842624 bytes, "
	             "K/M/G suffixes, or empty)", path);
	expect_error(&errs, "%s:7: [jobs] rlimit_nofile: \"-5\" is out of range (allowed: 4..1073741824, or empty)",
	             path);
	config_errors_clear(&errs);
	/* a suffix that would overflow is out of range, not wrapped */
	expect_only_error(config_with("rlimit_as = 2000000000G\n"), "%s/drover.ini:3: [jobs] rlimit_as: "
	                  "\"2000000000G\" is out of range (allowed: 1048576..1125899906842624 bytes, K/M/G suffixes, "
	                  "or empty)", tmpdir);
}

Test(config, limits_are_worker_settings_on_reload)
{
	struct config *a = load_ok(config_with(""));
	struct config *b = load_ok(config_with("nice = 5\n"));
	cr_assert_not(config_worker_equal(a, b), "a changed nice must replace the workers");
	config_free(a);
	config_free(b);
}

Test(config, cgroup_keys)
{
	struct config *cfg = load_ok(config_with("memory_max = 256M\ncpu_max = 150\npids_max = 64\n"));
	cr_assert_str_eq(cfg->cgroup_root, "");
	cr_assert_eq(cfg->memory_max, 256LL << 20);
	cr_assert_eq(cfg->cpu_max, 150);
	cr_assert_eq(cfg->pids_max, 64);
	config_free(cfg);
	cfg = load_ok(config_with(""));
	cr_assert_eq(cfg->memory_max, CONFIG_LIMIT_UNSET);
	cr_assert_eq(cfg->cpu_max, CONFIG_LIMIT_UNSET);
	cr_assert_eq(cfg->pids_max, CONFIG_LIMIT_UNSET);
	config_free(cfg);
	expect_only_error(config_with("pids_max = 0\n"), "%s/drover.ini:3: [jobs] pids_max: \"0\" is out of range "
	                  "(allowed: 1..4194304, or empty)", tmpdir);
}
