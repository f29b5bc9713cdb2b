/*
 * scoreboard: see scoreboard.h. The seqlock lets a reader copy a slot while
 * its owner keeps writing, without any lock the owner could die holding.
 */
#include "shared/scoreboard.h"
#include "shared/util.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>

const double scoreboard_duration_bounds[SCOREBOARD_DURATION_BUCKETS] = {
	0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600,
};

struct scoreboard_crash {
	uint64_t delivery; /* 0 = free */
	int32_t deaths;
	int64_t last_ms;   /* wall clock of the last death: the oldest entry is replaced */
};

struct scoreboard {
	size_t size;
	struct scoreboard_slot slots[CONFIG_MAX_WORKERS];
	struct scoreboard_crash crashes[SCOREBOARD_CRASHES];
};

/* The mapping this process created or inherited across fork: workers read the ledger through it. */
static struct scoreboard *mapped;

struct scoreboard *scoreboard_create(void)
{
	size_t size = sizeof(struct scoreboard);
	void *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED)
		return NULL;
	struct scoreboard *sb = mem;
	sb->size = size;
	mapped = sb;
	return sb;
}

void scoreboard_destroy(struct scoreboard *sb)
{
	if (sb == mapped)
		mapped = NULL;
	if (sb != NULL)
		munmap(sb, sb->size);
}

struct scoreboard_slot *scoreboard_slot(struct scoreboard *sb, int slot)
{
	if (slot < 0 || slot >= CONFIG_MAX_WORKERS)
		return NULL;
	return &sb->slots[slot];
}

void scoreboard_publish_handlers_ready(struct scoreboard_slot *slot)
{
	__atomic_store_n(&slot->handlers_ready, 1, __ATOMIC_RELEASE);
	scoreboard_wake_supervisor();
}

bool scoreboard_worker_ready(const struct scoreboard_slot *slot)
{
	return __atomic_load_n(&slot->ready, __ATOMIC_ACQUIRE) && __atomic_load_n(&slot->handlers_ready, __ATOMIC_ACQUIRE);
}

void scoreboard_write_begin(struct scoreboard_slot *slot)
{
	__atomic_add_fetch(&slot->seq, 1, __ATOMIC_ACQ_REL);
	__atomic_thread_fence(__ATOMIC_RELEASE);
}

void scoreboard_write_end(struct scoreboard_slot *slot)
{
	__atomic_thread_fence(__ATOMIC_RELEASE);
	__atomic_add_fetch(&slot->seq, 1, __ATOMIC_ACQ_REL);
}

void scoreboard_read_slot(const struct scoreboard_slot *slot, struct scoreboard_slot *copy)
{
	for (int tries = 0; tries < 1000; tries++) {
		uint32_t before = __atomic_load_n(&slot->seq, __ATOMIC_ACQUIRE);
		if (before & 1u)
			continue;
		memcpy(copy, slot, sizeof(*copy));
		__atomic_thread_fence(__ATOMIC_ACQUIRE);
		if (__atomic_load_n(&slot->seq, __ATOMIC_ACQUIRE) == before)
			return;
	}
	/* The owner died mid-update or is very busy: a torn copy is better than none. */
	memcpy(copy, slot, sizeof(*copy));
}

static int wake_fd = -1;

void scoreboard_set_wake_fd(int fd)
{
	wake_fd = fd;
}

void scoreboard_wake_supervisor(void)
{
	static const char poke = 'w';
	ssize_t n;

	if (wake_fd < 0)
		return;
	do
		n = write(wake_fd, &poke, 1);
	while (n < 0 && errno == EINTR);
	/* EAGAIN: the pipe is full of pokes the supervisor has not read yet, which is enough. */
}

void scoreboard_publish_ready(struct scoreboard_slot *slot)
{
	__atomic_store_n(&slot->ready, 1, __ATOMIC_RELEASE);
	scoreboard_wake_supervisor();
}

void scoreboard_reset_slot(struct scoreboard_slot *slot)
{
	memset(slot, 0, sizeof(*slot));
}

int scoreboard_job_add(struct scoreboard_slot *slot, const char *id, int attempt)
{
	for (int i = 0; i < CONFIG_MAX_CONCURRENT; i++) {
		struct scoreboard_job *job = &slot->jobs[i];
		if (job->used)
			continue;
		scoreboard_write_begin(slot);
		job->used = 1;
		job->pgid = 0;
		job->attempt = attempt;
		job->progress = -1;
		job->started_ms = wall_ms();
		snprintf(job->id, sizeof(job->id), "%s", id);
		slot->in_flight++;
		scoreboard_write_end(slot);
		return i;
	}
	return -1;
}

void scoreboard_job_set_pgid(struct scoreboard_slot *slot, int index, pid_t pgid)
{
	scoreboard_write_begin(slot);
	slot->jobs[index].pgid = pgid;
	scoreboard_write_end(slot);
}

void scoreboard_job_set_attempt(struct scoreboard_slot *slot, int index, int attempt)
{
	scoreboard_write_begin(slot);
	slot->jobs[index].attempt = attempt;
	slot->jobs[index].progress = -1;
	slot->jobs[index].started_ms = wall_ms();
	scoreboard_write_end(slot);
}

void scoreboard_job_set_progress(struct scoreboard_slot *slot, int index, float progress)
{
	scoreboard_write_begin(slot);
	slot->jobs[index].progress = progress;
	scoreboard_write_end(slot);
}

void scoreboard_job_remove(struct scoreboard_slot *slot, int index)
{
	scoreboard_write_begin(slot);
	memset(&slot->jobs[index], 0, sizeof(slot->jobs[index]));
	slot->in_flight--;
	scoreboard_write_end(slot);
}

void scoreboard_job_set_delivery(struct scoreboard_slot *slot, int index, uint64_t delivery)
{
	if (index < 0 || index >= CONFIG_MAX_CONCURRENT)
		return;
	scoreboard_write_begin(slot);
	slot->jobs[index].delivery = delivery;
	scoreboard_write_end(slot);
}

/* ---- the crash ledger ------------------------------------------------------ */

static uint64_t fnv1a(uint64_t hash, const void *data, size_t len)
{
	const unsigned char *bytes = data;
	for (size_t i = 0; i < len; i++) {
		hash ^= bytes[i];
		hash *= 0x100000001b3ULL;
	}
	return hash;
}

uint64_t scoreboard_delivery_key(const char *topic, int32_t partition, int64_t offset)
{
	uint64_t hash = fnv1a(0xcbf29ce484222325ULL, topic, strlen(topic) + 1);
	hash = fnv1a(hash, &partition, sizeof(partition));
	hash = fnv1a(hash, &offset, sizeof(offset));
	return hash != 0 ? hash : 1;
}

void scoreboard_crash_record(struct scoreboard *sb, uint64_t delivery)
{
	struct scoreboard_crash *entry = NULL, *oldest = &sb->crashes[0];
	for (int i = 0; i < SCOREBOARD_CRASHES && entry == NULL; i++) {
		struct scoreboard_crash *c = &sb->crashes[i];
		if (c->delivery == delivery)
			entry = c;
		else if (c->delivery == 0 || (oldest->delivery != 0 && c->last_ms < oldest->last_ms))
			oldest = c;
	}
	if (entry == NULL) {
		/* Readers match on the key: clear it while the count changes, set it last. */
		entry = oldest;
		__atomic_store_n(&entry->delivery, 0, __ATOMIC_RELEASE);
		__atomic_store_n(&entry->deaths, 0, __ATOMIC_RELEASE);
	}
	entry->last_ms = wall_ms();
	__atomic_store_n(&entry->deaths, entry->deaths + 1, __ATOMIC_RELEASE);
	__atomic_store_n(&entry->delivery, delivery, __ATOMIC_RELEASE);
}

int scoreboard_crash_deaths(uint64_t delivery)
{
	if (mapped == NULL || delivery == 0)
		return 0;
	for (int i = 0; i < SCOREBOARD_CRASHES; i++)
		if (__atomic_load_n(&mapped->crashes[i].delivery, __ATOMIC_ACQUIRE) == delivery)
			return __atomic_load_n(&mapped->crashes[i].deaths, __ATOMIC_ACQUIRE);
	return 0;
}

void scoreboard_record_duration(struct scoreboard_counters *counters, double seconds)
{
	size_t bucket = 0;
	while (bucket < SCOREBOARD_DURATION_BUCKETS && seconds > scoreboard_duration_bounds[bucket])
		bucket++;
	counters->duration_buckets[bucket]++;
	counters->duration_count++;
	counters->duration_sum_s += seconds;
}

void scoreboard_counters_add(struct scoreboard_counters *into, const struct scoreboard_counters *from)
{
	into->started += from->started;
	into->completed += from->completed;
	into->failed += from->failed;
	into->timed_out += from->timed_out;
	into->retried += from->retried;
	for (size_t i = 0; i <= SCOREBOARD_DURATION_BUCKETS; i++)
		into->duration_buckets[i] += from->duration_buckets[i];
	into->duration_count += from->duration_count;
	into->duration_sum_s += from->duration_sum_s;
	into->slow += from->slow;
	into->at_capacity_ms += from->at_capacity_ms;
	into->handler_restarts += from->handler_restarts;
	into->handler_recycles += from->handler_recycles;
	into->handler_protocol_errors += from->handler_protocol_errors;
	into->kafka_hold_backs += from->kafka_hold_backs;
}

void scoreboard_publish_backlog(struct scoreboard_slot *slot, int64_t count, int64_t oldest_ms)
{
	scoreboard_write_begin(slot);
	slot->backlog = count;
	slot->backlog_oldest_ms = oldest_ms;
	slot->backlog_counted_ms = wall_ms();
	scoreboard_write_end(slot);
}

const char *scoreboard_handler_state_name(int32_t state)
{
	switch (state) {
	case HANDLER_STARTING:
		return "starting";
	case HANDLER_READY:
		return "ready";
	case HANDLER_RECYCLING:
		return "recycling";
	case HANDLER_STOPPING:
		return "stopping";
	default:
		return "unknown";
	}
}
