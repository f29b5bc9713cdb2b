/*
 * Unit tests of the outcome documents (queue/events.c): every field of the
 * status, complete and failed documents, handler output embedded as JSON or
 * as a string, invalid UTF-8 from handlers, job ids, object checks, times.
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "queue/events.h"

static const struct event_origin origin = { .host = "gpu-7", .worker = 3 };

/* 2025-11-27T17:40:00.123Z */
#define T_MS 1764265200123LL
#define T_TEXT "2025-11-27T17:40:00.123Z"

/* Parses a document; it must be one JSON object with exactly the keys listed. */
static json_t *parse_doc(char *text, const char *const *keys, size_t nkeys)
{
	json_error_t error;
	json_t *doc;

	cr_assert_not_null(text, "builder returned NULL");
	cr_assert_null(strchr(text, '\n'), "compact: %s", text);
	doc = json_loads(text, 0, &error);
	cr_assert_not_null(doc, "not JSON (%s): %s", error.text, text);
	cr_assert(json_is_object(doc));
	cr_assert_eq(json_object_size(doc), nkeys, "keys of %s", text);
	for (size_t i = 0; i < nkeys; i++)
		cr_assert_not_null(json_object_get(doc, keys[i]), "missing %s in %s", keys[i], text);
	free(text);
	return doc;
}

static const char *str(json_t *obj, const char *key)
{
	json_t *v = json_object_get(obj, key);
	cr_assert(json_is_string(v), "%s is not a string", key);
	return json_string_value(v);
}

static long long num(json_t *obj, const char *key)
{
	json_t *v = json_object_get(obj, key);
	cr_assert(json_is_integer(v), "%s is not an integer", key);
	return json_integer_value(v);
}

static void expect_origin(json_t *doc)
{
	cr_assert_eq(num(doc, "worker"), 3);
	cr_assert_str_eq(str(doc, "host"), "gpu-7");
}

/* ---- status ---------------------------------------------------------------- */

Test(events, status_started_has_the_base_fields_only)
{
	static const char *const keys[] = { "id", "state", "attempt", "worker", "host", "ts" };
	json_t *doc = parse_doc(event_status(&origin, "job-1", "started", 2, T_MS, -1, NULL, NULL), keys, 6);

	cr_assert_str_eq(str(doc, "id"), "job-1");
	cr_assert_str_eq(str(doc, "state"), "started");
	cr_assert_eq(num(doc, "attempt"), 2);
	cr_assert_str_eq(str(doc, "ts"), T_TEXT);
	expect_origin(doc);
	json_decref(doc);
}

Test(events, status_progress_carries_progress_and_message)
{
	static const char *const keys[] = { "id", "state", "attempt", "worker", "host", "ts", "progress", "message" };
	char *text = event_status(&origin, "job-1", "progress", 1, T_MS, 0.4, "step 4 of 10", NULL);

	cr_assert_not_null(strstr(text, "\"progress\":0.4"), "short number: %s", text);
	json_t *doc = parse_doc(text, keys, 8);
	cr_assert_float_eq(json_real_value(json_object_get(doc, "progress")), 0.4, 1e-9);
	cr_assert_str_eq(str(doc, "message"), "step 4 of 10");
	json_decref(doc);
}

Test(events, status_retrying_carries_the_error)
{
	static const char *const keys[] = { "id", "state", "attempt", "worker", "host", "ts", "error" };
	json_t *doc = parse_doc(event_status(&origin, "j", "retrying", 1, T_MS, -1, NULL, "exit_code"), keys, 7);

	cr_assert_str_eq(str(doc, "state"), "retrying");
	cr_assert_str_eq(str(doc, "error"), "exit_code");
	json_decref(doc);
}

Test(events, status_progress_zero_is_kept)
{
	static const char *const keys[] = { "id", "state", "attempt", "worker", "host", "ts", "progress" };
	json_t *doc = parse_doc(event_status(&origin, "j", "progress", 1, T_MS, 0.0, NULL, NULL), keys, 7);

	cr_assert_float_eq(json_number_value(json_object_get(doc, "progress")), 0.0, 1e-12);
	json_decref(doc);
}

/* ---- complete ------------------------------------------------------------------ */

static const char *const complete_keys[] = { "id", "result", "attempts", "duration_ms", "worker", "host",
	                                         "finished_at" };

Test(events, complete_embeds_a_json_result)
{
	static const char result[] = "{\"image\":\"/out/a.ppm\",\"width\":256,\"height\":256}\n";
	json_t *doc = parse_doc(event_complete(&origin, "job-9", result, strlen(result), 2, 1534, T_MS, 0),
	                        complete_keys, 7);
	json_t *res = json_object_get(doc, "result");

	cr_assert_str_eq(str(doc, "id"), "job-9");
	cr_assert(json_is_object(res));
	cr_assert_str_eq(str(res, "image"), "/out/a.ppm");
	cr_assert_eq(num(res, "width"), 256);
	cr_assert_eq(num(doc, "attempts"), 2);
	cr_assert_eq(num(doc, "duration_ms"), 1534);
	cr_assert_str_eq(str(doc, "finished_at"), T_TEXT);
	expect_origin(doc);
	json_decref(doc);
}

Test(events, complete_embeds_any_json_value)
{
	json_t *doc = parse_doc(event_complete(&origin, "n", "42", 2, 1, 5, T_MS, 0), complete_keys, 7);
	cr_assert_eq(num(doc, "result"), 42);
	json_decref(doc);

	doc = parse_doc(event_complete(&origin, "s", "\"done\"", 6, 1, 5, T_MS, 0), complete_keys, 7);
	cr_assert_str_eq(str(doc, "result"), "done");
	json_decref(doc);
}

Test(events, complete_keeps_text_that_is_not_json_as_a_string)
{
	static const char result[] = "wrote /out/a.png\n";
	json_t *doc = parse_doc(event_complete(&origin, "t", result, strlen(result), 1, 5, T_MS, 0), complete_keys, 7);
	cr_assert_str_eq(str(doc, "result"), result);
	json_decref(doc);

	/* Only result_len bytes count: the rest of the buffer is not the result. */
	doc = parse_doc(event_complete(&origin, "t", "{\"a\":1}garbage", 7, 1, 5, T_MS, 0), complete_keys, 7);
	cr_assert(json_is_object(json_object_get(doc, "result")));
	json_decref(doc);

	doc = parse_doc(event_complete(&origin, "e", "", 0, 1, 5, T_MS, 0), complete_keys, 7);
	cr_assert_str_eq(str(doc, "result"), "");
	json_decref(doc);
}

Test(events, complete_survives_invalid_utf8_output)
{
	static const char result[] = "bad \xff\xfe bytes \xc3";
	json_t *doc = parse_doc(event_complete(&origin, "u", result, strlen(result), 1, 5, T_MS, 0), complete_keys, 7);
	cr_assert_str_eq(str(doc, "result"), "bad \xef\xbf\xbd\xef\xbf\xbd bytes \xef\xbf\xbd");
	json_decref(doc);
}

/* ---- failed --------------------------------------------------------------------- */

static const char *const failed_keys[] = { "id", "error", "attempts", "job", "worker", "host", "failed_at" };
static const char *const error_keys[] = { "reason", "exit_code", "signal", "message", "stderr_tail" };

static json_t *error_of(json_t *doc)
{
	json_t *err = json_object_get(doc, "error");
	cr_assert(json_is_object(err));
	cr_assert_eq(json_object_size(err), 5);
	for (size_t i = 0; i < 5; i++)
		cr_assert_not_null(json_object_get(err, error_keys[i]), "error.%s missing", error_keys[i]);
	return err;
}

Test(events, failed_has_every_field)
{
	static const char job[] = "{\"id\":\"f1\",\"prompt\":\"a dog\"}";
	static const char tail[] = "Traceback...\nValueError: bad prompt\n";
	struct failure failure = { .reason = "exit_code", .exit_code = 3, .signal = 0,
		                   .message = "the handler exited with status 3",
		                   .stderr_tail = tail, .stderr_len = strlen(tail) };
	json_t *doc = parse_doc(event_failed(&origin, "f1", &failure, 3, job, strlen(job), T_MS), failed_keys, 7);
	json_t *err = error_of(doc);

	cr_assert_str_eq(str(doc, "id"), "f1");
	cr_assert_str_eq(str(err, "reason"), "exit_code");
	cr_assert_eq(num(err, "exit_code"), 3);
	cr_assert(json_is_null(json_object_get(err, "signal")), "no signal: null");
	cr_assert_str_eq(str(err, "message"), "the handler exited with status 3");
	cr_assert_str_eq(str(err, "stderr_tail"), tail);
	cr_assert_eq(num(doc, "attempts"), 3);
	cr_assert_str_eq(str(json_object_get(doc, "job"), "prompt"), "a dog", "job embedded as JSON");
	cr_assert_str_eq(str(doc, "failed_at"), T_TEXT);
	expect_origin(doc);
	json_decref(doc);
}

Test(events, failed_by_signal_has_no_exit_code)
{
	struct failure failure = { .reason = "signal", .exit_code = -1, .signal = 9 };
	json_t *doc = parse_doc(event_failed(&origin, "s", &failure, 1, "{}", 2, T_MS), failed_keys, 7);
	json_t *err = error_of(doc);

	cr_assert(json_is_null(json_object_get(err, "exit_code")));
	cr_assert_eq(num(err, "signal"), 9);
	cr_assert(json_is_null(json_object_get(err, "message")));
	cr_assert_str_eq(str(err, "stderr_tail"), "");
	json_decref(doc);
}

Test(events, failed_keeps_an_invalid_job_as_a_string)
{
	static const char job[] = "this is {not json";
	struct failure failure = { .reason = "invalid_job", .exit_code = -1,
		                   .message = "the message is not a JSON object" };
	json_t *doc = parse_doc(event_failed(&origin, "x", &failure, 0, job, strlen(job), T_MS), failed_keys, 7);

	cr_assert_str_eq(str(doc, "job"), job);
	cr_assert_str_eq(str(error_of(doc), "reason"), "invalid_job");
	json_decref(doc);

	/* A JSON array is JSON: embedded as such. */
	doc = parse_doc(event_failed(&origin, "x", &failure, 0, "[1,2]", 5, T_MS), failed_keys, 7);
	cr_assert(json_is_array(json_object_get(doc, "job")));
	json_decref(doc);

	/* Invalid UTF-8 in the job itself. */
	doc = parse_doc(event_failed(&origin, "x", &failure, 0, "\x80\x81", 2, T_MS), failed_keys, 7);
	cr_assert_str_eq(str(doc, "job"), "\xef\xbf\xbd\xef\xbf\xbd");
	json_decref(doc);
}

Test(events, failed_sanitizes_invalid_utf8_in_stderr)
{
	/* A tail cut in the middle of "é" (c3 a9), a stray continuation byte, an overlong '/', a surrogate, a NUL:
	 * each bad byte becomes U+FFFD, the valid sequences stay. */
	static const char tail[] = "\xa9 ok \x80 \xc0\xaf \xed\xa0\x80 caf\xc3\xa9 \xf0\x9f\x98\x80 nul:\0:end";
	struct failure failure = { .reason = "exit_code", .exit_code = 1, .stderr_tail = tail,
		                   .stderr_len = sizeof(tail) - 1 };
	json_t *doc = parse_doc(event_failed(&origin, "u", &failure, 1, "{}", 2, T_MS), failed_keys, 7);
	json_t *st = json_object_get(error_of(doc), "stderr_tail");
	static const char expected[] = "\xef\xbf\xbd ok \xef\xbf\xbd \xef\xbf\xbd\xef\xbf\xbd "
	                               "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd caf\xc3\xa9 \xf0\x9f\x98\x80 nul:\xef\xbf\xbd:end";

	cr_assert(json_is_string(st));
	cr_assert_eq(json_string_length(st), sizeof(expected) - 1, "length %zu", json_string_length(st));
	cr_assert_eq(memcmp(json_string_value(st), expected, sizeof(expected) - 1), 0);
	json_decref(doc);
}

Test(events, failed_with_a_large_stderr_tail)
{
	size_t len = 4096;
	char *tail = malloc(len);
	for (size_t i = 0; i < len; i++)
		tail[i] = (char)(i % 251 + 1); /* every byte value but NUL, mostly invalid as UTF-8 */
	struct failure failure = { .reason = "exit_code", .exit_code = 1, .stderr_tail = tail, .stderr_len = len };
	json_t *doc = parse_doc(event_failed(&origin, "big", &failure, 1, "{}", 2, T_MS), failed_keys, 7);
	cr_assert(json_is_string(json_object_get(error_of(doc), "stderr_tail")));
	json_decref(doc);
	free(tail);
}

/* ---- ids, objects, times --------------------------------------------------------------- */

static void expect_id(const char *payload, const char *expected)
{
	char *id = event_job_id(payload, strlen(payload));
	if (expected == NULL) {
		cr_assert_null(id, "payload %s: id %s", payload, id);
	} else {
		cr_assert_not_null(id, "payload %s", payload);
		cr_assert_str_eq(id, expected);
	}
	free(id);
}

Test(events, job_id_is_the_id_string_field)
{
	expect_id("{\"id\":\"abc-1\",\"prompt\":\"x\"}", "abc-1");
	expect_id("{\"prompt\":\"x\",\"nested\":{\"id\":\"no\"}}", NULL);
	expect_id("{\"id\":12}", NULL);
	expect_id("{\"id\":null}", NULL);
	expect_id("{\"id\":\"\"}", NULL);
	expect_id("[\"id\"]", NULL);
	expect_id("not json", NULL);
	expect_id("", NULL);
	/* Only len bytes are the payload. */
	char *id = event_job_id("{\"id\":\"a\"}{\"id\":\"b\"}", 10);
	cr_assert_str_eq(id, "a");
	free(id);
}

Test(events, payload_is_object)
{
	cr_assert(event_payload_is_object("{}", 2));
	cr_assert(event_payload_is_object(" {\"a\":[1,2]} \n", 14));
	cr_assert_not(event_payload_is_object("[]", 2));
	cr_assert_not(event_payload_is_object("1", 1));
	cr_assert_not(event_payload_is_object("\"s\"", 3));
	cr_assert_not(event_payload_is_object("", 0));
	cr_assert_not(event_payload_is_object("{", 1));
	cr_assert_not(event_payload_is_object("{} {}", 5));
	cr_assert_not(event_payload_is_object("{\"a\":\"\xff\"}", 9), "invalid UTF-8 is not JSON");
	cr_assert_not(event_payload_is_object(NULL, 0));
}

Test(events, format_time)
{
	char buf[40];

	event_format_time(T_MS, buf, sizeof(buf));
	cr_assert_str_eq(buf, T_TEXT);
	event_format_time(0, buf, sizeof(buf));
	cr_assert_str_eq(buf, "1970-01-01T00:00:00.000Z");
	event_format_time(1000LL * 86400 * 366 + 7, buf, sizeof(buf));
	cr_assert_str_eq(buf, "1971-01-02T00:00:00.007Z");
	event_format_time(-1, buf, sizeof(buf));
	cr_assert_str_eq(buf, "1969-12-31T23:59:59.999Z");
	/* Truncation is safe. */
	event_format_time(T_MS, buf, 5);
	cr_assert_str_eq(buf, "2025");
}

Test(events, null_strings_do_not_crash)
{
	struct event_origin no_host = { .host = NULL, .worker = 0 };
	struct failure failure = { .reason = NULL, .exit_code = -1 };
	char *text = event_status(&no_host, "j", "started", 1, T_MS, -1, NULL, NULL);
	cr_assert_not_null(text);
	free(text);
	text = event_failed(&no_host, "j", &failure, 1, NULL, 0, T_MS);
	cr_assert_not_null(text);
	free(text);
	text = event_complete(&no_host, "j", NULL, 0, 1, 0, T_MS, 0);
	cr_assert_not_null(text);
	free(text);
}

Test(events, job_id_problem)
{
	char long_id[EVENT_JOB_ID_MAX + 2];

	memset(long_id, 'a', sizeof(long_id) - 1);
	long_id[sizeof(long_id) - 1] = '\0';
	cr_expect_null(event_job_id_problem("job-1", 5));
	cr_expect_null(event_job_id_problem(long_id, EVENT_JOB_ID_MAX));
	cr_expect_not_null(event_job_id_problem(long_id, EVENT_JOB_ID_MAX + 1));
	cr_expect_not_null(event_job_id_problem("", 0));
	cr_expect_not_null(event_job_id_problem(NULL, 0));
	cr_expect_not_null(event_job_id_problem("a\nb", 3));
	cr_expect_not_null(event_job_id_problem("a\x7f", 2));
	cr_expect_null(event_job_id_problem("caf\xc3\xa9", 5));
}

/* ---- peak memory of the attempt's cgroup ------------------------------------------ */

Test(events, peak_memory_is_recorded_when_known)
{
	static const char *const with_peak[] = { "id", "result", "attempts", "duration_ms", "peak_memory_bytes",
		                                  "worker", "host", "finished_at" };
	json_t *doc = parse_doc(event_complete(&origin, "p", "{}", 2, 1, 5, T_MS, 123456789), with_peak, 8);
	cr_assert_eq(num(doc, "peak_memory_bytes"), 123456789);
	json_decref(doc);

	static const char *const failed_peak[] = { "id", "error", "attempts", "job", "peak_memory_bytes", "worker",
		                                   "host", "failed_at" };
	struct failure failure = { .reason = "signal", .exit_code = -1, .signal = 9, .message = "killed",
		                   .peak_memory_bytes = 64 << 20 };
	doc = parse_doc(event_failed(&origin, "p", &failure, 1, "{}", 2, T_MS), failed_peak, 8);
	cr_assert_eq(num(doc, "peak_memory_bytes"), 64 << 20);
	json_decref(doc);
}

Test(events, unknown_peak_memory_is_left_out)
{
	json_t *doc = parse_doc(event_complete(&origin, "p", "{}", 2, 1, 5, T_MS, 0), complete_keys, 7);
	cr_assert_null(json_object_get(doc, "peak_memory_bytes"));
	json_decref(doc);
}
