/*
 * kafka: the Kafka backend (README: Kafka). Each worker is one member of
 * the consumer group, with its own consumer and producer, created after fork
 * in open(). librdkafka wakes the worker's libev loop through a pipe
 * (rd_kafka_queue_io_event_enable on the consumer queue, which also carries
 * the consumer's main queue, and on the producer's main queue), and every
 * wake-up drains both queues. A timer polls as well, but rarely: once a second
 * while work or a fault is there (a fault's age is shown in stats), and when
 * idle only often enough for max.poll.interval.ms, which counts polls. An idle
 * worker's own thread thus sleeps; what wakes it then is librdkafka's threads.
 *
 * At-least-once: per partition, every offset received is tracked until its
 * complete or failed event is acknowledged by the broker (idempotent producer,
 * acks=all); only the contiguous low watermark of acknowledged offsets is
 * stored, and librdkafka's auto commit (also at revoke and close) commits
 * what was stored. Manual commits are avoided on purpose: librdkafka 2.0.2 can
 * treat a cooperative assignment as lost after one.
 *
 * Flow control: fetched messages wait in a small queue per partition, taken
 * round-robin; a partition whose queue is full is paused (and the consumer is
 * still polled, so long jobs never exceed max.poll.interval.ms). Per
 * partition, because pausing drops what librdkafka already fetched for it:
 * pausing all at once would starve every partition but the one fetched
 * first. Pause state is drover's own: in
 * 2.0.2 the pause flag outlives revoke and re-assignment, and resuming a
 * partition that is not paused can refetch old messages.
 *
 * Rebalances: a revoked partition hands out no more jobs; its running jobs
 * get a bounded drain time, then the worker's revoke hook kills them (they run
 * again on the new owner); then the partition is unassigned, which commits
 * what was stored.
 */
#include "queue/kafka.h"
#include "queue/kafka_conf.h"
#include "queue/events.h"
#include "shared/log.h"
#include "shared/util.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <unistd.h>

#define BUSY_POLL_S 1.0
#define IDLE_POLL_MAX_S 30.0
#define PROGRESS_INTERVAL_MS 1000
#define OUTCOME_RETRY_FIRST_MS 500
#define OUTCOME_RETRY_MAX_MS 30000
#define REVOKE_KILL_WAIT_MS 5000
#define CLOSE_FLUSH_MS 10000
#define BUFFER_MAX 16
#define SHRINK_KEEP_BYTES 65536
#define EVENT_OVERHEAD_BYTES 1024
#define AWAITING_ACK_FAULT_MS 10000
#define ERROR_LOG_INTERVAL_MS 10000
#define HURRY_CLOSE_MIN_MS 500

struct kjob;

TAILQ_HEAD(kjob_tailq, kjob);
struct kjob_list {
	struct kjob_tailq jobs;
	size_t count;
};

/* One partition of the requests topic, kept for the worker's life. */
struct kpart {
	SLIST_ENTRY(kpart) link;
	int32_t partition;
	bool assigned;
	bool revoking;
	bool rk_paused;     /* what drover told librdkafka; its flag survives re-assignment in 2.0.2 */
	unsigned epoch;     /* bumped at each assign and unassign: older jobs no longer move offsets */
	int64_t *offsets;   /* received in this epoch, not yet under the watermark, ascending */
	bool *done;         /* parallel to offsets: outcome acknowledged */
	size_t count, cap;
	int64_t stored;     /* last offset stored (the next to consume), -1 = none yet */
	int64_t committed;  /* last offset the group coordinator took, -1 = not known yet */
	bool commit_failing; /* the last commit of it failed (a rebalance in progress): hold back */
	long long last_commit_ms; /* of the last successful commit, or since offsets wait for one (part_ack) */
	bool held;          /* held back at the last look (part_may_take): a new episode counts once */
	int64_t lag;        /* from librdkafka's statistics, -1 = unknown */
	size_t outstanding; /* jobs of this epoch taken and not yet settled or released */
	struct kjob_list queue; /* fetched, not yet taken */
	unsigned long taken_seq; /* when a job was last taken from it: the least recent goes next */
};

enum kjob_state { KJOB_BUFFERED, KJOB_RUNNING, KJOB_SETTLING };

struct kjob {
	TAILQ_ENTRY(kjob) link;
	struct source *src;
	struct job *job;
	struct kpart *part;
	unsigned epoch;
	int64_t offset;
	enum kjob_state state;
	int attempt;
	bool kill_requested;
	/* progress events: at most one per second, the latest one wins */
	long long last_progress_ms;
	char *pending_progress;
	size_t pending_progress_len;
	ev_timer progress_timer;
	/* the outcome, until the broker acknowledges it */
	char *doc;
	size_t doc_len;
	bool completed;
	bool shrunk;           /* cut to fit message.max.bytes (done once) */
	bool in_flight;        /* produced; the delivery report is still to come */
	int failures;
	long long settling_since_ms;
	ev_timer retry_timer;
};

struct source {
	const struct config *cfg;
	struct ev_loop *loop;
	int slot;
	struct source_callbacks cb;

	rd_kafka_t *consumer;
	rd_kafka_t *producer;
	rd_kafka_queue_t *consumer_queue;
	rd_kafka_queue_t *producer_queue;
	rd_kafka_topic_t *outcome_topics[3]; /* held from open: their metadata is there before the first outcome */
	int wake_fd[2];
	ev_io wake_watcher;
	ev_timer poll_timer;
	ev_prepare flow_watcher;

	SLIST_HEAD(kpart_list, kpart) parts;
	size_t buffered;         /* messages in the partitions' queues */
	struct kjob_list out;    /* taken: running or settling */
	size_t buffer_cap;       /* the worker's share of prefetched messages, spread over its partitions */
	int64_t uncommitted_max; /* while commits fail: acknowledged offsets a partition may run ahead */
	int64_t window;          /* [kafka] max_uncommitted: offsets past the oldest unfinished one that may be taken */
	long long commit_stall_ms; /* no successful commit for this long counts as failing */
	long long rebalancing_since_ms; /* the group rebalances (commits refused or skipped), 0 = not */
	long long rebalance_grace_ms; /* how long kept partitions ignore refused commits: session.timeout.ms */
	double idle_poll_s;      /* the poll timer's period while nothing is in flight */
	long long hurry_until_ms; /* a fast stop: close() is done by then (0 = none) */
	ev_timer hurry_timer;
	unsigned long take_seq;
	bool flow_dirty;
	bool worker_paused;
	bool wake_worker;        /* a held-back partition may hand out jobs again */
	bool closing;
	bool gave_up;            /* fast stop: unacknowledged outcomes no longer awaited */
	bool leave_handles;      /* a fast close ran out of time: exit without destroying them */
	bool subscribed;
	bool ever_assigned;
	size_t max_event_bytes;

	/* a revoke in progress */
	rd_kafka_topic_partition_list_t *revoking;
	bool revoke_cooperative;
	bool revoke_killed;      /* the drain time is over; unfinished jobs were asked to die */
	long long drain_ms;
	ev_timer drain_timer;
	unsigned rebalances;

	struct scoreboard_slot *board;
	char host[256];          /* of status events */
	struct event_origin origin;

	/* health, for fault() */
	char fatal[256];
	char outcome_error[256];
	size_t outcomes_retrying;
	bool brokers_down;
	bool topic_missing;
	long long last_error_log_ms;
	char last_error[256];
	char fault_text[SCOREBOARD_FAULT_MAX];
	char published_fault[SCOREBOARD_FAULT_MAX]; /* what this source last wrote into the slot */
};

static void serve(struct source *src);
static void poll_timer_adjust(struct source *src);
static void hurry_timer_cb(struct ev_loop *loop, ev_timer *timer, int revents);
static void revoke_check(struct source *src);
static void outcome_produce(struct kjob *kj);

/* ---- small helpers ------------------------------------------------------ */

static void list_init(struct kjob_list *list)
{
	TAILQ_INIT(&list->jobs);
	list->count = 0;
}

static void list_push_tail(struct kjob_list *list, struct kjob *kj)
{
	TAILQ_INSERT_TAIL(&list->jobs, kj, link);
	list->count++;
}

static void list_push_head(struct kjob_list *list, struct kjob *kj)
{
	TAILQ_INSERT_HEAD(&list->jobs, kj, link);
	list->count++;
}

static void list_remove(struct kjob_list *list, struct kjob *kj)
{
	TAILQ_REMOVE(&list->jobs, kj, link);
	list->count--;
}

/*
 * Removes and returns the first entry, or NULL. (The analyzer cannot see that
 * kjob_free unlinked the entry freed after the previous pop.)
 */
static struct kjob *list_pop_head(struct kjob_list *list)
{
	struct kjob *kj = TAILQ_FIRST(&list->jobs);
	if (kj != NULL)
		list_remove(list, kj); // NOLINT(clang-analyzer-unix.Malloc)
	return kj;
}

static struct kjob *kjob_of(const struct job *job)
{
	return job->backend;
}

/* A librdkafka text made safe to log or show. */
static void redacted(const char *text, char *out, size_t outlen)
{
	kafka_redact(text != NULL ? text : "", out, outlen);
}

/* Logs a recurring error at most every ERROR_LOG_INTERVAL_MS unless it changed. */
static void log_error_throttled(struct source *src, const char *what, const char *detail)
{
	char line[256], clean[256];
	snprintf(line, sizeof(line), "%s: %s", what, detail);
	redacted(line, clean, sizeof(clean));
	long long now = now_ms();
	if (strcmp(clean, src->last_error) == 0 && now - src->last_error_log_ms < ERROR_LOG_INTERVAL_MS)
		return;
	snprintf(src->last_error, sizeof(src->last_error), "%s", clean);
	src->last_error_log_ms = now;
	log_warnx("kafka: %s", clean);
}

/* ---- partitions and the offset watermark -------------------------------- */

static struct kpart *part_find(struct source *src, int32_t partition)
{
	for (struct kpart *p = SLIST_FIRST(&src->parts); p != NULL; p = SLIST_NEXT(p, link))
		if (p->partition == partition)
			return p;
	return NULL;
}

static struct kpart *part_get(struct source *src, int32_t partition)
{
	struct kpart *p = part_find(src, partition);
	if (p != NULL)
		return p;
	p = calloc(1, sizeof(*p));
	if (p == NULL)
		return NULL;
	p->partition = partition;
	p->stored = -1;
	p->lag = -1;
	list_init(&p->queue);
	SLIST_INSERT_HEAD(&src->parts, p, link);
	return p;
}

static void part_reset(struct kpart *p)
{
	p->count = 0;
	p->stored = -1;
	p->committed = -1;
	p->commit_failing = false;
	p->held = false;
	p->last_commit_ms = now_ms();
	p->outstanding = 0;
	p->epoch++;
}

/* Records a received offset (ascending within an epoch). 0 or -1 (memory). */
static int part_track(struct kpart *p, int64_t offset)
{
	if (p->count == p->cap) {
		size_t cap = p->cap ? p->cap * 2 : 32;
		int64_t *offsets = realloc(p->offsets, cap * sizeof(*offsets));
		if (offsets == NULL)
			return -1;
		p->offsets = offsets;
		bool *done = realloc(p->done, cap * sizeof(*done));
		if (done == NULL)
			return -1;
		p->done = done;
		p->cap = cap;
	}
	p->offsets[p->count] = offset;
	p->done[p->count] = false;
	p->count++;
	return 0;
}

/* Forgets offset (a buffered message dropped at revoke). */
static void part_untrack(struct kpart *p, int64_t offset)
{
	for (size_t i = 0; i < p->count; i++) {
		if (p->offsets[i] != offset)
			continue;
		memmove(p->offsets + i, p->offsets + i + 1, (p->count - i - 1) * sizeof(*p->offsets));
		memmove(p->done + i, p->done + i + 1, (p->count - i - 1) * sizeof(*p->done));
		p->count--;
		return;
	}
}

static void store_offset(struct source *src, struct kpart *p)
{
	rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(1);
	rd_kafka_topic_partition_list_add(list, src->cfg->requests_topic, p->partition)->offset = p->stored;
	rd_kafka_resp_err_t err = rd_kafka_offsets_store(src->consumer, list);
	if (err == RD_KAFKA_RESP_ERR_NO_ERROR)
		err = list->elems[0].err;
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
		log_warnx("kafka: cannot store offset %lld of %s [%d]: %s", (long long)p->stored,
		          src->cfg->requests_topic, (int)p->partition, rd_kafka_err2str(err));
	rd_kafka_topic_partition_list_destroy(list);
}

/* Marks offset acknowledged and stores the new low watermark if it moved. */
static void part_ack(struct source *src, struct kpart *p, int64_t offset)
{
	size_t i;
	for (i = 0; i < p->count && p->offsets[i] != offset; i++)
		;
	if (i == p->count)
		return;
	p->done[i] = true;
	size_t prefix = 0;
	while (prefix < p->count && p->done[prefix])
		prefix++;
	if (prefix == 0)
		return;
	/*
	 * Nothing waited for a commit until now: the stall clock starts here, not
	 * at the last commit, which may be long past after an idle spell.
	 */
	if (p->stored < 0 || p->stored <= p->committed)
		p->last_commit_ms = now_ms();
	p->stored = p->offsets[prefix - 1] + 1;
	memmove(p->offsets, p->offsets + prefix, (p->count - prefix) * sizeof(*p->offsets));
	memmove(p->done, p->done + prefix, (p->count - prefix) * sizeof(*p->done));
	p->count -= prefix;
	store_offset(src, p);
	if (!TAILQ_EMPTY(&p->queue.jobs))
		src->wake_worker = true; /* the window moved: the partition may hand out jobs again */
}

/*
 * Whether the partition's next job lies within max_uncommitted offsets of its
 * oldest unfinished one (offsets[0]: taken jobs go in offset order, so it is
 * either running or the next job itself). Everything from there on runs again
 * if the worker dies, so this bounds what one slow job at a partition's head
 * can make a crash repeat.
 */
static bool part_in_window(const struct source *src, const struct kpart *p)
{
	const struct kjob *next = TAILQ_FIRST(&p->queue.jobs);
	return next == NULL || p->count == 0 || next->offset - p->offsets[0] < src->window;
}

/* The job still belongs to the partition's current assignment. */
static bool kjob_current(const struct kjob *kj)
{
	return kj->part->assigned && kj->epoch == kj->part->epoch;
}

/* ---- scoreboard --------------------------------------------------------- */

static void publish_partitions(struct source *src)
{
	if (src->board == NULL)
		return;
	scoreboard_write_begin(src->board);
	int n = 0;
	for (const struct kpart *p = SLIST_FIRST(&src->parts); p != NULL; p = SLIST_NEXT(p, link)) {
		if (n >= SCOREBOARD_PARTITIONS)
			break;
		if (!p->assigned)
			continue;
		struct scoreboard_partition *sp = &src->board->partitions[n++];
		snprintf(sp->topic, sizeof(sp->topic), "%s", src->cfg->requests_topic);
		sp->partition = p->partition;
		sp->lag = p->lag;
	}
	src->board->partition_count = n;
	scoreboard_write_end(src->board);
}

/* ---- jobs --------------------------------------------------------------- */

static void kjob_free(struct kjob *kj)
{
	struct source *src = kj->src;
	if (ev_is_active(&kj->retry_timer))
		src->outcomes_retrying--;
	ev_timer_stop(src->loop, &kj->progress_timer);
	ev_timer_stop(src->loop, &kj->retry_timer);
	free(kj->pending_progress);
	free(kj->doc);
	job_free(kj->job);
	free(kj);
}

/*
 * The job's id; a message whose id breaks the rules is marked invalid (it fails
 * with invalid_job) and named by its place, <topic>-<partition>-<offset>, so
 * that its failed event is still valid.
 */
static char *job_id_for(const rd_kafka_message_t *msg, struct job *job)
{
	const char *problem;
	char *id = kafka_message_id(job->payload, job->payload_len, msg->key, msg->key_len, &problem);
	if (id != NULL && problem == NULL)
		return id;
	free(id);
	if (problem != NULL) {
		job->invalid = true;
		job->invalid_reason = problem;
	}
	if (asprintf(&id, "%s-%d-%lld", rd_kafka_topic_name(msg->rkt), (int)msg->partition, (long long)msg->offset) < 0)
		return NULL;
	return id;
}

static struct kjob *kjob_from_message(struct source *src, struct kpart *p, const rd_kafka_message_t *msg)
{
	struct kjob *kj = calloc(1, sizeof(*kj));
	struct job *job = calloc(1, sizeof(*job));
	char *payload = malloc(msg->len + 1);
	if (kj == NULL || job == NULL || payload == NULL)
		goto fail;
	if (msg->len > 0)
		memcpy(payload, msg->payload, msg->len);
	payload[msg->len] = '\0';
	job->payload = payload;
	job->payload_len = msg->len;
	payload = NULL;
	job->invalid = !event_payload_is_object(job->payload, job->payload_len);
	job->id = job_id_for(msg, job);
	if (job->id == NULL)
		goto fail;
	job->delivery = scoreboard_delivery_key(rd_kafka_topic_name(msg->rkt), msg->partition, msg->offset);
	job->backend = kj;
	kj->src = src;
	kj->job = job;
	kj->part = p;
	kj->epoch = p->epoch;
	kj->offset = msg->offset;
	ev_timer_init(&kj->progress_timer, NULL, 0, 0);
	ev_timer_init(&kj->retry_timer, NULL, 0, 0);
	return kj;
fail:
	free(payload);
	job_free(job);
	free(kj);
	return NULL;
}

static void handle_message(struct source *src, rd_kafka_message_t *msg)
{
	if (msg->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
		if (msg->err == RD_KAFKA_RESP_ERR__PARTITION_EOF)
			return;
		if (msg->err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART || msg->err == RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC)
			src->topic_missing = true;
		log_error_throttled(src, "consumer", rd_kafka_message_errstr(msg));
		return;
	}
	src->topic_missing = false;
	/* Not brokers_down: this message may come from what librdkafka fetched before an outage. */
	struct kpart *p = part_find(src, msg->partition);
	/* A late message of a partition that is no longer (or not yet) ours, or is being revoked. */
	if (p == NULL || !p->assigned || p->revoking || src->closing)
		return;
	if (p->committed < 0 && p->count == 0 && p->stored < 0)
		p->committed = msg->offset; /* the first fetch of an assignment starts at the committed offset */
	struct kjob *kj = kjob_from_message(src, p, msg);
	if (kj == NULL || part_track(p, msg->offset) < 0) {
		/* Not tracked, so the watermark cannot pass it: it runs again after a restart. */
		log_error("kafka: out of memory; message %s [%d] at offset %lld left for later", src->cfg->requests_topic,
		          (int)msg->partition, (long long)msg->offset);
		if (kj != NULL)
			kjob_free(kj);
		return;
	}
	kj->state = KJOB_BUFFERED;
	list_push_tail(&p->queue, kj);
	src->buffered++;
	src->flow_dirty = true;
}

/* ---- flow control ------------------------------------------------------- */

static void apply_pause(struct source *src, rd_kafka_topic_partition_list_t *list, bool pause)
{
	if (list->cnt == 0)
		return;
	rd_kafka_resp_err_t err = pause ? rd_kafka_pause_partitions(src->consumer, list)
	                                : rd_kafka_resume_partitions(src->consumer, list);
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
		log_warnx("kafka: cannot %s partitions: %s", pause ? "pause" : "resume", rd_kafka_err2str(err));
	log_debug("kafka: %s %d partition(s), %zu buffered", pause ? "paused" : "resumed", list->cnt, src->buffered);
}

/* Per partition: at least 2, so that the next job is there when one finishes. */
static size_t partition_cap(struct source *src)
{
	size_t assigned = 0;
	for (struct kpart *p = SLIST_FIRST(&src->parts); p != NULL; p = SLIST_NEXT(p, link))
		if (p->assigned && !p->revoking)
			assigned++;
	size_t cap = assigned > 0 ? (src->buffer_cap + assigned - 1) / assigned : src->buffer_cap;
	return cap < 2 ? 2 : cap;
}

/*
 * Runs before the loop sleeps, so that one pass of take() calls and polls
 * leads to at most one pause or resume per partition: paused when its queue
 * is full, resumed when it is down to half.
 */
static void flow_cb(struct ev_loop *loop, ev_prepare *watcher, int revents)
{
	struct source *src = watcher->data;
	if (!src->flow_dirty || src->consumer == NULL)
		return;
	src->flow_dirty = false;
	size_t cap = partition_cap(src);
	rd_kafka_topic_partition_list_t *pause = rd_kafka_topic_partition_list_new(8);
	rd_kafka_topic_partition_list_t *resume = rd_kafka_topic_partition_list_new(8);
	for (struct kpart *p = SLIST_FIRST(&src->parts); p != NULL; p = SLIST_NEXT(p, link)) {
		if (!p->assigned || p->revoking)
			continue;
		bool want = p->rk_paused ? p->queue.count > cap / 2 : p->queue.count >= cap;
		if (want == p->rk_paused)
			continue;
		rd_kafka_topic_partition_list_add(want ? pause : resume, src->cfg->requests_topic, p->partition);
		p->rk_paused = want;
	}
	apply_pause(src, pause, true);
	apply_pause(src, resume, false);
	rd_kafka_topic_partition_list_destroy(pause);
	rd_kafka_topic_partition_list_destroy(resume);
}

/* ---- outcome and status events ----------------------------------------- */

/* The member as text: a string's bytes (NULs included), anything else as compact JSON. malloc'd. */
static char *member_text(json_t *value, size_t *len)
{
	if (json_is_string(value)) {
		*len = json_string_length(value);
		char *copy = malloc(*len + 1);
		if (copy != NULL) {
			memcpy(copy, json_string_value(value), *len);
			copy[*len] = '\0';
		}
		return copy;
	}
	char *text = json_dumps(value, JSON_COMPACT | JSON_ENCODE_ANY);
	*len = text != NULL ? strlen(text) : 0;
	return text;
}

/* Cuts a long member of doc to its first `keep` bytes (on a UTF-8 boundary), as a string. */
static void shrink_member(json_t *doc, const char *key, size_t keep)
{
	json_t *value = json_object_get(doc, key);
	size_t len;
	char *text = value != NULL ? member_text(value, &len) : NULL;
	if (text == NULL)
		return;
	if (len > keep) {
		size_t cut = keep;
		while (cut > 0 && ((unsigned char)text[cut] & 0xC0) == 0x80)
			cut--;
		json_object_set_new(doc, key, json_stringn(text, cut));
		json_object_set_new(doc, "truncated", json_true());
	}
	free(text);
}

/*
 * An outcome larger than the producer may send would never be acknowledged and
 * would hold its partition's offsets forever: keep the head of the result or
 * of the original job instead, marked "truncated": true; if even that is too
 * large (escaping can multiply binary data by six), keep nothing of them.
 */
static void outcome_shrink(struct kjob *kj)
{
	static const size_t keeps[] = { SHRINK_KEEP_BYTES, 0 };
	size_t limit = kj->src->max_event_bytes > 2 * EVENT_OVERHEAD_BYTES ? kj->src->max_event_bytes - 2 * EVENT_OVERHEAD_BYTES
	                                                                  : EVENT_OVERHEAD_BYTES;
	kj->shrunk = true;
	for (size_t i = 0; i < ARRAY_LEN(keeps); i++) {
		json_t *doc = json_loadb(kj->doc, kj->doc_len, JSON_ALLOW_NUL, NULL);
		if (doc == NULL)
			return;
		shrink_member(doc, "result", keeps[i]);
		shrink_member(doc, "job", keeps[i]);
		char *text = json_dumps(doc, JSON_COMPACT);
		json_decref(doc);
		if (text == NULL)
			return;
		size_t len = strlen(text);
		if (len <= limit || keeps[i] == 0) {
			struct log_fields fields = { .job_id = kj->job->id };
			log_job(LOG_LEVEL_WARN, &fields, "outcome event of %zu bytes is too large; sending %zu bytes (truncated)",
			        kj->doc_len, len);
			free(kj->doc);
			kj->doc = text;
			kj->doc_len = len;
			return;
		}
		free(text);
	}
}

static bool size_error(rd_kafka_resp_err_t err)
{
	return err == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE || err == RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE ||
	       err == RD_KAFKA_RESP_ERR_INVALID_RECORD;
}

static void outcome_retry_cb(struct ev_loop *loop, ev_timer *timer, int revents)
{
	struct kjob *kj = timer->data;
	kj->src->outcomes_retrying--;
	outcome_produce(kj);
}

/* The outcome was not acknowledged: its offset stays, and it is produced again later. */
static void outcome_failed(struct kjob *kj, rd_kafka_resp_err_t err)
{
	struct source *src = kj->src;
	kj->failures++;
	if (size_error(err) && !kj->shrunk) {
		outcome_shrink(kj);
		outcome_produce(kj); /* at most once more from here: shrunk is set */
		return;
	}
	long long delay = OUTCOME_RETRY_FIRST_MS;
	for (int i = 1; i < kj->failures && delay < OUTCOME_RETRY_MAX_MS; i++)
		delay *= 2;
	if (delay > OUTCOME_RETRY_MAX_MS)
		delay = OUTCOME_RETRY_MAX_MS;
	const char *topic = kj->completed ? src->cfg->complete_topic : src->cfg->failed_topic;
	char what[512];
	snprintf(what, sizeof(what), "outcome of job %s to %s not acknowledged (%s); retry %d in %lld ms",
	         kj->job->id, topic, rd_kafka_err2str(err), kj->failures, delay);
	redacted(what, src->outcome_error, sizeof(src->outcome_error));
	log_warnx("kafka: %s", src->outcome_error);
	src->outcomes_retrying++;
	ev_timer_init(&kj->retry_timer, outcome_retry_cb, (double)delay / 1000.0, 0);
	kj->retry_timer.data = kj;
	ev_timer_start(src->loop, &kj->retry_timer);
}

static rd_kafka_resp_err_t produce(struct source *src, const char *topic, const char *key, const char *value,
                                   size_t len, void *opaque)
{
	return rd_kafka_producev(src->producer, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(key, strlen(key)),
	                         RD_KAFKA_V_VALUE((void *)value, len), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
	                         RD_KAFKA_V_OPAQUE(opaque), RD_KAFKA_V_END);
}

static void outcome_produce(struct kjob *kj)
{
	struct source *src = kj->src;
	const char *topic = kj->completed ? src->cfg->complete_topic : src->cfg->failed_topic;
	if (!kj->shrunk && kj->doc_len + strlen(kj->job->id) + EVENT_OVERHEAD_BYTES > src->max_event_bytes)
		outcome_shrink(kj);
	rd_kafka_resp_err_t err = produce(src, topic, kj->job->id, kj->doc, kj->doc_len, kj);
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
		outcome_failed(kj, err);
		return;
	}
	kj->in_flight = true;
}

/* The outcome is durable (or given up): the job leaves the source. */
/* kjob_settle for a job already off the out list. */
static void kjob_settle_detached(struct kjob *kj, bool durable)
{
	struct source *src = kj->src;
	if (kjob_current(kj)) {
		if (durable)
			part_ack(src, kj->part, kj->offset);
		kj->part->outstanding--;
	}
	struct job *job = kj->job;
	if (src->cb.settled != NULL)
		src->cb.settled(job, durable, src->cb.arg);
	kjob_free(kj);
	revoke_check(src);
}

static void kjob_settle(struct kjob *kj, bool durable)
{
	list_remove(&kj->src->out, kj);
	kjob_settle_detached(kj, durable);
}

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *msg, void *opaque)
{
	struct source *src = opaque;
	struct kjob *kj = msg->_private;
	if (kj == NULL) {
		/* A status event: informational, never retried. */
		if (msg->err != RD_KAFKA_RESP_ERR_NO_ERROR)
			log_error_throttled(src, "status event not delivered", rd_kafka_err2str(msg->err));
		return;
	}
	kj->in_flight = false;
	if (msg->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
		src->brokers_down = false;
		if (src->outcomes_retrying == 0)
			src->outcome_error[0] = '\0';
		kjob_settle(kj, true);
		return;
	}
	/* Any error, a timeout too, means "maybe not written": never move the offset for it. */
	if (src->closing || src->gave_up || !kjob_current(kj)) {
		/* The job runs again where its partition lives now (or after restart). */
		struct log_fields fields = { .job_id = kj->job->id };
		log_job(LOG_LEVEL_WARN, &fields, "outcome not acknowledged (%s); the job stays in the queue",
		        rd_kafka_err2str(msg->err));
		kjob_settle(kj, false);
		return;
	}
	outcome_failed(kj, msg->err);
}

static void status_produce(struct source *src, struct kjob *kj, const char *doc, size_t len)
{
	rd_kafka_resp_err_t err = produce(src, src->cfg->status_topic, kj->job->id, doc, len, NULL);
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
		log_error_throttled(src, "status event not produced", rd_kafka_err2str(err));
}

static void progress_flush_cb(struct ev_loop *loop, ev_timer *timer, int revents)
{
	struct kjob *kj = timer->data;
	if (kj->pending_progress == NULL)
		return;
	kj->last_progress_ms = now_ms();
	status_produce(kj->src, kj, kj->pending_progress, kj->pending_progress_len);
	free(kj->pending_progress);
	kj->pending_progress = NULL;
}

/* Keeps the latest progress document until the job's second is over. */
static void progress_defer(struct kjob *kj, const char *doc, size_t len, long long wait_ms)
{
	char *copy = malloc(len);
	if (copy == NULL)
		return;
	memcpy(copy, doc, len);
	free(kj->pending_progress);
	kj->pending_progress = copy;
	kj->pending_progress_len = len;
	if (!ev_is_active(&kj->progress_timer)) {
		ev_timer_init(&kj->progress_timer, progress_flush_cb, (double)wait_ms / 1000.0, 0);
		kj->progress_timer.data = kj;
		ev_timer_start(kj->src->loop, &kj->progress_timer);
	}
}

/* ---- rebalances --------------------------------------------------------- */

static bool is_revoking(struct source *src, int32_t partition)
{
	struct kpart *p = part_find(src, partition);
	return p != NULL && p->revoking;
}

/* Drops the queued messages of revoked partitions: not started, so the new owner simply gets them. */
static void drop_buffered(struct source *src)
{
	for (struct kpart *p = SLIST_FIRST(&src->parts); p != NULL; p = SLIST_NEXT(p, link)) {
		if (!p->revoking)
			continue;
		struct kjob *kj;
		while ((kj = list_pop_head(&p->queue)) != NULL) {
			src->buffered--;
			part_untrack(p, kj->offset);
			kjob_free(kj);
		}
	}
	src->flow_dirty = true;
}

static size_t revoking_outstanding(struct source *src)
{
	size_t n = 0;
	for (struct kpart *p = SLIST_FIRST(&src->parts); p != NULL; p = SLIST_NEXT(p, link))
		if (p->revoking)
			n += p->outstanding;
	return n;
}

/*
 * Partitions drover paused are resumed before they are handed back: 2.0.2
 * keeps the pause flag across unassign and a later assign, newer versions
 * clear it; resumed here, no version carries a pause into the next assignment.
 */
static void resume_before_unassign(struct source *src, const rd_kafka_topic_partition_list_t *list)
{
	rd_kafka_topic_partition_list_t *paused = rd_kafka_topic_partition_list_new(list->cnt);
	for (int i = 0; i < list->cnt; i++) {
		struct kpart *p = part_find(src, list->elems[i].partition);
		if (p != NULL && p->assigned && p->rk_paused) {
			rd_kafka_topic_partition_list_add(paused, src->cfg->requests_topic, p->partition);
			p->rk_paused = false;
		}
	}
	if (paused->cnt > 0)
		rd_kafka_resume_partitions(src->consumer, paused);
	rd_kafka_topic_partition_list_destroy(paused);
}

static void revoke_complete(struct source *src)
{
	rd_kafka_topic_partition_list_t *list = src->revoking;
	src->revoking = NULL;
	ev_timer_stop(src->loop, &src->drain_timer);
	resume_before_unassign(src, list);
	for (int i = 0; i < list->cnt; i++) {
		struct kpart *p = part_find(src, list->elems[i].partition);
		if (p == NULL)
			continue;
		if (p->assigned && p->stored >= 0)
			store_offset(src, p); /* the final watermark, committed by the unassign */
		p->assigned = false;
		p->revoking = false;
		p->lag = -1;
		part_reset(p);
	}
	rd_kafka_error_t *error = NULL;
	rd_kafka_resp_err_t err = RD_KAFKA_RESP_ERR_NO_ERROR;
	if (src->revoke_cooperative)
		error = rd_kafka_incremental_unassign(src->consumer, list);
	else
		err = rd_kafka_assign(src->consumer, NULL);
	if (error != NULL) {
		log_warnx("kafka: incremental unassign failed: %s", rd_kafka_error_string(error));
		rd_kafka_error_destroy(error);
	} else if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
		log_warnx("kafka: unassign failed: %s", rd_kafka_err2str(err));
	}
	log_info("kafka: handed back %d partition(s) of %s", list->cnt, src->cfg->requests_topic);
	rd_kafka_topic_partition_list_destroy(list);
	publish_partitions(src);
}

/* Completes the revoke once no job of the revoked partitions is outstanding. */
static void revoke_check(struct source *src)
{
	if (src->revoking == NULL)
		return;
	if (revoking_outstanding(src) == 0 || src->closing)
		revoke_complete(src);
}

static void revoke_kill(struct source *src)
{
	src->revoke_killed = true;
	if (src->cb.revoke == NULL)
		return;
	/* The hook may release jobs at once (changing the list): start over after each call. */
	for (bool again = true; again && src->revoking != NULL;) {
		again = false;
		for (struct kjob *kj = TAILQ_FIRST(&src->out.jobs); kj != NULL; kj = TAILQ_NEXT(kj, link)) {
			if (kj->state != KJOB_RUNNING || kj->kill_requested || !kjob_current(kj) || !kj->part->revoking)
				continue;
			kj->kill_requested = true;
			struct log_fields fields = { .job_id = kj->job->id };
			log_job(LOG_LEVEL_INFO, &fields, "partition %d revoked; stopping it (it runs again on the new owner)",
			        (int)kj->part->partition);
			src->cb.revoke(kj->job, src->cb.arg);
			again = true;
			break;
		}
	}
}

static void drain_timer_cb(struct ev_loop *loop, ev_timer *timer, int revents)
{
	struct source *src = timer->data;
	if (src->revoking == NULL)
		return;
	if (!src->revoke_killed) {
		log_info("kafka: drain time over; %zu job(s) of revoked partitions still running", revoking_outstanding(src));
		revoke_kill(src);
		if (src->revoking != NULL) {
			ev_timer_set(&src->drain_timer, REVOKE_KILL_WAIT_MS / 1000.0, 0);
			ev_timer_start(loop, &src->drain_timer);
		}
		return;
	}
	/* Outcomes still unacknowledged: their offsets stay uncommitted, the new owner repeats them. */
	log_warnx("kafka: %zu job(s) of revoked partitions did not settle; handing the partitions back anyway",
	          revoking_outstanding(src));
	revoke_complete(src);
}

static void on_assign(struct source *src, rd_kafka_t *rk, rd_kafka_topic_partition_list_t *parts)
{
	rd_kafka_error_t *error = NULL;
	rd_kafka_resp_err_t err = RD_KAFKA_RESP_ERR_NO_ERROR;
	if (strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0)
		error = rd_kafka_incremental_assign(rk, parts);
	else
		err = rd_kafka_assign(rk, parts);
	if (error != NULL) {
		log_warnx("kafka: incremental assign failed: %s", rd_kafka_error_string(error));
		rd_kafka_error_destroy(error);
		return;
	}
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
		log_warnx("kafka: assign failed: %s", rd_kafka_err2str(err));
		return;
	}
	src->ever_assigned = true;
	src->topic_missing = false;
	for (int i = 0; i < parts->cnt; i++) {
		if (strcmp(parts->elems[i].topic, src->cfg->requests_topic) != 0)
			continue;
		struct kpart *p = part_get(src, parts->elems[i].partition);
		if (p == NULL) {
			log_error("kafka: out of memory tracking partition %d", (int)parts->elems[i].partition);
			continue;
		}
		part_reset(p);
		p->assigned = true;
		p->revoking = false;
	}
	src->flow_dirty = true; /* a re-assigned partition may still carry librdkafka's pause flag */
	log_info("kafka: assigned %d partition(s) of %s (rebalance %u, %s)", parts->cnt, src->cfg->requests_topic,
	         src->rebalances, rd_kafka_rebalance_protocol(rk));
	/* In the group now, even with nothing assigned: a rolling reload may take the next worker out
	 * (after the log line, so the log shows the assignment before the next replacement). */
	if (src->board != NULL)
		scoreboard_publish_ready(src->board);
	publish_partitions(src);
}

static void on_revoke(struct source *src, rd_kafka_t *rk, rd_kafka_topic_partition_list_t *parts)
{
	bool lost = rd_kafka_assignment_lost(rk);
	src->revoke_cooperative = strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0;
	if (src->revoking == NULL) {
		src->revoking = rd_kafka_topic_partition_list_copy(parts);
		src->revoke_killed = false;
	} else {
		for (int i = 0; i < parts->cnt; i++)
			if (!is_revoking(src, parts->elems[i].partition))
				rd_kafka_topic_partition_list_add(src->revoking, parts->elems[i].topic,
				                                  parts->elems[i].partition);
	}
	for (int i = 0; i < parts->cnt; i++) {
		struct kpart *p = part_find(src, parts->elems[i].partition);
		if (p != NULL && p->assigned)
			p->revoking = true;
	}
	drop_buffered(src);
	size_t running = revoking_outstanding(src);
	log_info("kafka: %s %d partition(s) of %s; %zu job(s) of them outstanding", lost ? "lost" : "revoking",
	         parts->cnt, src->cfg->requests_topic, running);
	if (running == 0 || src->closing) {
		revoke_complete(src);
		return;
	}
	/* Lost partitions cannot commit anyway: stop their jobs at once (from the loop, not from here). */
	ev_timer_stop(src->loop, &src->drain_timer);
	ev_timer_set(&src->drain_timer, lost ? 0.0 : (double)src->drain_ms / 1000.0, 0);
	ev_timer_start(src->loop, &src->drain_timer);
}

static void note_rebalance(struct source *src);

static void on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err, rd_kafka_topic_partition_list_t *parts,
                         void *opaque)
{
	struct source *src = opaque;
	src->rebalances++;
	note_rebalance(src); /* librdkafka skips commits until the group is steady again */
	if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
		on_assign(src, rk, parts);
	} else if (err == RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS) {
		on_revoke(src, rk, parts);
	} else {
		/* Unassign everything (the cooperative protocol only accepts the incremental call). */
		log_warnx("kafka: rebalance error: %s", rd_kafka_err2str(err));
		rd_kafka_topic_partition_list_t *current = NULL;
		if (strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0 &&
		    rd_kafka_assignment(rk, &current) == RD_KAFKA_RESP_ERR_NO_ERROR) {
			rd_kafka_error_t *error = rd_kafka_incremental_unassign(rk, current);
			if (error != NULL)
				rd_kafka_error_destroy(error);
		} else {
			rd_kafka_assign(rk, NULL);
		}
		if (current != NULL)
			rd_kafka_topic_partition_list_destroy(current);
		for (struct kpart *p = SLIST_FIRST(&src->parts); p != NULL; p = SLIST_NEXT(p, link)) {
			if (p->assigned) {
				p->assigned = false;
				part_reset(p);
			}
		}
		publish_partitions(src);
	}
}

/* ---- librdkafka callbacks ----------------------------------------------- */

/*
 * While the coordinator refuses commits or none is attempted, every job
 * finished is one more to repeat if this worker dies: such a partition takes
 * no new job once uncommitted_max acknowledged offsets wait for a commit.
 * A rebalance refuses (or skips) every commit of the group for seconds, though
 * most partitions stay where they are: those keep working (revoked ones take
 * nothing anyway) for up to rebalance_grace_ms, so the pool does not stop.
 * When commits succeed on their interval this never holds anything back.
 */
static bool part_held_back(const struct source *src, const struct kpart *p)
{
	if (p->stored < 0 || p->committed < 0 || p->stored - p->committed < src->uncommitted_max)
		return false;
	long long now = now_ms();
	if (src->rebalancing_since_ms != 0 && now - src->rebalancing_since_ms < src->rebalance_grace_ms)
		return false;
	return p->commit_failing || now - p->last_commit_ms > src->commit_stall_ms;
}

/* Whether the partition may hand out its next job now; a partition becoming held back is counted. */
static bool part_may_take(struct source *src, struct kpart *p)
{
	bool held = part_held_back(src, p);
	if (held && !p->held && src->board != NULL) {
		scoreboard_write_begin(src->board);
		src->board->counters.kafka_hold_backs++;
		scoreboard_write_end(src->board);
	}
	p->held = held;
	return !held && part_in_window(src, p);
}

static void note_rebalance(struct source *src)
{
	if (src->rebalancing_since_ms == 0)
		src->rebalancing_since_ms = now_ms();
}

static void on_commit(rd_kafka_t *rk, rd_kafka_resp_err_t err, rd_kafka_topic_partition_list_t *offsets,
                      void *opaque)
{
	struct source *src = opaque;
	bool released = false;
	for (int i = 0; offsets != NULL && i < offsets->cnt; i++) {
		const rd_kafka_topic_partition_t *tp = &offsets->elems[i];
		struct kpart *p = strcmp(tp->topic, src->cfg->requests_topic) == 0 ? part_find(src, tp->partition) : NULL;
		if (p == NULL || !p->assigned)
			continue;
		rd_kafka_resp_err_t perr = err != RD_KAFKA_RESP_ERR_NO_ERROR ? err : tp->err;
		if (perr == RD_KAFKA_RESP_ERR__NO_OFFSET)
			continue;
		bool was_held = part_held_back(src, p);
		p->commit_failing = perr != RD_KAFKA_RESP_ERR_NO_ERROR;
		if (perr == RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS)
			note_rebalance(src);
		if (!p->commit_failing && tp->offset >= 0) {
			p->committed = tp->offset;
			p->last_commit_ms = now_ms();
			src->rebalancing_since_ms = 0; /* the coordinator takes commits again */
		}
		released |= was_held && !part_held_back(src, p);
	}
	if (released)
		src->wake_worker = true;
}

static void on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
	struct source *src = opaque;
	char clean[256];
	if (err == RD_KAFKA_RESP_ERR__FATAL) {
		char fatal[256];
		rd_kafka_resp_err_t orig = rd_kafka_fatal_error(rk, fatal, sizeof(fatal));
		redacted(fatal, clean, sizeof(clean));
		snprintf(src->fatal, sizeof(src->fatal), "kafka: %.40s fatal error: %.40s: %.140s", rd_kafka_name(rk),
		         rd_kafka_err2name(orig), clean);
		log_error("kafka: %s", src->fatal);
		return;
	}
	if (err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN)
		src->brokers_down = true;
	log_error_throttled(src, rd_kafka_err2name(err), reason);
}

/* Consumer lag per partition and broker state from librdkafka's statistics. */
static int on_stats(rd_kafka_t *rk, char *json, size_t len, void *opaque)
{
	struct source *src = opaque;
	json_t *root = json_loadb(json, len, 0, NULL);
	if (root == NULL)
		return 0;
	json_t *brokers = json_object_get(root, "brokers");
	const char *name;
	json_t *broker;
	json_object_foreach(brokers, name, broker) {
		const char *state = json_string_value(json_object_get(broker, "state"));
		if (state != NULL && strcmp(state, "UP") == 0 && json_integer_value(json_object_get(broker, "nodeid")) >= 0)
			src->brokers_down = false;
	}
	json_t *partitions = json_object_get(json_object_get(json_object_get(root, "topics"), src->cfg->requests_topic),
	                                     "partitions");
	for (struct kpart *p = SLIST_FIRST(&src->parts); p != NULL; p = SLIST_NEXT(p, link)) {
		char key[16];
		snprintf(key, sizeof(key), "%d", (int)p->partition);
		json_t *lag = json_object_get(json_object_get(partitions, key), "consumer_lag");
		p->lag = p->assigned && json_is_integer(lag) ? json_integer_value(lag) : -1;
	}
	json_decref(root);
	publish_partitions(src);
	return 0;
}

/* ---- the event loop ----------------------------------------------------- */

static void serve(struct source *src)
{
	size_t buffered = src->buffered;
	rd_kafka_message_t *msg;
	while (src->consumer != NULL && (msg = rd_kafka_consumer_poll(src->consumer, 0)) != NULL) {
		handle_message(src, msg);
		rd_kafka_message_destroy(msg);
	}
	if (src->producer != NULL)
		rd_kafka_poll(src->producer, 0);
	bool wake = src->buffered > buffered || src->wake_worker;
	src->wake_worker = false;
	if (wake && !src->closing && src->cb.ready != NULL)
		src->cb.ready(src->cb.arg);
}

static void wake_cb(struct ev_loop *loop, ev_io *watcher, int revents)
{
	struct source *src = watcher->data;
	char buf[256];
	while (read_some(watcher->fd, buf, sizeof(buf)) > 0)
		;
	serve(src);
	poll_timer_adjust(src);
}

static const char *kafka_fault(struct source *src);

/*
 * Shows the backend's fault in the slot's fault text, which the worker also
 * uses for its own faults (a handler that cannot start): only text this
 * source wrote itself is ever replaced or cleared. Same thread as the worker.
 */
static void publish_fault(struct source *src)
{
	if (src->board == NULL)
		return;
	const char *text = kafka_fault(src);
	char *shown = src->board->fault;
	bool ours = shown[0] == '\0' || strcmp(shown, src->published_fault) == 0;
	if (!ours || strcmp(shown, text) == 0)
		return;
	/* Logged when it appears and when it clears; stats show every change. */
	if (text[0] != '\0' && src->published_fault[0] == '\0')
		log_warnx("%s", text);
	else if (text[0] == '\0')
		log_info("kafka: fault cleared");
	scoreboard_write_begin(src->board);
	snprintf(shown, sizeof(src->board->fault), "%s", text);
	scoreboard_write_end(src->board);
	snprintf(src->published_fault, sizeof(src->published_fault), "%s", text);
}

/* Nothing in flight and no fault shown or about to be: nothing whose age matters. */
static bool source_idle(const struct source *src)
{
	return TAILQ_EMPTY(&src->out.jobs) && src->buffered == 0 && src->revoking == NULL && src->fault_text[0] == '\0' &&
	       src->fatal[0] == '\0' && !src->brokers_down && !src->topic_missing && src->outcomes_retrying == 0;
}

/* The poll timer's period follows the work: a second while busy, rarely when idle. */
static void poll_timer_adjust(struct source *src)
{
	double want = source_idle(src) ? src->idle_poll_s : BUSY_POLL_S;
	if (src->poll_timer.repeat == want)
		return;
	src->poll_timer.repeat = want;
	/* Going busy: the next tick within a second; going idle: the tick already due stays. */
	if (want < src->idle_poll_s || !ev_is_active(&src->poll_timer))
		ev_timer_again(src->loop, &src->poll_timer);
}

static void poll_timer_cb(struct ev_loop *loop, ev_timer *timer, int revents)
{
	struct source *src = timer->data;
	serve(src);
	publish_fault(src);
	poll_timer_adjust(src);
}

/* ---- open --------------------------------------------------------------- */

static size_t producer_max_bytes(const struct config *cfg, int slot)
{
	struct kafka_props props;
	char err[256];
	size_t max = 1000000; /* librdkafka's default message.max.bytes */
	if (kafka_props_build(cfg, KAFKA_ROLE_PRODUCER, slot, &props, err, sizeof(err)) == 0) {
		const char *value = kafka_props_get(&props, "message.max.bytes");
		if (value != NULL && atoll(value) > 0)
			max = (size_t)atoll(value);
		kafka_props_free(&props);
	}
	return max;
}

static long long conf_ms(rd_kafka_conf_t *conf, const char *key, long long fallback)
{
	char value[32];
	size_t size = sizeof(value);
	if (rd_kafka_conf_get(conf, key, value, &size) == RD_KAFKA_CONF_OK && atoll(value) > 0)
		return atoll(value);
	return fallback;
}

static rd_kafka_t *create_handle(struct source *src, enum kafka_role role, char *err, size_t errlen)
{
	char raw[512];
	rd_kafka_conf_t *conf = kafka_conf_new(src->cfg, role, src->slot, err, errlen);
	if (conf == NULL)
		return NULL;
	rd_kafka_conf_set_opaque(conf, src);
	rd_kafka_conf_set_error_cb(conf, on_error);
	if (role == KAFKA_ROLE_CONSUMER) {
		rd_kafka_conf_set_rebalance_cb(conf, on_rebalance);
		rd_kafka_conf_set_stats_cb(conf, on_stats);
		rd_kafka_conf_set_offset_commit_cb(conf, on_commit);
		/* Bounded revoke drain, well under max.poll.interval.ms (the group waits for us that long). */
		long long limit = conf_ms(conf, "max.poll.interval.ms", 300000) / 2;
		src->drain_ms = src->cfg->shutdown_timeout_ms < limit ? src->cfg->shutdown_timeout_ms : limit;
		src->commit_stall_ms = 2 * conf_ms(conf, "auto.commit.interval.ms", 5000) + 500;
		src->rebalance_grace_ms = conf_ms(conf, "session.timeout.ms", 45000);
		double idle = (double)conf_ms(conf, "max.poll.interval.ms", 300000) / 4000.0;
		src->idle_poll_s = idle < BUSY_POLL_S ? BUSY_POLL_S : idle > IDLE_POLL_MAX_S ? IDLE_POLL_MAX_S : idle;
	} else {
		rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
	}
	rd_kafka_t *rk = rd_kafka_new(role == KAFKA_ROLE_CONSUMER ? RD_KAFKA_CONSUMER : RD_KAFKA_PRODUCER, conf, raw,
	                              sizeof(raw));
	if (rk == NULL) {
		redacted(raw, err, errlen);
		rd_kafka_conf_destroy(conf);
	}
	return rk;
}

static int subscribe(struct source *src, char *err, size_t errlen)
{
	rd_kafka_topic_partition_list_t *topics = rd_kafka_topic_partition_list_new(1);
	rd_kafka_topic_partition_list_add(topics, src->cfg->requests_topic, RD_KAFKA_PARTITION_UA);
	rd_kafka_resp_err_t rc = rd_kafka_subscribe(src->consumer, topics);
	rd_kafka_topic_partition_list_destroy(topics);
	if (rc != RD_KAFKA_RESP_ERR_NO_ERROR) {
		snprintf(err, errlen, "cannot subscribe to %s: %s", src->cfg->requests_topic, rd_kafka_err2str(rc));
		return -1;
	}
	src->subscribed = true;
	return 0;
}

/* Both handles' queues write to one non-blocking, close-on-exec pipe watched by the loop. */
static int setup_wakeup(struct source *src, char *err, size_t errlen)
{
	if (pipe2(src->wake_fd, O_NONBLOCK | O_CLOEXEC) < 0) {
		snprintf(err, errlen, "pipe: %s", strerror(errno));
		return -1;
	}
	rd_kafka_poll_set_consumer(src->consumer); /* the main queue (errors, stats) joins the consumer queue */
	src->consumer_queue = rd_kafka_queue_get_consumer(src->consumer);
	src->producer_queue = rd_kafka_queue_get_main(src->producer);
	if (src->consumer_queue == NULL || src->producer_queue == NULL) {
		snprintf(err, errlen, "cannot get librdkafka's queues");
		return -1;
	}
	rd_kafka_queue_io_event_enable(src->consumer_queue, src->wake_fd[1], "c", 1);
	rd_kafka_queue_io_event_enable(src->producer_queue, src->wake_fd[1], "p", 1);
	ev_io_init(&src->wake_watcher, wake_cb, src->wake_fd[0], EV_READ);
	src->wake_watcher.data = src;
	ev_io_start(src->loop, &src->wake_watcher);
	ev_timer_init(&src->poll_timer, poll_timer_cb, BUSY_POLL_S, BUSY_POLL_S);
	src->poll_timer.data = src;
	ev_timer_start(src->loop, &src->poll_timer);
	ev_prepare_init(&src->flow_watcher, flow_cb);
	src->flow_watcher.data = src;
	ev_prepare_start(src->loop, &src->flow_watcher);
	ev_timer_init(&src->drain_timer, drain_timer_cb, 0, 0);
	src->drain_timer.data = src;
	ev_timer_init(&src->hurry_timer, hurry_timer_cb, 0, 0);
	return 0;
}

/*
 * Looks up the topics outcomes go to as soon as the producer exists. The first
 * produce to a topic librdkafka knows nothing of waits for its metadata (about
 * a second on a fresh handle), and every partition's window waits with it:
 * a worker starting on a backlog would sit idle through it. Holding the topic
 * handles starts the lookups now, while the group join takes its seconds.
 */
static void warm_outcome_topics(struct source *src)
{
	const char *topics[] = { src->cfg->complete_topic, src->cfg->failed_topic, src->cfg->status_topic };
	for (size_t i = 0; i < ARRAY_LEN(topics); i++) {
		if (topics[i] == NULL || topics[i][0] == '\0')
			continue;
		src->outcome_topics[i] = rd_kafka_topic_new(src->producer, topics[i], NULL);
		if (src->outcome_topics[i] == NULL)
			log_warnx("kafka: cannot look up topic %s: %s", topics[i], rd_kafka_err2str(rd_kafka_last_error()));
	}
}

static void destroy_handles(struct source *src);
static void stop_watchers(struct source *src);

/* What the source keeps of open()'s parameters (the board is attached once the handles exist). */
static void keep_params(struct source *src, const struct source_params *params)
{
	src->cfg = params->cfg;
	src->loop = params->loop;
	src->slot = params->slot;
	src->cb = *params->cb;
	snprintf(src->host, sizeof(src->host), "%s", params->origin != NULL ? params->origin->host : "localhost");
	src->origin.host = src->host;
	src->origin.worker = params->origin != NULL ? params->origin->worker : params->slot;
}

static struct source *kafka_open(const struct source_params *params, char *err, size_t errlen)
{
	const struct config *cfg = params->cfg;
	int slot = params->slot;
	struct source *src = calloc(1, sizeof(*src));
	if (src == NULL) {
		snprintf(err, errlen, "out of memory");
		errno = ENOMEM;
		return NULL;
	}
	keep_params(src, params);
	src->wake_fd[0] = src->wake_fd[1] = -1;
	SLIST_INIT(&src->parts);
	list_init(&src->out);
	size_t cap = cfg->max_concurrent > 0 ? (size_t)cfg->max_concurrent : 1;
	src->buffer_cap = cap < 2 ? 2 : cap > BUFFER_MAX ? BUFFER_MAX : cap;
	src->uncommitted_max = (int64_t)src->buffer_cap;
	src->window = cfg->kafka_max_uncommitted > 0 ? cfg->kafka_max_uncommitted : 2 * (int64_t)cap;
	src->max_event_bytes = producer_max_bytes(cfg, slot);

	src->producer = create_handle(src, KAFKA_ROLE_PRODUCER, err, errlen);
	if (src->producer != NULL) {
		warm_outcome_topics(src);
		src->consumer = create_handle(src, KAFKA_ROLE_CONSUMER, err, errlen);
	}
	/* librdkafka refusing a property, a file it names or the topic is the configuration (source.h). */
	int failure = 0;
	if (src->consumer != NULL && setup_wakeup(src, err, errlen) < 0)
		failure = EAGAIN; /* descriptors: a restart may find them */
	else if (src->consumer == NULL || subscribe(src, err, errlen) < 0)
		failure = EINVAL;
	if (failure != 0) {
		stop_watchers(src);
		destroy_handles(src);
		free(src);
		errno = failure;
		return NULL;
	}
	char instance[256];
	size_t size = sizeof(instance);
	rd_kafka_conf_t *conf = (rd_kafka_conf_t *)rd_kafka_conf(src->consumer);
	if (rd_kafka_conf_get(conf, "group.instance.id", instance, &size) != RD_KAFKA_CONF_OK || instance[0] == '\0')
		snprintf(instance, sizeof(instance), "(dynamic member)");
	log_info("kafka: worker %d consuming %s as %s in group %s, instance %s", slot, cfg->requests_topic,
	         rd_kafka_name(src->consumer), cfg->kafka_group_id, instance);
	src->board = params->board; /* ready is published at the first assignment */
	publish_partitions(src);
	return src;
}

/* ---- the source interface ----------------------------------------------- */

static enum source_take kafka_take(struct source *src, struct job **job)
{
	if (src->closing || src->fatal[0] != '\0' || src->buffered == 0)
		return SOURCE_EMPTY;
	struct kpart *next = NULL;
	for (struct kpart *p = SLIST_FIRST(&src->parts); p != NULL; p = SLIST_NEXT(p, link))
		if (!TAILQ_EMPTY(&p->queue.jobs) && part_may_take(src, p) &&
		    (next == NULL || p->taken_seq < next->taken_seq))
			next = p;
	if (next == NULL)
		return SOURCE_EMPTY;
	next->taken_seq = ++src->take_seq;
	struct kjob *kj = TAILQ_FIRST(&next->queue.jobs);
	list_remove(&next->queue, kj);
	src->buffered--;
	kj->state = KJOB_RUNNING;
	kj->part->outstanding++;
	/* Redelivered after it took workers down with it: those attempts count (the ledger is this host's). */
	int deaths = scoreboard_crash_deaths(kj->job->delivery);
	if (deaths > kj->job->attempts_done)
		kj->job->attempts_done = deaths;
	list_push_tail(&src->out, kj);
	src->flow_dirty = true;
	*job = kj->job;
	return SOURCE_TAKEN;
}

static int kafka_attempt(struct source *src, struct job *job, int attempt)
{
	kjob_of(job)->attempt = attempt;
	return 0;
}

/* Renders status as a status event (events.h); the retry delay is not part of the event. */
static char *status_document(struct source *src, const struct job *job, const struct job_status *status)
{
	double progress = status->state == JOB_PROGRESS ? status->progress : -1;
	return event_status(&src->origin, job->id, job_state_name(status->state), status->attempt, status->ts_ms,
	                    progress, status->message, status->reason);
}

static void kafka_status(struct source *src, struct job *job, const struct job_status *status)
{
	struct kjob *kj = kjob_of(job);
	if (src->cfg->status_topic == NULL || src->cfg->status_topic[0] == '\0')
		return;
	char *doc = status_document(src, job, status);
	if (doc == NULL) {
		struct log_fields fields = { .job_id = job->id, .attempt = status->attempt };
		log_job(LOG_LEVEL_WARN, &fields, "out of memory building a %s event", job_state_name(status->state));
		return;
	}
	size_t len = strlen(doc);
	long long now = now_ms();
	long long since = now - kj->last_progress_ms;
	if (status->state != JOB_PROGRESS) {
		/* A newer state makes a waiting progress event stale. */
		ev_timer_stop(src->loop, &kj->progress_timer);
		free(kj->pending_progress);
		kj->pending_progress = NULL;
		status_produce(src, kj, doc, len);
	} else if (kj->last_progress_ms != 0 && since < PROGRESS_INTERVAL_MS) {
		progress_defer(kj, doc, len, PROGRESS_INTERVAL_MS - since);
	} else {
		kj->last_progress_ms = now;
		status_produce(src, kj, doc, len);
	}
	free(doc);
}

static void kafka_finish(struct source *src, struct job *job, bool completed, const char *doc, size_t len)
{
	struct kjob *kj = kjob_of(job);
	ev_timer_stop(src->loop, &kj->progress_timer);
	free(kj->pending_progress);
	kj->pending_progress = NULL;
	kj->state = KJOB_SETTLING;
	kj->completed = completed;
	kj->settling_since_ms = now_ms();
	kj->doc = malloc(len + 1);
	if (kj->doc == NULL) {
		struct log_fields fields = { .job_id = job->id };
		log_job(LOG_LEVEL_ERROR, &fields, "out of memory keeping its outcome; it stays in the queue");
		kjob_settle(kj, false);
		return;
	}
	memcpy(kj->doc, doc, len);
	kj->doc[len] = '\0';
	kj->doc_len = len;
	outcome_produce(kj);
}

static void kafka_release(struct source *src, struct job *job)
{
	struct kjob *kj = kjob_of(job);
	list_remove(&src->out, kj);
	if (kjob_current(kj))
		kj->part->outstanding--;
	/* Still ours (e.g. the handler could not start): it waits at the head of its queue. */
	if (kjob_current(kj) && !kj->part->revoking && !src->closing && kj->state == KJOB_RUNNING) {
		job->attempts_done = kj->attempt;
		kj->state = KJOB_BUFFERED;
		kj->kill_requested = false;
		ev_timer_stop(src->loop, &kj->progress_timer);
		list_push_head(&kj->part->queue, kj);
		src->buffered++;
		src->flow_dirty = true;
		return;
	}
	kjob_free(kj);
	revoke_check(src);
}

/*
 * The worker pauses when it runs max_concurrent jobs. Nothing to do here:
 * the per-partition queues pause their partitions when full, whatever the
 * worker does, and the consumer keeps being polled.
 */
static void kafka_pause(struct source *src)
{
	src->worker_paused = true;
}

static void kafka_resume(struct source *src)
{
	src->worker_paused = false;
}

static size_t kafka_pending(struct source *src)
{
	if (src->gave_up)
		return 0; /* a fast stop no longer waits: close() abandons what is left */
	size_t n = 0;
	for (struct kjob *kj = TAILQ_FIRST(&src->out.jobs); kj != NULL; kj = TAILQ_NEXT(kj, link))
		if (kj->state == KJOB_SETTLING)
			n++;
	return n;
}

static long long oldest_settling_ms(struct source *src)
{
	long long oldest = 0, now = now_ms();
	for (struct kjob *kj = TAILQ_FIRST(&src->out.jobs); kj != NULL; kj = TAILQ_NEXT(kj, link))
		if (kj->state == KJOB_SETTLING && now - kj->settling_since_ms > oldest)
			oldest = now - kj->settling_since_ms;
	return oldest;
}

static const char *kafka_fault(struct source *src)
{
	char text[SCOREBOARD_FAULT_MAX];
	long long waiting;
	if (src->fatal[0] != '\0')
		snprintf(text, sizeof(text), "%.190s", src->fatal);
	else if (src->outcomes_retrying > 0 && src->outcome_error[0] != '\0')
		snprintf(text, sizeof(text), "kafka: %zu outcome(s) retrying: %.140s", src->outcomes_retrying,
		         src->outcome_error);
	else if (src->brokers_down)
		snprintf(text, sizeof(text), "kafka: all brokers down (%s)", src->cfg->kafka_brokers);
	else if (src->topic_missing)
		snprintf(text, sizeof(text), "kafka: requests topic %s does not exist", src->cfg->requests_topic);
	else if ((waiting = oldest_settling_ms(src)) > AWAITING_ACK_FAULT_MS)
		snprintf(text, sizeof(text), "kafka: %zu outcome(s) waiting for the broker's acknowledgement for %lld s",
		         kafka_pending(src), waiting / 1000);
	else
		text[0] = '\0';
	redacted(text, src->fault_text, sizeof(src->fault_text));
	return src->fault_text;
}

/* ---- fast stop ---------------------------------------------------------- */

/*
 * Settles as not durable the first outcome waiting for a retry (not in flight).
 * (The analyzer cannot see that kjob_settle unlinked the entry it freed.)
 */
static bool settle_one_retrying(struct source *src)
{
	struct kjob *kj = TAILQ_FIRST(&src->out.jobs);
	while (kj != NULL && (kj->state != KJOB_SETTLING || kj->in_flight)) // NOLINT(clang-analyzer-unix.Malloc)
		kj = TAILQ_NEXT(kj, link);
	if (kj == NULL)
		return false;
	kjob_settle(kj, false);
	return true;
}

/* The fast stop's wait is over: what the brokers have not acknowledged stays in the queue. */
static void hurry_timer_cb(struct ev_loop *loop, ev_timer *timer, int revents)
{
	struct source *src = timer->data;
	size_t waiting = kafka_pending(src);
	src->gave_up = true;
	if (waiting == 0)
		return;
	log_warnx("kafka: fast stop: %zu outcome(s) not acknowledged; their jobs stay in the queue", waiting);
	rd_kafka_purge(src->producer, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
	rd_kafka_poll(src->producer, 0); /* the purge reports settle their jobs as not durable */
	while (settle_one_retrying(src))
		;
}

static void kafka_hurry(struct source *src, long long budget_ms)
{
	if (src->hurry_until_ms != 0)
		return;
	src->hurry_until_ms = now_ms() + budget_ms;
	ev_timer_init(&src->hurry_timer, hurry_timer_cb, (double)budget_ms / 2000.0, 0);
	src->hurry_timer.data = src;
	ev_timer_start(src->loop, &src->hurry_timer);
}

/* What a fast close may still spend, at least HURRY_CLOSE_MIN_MS. */
static int hurry_left_ms(const struct source *src)
{
	long long left = src->hurry_until_ms - now_ms();
	return left < HURRY_CLOSE_MIN_MS ? HURRY_CLOSE_MIN_MS : left > 60000 ? 60000 : (int)left;
}

/*
 * Leaves the group within the fast stop's time: the asynchronous close, whose
 * rebalance events are served here. False when the time ran out (brokers
 * down): the process then exits without waiting for librdkafka.
 */
static bool consumer_close_in_time(struct source *src)
{
	long long deadline = now_ms() + hurry_left_ms(src);
	rd_kafka_queue_t *queue = rd_kafka_queue_new(src->consumer);
	if (queue == NULL)
		return false;
	rd_kafka_error_t *error = rd_kafka_consumer_close_queue(src->consumer, queue);
	if (error != NULL) {
		log_warnx("kafka: consumer close: %s", rd_kafka_error_string(error));
		rd_kafka_error_destroy(error);
		rd_kafka_queue_destroy(queue);
		return false;
	}
	while (!rd_kafka_consumer_closed(src->consumer) && now_ms() < deadline) {
		rd_kafka_event_t *event = rd_kafka_queue_poll(queue, 100);
		if (event == NULL)
			continue;
		if (rd_kafka_event_type(event) == RD_KAFKA_EVENT_REBALANCE)
			on_rebalance(src->consumer, rd_kafka_event_error(event), rd_kafka_event_topic_partition_list(event),
			             src);
		rd_kafka_event_destroy(event);
	}
	bool closed = rd_kafka_consumer_closed(src->consumer);
	rd_kafka_queue_destroy(queue);
	if (!closed)
		log_warnx("kafka: fast stop: the group could not be left in time; exiting without it");
	return closed;
}

/* ---- close -------------------------------------------------------------- */

/* Outcomes still unacknowledged after the flush: given up (their jobs stay in the queue). */
static void abandon_unsettled(struct source *src)
{
	if (src->producer != NULL) {
		rd_kafka_purge(src->producer, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
		rd_kafka_poll(src->producer, 0); /* delivers the purge reports: settled as not durable */
	}
	struct kjob *kj;
	while ((kj = list_pop_head(&src->out)) != NULL) {
		if (kj->state == KJOB_SETTLING) {
			kjob_settle_detached(kj, false);
			continue;
		}
		if (kjob_current(kj))
			kj->part->outstanding--;
		kjob_free(kj);
	}
}

static void stop_watchers(struct source *src)
{
	ev_io_stop(src->loop, &src->wake_watcher);
	ev_timer_stop(src->loop, &src->poll_timer);
	ev_prepare_stop(src->loop, &src->flow_watcher);
	ev_timer_stop(src->loop, &src->drain_timer);
	ev_timer_stop(src->loop, &src->hurry_timer);
}

static void destroy_handles(struct source *src)
{
	if (src->consumer_queue != NULL) {
		rd_kafka_queue_io_event_enable(src->consumer_queue, -1, NULL, 0);
		rd_kafka_queue_destroy(src->consumer_queue);
		src->consumer_queue = NULL;
	}
	if (src->producer_queue != NULL) {
		rd_kafka_queue_io_event_enable(src->producer_queue, -1, NULL, 0);
		rd_kafka_queue_destroy(src->producer_queue);
		src->producer_queue = NULL;
	}
	if (src->consumer != NULL) {
		/*
		 * librdkafka 2.0.2 can abort in destroy when a cooperative member joined
		 * but never got an assignment; the worker exits right after close, so
		 * leaving that handle to process exit is the safe choice.
		 */
		if (src->leave_handles)
			log_debug("kafka: fast stop: leaving the consumer to process exit");
		else if (!src->subscribed || src->ever_assigned)
			rd_kafka_destroy(src->consumer);
		else
			log_debug("kafka: consumer never had an assignment; not destroying it (librdkafka 2.0.2)");
		src->consumer = NULL;
	}
	for (size_t i = 0; i < ARRAY_LEN(src->outcome_topics); i++) {
		if (src->outcome_topics[i] != NULL && !src->leave_handles)
			rd_kafka_topic_destroy(src->outcome_topics[i]);
		src->outcome_topics[i] = NULL;
	}
	if (src->producer != NULL) {
		if (!src->leave_handles)
			rd_kafka_destroy(src->producer);
		src->producer = NULL;
	}
	for (int i = 0; i < 2; i++)
		if (src->wake_fd[i] >= 0)
			close(src->wake_fd[i]);
}

static void kafka_close(struct source *src)
{
	src->closing = true;
	stop_watchers(src);
	bool hurry = src->hurry_until_ms != 0;
	/* Outcomes first: an offset is stored only after its outcome is acknowledged. */
	if (src->producer != NULL &&
	    rd_kafka_flush(src->producer, hurry ? hurry_left_ms(src) / 2 : CLOSE_FLUSH_MS) != RD_KAFKA_RESP_ERR_NO_ERROR)
		log_warnx("kafka: %d event(s) not delivered at shutdown", rd_kafka_outq_len(src->producer));
	abandon_unsettled(src);
	for (struct kpart *p = SLIST_FIRST(&src->parts); p != NULL; p = SLIST_NEXT(p, link)) {
		struct kjob *kj;
		while ((kj = list_pop_head(&p->queue)) != NULL)
			kjob_free(kj);
	}
	src->buffered = 0;
	for (struct kpart *p = SLIST_FIRST(&src->parts); p != NULL; p = SLIST_NEXT(p, link))
		if (p->assigned && p->stored >= 0)
			store_offset(src, p);
	/*
	 * Commit now, while the group is most likely steady: the commit that
	 * consumer_close makes fails with REBALANCE_IN_PROGRESS when sibling
	 * workers stopping at the same time left the group first.
	 */
	if (src->consumer != NULL && src->ever_assigned) {
		/* A fast stop does not wait for it: consumer close commits as well. */
		rd_kafka_resp_err_t err = rd_kafka_commit(src->consumer, NULL, hurry);
		if (err != RD_KAFKA_RESP_ERR_NO_ERROR && err != RD_KAFKA_RESP_ERR__NO_OFFSET)
			log_info("kafka: final commit before leaving: %s", rd_kafka_err2str(err));
	}
	/* Leaves the group (static members keep their place until session.timeout.ms) and commits. */
	if (src->consumer != NULL && hurry) {
		src->leave_handles = !consumer_close_in_time(src);
	} else if (src->consumer != NULL) {
		rd_kafka_resp_err_t err = rd_kafka_consumer_close(src->consumer);
		if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
			log_warnx("kafka: consumer close: %s", rd_kafka_err2str(err));
	}
	if (src->revoking != NULL)
		rd_kafka_topic_partition_list_destroy(src->revoking);
	destroy_handles(src);
	while (!SLIST_EMPTY(&src->parts)) {
		struct kpart *p = SLIST_FIRST(&src->parts);
		SLIST_REMOVE_HEAD(&src->parts, link);
		free(p->offsets);
		free(p->done);
		free(p);
	}
	if (src->board != NULL) {
		scoreboard_write_begin(src->board);
		src->board->partition_count = 0;
		scoreboard_write_end(src->board);
	}
	free(src);
}

const struct source_ops kafka_source_ops = {
	.name = "kafka",
	.open = kafka_open,
	.take = kafka_take,
	.attempt = kafka_attempt,
	.status = kafka_status,
	.finish = kafka_finish,
	.release = kafka_release,
	/* No finish_recorded: whether an outcome event of this delivery is on its topic is not cheaply knowable. */
	.pause = kafka_pause,
	.resume = kafka_resume,
	.pending = kafka_pending,
	.fault = kafka_fault,
	.hurry = kafka_hurry,
	.close = kafka_close,
};
