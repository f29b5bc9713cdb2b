/*
 * frame: splitting, validating and building protocol lines (see frame.h).
 *
 * Validation is strict on purpose: a handler library with a bug should hear
 * about it at its first frame (the process is killed with the reason logged),
 * not produce outcomes drover half understood.
 */
#include "worker/frame.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define READ_GRANULE 16384

/* ---- reader ------------------------------------------------------------- */

void frame_reader_init(struct frame_reader *r, size_t limit)
{
	memset(r, 0, sizeof(*r));
	r->limit = limit;
}

void frame_reader_free(struct frame_reader *r)
{
	free(r->buf);
	memset(r, 0, sizeof(*r));
}

size_t frame_reader_space(struct frame_reader *r, char **dst)
{
	if (r->start > 0 && (r->len == 0 || r->start + r->len + READ_GRANULE > r->cap)) {
		memmove(r->buf, r->buf + r->start, r->len);
		r->start = 0;
	}
	/* A line may be limit bytes plus its '\n'; one more byte tells that it is too long. */
	size_t most = r->limit + 2;
	if (r->cap - r->len < READ_GRANULE && r->cap < most) {
		size_t cap = r->cap < READ_GRANULE ? READ_GRANULE : r->cap * 2;
		if (cap > most)
			cap = most;
		char *grown = realloc(r->buf, cap);
		if (grown == NULL)
			return 0;
		r->buf = grown;
		r->cap = cap;
	}
	*dst = r->buf + r->start + r->len;
	return r->cap - r->start - r->len;
}

void frame_reader_commit(struct frame_reader *r, size_t n)
{
	r->len += n;
}

int frame_reader_next(struct frame_reader *r, char **line, size_t *len)
{
	char *base = r->buf + r->start;
	char *nl = r->len > r->scanned ? memchr(base + r->scanned, '\n', r->len - r->scanned) : NULL;
	if (nl == NULL) {
		r->scanned = r->len;
		return r->len > r->limit ? -1 : 0;
	}
	size_t n = (size_t)(nl - base);
	if (n > r->limit)
		return -1;
	*line = base;
	*len = n;
	r->start += n + 1;
	r->len -= n + 1;
	r->scanned = 0;
	return 1;
}

/* ---- parsing ------------------------------------------------------------ */

static int violation(char *why, size_t why_len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int violation(char *why, size_t why_len, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(why, why_len, fmt, ap);
	va_end(ap);
	return -1;
}

static const struct {
	const char *name;
	enum frame_type type;
} frame_types[] = {
	{ "ready", FRAME_READY }, { "progress", FRAME_PROGRESS }, { "result", FRAME_RESULT },
	{ "error", FRAME_ERROR }, { "cancelled", FRAME_CANCELLED },
};

static int parse_type(json_t *root, enum frame_type *type, char *why, size_t why_len)
{
	const char *name = json_string_value(json_object_get(root, "type"));
	if (name == NULL)
		return violation(why, why_len, "frame without a \"type\" string");
	for (size_t i = 0; i < sizeof(frame_types) / sizeof(frame_types[0]); i++) {
		if (strcmp(name, frame_types[i].name) == 0) {
			*type = frame_types[i].type;
			return 0;
		}
	}
	return violation(why, why_len, "unknown frame type \"%.40s\"", name);
}

static int parse_progress(struct frame *f, char *why, size_t why_len)
{
	json_t *progress = json_object_get(f->root, "progress");
	json_t *message = json_object_get(f->root, "message");
	if (progress != NULL && !json_is_null(progress)) {
		double p = json_is_number(progress) ? json_number_value(progress) : NAN;
		if (!(p >= 0.0 && p <= 1.0))
			return violation(why, why_len, "progress frame: \"progress\" is not a number from 0 to 1");
		f->progress = p;
	}
	if (message != NULL && !json_is_null(message)) {
		if (!json_is_string(message))
			return violation(why, why_len, "progress frame: \"message\" is not a string");
		f->message = json_string_value(message);
	}
	return 0;
}

static int parse_error(struct frame *f, char *why, size_t why_len)
{
	json_t *error = json_object_get(f->root, "error");
	json_t *retry = json_object_get(f->root, "retry");
	if (!json_is_string(error))
		return violation(why, why_len, "error frame: \"error\" is not a string");
	f->error = json_string_value(error);
	if (retry != NULL && !json_is_null(retry)) {
		if (!json_is_boolean(retry))
			return violation(why, why_len, "error frame: \"retry\" is not true or false");
		f->retry = json_is_true(retry);
	}
	return 0;
}

static int parse_body(struct frame *f, char *why, size_t why_len)
{
	if (f->type == FRAME_READY)
		return 0;
	f->id = json_string_value(json_object_get(f->root, "id"));
	if (f->id == NULL)
		return violation(why, why_len, "frame without an \"id\" string");
	switch (f->type) {
	case FRAME_PROGRESS:
		return parse_progress(f, why, why_len);
	case FRAME_RESULT:
		f->result = json_object_get(f->root, "result");
		return f->result != NULL ? 0 : violation(why, why_len, "result frame without \"result\"");
	case FRAME_ERROR:
		return parse_error(f, why, why_len);
	default:
		return 0;
	}
}

int frame_parse(const char *line, size_t len, struct frame *f, char *why, size_t why_len)
{
	json_error_t error;
	memset(f, 0, sizeof(*f));
	f->progress = -1;
	f->retry = true;
	/* A \r before the \n is tolerated: some runtimes write CRLF. */
	if (len > 0 && line[len - 1] == '\r')
		len--;
	f->root = json_loadb(line, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &error);
	if (f->root == NULL)
		return violation(why, why_len, "not JSON: %s", error.text);
	if (!json_is_object(f->root)) {
		frame_clear(f);
		return violation(why, why_len, "not a JSON object");
	}
	if (parse_type(f->root, &f->type, why, why_len) < 0 || parse_body(f, why, why_len) < 0) {
		frame_clear(f);
		return -1;
	}
	return 0;
}

void frame_clear(struct frame *f)
{
	json_decref(f->root);
	memset(f, 0, sizeof(*f));
}

/* ---- building ----------------------------------------------------------- */

/* The object's compact text without its closing brace, so that raw fields can follow. */
static char *dump_open(json_t *obj, size_t *len)
{
	char *text = obj != NULL ? json_dumps(obj, JSON_COMPACT) : NULL;
	json_decref(obj);
	if (text == NULL)
		return NULL;
	*len = strlen(text) - 1; /* drop '}' */
	return text;
}

char *frame_job(const char *id, int attempt, long long timeout_ms, long long deadline_ms, const char *job,
                size_t job_len, size_t *out_len)
{
	static const char job_key[] = ",\"job\":";
	size_t head_len;
	char *head = dump_open(json_pack("{s:s, s:s, s:i, s:I, s:I}", "type", "job", "id", id, "attempt", attempt,
	                                 "timeout_ms", (json_int_t)timeout_ms, "deadline_ms", (json_int_t)deadline_ms),
	                       &head_len);
	if (head == NULL)
		return NULL;
	size_t total = head_len + sizeof(job_key) - 1 + job_len + 2;
	char *out = malloc(total + 1);
	if (out != NULL) {
		char *p = out;
		memcpy(p, head, head_len);
		p += head_len;
		memcpy(p, job_key, sizeof(job_key) - 1);
		p += sizeof(job_key) - 1;
		for (size_t i = 0; i < job_len; i++)
			*p++ = job[i] == '\n' || job[i] == '\r' ? ' ' : job[i];
		*p++ = '}';
		*p++ = '\n';
		*p = '\0';
		*out_len = total;
	}
	free(head);
	return out;
}

char *frame_cancel(const char *id, const char *reason, size_t *out_len)
{
	size_t len;
	char *text = dump_open(json_pack("{s:s, s:s, s:s}", "type", "cancel", "id", id, "reason", reason), &len);
	if (text == NULL)
		return NULL;
	/* dump_open left room: the text had its '}' and a NUL after it. */
	char *out = realloc(text, len + 3);
	if (out == NULL) {
		free(text);
		return NULL;
	}
	out[len] = '}';
	out[len + 1] = '\n';
	out[len + 2] = '\0';
	*out_len = len + 2;
	return out;
}
