/*
 * scoreboard: shared memory the supervisor maps before forking, one slot per
 * worker. A slot is written only by the worker that owns it (and by the
 * supervisor only while no worker owns it); the supervisor reads it without
 * asking the worker, so stats and metrics answer even when every worker is
 * busy, and a dead worker's in-flight jobs and handler process groups are
 * known. Writers bracket updates with scoreboard_write_begin/end (a seqlock);
 * readers take a consistent copy with scoreboard_read_slot.
 */
#ifndef DROVER_SCOREBOARD_H
#define DROVER_SCOREBOARD_H

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "shared/config.h"

#define SCOREBOARD_ID_MAX 128
#define SCOREBOARD_FAULT_MAX 200
#define SCOREBOARD_PARTITIONS 64
#define SCOREBOARD_TOPIC_MAX 96
#define SCOREBOARD_CRASHES 256
#define SCOREBOARD_MESSAGE_MAX 96   /* a job's last progress message, cut */
#define SCOREBOARD_CANCELS 16       /* cancel requests kept for the workers to read */
#define SCOREBOARD_CANCEL_ID_MAX 1040 /* a whole job id (events.h: at most 1024 bytes) */
#define SCOREBOARD_FAILURES 8       /* the last failed jobs of a worker (droverctl jobs on Kafka) */

/* Upper bounds (seconds) of drover_job_duration_seconds; +Inf is implicit. */
#define SCOREBOARD_DURATION_BUCKETS 10
extern const double scoreboard_duration_bounds[SCOREBOARD_DURATION_BUCKETS];

struct scoreboard_job {
	int32_t used;
	int32_t pgid;      /* handler process group, 0 while none runs (retry wait) */
	int32_t attempt;   /* 1-based */
	float progress;    /* 0..1, or -1 when the handler reported none */
	int64_t started_ms; /* wall clock of this attempt's start */
	uint64_t delivery;  /* the message's place in its queue (scoreboard_delivery_key), 0 = none */
	char id[SCOREBOARD_ID_MAX];
	char message[SCOREBOARD_MESSAGE_MAX]; /* the handler's last progress message, "" = none */
};

/* A persistent handler process of the worker (handler_mode = persistent). */
enum scoreboard_handler_state { HANDLER_STARTING = 1, HANDLER_READY, HANDLER_RECYCLING, HANDLER_STOPPING };

struct scoreboard_handler {
	int32_t pid;      /* also its process group */
	int32_t state;    /* enum scoreboard_handler_state */
	uint64_t jobs;    /* jobs it answered */
};

struct scoreboard_partition {
	char topic[SCOREBOARD_TOPIC_MAX];
	int32_t partition;
	int64_t lag; /* -1 = unknown */
};

/* A job whose failed outcome is durable (droverctl jobs: Kafka has no failed/ to list). */
struct scoreboard_failure {
	int64_t failed_ms; /* wall clock; 0 = empty */
	int32_t attempts;
	char reason[24];   /* events.h reasons */
	char id[SCOREBOARD_ID_MAX];
};

/* Counters only grow while one worker owns the slot. */
struct scoreboard_counters {
	uint64_t started;
	uint64_t completed;
	uint64_t failed;
	uint64_t timed_out;
	uint64_t retried;
	uint64_t duration_buckets[SCOREBOARD_DURATION_BUCKETS + 1]; /* last = +Inf */
	uint64_t duration_count;
	double duration_sum_s;
	uint64_t slow;           /* attempts that ran past slow_job_ms */
	uint64_t at_capacity_ms; /* time with every job slot of the worker taken */
	uint64_t handler_restarts;        /* persistent handler processes started again after an abnormal end */
	uint64_t handler_recycles;        /* retired after handler_max_jobs or handler_max_rss_mb */
	uint64_t handler_protocol_errors; /* killed for a protocol violation */
	uint64_t kafka_hold_backs;        /* Kafka: a partition stopped taking jobs while its commits stalled */
};

struct scoreboard_slot {
	uint32_t seq;        /* seqlock: odd while the owner writes */
	int32_t pid;         /* owner, 0 = none */
	uint32_t generation; /* config generation the owner runs */
	int64_t started_ms;  /* wall clock */
	int64_t heartbeat_ms; /* monotonic clock (now_ms) of the owner's last loop tick */
	int32_t draining;
	int32_t ready;       /* the source can take jobs (Kafka: after its first assignment in the group) */
	int32_t handlers_ready; /* exec mode: at start; persistent: once a handler process said ready */
	int32_t in_flight;
	struct scoreboard_counters counters;
	char fault[SCOREBOARD_FAULT_MAX]; /* pool fault (handler cannot start, queue down), "" = none */
	int32_t partition_count;          /* Kafka: assigned partitions */
	struct scoreboard_partition partitions[SCOREBOARD_PARTITIONS];
	struct scoreboard_job jobs[CONFIG_MAX_CONCURRENT];
	/* Spool: jobs waiting in incoming/ as the owner last counted them (the directory is shared: stats takes the freshest count). */
	int64_t backlog;            /* -1 = not counted */
	int64_t backlog_oldest_ms;  /* wall clock mtime of the oldest waiting job, 0 = none waiting */
	int64_t backlog_counted_ms; /* wall clock of the count, 0 = never */
	int32_t handler_count;            /* persistent mode: the first entries of handlers[] in use */
	struct scoreboard_handler handlers[CONFIG_MAX_CONCURRENT];
	uint32_t failure_count; /* failures recorded; the next goes to failures[failure_count % SCOREBOARD_FAILURES] */
	struct scoreboard_failure failures[SCOREBOARD_FAILURES];
};

/*
 * What the supervisor keeps of workers that have exited, carried in the
 * mapping across a binary upgrade's exec (the new image takes it over).
 */
struct scoreboard_carry {
	struct scoreboard_counters retired;
	uint64_t jobs_lost;
	uint64_t restarts_retired;
};

/* Bump when a structure in the mapping changes in a way its size does not show. */
#define SCOREBOARD_LAYOUT_VERSION 1

struct scoreboard;

/*
 * Maps CONFIG_MAX_WORKERS zeroed slots, shared, backed by a memory file
 * (memfd, close-on-exec) so that a binary upgrade can hand it to the new
 * image. NULL/errno.
 */
struct scoreboard *scoreboard_create(void);
/*
 * The new image of an upgrade: maps the memory file fd the old one created
 * and marks it close-on-exec again. NULL/errno (EPROTO: another layout).
 */
struct scoreboard *scoreboard_attach(int fd);
/* The memory file of sb, -1 when none. */
int scoreboard_fd(const struct scoreboard *sb);
/* This binary's layout of the mapping: an upgrade needs the same on both sides. */
uint32_t scoreboard_layout(void);
struct scoreboard_carry *scoreboard_carry(struct scoreboard *sb);
void scoreboard_destroy(struct scoreboard *sb);
struct scoreboard_slot *scoreboard_slot(struct scoreboard *sb, int slot);

/*
 * Worker side: the write end of the supervisor's wake-up pipe. A worker pokes
 * it when its slot changes state (it started, its source became ready), so the
 * supervisor reacts at once instead of on its next heartbeat check.
 */
void scoreboard_set_wake_fd(int fd);
/* Writes one byte to the wake-up pipe; a full pipe already means "look". */
void scoreboard_wake_supervisor(void);
/* Marks the owner's source ready to take jobs and wakes the supervisor. */
void scoreboard_publish_ready(struct scoreboard_slot *slot);
/* Marks that the owner can run a job (exec mode: at once; persistent: a handler process is ready). */
void scoreboard_publish_handlers_ready(struct scoreboard_slot *slot);
/* Whether the worker can take jobs: both its source and its handlers are ready. */
bool scoreboard_worker_ready(const struct scoreboard_slot *slot);

void scoreboard_write_begin(struct scoreboard_slot *slot);
void scoreboard_write_end(struct scoreboard_slot *slot);
/* Consistent copy; gives up after a bounded number of tries (a writer that died mid-update). */
void scoreboard_read_slot(const struct scoreboard_slot *slot, struct scoreboard_slot *copy);
/* Supervisor only, while no process owns the slot. */
void scoreboard_reset_slot(struct scoreboard_slot *slot);

/* Owner helpers: each wraps its own write_begin/end. Index into jobs[] or -1 when full. */
int scoreboard_job_add(struct scoreboard_slot *slot, const char *id, int attempt);
void scoreboard_job_set_pgid(struct scoreboard_slot *slot, int index, pid_t pgid);
void scoreboard_job_set_attempt(struct scoreboard_slot *slot, int index, int attempt);
void scoreboard_job_set_progress(struct scoreboard_slot *slot, int index, float progress);
void scoreboard_job_remove(struct scoreboard_slot *slot, int index);
void scoreboard_job_set_delivery(struct scoreboard_slot *slot, int index, uint64_t delivery);
/* The owner's count of waiting jobs (count -1: unknown) and the oldest one's mtime (wall ms, 0 = none). */
void scoreboard_publish_backlog(struct scoreboard_slot *slot, int64_t count, int64_t oldest_ms);
/* Owner: a job's failed outcome is durable. */
void scoreboard_failure_add(struct scoreboard_slot *slot, const char *id, const char *reason, int attempts);
/* NULL clears it. */
void scoreboard_job_set_message(struct scoreboard_slot *slot, int index, const char *message);
/* Whether job (a copy's entry) is the job called id: ids longer than the slot's field match on what it kept. */
bool scoreboard_job_is(const struct scoreboard_job *job, const char *id);

/*
 * Requests: what the supervisor asks of its workers (droverctl pause, resume,
 * cancel), in the same shared mapping, written by the supervisor only and
 * read by the workers, so no worker needs an fd of its own for commands.
 * After writing, the supervisor pokes the worker with SCOREBOARD_POKE_SIGNAL;
 * the worker rereads the requests then and on every heartbeat (a backstop).
 * The pause is one flag every worker reads before taking a job, so a worker
 * started while intake is paused starts paused, with no handshake.
 */
/* SIGURG: ignored by default, so a poke that reaches a worker before it set up its signalfd does no harm. */
#define SCOREBOARD_POKE_SIGNAL SIGURG

struct scoreboard_cancel {
	uint64_t serial; /* 0 = free; grows with every request */
	int32_t slot;    /* the worker asked */
	char id[SCOREBOARD_CANCEL_ID_MAX];
};

/* Supervisor side. */
void scoreboard_set_intake_paused(struct scoreboard *sb, bool paused);
bool scoreboard_intake_paused_in(const struct scoreboard *sb);
/* Queues a cancel of job id for the worker in slot (the oldest request makes room); its serial. */
uint64_t scoreboard_request_cancel(struct scoreboard *sb, int slot, const char *id);

/* Worker side, through the mapping inherited across fork. */
bool scoreboard_intake_paused(void);
/* The newest request serial now: a worker starts from it, so requests made before it started do not apply. */
uint64_t scoreboard_request_serial(void);
/*
 * Calls cancel(id, arg) for each cancel request for slot newer than *seen,
 * oldest first, and moves *seen past them.
 */
void scoreboard_each_cancel(int slot, uint64_t *seen, void (*cancel)(const char *id, void *arg), void *arg);

/*
 * The crash ledger: how many workers died while running each message, so
 * that a message that kills its worker is redelivered with its attempts
 * counted (a Kafka message cannot carry them). A fixed table in the same
 * shared mapping, written by the supervisor only (when it buries a worker
 * that died), read by the workers; the least recently hit entry makes room.
 * Keys name a message's place (topic, partition, offset), never 0.
 */
uint64_t scoreboard_delivery_key(const char *topic, int32_t partition, int64_t offset);
void scoreboard_crash_record(struct scoreboard *sb, uint64_t delivery);
/* Deaths recorded for delivery, 0 if none (or no scoreboard in this process). */
int scoreboard_crash_deaths(uint64_t delivery);

const char *scoreboard_handler_state_name(int32_t state);

void scoreboard_record_duration(struct scoreboard_counters *counters, double seconds);
void scoreboard_counters_add(struct scoreboard_counters *into, const struct scoreboard_counters *from);

#endif
