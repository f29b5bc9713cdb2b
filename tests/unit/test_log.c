/*
 * test_log: a message never forges a line (text: control characters
 * escaped) and a JSON line is always valid JSON and UTF-8.
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shared/log.h"

static char path[] = "/tmp/drover-log-test-XXXXXX";

static void open_log(enum log_format format)
{
	int fd = mkstemp(path);
	cr_assert_geq(fd, 0);
	close(fd);
	log_init("test", LOG_LEVEL_DEBUG, format);
	cr_assert_eq(log_open(path), 0);
}

static char *read_log(void)
{
	FILE *fp = fopen(path, "r");
	cr_assert_not_null(fp);
	static char buf[16384];
	size_t n = fread(buf, 1, sizeof(buf) - 1, fp);
	buf[n] = '\0';
	fclose(fp);
	unlink(path);
	return buf;
}

static size_t count_lines(const char *text)
{
	size_t lines = 0;
	for (; *text != '\0'; text++)
		lines += *text == '\n';
	return lines;
}

Test(log, text_lines_escape_control_characters)
{
	open_log(LOG_FORMAT_TEXT);
	log_info("job %s: completed", "evil\n2026-01-01T00:00:00.000Z supervisor[1] error: forged\r\x1b[2J");
	char *text = read_log();
	cr_assert_eq(count_lines(text), 1, "one message, one line: %s", text);
	cr_assert_not_null(strstr(text, "job evil\\n2026-01-01T00:00:00.000Z supervisor[1] error: forged\\r\\x1b[2J: "
					 "completed\n"), "%s", text);
}

Test(log, json_lines_are_valid_utf8)
{
	open_log(LOG_FORMAT_JSON);
	/* a stray continuation byte, an overlong '/', a surrogate, a truncated sequence; then good UTF-8 */
	log_info("bad \x80 \xc0\xaf \xed\xa0\x80 \xe2\x82 ok \xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80 \n\x01");
	char *text = read_log();
	cr_assert_eq(count_lines(text), 1, "%s", text);
	json_error_t error;
	json_t *line = json_loads(text, 0, &error); /* jansson refuses invalid UTF-8 */
	cr_assert_not_null(line, "not valid JSON/UTF-8: %s: %s", error.text, text);
	const char *msg = json_string_value(json_object_get(line, "msg"));
	cr_assert_str_eq(msg, "bad \xef\xbf\xbd \xef\xbf\xbd\xef\xbf\xbd \xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd "
			      "\xef\xbf\xbd\xef\xbf\xbd ok \xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80 \n\x01");
	json_decref(line);
}

/* A hostile id (refused before any handler runs, but its refusal is logged too) cannot break the object. */
Test(log, job_fields_are_json_members_escaped)
{
	const char *id = "q\"uo\\te\n\x01}{\"job_id\":\"forged";
	open_log(LOG_FORMAT_JSON);
	log_set_worker(3);
	struct log_fields fields = { .job_id = id, .attempt = 2, .handler_pid = 4242 };
	log_job(LOG_LEVEL_WARN, &fields, "attempt %d failed", 2);
	log_set_worker(-1);
	char *text = read_log();
	cr_assert_eq(count_lines(text), 1, "%s", text);
	json_error_t error;
	json_t *doc = json_loads(text, JSON_REJECT_DUPLICATES, &error);
	cr_assert_not_null(doc, "not one JSON object without duplicate keys: %s (%s)", text, error.text);
	cr_assert_str_eq(json_string_value(json_object_get(doc, "job_id")), id);
	cr_assert_eq(json_integer_value(json_object_get(doc, "attempt")), 2);
	cr_assert_eq(json_integer_value(json_object_get(doc, "handler_pid")), 4242);
	cr_assert_eq(json_integer_value(json_object_get(doc, "worker")), 3);
	cr_assert_eq(json_integer_value(json_object_get(doc, "pid")), getpid());
	cr_assert_str_eq(json_string_value(json_object_get(doc, "level")), "warn");
	cr_assert_str_eq(json_string_value(json_object_get(doc, "msg")), "attempt 2 failed");
	json_decref(doc);
}

Test(log, job_fields_render_as_a_text_prefix)
{
	char out[256];
	struct log_fields fields = { .job_id = "a b\n", .attempt = 7 };
	log_render_fields(out, sizeof(out), &fields, LOG_FORMAT_TEXT);
	cr_assert_str_eq(out, "job=a b\\n attempt=7 ");
	open_log(LOG_FORMAT_TEXT);
	log_job(LOG_LEVEL_INFO, &fields, "completed");
	char *text = read_log();
	cr_assert_eq(count_lines(text), 1, "%s", text);
	cr_assert_not_null(strstr(text, " info: job=a b\\n attempt=7 completed\n"), "%s", text);
}

Test(log, unset_fields_are_left_out_and_output_is_bounded)
{
	char out[24];
	struct log_fields none = { 0 };
	cr_assert_eq(log_render_fields(out, sizeof(out), &none, LOG_FORMAT_JSON), 0);
	cr_assert_str_eq(out, "");
	static char long_id[4000];
	memset(long_id, '"', sizeof(long_id) - 1);
	struct log_fields big = { .job_id = long_id, .attempt = 1 };
	size_t n = log_render_fields(out, sizeof(out), &big, LOG_FORMAT_JSON);
	cr_assert_lt(n, sizeof(out));
	cr_assert_eq(strlen(out), n);
}

/* Below the level, a job line is dropped like any other. */
Test(log, job_lines_obey_the_level)
{
	open_log(LOG_FORMAT_JSON);
	log_set_level(LOG_LEVEL_WARN);
	struct log_fields fields = { .job_id = "j", .attempt = 1 };
	log_job(LOG_LEVEL_INFO, &fields, "dropped");
	log_job(LOG_LEVEL_WARN, &fields, "kept");
	char *text = read_log();
	cr_assert_eq(count_lines(text), 1, "%s", text);
	cr_assert_not_null(strstr(text, "\"kept\""), "%s", text);
}
