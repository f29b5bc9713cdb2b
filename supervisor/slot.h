/*
 * slot: what happens to a worker slot, as a table a reader can check against
 * README "Worker slots" (s6-supervise keeps its life as one state table): the
 * states `status` shows, which transitions exist, the state a slot enters
 * when its worker exits, the restart back-off and the order of a rolling
 * replacement. Pure decisions, no processes or timers: pool.c carries them
 * out and changes a slot's state only through slot_transition_allowed.
 */
#ifndef DROVER_SLOT_H
#define DROVER_SLOT_H

#include <stdbool.h>

/* In the order metrics list them (drover_workers{state}). */
enum slot_state {
	SLOT_STARTING, /* forked; not yet published in the scoreboard */
	SLOT_RUNNING,  /* published: takes jobs */
	SLOT_DRAINING, /* asked to stop (replacement, scale down, stop): TERM -> QUIT -> KILL */
	SLOT_BACKOFF,  /* its worker died unasked: restarts after a doubling, jittered delay */
	SLOT_STOPPED,  /* no worker, none wanted now */
	SLOT_FAILED,   /* its worker refused the configuration (EX_CONFIG): no restart until reload or scale */
	SLOT_STATE_COUNT
};

/* The name users see in stats, status and metrics. */
const char *slot_state_name(enum slot_state state);
/* Whether a slot may go from one state to the other (the same state is always allowed). */
bool slot_transition_allowed(enum slot_state from, enum slot_state to);
/*
 * The state a slot enters when its worker has exited: a drained worker is
 * replaced at once when its slot is still wanted (else the slot stops); one
 * that exited unasked backs off, or fails when it refused the configuration.
 */
enum slot_state slot_after_exit(enum slot_state state, bool wanted, bool stopping, bool config_refused);

/* A worker that lived this long was not crash-looping: its crash count starts afresh. */
#define SLOT_STABLE_UPTIME_MS 10000

/* The crash count after a crash of a worker that ran uptime_ms. */
unsigned slot_crash_count(unsigned consecutive, long long uptime_ms);
/*
 * The delay before the restart that follows crash number crashes (1-based):
 * base_ms doubled per consecutive crash, +-20% jitter taken from
 * random_value (e.g. random()), so that slots crashing together do not
 * restart in lock step; at most max_ms, at least 1.
 */
long long slot_backoff_ms(long long base_ms, long long max_ms, unsigned crashes, long random_value);

/* What a rolling replacement needs to know of a slot. */
struct slot_summary {
	enum slot_state state;
	bool wanted;         /* index < desired */
	bool awaiting_ready; /* a replacement whose source is not ready yet */
	unsigned generation; /* of the configuration its worker runs (or, failed, was refused) */
};

/*
 * The slot a rolling replacement drains next: the lowest running, wanted slot
 * of an older generation, one at a time. -1 while a replacement is under way
 * (a wanted slot draining or starting, a replacement not yet ready), when a
 * worker of this generation refused its configuration (the older workers keep
 * serving), or when none is left.
 */
int slot_next_replacement(const struct slot_summary *slots, int count, unsigned generation);

#endif
