/*
 * Unit tests of the scoreboard's saturation fields: the counters a worker
 * adds (slow attempts, time at capacity) survive into the supervisor's sums,
 * and a published backlog count is read back whole with its time.
 */
#include <criterion/criterion.h>
#include <stdlib.h>

#include "shared/scoreboard.h"
#include "shared/util.h"

Test(scoreboard, counters_add_sums_slow_and_time_at_capacity)
{
	struct scoreboard_counters into = { .started = 1, .slow = 2, .at_capacity_ms = 1500 };
	struct scoreboard_counters from = { .started = 3, .slow = 5, .at_capacity_ms = 250 };
	scoreboard_counters_add(&into, &from);
	cr_assert_eq(into.started, 4);
	cr_assert_eq(into.slow, 7);
	cr_assert_eq(into.at_capacity_ms, 1750);
}

Test(scoreboard, backlog_is_published_with_its_time)
{
	struct scoreboard *sb = scoreboard_create();
	cr_assert_not_null(sb);
	struct scoreboard_slot *slot = scoreboard_slot(sb, 0);
	cr_assert_eq(slot->backlog_counted_ms, 0, "a fresh slot has never counted");
	long long before = wall_ms();
	scoreboard_publish_backlog(slot, 42, 1234567);
	struct scoreboard_slot *copy = malloc(sizeof(*copy));
	cr_assert_not_null(copy);
	scoreboard_read_slot(slot, copy);
	cr_assert_eq(copy->backlog, 42);
	cr_assert_eq(copy->backlog_oldest_ms, 1234567);
	cr_assert_geq(copy->backlog_counted_ms, before);
	cr_assert_eq(copy->seq % 2, 0, "the write is closed");
	scoreboard_reset_slot(slot);
	cr_assert_eq(slot->backlog_counted_ms, 0);
	free(copy);
	scoreboard_destroy(sb);
}
