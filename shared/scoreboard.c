/*
 * scoreboard: see scoreboard.h. The seqlock lets a reader copy a slot while
 * its owner keeps writing, without any lock the owner could die holding.
 */
#include "shared/scoreboard.h"
#include "shared/util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/stat.h>

const double scoreboard_duration_bounds[SCOREBOARD_DURATION_BUCKETS] = {
	0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600,
};

struct scoreboard_crash {
	uint64_t delivery; /* 0 = free */
	int32_t deaths;
	int64_t last_ms;   /* wall clock of the last death: the oldest entry is replaced */
};

/* Written by the supervisor only, under their own seqlock (scoreboard.h: requests). */
struct scoreboard_requests {
	uint32_t seq;
	int32_t intake_paused;
	uint64_t last_serial;
	struct scoreboard_cancel cancels[SCOREBOARD_CANCELS];
};

struct scoreboard {
	size_t size;
	uint32_t layout; /* SCOREBOARD_LAYOUT: an image that maps it after an upgrade checks it */
	struct scoreboard_carry carry;
	struct scoreboard_slot slots[CONFIG_MAX_WORKERS];
	struct scoreboard_crash crashes[SCOREBOARD_CRASHES];
	struct scoreboard_requests requests;
};

/* The mapping this process created or inherited across fork: workers read the ledger through it. */
static struct scoreboard *mapped;
/* The memory file behind it (the supervisor's; CLOEXEC but for an upgrade's exec). */
static int mapped_fd = -1;

uint32_t scoreboard_layout(void)
{
	/* The size catches most changes of the structures; the constant the others (bump it). */
	return (uint32_t)(sizeof(struct scoreboard) * 16u + SCOREBOARD_LAYOUT_VERSION);
}

static struct scoreboard *scoreboard_map(int fd)
{
	void *mem = mmap(NULL, sizeof(struct scoreboard), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (mem == MAP_FAILED)
		return NULL;
	mapped = mem;
	mapped_fd = fd;
	return mapped;
}

struct scoreboard *scoreboard_create(void)
{
	int fd = memfd_create("drover-scoreboard", MFD_CLOEXEC);
	if (fd < 0)
		return NULL;
	if (ftruncate(fd, (off_t)sizeof(struct scoreboard)) < 0) {
		int saved = errno;
		close(fd);
		errno = saved;
		return NULL;
	}
	struct scoreboard *sb = scoreboard_map(fd);
	if (sb == NULL) {
		int saved = errno;
		close(fd);
		errno = saved;
		return NULL;
	}
	sb->size = sizeof(struct scoreboard);
	sb->layout = scoreboard_layout();
	return sb;
}

struct scoreboard *scoreboard_attach(int fd)
{
	struct stat st;
	if (fstat(fd, &st) < 0)
		return NULL;
	if (st.st_size != (off_t)sizeof(struct scoreboard)) {
		errno = EPROTO;
		return NULL;
	}
	struct scoreboard *sb = scoreboard_map(fd);
	if (sb == NULL)
		return NULL;
	if (sb->layout != scoreboard_layout() || sb->size != sizeof(struct scoreboard)) {
		munmap(sb, sizeof(struct scoreboard));
		mapped = NULL;
		mapped_fd = -1;
		errno = EPROTO;
		return NULL;
	}
	if (fcntl(fd, F_SETFD, FD_CLOEXEC) < 0)
		return NULL;
	return sb;
}

int scoreboard_fd(const struct scoreboard *sb)
{
	return sb != NULL && sb == mapped ? mapped_fd : -1;
}

struct scoreboard_carry *scoreboard_carry(struct scoreboard *sb)
{
	return &sb->carry;
}

void scoreboard_destroy(struct scoreboard *sb)
{
	if (sb == NULL)
		return;
	if (sb == mapped) {
		mapped = NULL;
		if (mapped_fd >= 0)
			close(mapped_fd);
		mapped_fd = -1;
	}
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
		job->message[0] = '\0';
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
	slot->jobs[index].message[0] = '\0';
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

void scoreboard_job_set_message(struct scoreboard_slot *slot, int index, const char *message)
{
	if (index < 0 || index >= CONFIG_MAX_CONCURRENT)
		return;
	char *kept = slot->jobs[index].message;
	size_t len = message != NULL ? strlen(message) : 0;
	if (len >= SCOREBOARD_MESSAGE_MAX) {
		/* Cut between UTF-8 sequences, so that stats can still show it as a JSON string. */
		len = SCOREBOARD_MESSAGE_MAX - 1;
		while (len > 0 && ((unsigned char)message[len] & 0xC0) == 0x80)
			len--;
	}
	scoreboard_write_begin(slot);
	if (len > 0)
		memcpy(kept, message, len);
	kept[len] = '\0';
	scoreboard_write_end(slot);
}

void scoreboard_failure_add(struct scoreboard_slot *slot, const char *id, const char *reason, int attempts)
{
	scoreboard_write_begin(slot);
	struct scoreboard_failure *f = &slot->failures[slot->failure_count % SCOREBOARD_FAILURES];
	f->failed_ms = wall_ms();
	f->attempts = attempts;
	snprintf(f->reason, sizeof(f->reason), "%s", reason != NULL ? reason : "");
	snprintf(f->id, sizeof(f->id), "%s", id);
	slot->failure_count++;
	scoreboard_write_end(slot);
}

bool scoreboard_job_is(const struct scoreboard_job *job, const char *id)
{
	if (!job->used)
		return false;
	size_t kept = strnlen(job->id, sizeof(job->id));
	if (kept < sizeof(job->id) - 1)
		return strcmp(job->id, id) == 0;
	return strncmp(job->id, id, kept) == 0; /* cut by snprintf: the worker compares the whole id */
}

/* ---- requests to the workers ----------------------------------------------- */

static void requests_write_begin(struct scoreboard_requests *r)
{
	__atomic_add_fetch(&r->seq, 1, __ATOMIC_ACQ_REL);
	__atomic_thread_fence(__ATOMIC_RELEASE);
}

static void requests_write_end(struct scoreboard_requests *r)
{
	__atomic_thread_fence(__ATOMIC_RELEASE);
	__atomic_add_fetch(&r->seq, 1, __ATOMIC_ACQ_REL);
}

void scoreboard_set_intake_paused(struct scoreboard *sb, bool paused)
{
	__atomic_store_n(&sb->requests.intake_paused, paused ? 1 : 0, __ATOMIC_RELEASE);
}

bool scoreboard_intake_paused_in(const struct scoreboard *sb)
{
	return __atomic_load_n(&sb->requests.intake_paused, __ATOMIC_ACQUIRE) != 0;
}

uint64_t scoreboard_request_cancel(struct scoreboard *sb, int slot, const char *id)
{
	struct scoreboard_requests *r = &sb->requests;
	struct scoreboard_cancel *entry = &r->cancels[0];
	for (int i = 1; i < SCOREBOARD_CANCELS; i++)
		if (r->cancels[i].serial < entry->serial)
			entry = &r->cancels[i];
	requests_write_begin(r);
	entry->serial = ++r->last_serial;
	entry->slot = slot;
	snprintf(entry->id, sizeof(entry->id), "%s", id);
	requests_write_end(r);
	return entry->serial;
}

bool scoreboard_intake_paused(void)
{
	return mapped != NULL && scoreboard_intake_paused_in(mapped);
}

uint64_t scoreboard_request_serial(void)
{
	return mapped != NULL ? __atomic_load_n(&mapped->requests.last_serial, __ATOMIC_ACQUIRE) : 0;
}

/* A consistent copy of the requests (the supervisor writes them rarely and briefly). */
static bool requests_copy(struct scoreboard_requests *copy)
{
	const struct scoreboard_requests *r = &mapped->requests;
	for (int tries = 0; tries < 1000; tries++) {
		uint32_t before = __atomic_load_n(&r->seq, __ATOMIC_ACQUIRE);
		if (before & 1u)
			continue;
		memcpy(copy, r, sizeof(*copy));
		__atomic_thread_fence(__ATOMIC_ACQUIRE);
		if (__atomic_load_n(&r->seq, __ATOMIC_ACQUIRE) == before)
			return true;
	}
	return false; /* the next poke or heartbeat tries again */
}

void scoreboard_each_cancel(int slot, uint64_t *seen, void (*cancel)(const char *id, void *arg), void *arg)
{
	static struct scoreboard_requests copy; /* 16 KiB: not on a worker's stack */
	if (mapped == NULL || !requests_copy(&copy))
		return;
	/* Only the newest SCOREBOARD_CANCELS requests are still kept. */
	uint64_t from = *seen;
	if (copy.last_serial > SCOREBOARD_CANCELS && from < copy.last_serial - SCOREBOARD_CANCELS)
		from = copy.last_serial - SCOREBOARD_CANCELS;
	for (uint64_t serial = from + 1; serial <= copy.last_serial; serial++) {
		for (int i = 0; i < SCOREBOARD_CANCELS; i++) {
			const struct scoreboard_cancel *c = &copy.cancels[i];
			if (c->serial == serial && c->slot == slot)
				cancel(c->id, arg);
		}
	}
	*seen = copy.last_serial;
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
