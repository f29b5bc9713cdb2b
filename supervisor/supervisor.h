/*
 * supervisor: the master process's state and the actions that both a signal
 * and a control-socket command can trigger (one function per action, as in
 * s6-svscan: `reload` and SIGHUP call the same code).
 */
#ifndef DROVER_SUPERVISOR_H
#define DROVER_SUPERVISOR_H

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "shared/config.h"
#include "shared/scoreboard.h"
#include "supervisor/escalate.h"
#include "supervisor/slot.h"

/* What the control socket and stats see of one slot. */
struct slot_view {
	int slot;
	pid_t pid;                /* 0 when none */
	enum slot_state state;
	long long started_ms;     /* wall clock, 0 when none */
	unsigned restarts;
	char last_exit[64];       /* "" or "exit 1" / "signal 9" / "heartbeat timeout" / "exit 78: configuration refused" */
	long long backoff_until_ms; /* wall clock, when state is backoff */
};

enum stop_mode { STOP_GRACEFUL, STOP_FAST };

#define SUPERVISOR_FAILURES 32

/* What the last reload did to one changed key (stats.last_reload_changes). */
#define RELOAD_CHANGES_MAX 64
struct reload_change {
	char key[96];       /* "[section] key" */
	const char *result; /* "applied", "workers replaced", "needs restart" or "rejected" */
};

/* The stall check of health (stats_watch_progress): since when jobs wait, slots are free and none starts. */
struct progress_watch {
	uint64_t started;    /* jobs started or failed (refused before a start) at the last look */
	long long since_ms;  /* monotonic, 0 = the pool is not stuck */
	long long waiting;   /* at the last look */
	long long free_slots;
	long long job_slots;
};

struct supervisor {
	struct ev_loop *loop;
	struct config *cfg;
	const char *config_path;
	struct scoreboard *scoreboard;
	struct pool *pool;
	struct control *control;
	struct http *http;         /* NULL unless [supervisor] http_listen is set */
	long long started_ms;      /* wall clock */
	unsigned generation;       /* 1 for the start-up config, +1 per applied reload */
	unsigned reloads;          /* applied reloads */
	char last_reload[2048];    /* "ok", "" before any, or the errors */
	struct reload_change reload_changes[RELOAD_CHANGES_MAX];
	size_t reload_change_count;
	struct scoreboard_counters retired; /* counters of workers that have exited */
	uint64_t jobs_lost;        /* in-flight jobs of workers that died (they run again) */
	uint64_t restarts_retired; /* restarts of slots since emptied and reused: keeps the total monotonic */
	/* The last failures of workers that have exited (droverctl jobs), a ring like each slot's. */
	struct scoreboard_failure failures[SUPERVISOR_FAILURES];
	unsigned failure_count;
	bool stopping;
	bool upgrading;            /* an upgrade waits for the control socket's clients to finish */
	int pid_fd;                /* the locked pid file, -1 when none: an upgrade hands it over */
	struct escalation stop;    /* the whole pool's stop ladder */
	ev_timer status_timer;
	ev_timer progress_timer;
	struct progress_watch progress;
	ev_signal signals[8];
};

/* Sets up signal watchers, the control socket and forks the workers. */
void supervisor_start(struct supervisor *sup);
/* Tells the service manager it is ready and serves until stopped. Returns the exit code. */
int supervisor_serve(struct supervisor *sup);

/* Each returns 0, or -1 with a message in err. */
int supervisor_reload(struct supervisor *sup, char *err, size_t errlen);
int supervisor_scale(struct supervisor *sup, int workers, char *err, size_t errlen);
void supervisor_stop(struct supervisor *sup, enum stop_mode mode);
/*
 * Binary upgrade (SIGUSR2, `upgrade`): checks the binary on disk, then, once
 * the control socket's clients are answered, execs it with the same pid,
 * handing over the workers and the listening fds. Returns 0 when the upgrade
 * is under way, or -1 with why in err (the running image stays).
 */
int supervisor_upgrade(struct supervisor *sup, char *err, size_t errlen);
/* Called by the pool when the last worker of a stop has exited. */
void supervisor_workers_gone(struct supervisor *sup);

/* The slot table, for stats. */
int supervisor_slot_count(const struct supervisor *sup); /* slots in use or desired */
bool supervisor_slot_view(const struct supervisor *sup, int slot, struct slot_view *view);
int supervisor_workers_desired(const struct supervisor *sup);
int supervisor_workers_alive(const struct supervisor *sup);

#endif
