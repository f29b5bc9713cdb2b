/*
 * Unit tests of the stop ladder (supervisor/escalate.c): stages come in
 * order with their signals, each when the previous one's time is up; a stage
 * asked for directly skips the earlier ones; the ladder never goes back;
 * cancel stops it. One test walks it against a real child that ignores TERM
 * and QUIT, which only KILL ends. The child is reaped by pid.
 */
#include <criterion/criterion.h>

#include "supervisor/escalate.h"

#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <sys/wait.h>
#include <unistd.h>

#define DEADLINE_S 10.0

TestSuite(escalate, .timeout = 30);

struct record {
	struct escalation ladder;
	int count;
	enum escalate_stage stages[8];
	int signals[8];
	bool timed_out[8];
	pid_t child; /* > 0: the callback sends the signal to it */
	bool cancel_at_quit;
};

static void record_stage(void *arg, enum escalate_stage stage, int signo, bool timed_out)
{
	struct record *r = arg;
	cr_assert_lt(r->count, 8);
	r->stages[r->count] = stage;
	r->signals[r->count] = signo;
	r->timed_out[r->count] = timed_out;
	r->count++;
	if (r->child > 0)
		cr_assert_eq(kill(r->child, signo), 0);
	if (r->cancel_at_quit && stage == ESCALATE_QUIT)
		escalate_cancel(&r->ladder);
}

static void deadline_cb(struct ev_loop *loop, ev_timer *timer, int revents)
{
	ev_break(loop, EVBREAK_ALL);
}

/* Runs the loop until the ladder has nothing left to do (KILL, or cancelled), or the deadline. */
static void run_ladder(struct ev_loop *loop, struct record *r)
{
	ev_timer deadline;
	ev_timer_init(&deadline, deadline_cb, DEADLINE_S, 0);
	ev_timer_start(loop, &deadline);
	while (ev_is_active(&r->ladder.timer) && ev_is_active(&deadline))
		ev_run(loop, EVRUN_ONCE);
	cr_assert(ev_is_active(&deadline), "the ladder did not finish within %.0f s", DEADLINE_S);
	ev_timer_stop(loop, &deadline);
}

Test(escalate, stages_fire_in_order_with_their_signals)
{
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	struct record r = { .count = 0 };
	escalate_init(&r.ladder, loop, record_stage, &r);
	cr_assert_eq(escalate_stage(&r.ladder), ESCALATE_IDLE);
	escalate_to(&r.ladder, ESCALATE_TERM, 5, 5);
	cr_assert_eq(r.count, 1, "TERM is sent at once");
	run_ladder(loop, &r);
	cr_assert_eq(r.count, 3);
	enum escalate_stage stages[] = { ESCALATE_TERM, ESCALATE_QUIT, ESCALATE_KILL };
	int signals[] = { SIGTERM, SIGQUIT, SIGKILL };
	bool timed_out[] = { false, true, true };
	for (int i = 0; i < 3; i++) {
		cr_assert_eq(r.stages[i], stages[i], "stage %d", i);
		cr_assert_eq(r.signals[i], signals[i], "stage %d", i);
		cr_assert_eq(r.timed_out[i], timed_out[i], "stage %d", i);
	}
	cr_assert_eq(escalate_stage(&r.ladder), ESCALATE_KILL);
	cr_assert_not(ev_is_active(&r.ladder.timer), "nothing follows KILL");
	ev_loop_destroy(loop);
}

Test(escalate, a_later_stage_skips_the_earlier_ones_and_the_ladder_never_goes_back)
{
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	struct record r = { .count = 0 };
	escalate_init(&r.ladder, loop, record_stage, &r);
	escalate_to(&r.ladder, ESCALATE_QUIT, 60000, 5); /* a fast stop */
	escalate_to(&r.ladder, ESCALATE_TERM, 5, 5);     /* a TERM after it changes nothing */
	escalate_to(&r.ladder, ESCALATE_QUIT, 5, 5);
	cr_assert_eq(r.count, 1);
	cr_assert_eq(r.stages[0], ESCALATE_QUIT);
	cr_assert_eq(r.signals[0], SIGQUIT);
	cr_assert_not(r.timed_out[0], "asked for, not timed out");
	run_ladder(loop, &r);
	cr_assert_eq(r.count, 2);
	cr_assert_eq(r.stages[1], ESCALATE_KILL);
	ev_loop_destroy(loop);
}

Test(escalate, cancel_stops_the_ladder)
{
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	struct record r = { .cancel_at_quit = true };
	escalate_init(&r.ladder, loop, record_stage, &r);
	escalate_to(&r.ladder, ESCALATE_TERM, 5, 5);
	run_ladder(loop, &r);
	cr_assert_eq(r.count, 2, "TERM, then QUIT, which cancels: no KILL");
	cr_assert_eq(escalate_stage(&r.ladder), ESCALATE_IDLE);
	/* Cancelled, the ladder starts again from the beginning. */
	r.cancel_at_quit = false;
	escalate_to(&r.ladder, ESCALATE_TERM, 5, 5);
	cr_assert_eq(r.count, 3);
	cr_assert_eq(r.stages[2], ESCALATE_TERM);
	escalate_cancel(&r.ladder);
	ev_loop_destroy(loop);
}

Test(escalate, drover_waits_come_from_the_configuration)
{
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	struct record r = { .count = 0 };
	struct config cfg = { .shutdown_timeout_ms = 1234, .kill_grace_ms = 500 };
	escalate_init(&r.ladder, loop, record_stage, &r);
	escalate_to_cfg(&r.ladder, ESCALATE_TERM, &cfg);
	cr_assert_eq(r.ladder.term_ms, 1234);
	cr_assert_eq(r.ladder.quit_ms, 500 + ESCALATE_QUIT_MARGIN_MS);
	cr_assert_float_eq(ev_timer_remaining(loop, &r.ladder.timer), 1.234, 0.01);
	escalate_cancel(&r.ladder);
	cr_assert_eq(escalate_signal(ESCALATE_IDLE), 0);
	cr_assert_str_eq(escalate_stage_name(ESCALATE_QUIT), "quit");
	ev_loop_destroy(loop);
}

/* A child that ignores TERM and QUIT, says so on ready, and waits. */
static pid_t stubborn_child(void)
{
	int ready[2];
	cr_assert_eq(pipe(ready), 0);
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		signal(SIGTERM, SIG_IGN);
		signal(SIGQUIT, SIG_IGN);
		close(ready[0]);
		if (write(ready[1], "r", 1) != 1)
			_exit(1);
		for (;;)
			pause();
	}
	close(ready[1]);
	char byte;
	ssize_t n;
	do
		n = read(ready[0], &byte, 1);
	while (n < 0 && errno == EINTR);
	cr_assert_eq(n, 1, "the child did not start");
	close(ready[0]);
	return pid;
}

Test(escalate, a_child_that_ignores_term_and_quit_is_killed)
{
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	struct record r = { .child = stubborn_child() };
	escalate_init(&r.ladder, loop, record_stage, &r);
	escalate_to(&r.ladder, ESCALATE_TERM, 20, 20);
	run_ladder(loop, &r);
	int status;
	pid_t got;
	do
		got = waitpid(r.child, &status, 0);
	while (got < 0 && errno == EINTR);
	cr_assert_eq(got, r.child);
	cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "the child ended with status %#x, not by KILL",
	          status);
	cr_assert_eq(r.count, 3);
	ev_loop_destroy(loop);
}
