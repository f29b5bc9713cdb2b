/*
 * scoreboard: see scoreboard.h. The seqlock lets a reader copy a slot while
 * its owner keeps writing, without any lock the owner could die holding.
 */
#include "scoreboard.h"
#include "util.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

const double scoreboard_duration_bounds[SCOREBOARD_DURATION_BUCKETS] = {
	0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600,
};

struct scoreboard {
	size_t size;
	struct scoreboard_slot slots[CONFIG_MAX_WORKERS];
};

struct scoreboard *scoreboard_create(void)
{
	size_t size = sizeof(struct scoreboard);
	void *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED)
		return NULL;
	struct scoreboard *sb = mem;
	sb->size = size;
	return sb;
}

void scoreboard_destroy(struct scoreboard *sb)
{
	if (sb != NULL)
		munmap(sb, sb->size);
}

struct scoreboard_slot *scoreboard_slot(struct scoreboard *sb, int slot)
{
	if (slot < 0 || slot >= CONFIG_MAX_WORKERS)
		return NULL;
	return &sb->slots[slot];
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
}
