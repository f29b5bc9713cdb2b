/*
 * Unit tests of what a binary upgrade hands to the new image: the handover
 * text (every field survives a round trip; anything else is refused rather
 * than guessed) and the scoreboard's memory file, which a second mapping
 * (the new image's) sees with the old one's contents and refuses when its
 * size says another layout.
 */
#include <criterion/criterion.h>

#include "shared/scoreboard.h"
#include "supervisor/upgrade.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

TestSuite(upgrade, .timeout = 10);

static struct handover sample(void)
{
	struct handover h = {
		.scoreboard_fd = 5, .control_fd = 6, .pid_fd = -1, .log_fd = 11, .death_pipe = { 7, 8 }, .wake_pipe = { 9, 10 },
		.generation = 3, .spawned = 41, .started_ms = 1764768000123LL, .slot_count = 2,
	};
	h.slots[0] = (struct handover_slot){ .index = 0, .pid = 1234, .serial = 40, .generation = 3, .restarts = 2 };
	h.slots[1] = (struct handover_slot){ .index = 7, .pid = 1300, .serial = 41, .generation = 2, .restarts = 0 };
	return h;
}

Test(upgrade, handover_round_trip_keeps_every_field)
{
	struct handover h = sample(), back;
	char text[4096];
	cr_assert_eq(handover_encode(&h, text, sizeof(text)), 0);
	cr_assert_eq(handover_parse(text, &back), 0, "%s", text);
	cr_assert_eq(memcmp(&h, &back, sizeof(h)), 0, "%s", text);
}

Test(upgrade, handover_that_does_not_fit_is_refused)
{
	struct handover h = sample();
	char text[40];
	cr_assert_eq(handover_encode(&h, text, sizeof(text)), -1);
}

Test(upgrade, a_handover_this_binary_does_not_understand_is_refused)
{
	struct handover h = sample(), back;
	char good[4096], bad[4200];
	cr_assert_eq(handover_encode(&h, good, sizeof(good)), 0);
	const char *suffixes[] = { " slot=1:0:1:1:1", " slot=300:5:1:1:1", " slot=0:99:1:1:1", " sb=4", " color=red",
		                   " slot=2:77:1:1", " slot=2:77:1:1:1x", " junk" };
	for (size_t i = 0; i < sizeof(suffixes) / sizeof(suffixes[0]); i++) {
		snprintf(bad, sizeof(bad), "%s%s", good, suffixes[i]);
		cr_assert_eq(handover_parse(bad, &back), -1, "accepted: %s", bad);
	}
	cr_assert_eq(handover_parse("v2 sb=5", &back), -1, "another version");
	cr_assert_eq(handover_parse("", &back), -1);
	/* Every key but slot is required. */
	snprintf(bad, sizeof(bad), "%s", good);
	char *wake = strstr(bad, " wake=");
	memmove(wake, strchr(wake + 1, ' '), strlen(strchr(wake + 1, ' ')) + 1);
	cr_assert_eq(handover_parse(bad, &back), -1, "accepted without wake: %s", bad);
}

Test(upgrade, the_scoreboard_memory_file_maps_again_with_its_contents)
{
	struct scoreboard *sb = scoreboard_create();
	cr_assert_not_null(sb);
	int fd = scoreboard_fd(sb);
	cr_assert_geq(fd, 0);
	cr_assert(fcntl(fd, F_GETFD) & FD_CLOEXEC, "close-on-exec but for an upgrade");
	scoreboard_slot(sb, 3)->pid = 4242;
	scoreboard_carry(sb)->jobs_lost = 17;

	/* The new image's view: the same memory through the handed-over fd. */
	int copy = dup(fd);
	cr_assert_geq(copy, 0);
	struct scoreboard *again = scoreboard_attach(copy);
	cr_assert_not_null(again);
	cr_assert_neq((void *)again, (void *)sb, "a second mapping");
	cr_assert_eq(scoreboard_slot(again, 3)->pid, 4242);
	cr_assert_eq(scoreboard_carry(again)->jobs_lost, 17);
	scoreboard_slot(again, 3)->in_flight = 2;
	cr_assert_eq(scoreboard_slot(sb, 3)->in_flight, 2, "shared, not copied");
	scoreboard_destroy(again);
	scoreboard_destroy(sb);
}

Test(upgrade, a_memory_file_of_another_layout_is_refused)
{
	int fd = memfd_create("not-a-scoreboard", MFD_CLOEXEC);
	cr_assert_geq(fd, 0);
	cr_assert_eq(ftruncate(fd, 4096), 0);
	errno = 0;
	cr_assert_null(scoreboard_attach(fd));
	cr_assert_eq(errno, EPROTO);
	close(fd);
}
