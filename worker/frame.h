/*
 * frame: the persistent handler protocol's wire format (README "Persistent
 * handlers"): one JSON object per '\n'-terminated line. This module only
 * splits, validates and builds lines; it knows nothing of processes or
 * jobs, so that every rule of the protocol is checked in one place and
 * unit-tested without a handler.
 */
#ifndef DROVER_FRAME_H
#define DROVER_FRAME_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#define FRAME_PROTOCOL_VERSION 1
/* What a frame may carry beyond max_result_bytes (its envelope, an error text, a message). */
#define FRAME_OVERHEAD_BYTES 65536

/*
 * Splits a byte stream into lines without copying them out. Memory is bounded
 * by limit (+1 byte, to see that a line is too long): a longer line is an error.
 */
struct frame_reader {
	char *buf;
	size_t start, len, cap; /* unconsumed bytes are buf[start .. start+len) */
	size_t scanned;         /* of those, how many are known to hold no '\n' */
	size_t limit;
};

void frame_reader_init(struct frame_reader *r, size_t limit);
void frame_reader_free(struct frame_reader *r);
/* Where to read the next bytes into, and how many fit; 0 when out of memory. */
size_t frame_reader_space(struct frame_reader *r, char **dst);
void frame_reader_commit(struct frame_reader *r, size_t n);
/*
 * The next complete line, without its '\n', valid until the next call:
 * 1 = a line, 0 = none yet, -1 = the current line is longer than limit.
 */
int frame_reader_next(struct frame_reader *r, char **line, size_t *len);

enum frame_type { FRAME_READY, FRAME_PROGRESS, FRAME_RESULT, FRAME_ERROR, FRAME_CANCELLED };

/* A frame from a handler; every pointer lives in root (frame_clear frees it). */
struct frame {
	enum frame_type type;
	json_t *root;
	const char *id;      /* NULL for ready */
	double progress;     /* progress frames: -1 when absent */
	const char *message; /* progress frames: NULL when absent */
	json_t *result;      /* result frames */
	const char *error;   /* error frames */
	bool retry;          /* error frames: default true */
};

/* 0 and a frame, or -1 with why (a protocol violation) written into why. */
int frame_parse(const char *line, size_t len, struct frame *f, char *why, size_t why_len);
void frame_clear(struct frame *f);

/*
 * A job frame, '\n' included (malloc'd, *out_len set), or NULL when out of
 * memory. job is the job's JSON object text; the newlines JSON allows between
 * its tokens become spaces, so the frame stays one line.
 */
char *frame_job(const char *id, int attempt, long long timeout_ms, long long deadline_ms, const char *job,
                size_t job_len, size_t *out_len);
/* A cancel frame ('\n' included), or NULL when out of memory. */
char *frame_cancel(const char *id, const char *reason, size_t *out_len);

#endif
