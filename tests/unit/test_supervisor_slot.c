/*
 * Unit tests of the slot decisions (supervisor/slot.c): the restart back-off
 * (doubling, bounded jitter, the cap, a fresh count after a good run), the
 * state table against README "Worker slots", what follows a worker's exit,
 * and the order of a rolling replacement, walked through a whole reload.
 */
#include <criterion/criterion.h>

#include "supervisor/slot.h"

#include <stdlib.h>

TestSuite(slot, .timeout = 10);

/* ---- back-off ------------------------------------------------------------ */

Test(slot, backoff_doubles_per_crash_with_bounded_jitter)
{
	/* random_value % 41 == 20 is the middle of the jitter: exactly base * 2^(n-1). */
	cr_assert_eq(slot_backoff_ms(100, 100000, 1, 20), 100);
	cr_assert_eq(slot_backoff_ms(100, 100000, 2, 20), 200);
	cr_assert_eq(slot_backoff_ms(100, 100000, 3, 20), 400);
	cr_assert_eq(slot_backoff_ms(100, 100000, 6, 20), 3200);
	/* The jitter's ends: -20% and +20%. */
	cr_assert_eq(slot_backoff_ms(1000, 100000, 1, 0), 800);
	cr_assert_eq(slot_backoff_ms(1000, 100000, 1, 40), 1200);
	cr_assert_eq(slot_backoff_ms(1000, 100000, 1, 41), 800, "the jitter wraps: 41 %% 41 == 0");
	srandom(7);
	for (int i = 0; i < 10000; i++) {
		unsigned crashes = 1 + (unsigned)(i % 5);
		long long middle = 250LL << (crashes - 1);
		long long delay = slot_backoff_ms(250, 1000000, crashes, random());
		cr_assert(delay >= middle * 80 / 100 && delay <= middle * 120 / 100,
		          "crash %u: %lld ms is outside %lld +-20%%", crashes, delay, middle);
	}
}

Test(slot, backoff_is_capped_and_never_zero)
{
	for (unsigned crashes = 1; crashes < 200; crashes++) {
		cr_assert_leq(slot_backoff_ms(100, 5000, crashes, 40), 5000, "crash %u", crashes);
		cr_assert_geq(slot_backoff_ms(100, 5000, crashes, 0), crashes >= 7 ? 4000 : 1, "crash %u", crashes);
	}
	cr_assert_eq(slot_backoff_ms(0, 5000, 1, 20), 1, "a zero delay still waits 1 ms");
	cr_assert_eq(slot_backoff_ms(1, 1, 1000000, 0), 1, "many crashes do not overflow");
}

Test(slot, crash_count_starts_afresh_after_a_good_run)
{
	unsigned crashes = 0;
	for (int i = 0; i < 4; i++)
		crashes = slot_crash_count(crashes, 50); /* crashed 50 ms after its start, four times */
	cr_assert_eq(crashes, 4);
	cr_assert_eq(slot_crash_count(crashes, SLOT_STABLE_UPTIME_MS - 1), 5);
	cr_assert_eq(slot_crash_count(crashes, SLOT_STABLE_UPTIME_MS), 1, "a stable run resets the count");
	/* So the delay after a stable run is the base delay again. */
	cr_assert_eq(slot_backoff_ms(100, 100000, slot_crash_count(9, 60000), 20), 100);
}

/* ---- the state table ------------------------------------------------------ */

Test(slot, names_are_the_ones_users_see)
{
	const char *expected[SLOT_STATE_COUNT] = { "starting", "running", "draining", "backoff", "stopped", "failed" };
	for (int s = 0; s < SLOT_STATE_COUNT; s++)
		cr_assert_str_eq(slot_state_name((enum slot_state)s), expected[s]);
	cr_assert_str_eq(slot_state_name(SLOT_STATE_COUNT), "unknown");
}

Test(slot, transitions_are_the_readme_table)
{
	/* README "Worker slots", column "next", row by row. */
	static const char *const readme[SLOT_STATE_COUNT] = {
		[SLOT_STARTING] = "running draining backoff failed",
		[SLOT_RUNNING] = "draining backoff failed",
		[SLOT_DRAINING] = "starting backoff stopped", /* backoff: the replacement's fork failed */
		[SLOT_BACKOFF] = "starting stopped",
		[SLOT_FAILED] = "starting stopped",
		[SLOT_STOPPED] = "starting backoff", /* backoff: the fork failed */
	};
	for (int from = 0; from < SLOT_STATE_COUNT; from++) {
		for (int to = 0; to < SLOT_STATE_COUNT; to++) {
			const char *name = slot_state_name((enum slot_state)to);
			const char *found = strstr(readme[from], name);
			bool listed = from == to || (found != NULL && (found[strlen(name)] == ' ' || found[strlen(name)] == '\0'));
			cr_assert_eq(slot_transition_allowed((enum slot_state)from, (enum slot_state)to), listed, "%s -> %s",
			             slot_state_name((enum slot_state)from), name);
		}
	}
	cr_assert_not(slot_transition_allowed(SLOT_STATE_COUNT, SLOT_STOPPED));
}

Test(slot, what_follows_an_exit)
{
	/* Unasked: back off, or fail when the configuration was refused. */
	cr_assert_eq(slot_after_exit(SLOT_RUNNING, true, false, false), SLOT_BACKOFF);
	cr_assert_eq(slot_after_exit(SLOT_STARTING, true, false, false), SLOT_BACKOFF);
	cr_assert_eq(slot_after_exit(SLOT_STARTING, true, false, true), SLOT_FAILED);
	cr_assert_eq(slot_after_exit(SLOT_RUNNING, true, false, true), SLOT_FAILED);
	/* Drained: replaced at once while wanted, else stopped; 78 from a drained worker changes nothing. */
	cr_assert_eq(slot_after_exit(SLOT_DRAINING, true, false, false), SLOT_STARTING);
	cr_assert_eq(slot_after_exit(SLOT_DRAINING, true, false, true), SLOT_STARTING);
	cr_assert_eq(slot_after_exit(SLOT_DRAINING, false, false, false), SLOT_STOPPED);
	cr_assert_eq(slot_after_exit(SLOT_DRAINING, true, true, false), SLOT_STOPPED);
	for (int s = 0; s < SLOT_STATE_COUNT; s++)
		for (int bits = 0; bits < 8; bits++) {
			enum slot_state next = slot_after_exit((enum slot_state)s, bits & 1, bits & 2, bits & 4);
			if (s == SLOT_STARTING || s == SLOT_RUNNING || s == SLOT_DRAINING)
				cr_assert(slot_transition_allowed((enum slot_state)s, next), "%d -> %d is not in the table", s,
				          next);
		}
}

/* ---- rolling replacement ------------------------------------------------- */

/* The pool's part of a replacement, as pool.c does it: drain, exit, start, publish, ready. */
static void drain(struct slot_summary *s)
{
	s->state = SLOT_DRAINING;
}

static void replaced(struct slot_summary *s, unsigned generation)
{
	s->state = slot_after_exit(s->state, s->wanted, false, false);
	cr_assert_eq(s->state, SLOT_STARTING);
	s->generation = generation;
	s->awaiting_ready = true;
}

Test(slot, rolling_replacement_goes_one_at_a_time_lowest_first)
{
	struct slot_summary slots[5];
	for (int i = 0; i < 5; i++)
		slots[i] = (struct slot_summary){ .state = SLOT_RUNNING, .wanted = i < 4, .generation = 1 };
	slots[2].state = SLOT_BACKOFF; /* not running: skipped, it starts with the new config anyway */
	int order[8], count = 0;
	for (int step = 0; step < 20; step++) {
		int next = slot_next_replacement(slots, 5, 2);
		if (next < 0)
			break;
		order[count++] = next;
		drain(&slots[next]);
		cr_assert_eq(slot_next_replacement(slots, 5, 2), -1, "one at a time: %d is draining", next);
		replaced(&slots[next], 2);
		cr_assert_eq(slot_next_replacement(slots, 5, 2), -1, "%d is starting", next);
		slots[next].state = SLOT_RUNNING;
		cr_assert_eq(slot_next_replacement(slots, 5, 2), -1, "%d is not ready yet", next);
		slots[next].awaiting_ready = false;
	}
	cr_assert_eq(count, 3, "slots 0, 1 and 3 are replaced (2 backs off, 4 is not wanted)");
	cr_assert_eq(order[0], 0);
	cr_assert_eq(order[1], 1);
	cr_assert_eq(order[2], 3);
	cr_assert_eq(slots[4].generation, 1, "an unwanted slot is not replaced");
}

Test(slot, rolling_replacement_ignores_a_scale_down_and_stops_at_a_refused_config)
{
	struct slot_summary slots[3] = {
		{ .state = SLOT_DRAINING, .wanted = false, .generation = 1 }, /* scaled down: no replacement */
		{ .state = SLOT_RUNNING, .wanted = true, .generation = 1 },
		{ .state = SLOT_RUNNING, .wanted = true, .generation = 1 },
	};
	cr_assert_eq(slot_next_replacement(slots, 3, 2), 1);
	drain(&slots[1]);
	replaced(&slots[1], 2);
	slots[1].state = slot_after_exit(SLOT_STARTING, true, false, true); /* the new worker exits 78 */
	cr_assert_eq(slots[1].state, SLOT_FAILED);
	cr_assert_eq(slot_next_replacement(slots, 3, 2), -1, "slot 2 keeps its older, working configuration");
	cr_assert_eq(slot_next_replacement(slots, 3, 3), 2, "a later reload goes on");
}
