/*
 * events: builds the outcome documents (README: The spool, Kafka >
 * Events) with jansson, so
 * the spool's files and Kafka's topics carry byte-for-byte the same shape.
 * Handler output is untrusted: it is embedded as JSON only when it parses,
 * and any string taken from it is first made valid UTF-8 (jansson refuses
 * anything else), so a misbehaving handler can never make a document fail.
 */
#include "queue/events.h"

#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Progress needs few digits; 17 would print 0.4 as 0.40000000000000002. */
#define STATUS_DUMP_FLAGS (JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(6))
/* Embedded results keep jansson's lossless precision. */
#define OUTCOME_DUMP_FLAGS (JSON_COMPACT | JSON_PRESERVE_ORDER)

/* Length of the valid UTF-8 sequence at s (1..4), or 0 when it is not one. */
static size_t utf8_sequence_len(const unsigned char *s, size_t avail)
{
	unsigned char c = s[0];
	size_t need;
	uint32_t cp;

	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf) {
		need = 2;
		cp = c & 0x1f;
	} else if (c >= 0xe0 && c <= 0xef) {
		need = 3;
		cp = c & 0x0f;
	} else if (c >= 0xf0 && c <= 0xf4) {
		need = 4;
		cp = c & 0x07;
	} else {
		return 0;
	}
	if (avail < need)
		return 0;
	for (size_t i = 1; i < need; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		cp = (cp << 6) | (s[i] & 0x3f);
	}
	/* Overlong forms, UTF-16 surrogates and values past U+10FFFF are invalid. */
	if ((need == 3 && cp < 0x800) || (need == 4 && cp < 0x10000) || cp > 0x10ffff ||
	    (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return need;
}

/*
 * A JSON string of bytes that may not be UTF-8: each invalid byte becomes
 * U+FFFD, and so does NUL (valid JSON as \u0000, but refused by many readers,
 * jansson's default among them).
 */
static json_t *json_string_lossy(const char *bytes, size_t len)
{
	static const char replacement[3] = { '\xef', '\xbf', '\xbd' }; /* U+FFFD */
	const unsigned char *s = (const unsigned char *)bytes;
	char *clean;
	size_t out = 0;
	json_t *value;

	if (bytes == NULL)
		return json_null();
	if (len > (SIZE_MAX - 1) / 3)
		return NULL;
	clean = malloc(len * 3 + 1);
	if (clean == NULL)
		return NULL;
	for (size_t i = 0; i < len;) {
		size_t n = s[i] == '\0' ? 0 : utf8_sequence_len(s + i, len - i);
		if (n == 0) {
			memcpy(clean + out, replacement, sizeof(replacement));
			out += sizeof(replacement);
			i++;
		} else {
			memcpy(clean + out, s + i, n);
			out += n;
			i += n;
		}
	}
	value = json_stringn(clean, out);
	free(clean);
	return value;
}

/* The bytes as a JSON value when they parse (any type), else as a string. */
static json_t *json_embed(const char *bytes, size_t len)
{
	json_t *value;

	if (bytes == NULL)
		return json_null();
	value = json_loadb(bytes, len, JSON_DECODE_ANY, NULL);
	if (value != NULL)
		return value;
	return json_string_lossy(bytes, len);
}

static json_t *json_cstring_or_null(const char *s)
{
	return s == NULL ? json_null() : json_string_lossy(s, strlen(s));
}

static json_t *json_time(long long unix_ms)
{
	char buf[40];

	event_format_time(unix_ms, buf, sizeof(buf));
	return json_string(buf);
}

/* Sets key to value, taking the reference; a NULL value (out of memory) fails. */
static int put(json_t *obj, const char *key, json_t *value)
{
	if (value == NULL)
		return -1;
	return json_object_set_new(obj, key, value);
}

static int put_origin(json_t *obj, const struct event_origin *origin)
{
	int rc = 0;

	rc |= put(obj, "worker", json_integer(origin->worker));
	rc |= put(obj, "host", json_cstring_or_null(origin->host));
	return rc;
}

/* Dumps and releases doc; NULL when anything before failed (rc != 0). */
static char *finish_doc(json_t *doc, int rc, size_t flags)
{
	char *text = NULL;

	if (doc != NULL && rc == 0)
		text = json_dumps(doc, flags);
	json_decref(doc);
	return text;
}

char *event_status(const struct event_origin *origin, const char *id, const char *state, int attempt,
                   long long ts_ms, double progress, const char *message, const char *error)
{
	json_t *doc = json_object();
	int rc = 0;

	if (doc == NULL)
		return NULL;
	rc |= put(doc, "id", json_cstring_or_null(id));
	rc |= put(doc, "state", json_cstring_or_null(state));
	rc |= put(doc, "attempt", json_integer(attempt));
	rc |= put_origin(doc, origin);
	rc |= put(doc, "ts", json_time(ts_ms));
	if (progress >= 0)
		rc |= put(doc, "progress", json_real(progress > 1 ? 1 : progress));
	if (message != NULL)
		rc |= put(doc, "message", json_cstring_or_null(message));
	if (error != NULL)
		rc |= put(doc, "error", json_cstring_or_null(error));
	return finish_doc(doc, rc, STATUS_DUMP_FLAGS);
}

char *event_complete(const struct event_origin *origin, const char *id, const char *result, size_t result_len,
                     int attempts, long long duration_ms, long long finished_ms)
{
	json_t *doc = json_object();
	int rc = 0;

	if (doc == NULL)
		return NULL;
	rc |= put(doc, "id", json_cstring_or_null(id));
	rc |= put(doc, "result", result == NULL ? json_string("") : json_embed(result, result_len));
	rc |= put(doc, "attempts", json_integer(attempts));
	rc |= put(doc, "duration_ms", json_integer(duration_ms));
	rc |= put_origin(doc, origin);
	rc |= put(doc, "finished_at", json_time(finished_ms));
	return finish_doc(doc, rc, OUTCOME_DUMP_FLAGS);
}

/* The "error" object: every key present, null when the failure has no such detail. */
static json_t *failure_object(const struct failure *failure)
{
	json_t *err = json_object();
	int rc = 0;

	if (err == NULL)
		return NULL;
	rc |= put(err, "reason", json_cstring_or_null(failure->reason));
	rc |= put(err, "exit_code", failure->exit_code >= 0 ? json_integer(failure->exit_code) : json_null());
	rc |= put(err, "signal", failure->signal > 0 ? json_integer(failure->signal) : json_null());
	rc |= put(err, "message", json_cstring_or_null(failure->message));
	rc |= put(err, "stderr_tail", failure->stderr_tail == NULL
	                                  ? json_string("")
	                                  : json_string_lossy(failure->stderr_tail, failure->stderr_len));
	if (rc != 0) {
		json_decref(err);
		return NULL;
	}
	return err;
}

char *event_failed(const struct event_origin *origin, const char *id, const struct failure *failure, int attempts,
                   const char *job, size_t job_len, long long failed_ms)
{
	json_t *doc = json_object();
	int rc = 0;

	if (doc == NULL)
		return NULL;
	rc |= put(doc, "id", json_cstring_or_null(id));
	rc |= put(doc, "error", failure_object(failure));
	rc |= put(doc, "attempts", json_integer(attempts));
	rc |= put(doc, "job", json_embed(job, job_len));
	rc |= put_origin(doc, origin);
	rc |= put(doc, "failed_at", json_time(failed_ms));
	return finish_doc(doc, rc, OUTCOME_DUMP_FLAGS);
}

char *event_job_id(const char *payload, size_t len)
{
	json_t *doc = json_loadb(payload, len, 0, NULL);
	json_t *id;
	char *copy = NULL;

	if (doc == NULL)
		return NULL;
	id = json_object_get(doc, "id");
	/* An empty id cannot name anything: the backend's fallback applies. */
	if (json_is_string(id) && json_string_length(id) > 0)
		copy = strndup(json_string_value(id), json_string_length(id));
	json_decref(doc);
	return copy;
}

const char *event_job_id_problem(const char *id, size_t len)
{
	if (id == NULL || len == 0)
		return "the id is empty";
	if (len > EVENT_JOB_ID_MAX)
		return "the id is longer than 1024 bytes";
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)id[i];
		if (c < 0x20 || c == 0x7f)
			return "the id contains a control character";
	}
	return NULL;
}

bool event_payload_is_object(const char *payload, size_t len)
{
	json_t *doc;
	bool is_object;

	if (payload == NULL)
		return false;
	doc = json_loadb(payload, len, 0, NULL);
	is_object = json_is_object(doc);
	json_decref(doc);
	return is_object;
}

void event_format_time(long long unix_ms, char *buf, size_t len)
{
	long long secs = unix_ms / 1000;
	long long millis = unix_ms % 1000;
	struct tm tm;
	char date[32];

	if (len == 0)
		return;
	if (millis < 0) {
		millis += 1000;
		secs--;
	}
	time_t t = (time_t)secs;
	if (gmtime_r(&t, &tm) == NULL || strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%S", &tm) == 0) {
		snprintf(buf, len, "1970-01-01T00:00:00.000Z");
		return;
	}
	snprintf(buf, len, "%s.%03lldZ", date, millis);
}
