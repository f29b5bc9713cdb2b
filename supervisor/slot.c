/*
 * slot: the slot state table and the decisions of the pool (see slot.h).
 * README "Worker slots" lists the same transitions.
 */
#include "supervisor/slot.h"

static const char *const state_names[SLOT_STATE_COUNT] = {
	[SLOT_STARTING] = "starting", [SLOT_RUNNING] = "running", [SLOT_DRAINING] = "draining",
	[SLOT_BACKOFF] = "backoff",   [SLOT_STOPPED] = "stopped", [SLOT_FAILED] = "failed",
};

/* transitions[from][to]: every change of a slot's state is one of these. */
static const bool transitions[SLOT_STATE_COUNT][SLOT_STATE_COUNT] = {
	/* wanted (start, scale, reload); a failed fork backs off */
	[SLOT_STOPPED] = { [SLOT_STARTING] = true, [SLOT_BACKOFF] = true },
	/* published; asked to stop; died unasked; refused the configuration */
	[SLOT_STARTING] = { [SLOT_RUNNING] = true, [SLOT_DRAINING] = true, [SLOT_BACKOFF] = true, [SLOT_FAILED] = true },
	[SLOT_RUNNING] = { [SLOT_DRAINING] = true, [SLOT_BACKOFF] = true, [SLOT_FAILED] = true },
	/* exited: replaced at once (a failed fork backs off), or no longer wanted */
	[SLOT_DRAINING] = { [SLOT_STARTING] = true, [SLOT_BACKOFF] = true, [SLOT_STOPPED] = true },
	/* the delay is over; no longer wanted or stopping */
	[SLOT_BACKOFF] = { [SLOT_STARTING] = true, [SLOT_STOPPED] = true },
	/* reload or scale; no longer wanted or stopping */
	[SLOT_FAILED] = { [SLOT_STARTING] = true, [SLOT_STOPPED] = true },
};

static bool valid(enum slot_state state)
{
	return (unsigned)state < SLOT_STATE_COUNT;
}

const char *slot_state_name(enum slot_state state)
{
	return valid(state) ? state_names[state] : "unknown";
}

bool slot_transition_allowed(enum slot_state from, enum slot_state to)
{
	return valid(from) && valid(to) && (from == to || transitions[from][to]);
}

enum slot_state slot_after_exit(enum slot_state state, bool wanted, bool stopping, bool config_refused)
{
	if (state == SLOT_DRAINING)
		return stopping || !wanted ? SLOT_STOPPED : SLOT_STARTING;
	return config_refused ? SLOT_FAILED : SLOT_BACKOFF;
}

unsigned slot_crash_count(unsigned consecutive, long long uptime_ms)
{
	return (uptime_ms >= SLOT_STABLE_UPTIME_MS ? 0 : consecutive) + 1;
}

long long slot_backoff_ms(long long base_ms, long long max_ms, unsigned crashes, long random_value)
{
	long long delay = base_ms;
	for (unsigned i = 1; i < crashes && delay < max_ms; i++)
		delay *= 2;
	long jitter = random_value % 41;
	if (jitter < 0)
		jitter = -jitter;
	delay = delay * (80 + jitter) / 100;
	if (delay > max_ms)
		delay = max_ms;
	return delay < 1 ? 1 : delay;
}

int slot_next_replacement(const struct slot_summary *slots, int count, unsigned generation)
{
	for (int i = 0; i < count; i++) {
		const struct slot_summary *s = &slots[i];
		bool alive = s->state == SLOT_STARTING || s->state == SLOT_RUNNING || s->state == SLOT_DRAINING;
		if (s->wanted && (s->state == SLOT_DRAINING || s->state == SLOT_STARTING))
			return -1; /* one at a time: the current one is on its way out or up */
		if (alive && s->awaiting_ready)
			return -1;
		if (s->state == SLOT_FAILED && s->generation == generation)
			return -1; /* the new configuration is refused: keep the older workers */
	}
	for (int i = 0; i < count; i++)
		if (slots[i].state == SLOT_RUNNING && slots[i].wanted && slots[i].generation != generation)
			return i;
	return -1;
}
