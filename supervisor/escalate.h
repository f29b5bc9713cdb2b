/*
 * escalate: the one stop ladder (nginx's reap/shutdown ladder): TERM (drain:
 * take no new jobs, finish the running ones), then QUIT (stop the running
 * jobs; they run again later), then KILL. Each stage has its signal; the
 * owner's callback sends it (to one worker, or to the whole pool) and logs.
 * One ev_timer moves the ladder to the next stage when a stage's time is up;
 * the owner cancels it when what it stops is gone. Used by a slot that drains
 * one worker (pool.c) and by the whole-pool stop (supervisor.c).
 */
#ifndef DROVER_ESCALATE_H
#define DROVER_ESCALATE_H

#include <ev.h>
#include <stdbool.h>

#include "shared/config.h"

/* After QUIT, how long workers get beyond kill_grace_ms to kill their jobs and exit. */
#define ESCALATE_QUIT_MARGIN_MS 3000

enum escalate_stage {
	ESCALATE_IDLE, /* not stopping */
	ESCALATE_TERM, /* asked to drain (SIGTERM) */
	ESCALATE_QUIT, /* asked to stop running jobs (SIGQUIT) */
	ESCALATE_KILL, /* killed (SIGKILL): the last stage, no timer */
};

/*
 * Called on entering stage with its signal. timed_out: the previous stage's
 * time ran out (else the owner asked for this stage directly).
 */
typedef void (*escalate_fn)(void *arg, enum escalate_stage stage, int signo, bool timed_out);

struct escalation {
	struct ev_loop *loop;
	ev_timer timer;
	enum escalate_stage stage;
	long long term_ms; /* time in TERM before QUIT */
	long long quit_ms; /* time in QUIT before KILL */
	escalate_fn enter;
	void *arg;
};

void escalate_init(struct escalation *e, struct ev_loop *loop, escalate_fn enter, void *arg);
/*
 * Enters stage now when it is later than the current one (an earlier or equal
 * one is ignored: a second TERM while quitting changes nothing) and arms the
 * timer: TERM lasts term_ms, QUIT quit_ms, then the next stage follows.
 */
void escalate_to(struct escalation *e, enum escalate_stage stage, long long term_ms, long long quit_ms);
/* drover's waits: TERM shutdown_timeout_ms, QUIT kill_grace_ms + ESCALATE_QUIT_MARGIN_MS. */
void escalate_to_cfg(struct escalation *e, enum escalate_stage stage, const struct config *cfg);
/* What was stopped is gone: no further stage. Back to ESCALATE_IDLE. */
void escalate_cancel(struct escalation *e);
enum escalate_stage escalate_stage(const struct escalation *e);
/* SIGTERM, SIGQUIT, SIGKILL, or 0 for ESCALATE_IDLE. */
int escalate_signal(enum escalate_stage stage);
const char *escalate_stage_name(enum escalate_stage stage);

#endif
