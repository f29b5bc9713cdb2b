/*
 * Unit tests of the persistent handler protocol's wire format
 * (worker/frame.c): line splitting with partial reads and the length limit,
 * every frame type a handler may send, every violation, and the job and
 * cancel frames drover sends.
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "worker/frame.h"

static void feed(struct frame_reader *r, const char *data)
{
	size_t n = strlen(data);
	while (n > 0) {
		char *dst;
		size_t room = frame_reader_space(r, &dst);
		if (room == 0)
			return; /* full: the reader takes no more than limit + 2 bytes of one line */
		size_t k = room < n ? room : n;
		memcpy(dst, data, k);
		frame_reader_commit(r, k);
		data += k;
		n -= k;
	}
}

static char *next_line(struct frame_reader *r)
{
	char *line;
	size_t len;
	int rc = frame_reader_next(r, &line, &len);
	cr_assert_eq(rc, 1, "expected a line, got %d", rc);
	return strndup(line, len);
}

Test(frame_reader, lines_come_whole_across_partial_reads)
{
	struct frame_reader r;
	char *line;
	size_t len;
	frame_reader_init(&r, 100);
	feed(&r, "{\"type\":\"re");
	cr_assert_eq(frame_reader_next(&r, &line, &len), 0, "half a line is no line");
	feed(&r, "ady\"}\n{\"a\":1}\n{\"b\"");
	char *first = next_line(&r), *second = next_line(&r);
	cr_assert_str_eq(first, "{\"type\":\"ready\"}");
	cr_assert_str_eq(second, "{\"a\":1}");
	cr_assert_eq(frame_reader_next(&r, &line, &len), 0);
	feed(&r, ":2}\n");
	char *third = next_line(&r);
	cr_assert_str_eq(third, "{\"b\":2}");
	free(first);
	free(second);
	free(third);
	frame_reader_free(&r);
}

Test(frame_reader, a_line_longer_than_the_limit_is_an_error_even_unfinished)
{
	struct frame_reader r;
	char *line;
	size_t len;
	char big[64];
	memset(big, 'x', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	frame_reader_init(&r, 32);
	feed(&r, "short\n");
	char *s = next_line(&r);
	free(s);
	feed(&r, big);
	cr_assert_eq(frame_reader_next(&r, &line, &len), -1, "no newline yet, but already too long");
	frame_reader_free(&r);

	frame_reader_init(&r, 32);
	memset(big, 'y', 33);
	big[33] = '\n';
	big[34] = '\0';
	feed(&r, big);
	cr_assert_eq(frame_reader_next(&r, &line, &len), -1, "33 bytes and a newline with a limit of 32");
	frame_reader_free(&r);
}

Test(frame_reader, a_line_of_exactly_the_limit_passes_and_memory_stays_bounded)
{
	struct frame_reader r;
	char line_buf[40];
	frame_reader_init(&r, 32);
	for (int round = 0; round < 1000; round++) {
		memset(line_buf, 'a' + round % 26, 32);
		line_buf[32] = '\n';
		line_buf[33] = '\0';
		feed(&r, line_buf);
		char *l = next_line(&r);
		cr_assert_eq(strlen(l), 32);
		free(l);
	}
	cr_assert_leq(r.cap, 34, "buffer grew to %zu for 32-byte lines", r.cap);
	frame_reader_free(&r);
}

static struct frame parse_ok(const char *text)
{
	struct frame f;
	char why[200] = "";
	cr_assert_eq(frame_parse(text, strlen(text), &f, why, sizeof(why)), 0, "%s rejected: %s", text, why);
	return f;
}

static void parse_bad(const char *text, const char *expect_in_why)
{
	struct frame f;
	char why[200] = "";
	cr_assert_eq(frame_parse(text, strlen(text), &f, why, sizeof(why)), -1, "%s accepted", text);
	cr_assert_not_null(strstr(why, expect_in_why), "why for %s: \"%s\" lacks \"%s\"", text, why, expect_in_why);
	cr_assert_null(f.root, "nothing left to free after a violation");
}

Test(frame_parse, every_frame_a_handler_sends)
{
	struct frame f = parse_ok("{\"type\":\"ready\"}");
	cr_assert_eq(f.type, FRAME_READY);
	frame_clear(&f);

	f = parse_ok("{\"type\":\"progress\",\"id\":\"j1\",\"progress\":0.4,\"message\":\"half\"}\r");
	cr_assert_eq(f.type, FRAME_PROGRESS);
	cr_assert_str_eq(f.id, "j1");
	cr_assert_float_eq(f.progress, 0.4, 1e-9);
	cr_assert_str_eq(f.message, "half");
	frame_clear(&f);

	f = parse_ok("{\"type\":\"progress\",\"id\":\"j1\"}");
	cr_assert_lt(f.progress, 0, "absent progress");
	cr_assert_null(f.message);
	frame_clear(&f);

	f = parse_ok("{\"type\":\"result\",\"id\":\"j2\",\"result\":[1,{\"a\":null}]}");
	cr_assert_eq(f.type, FRAME_RESULT);
	cr_assert(json_is_array(f.result));
	frame_clear(&f);

	f = parse_ok("{\"type\":\"result\",\"id\":\"j2\",\"result\":null}");
	cr_assert(json_is_null(f.result), "null is a result too");
	frame_clear(&f);

	f = parse_ok("{\"type\":\"error\",\"id\":\"j3\",\"error\":\"boom\"}");
	cr_assert_eq(f.type, FRAME_ERROR);
	cr_assert_str_eq(f.error, "boom");
	cr_assert(f.retry, "retry defaults to true");
	frame_clear(&f);

	f = parse_ok("{\"type\":\"error\",\"id\":\"j3\",\"error\":\"bad input\",\"retry\":false}");
	cr_assert_not(f.retry);
	frame_clear(&f);

	f = parse_ok("{\"type\":\"cancelled\",\"id\":\"j4\"}");
	cr_assert_eq(f.type, FRAME_CANCELLED);
	cr_assert_str_eq(f.id, "j4");
	frame_clear(&f);
}

Test(frame_parse, violations_say_what_is_wrong)
{
	parse_bad("hello world", "not JSON");
	parse_bad("[1,2]", "not a JSON object");
	parse_bad("\"ready\"", "not a JSON object");
	parse_bad("{\"id\":\"x\"}", "without a \"type\"");
	parse_bad("{\"type\":7}", "without a \"type\"");
	parse_bad("{\"type\":\"hello\"}", "unknown frame type");
	parse_bad("{\"type\":\"result\",\"result\":1}", "without an \"id\"");
	parse_bad("{\"type\":\"result\",\"id\":5,\"result\":1}", "without an \"id\"");
	parse_bad("{\"type\":\"result\",\"id\":\"a\"}", "without \"result\"");
	parse_bad("{\"type\":\"error\",\"id\":\"a\"}", "\"error\" is not a string");
	parse_bad("{\"type\":\"error\",\"id\":\"a\",\"error\":\"x\",\"retry\":\"no\"}", "\"retry\"");
	parse_bad("{\"type\":\"progress\",\"id\":\"a\",\"progress\":1.5}", "from 0 to 1");
	parse_bad("{\"type\":\"progress\",\"id\":\"a\",\"progress\":\"half\"}", "from 0 to 1");
	parse_bad("{\"type\":\"progress\",\"id\":\"a\",\"message\":3}", "\"message\"");
	parse_bad("{\"type\":\"ready\",\"type\":\"result\"}", "not JSON");
	parse_bad("{\"type\":\"ready\"} trailing", "not JSON");
}

Test(frame_build, the_job_frame_is_one_line_with_the_job_embedded)
{
	const char *job = "{\n  \"id\": \"j\\n1\",\n  \"size\": 3\r\n}";
	size_t len;
	char *frame = frame_job("j\n1", 2, 300000, 1764265200123LL, job, strlen(job), &len);
	cr_assert_not_null(frame);
	cr_assert_eq(strlen(frame), len);
	cr_assert_eq(frame[len - 1], '\n');
	cr_assert_null(memchr(frame, '\n', len - 1), "one line: %s", frame);
	json_error_t error;
	json_t *doc = json_loadb(frame, len, 0, &error);
	cr_assert_not_null(doc, "not JSON (%s): %s", error.text, frame);
	cr_assert_str_eq(json_string_value(json_object_get(doc, "type")), "job");
	cr_assert_str_eq(json_string_value(json_object_get(doc, "id")), "j\n1");
	cr_assert_eq(json_integer_value(json_object_get(doc, "attempt")), 2);
	cr_assert_eq(json_integer_value(json_object_get(doc, "timeout_ms")), 300000);
	cr_assert_eq(json_integer_value(json_object_get(doc, "deadline_ms")), 1764265200123LL);
	json_t *inner = json_object_get(doc, "job");
	cr_assert_str_eq(json_string_value(json_object_get(inner, "id")), "j\n1");
	cr_assert_eq(json_integer_value(json_object_get(inner, "size")), 3);
	json_decref(doc);
	free(frame);
}

Test(frame_build, the_cancel_frame)
{
	size_t len;
	char *frame = frame_cancel("a\"b", "timeout", &len);
	cr_assert_not_null(frame);
	cr_assert_str_eq(frame, "{\"type\":\"cancel\",\"id\":\"a\\\"b\",\"reason\":\"timeout\"}\n");
	cr_assert_eq(len, strlen(frame));
	free(frame);
}
