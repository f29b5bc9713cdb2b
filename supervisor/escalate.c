/*
 * escalate: the stop ladder (see escalate.h). The stage only moves forward,
 * and only here: by escalate_to, or by the timer when a stage's time is up.
 */
#include "supervisor/escalate.h"

#include <signal.h>

static const struct {
	const char *name;
	int signo;
} stages[] = {
	[ESCALATE_IDLE] = { "idle", 0 },
	[ESCALATE_TERM] = { "term", SIGTERM },
	[ESCALATE_QUIT] = { "quit", SIGQUIT },
	[ESCALATE_KILL] = { "kill", SIGKILL },
};

static void escalate_arm(struct escalation *e)
{
	long long wait_ms = e->stage == ESCALATE_TERM ? e->term_ms : e->quit_ms;
	ev_timer_stop(e->loop, &e->timer);
	if (e->stage == ESCALATE_KILL)
		return; /* nothing comes after KILL: the owner waits for the exit */
	ev_timer_set(&e->timer, (double)(wait_ms > 0 ? wait_ms : 0) / 1000.0, 0);
	ev_timer_start(e->loop, &e->timer);
}

static void escalate_enter(struct escalation *e, enum escalate_stage stage, bool timed_out)
{
	e->stage = stage;
	escalate_arm(e);
	/* Last: the callback may cancel the ladder (nothing left to stop). */
	e->enter(e->arg, stage, stages[stage].signo, timed_out);
}

static void escalate_timer_cb(struct ev_loop *loop, ev_timer *timer, int revents)
{
	struct escalation *e = timer->data;
	if (e->stage == ESCALATE_TERM || e->stage == ESCALATE_QUIT)
		escalate_enter(e, e->stage + 1, true);
}

void escalate_init(struct escalation *e, struct ev_loop *loop, escalate_fn enter, void *arg)
{
	e->loop = loop;
	e->stage = ESCALATE_IDLE;
	e->term_ms = 0;
	e->quit_ms = 0;
	e->enter = enter;
	e->arg = arg;
	ev_timer_init(&e->timer, escalate_timer_cb, 0, 0);
	e->timer.data = e;
}

void escalate_to(struct escalation *e, enum escalate_stage stage, long long term_ms, long long quit_ms)
{
	if (stage <= e->stage || stage > ESCALATE_KILL)
		return;
	e->term_ms = term_ms;
	e->quit_ms = quit_ms;
	escalate_enter(e, stage, false);
}

void escalate_to_cfg(struct escalation *e, enum escalate_stage stage, const struct config *cfg)
{
	escalate_to(e, stage, cfg->shutdown_timeout_ms, cfg->kill_grace_ms + ESCALATE_QUIT_MARGIN_MS);
}

void escalate_cancel(struct escalation *e)
{
	ev_timer_stop(e->loop, &e->timer);
	e->stage = ESCALATE_IDLE;
}

enum escalate_stage escalate_stage(const struct escalation *e)
{
	return e->stage;
}

int escalate_signal(enum escalate_stage stage)
{
	return stage <= ESCALATE_KILL ? stages[stage].signo : 0;
}

const char *escalate_stage_name(enum escalate_stage stage)
{
	return stage <= ESCALATE_KILL ? stages[stage].name : "?";
}
