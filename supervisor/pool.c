/*
 * pool: the slot table (see pool.h).
 *
 * A slot's life is the table in slot.h (README "Worker slots"): one function
 * per event below (slot_on_...), and every change of state goes through
 * slot_enter, which checks it against that table. Every exit of a worker goes
 * through slot_on_exit, which also kills the handler process groups the
 * scoreboard says it left behind, and the processes of its jobs that left
 * those groups (they come to us, a child subreaper: orphans.h), and gives its
 * spool claims back. pool_destroy sweeps once more, briefly, for what comes to
 * us after the last worker is gone.
 */
#include "supervisor/pool.h"
#include "supervisor/jobctl.h"
#include "shared/log.h"
#include "shared/orphans.h"
#include "queue/source.h"
#include "shared/util.h"
#include "worker/worker.h"
#include "worker/cgroup.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <sysexits.h>
#include <unistd.h>

#define HEARTBEAT_CHECK_S 0.5
/* Beyond what the queue says it may take (queue_ops.ready_within_ms), how long a replacement may take to become ready. */
#define READY_MARGIN_MS 5000
/* The final sweep at exit (pool_final_sweep): at most this long, looking again every step. */
#define FINAL_SWEEP_MS 1000
#define FINAL_SWEEP_STEP_MS 10

struct slot {
	struct pool *pool;
	int index;
	enum slot_state state;
	pid_t pid;
	long long started_wall_ms;
	long long started_mono_ms;
	unsigned restarts;
	unsigned consecutive_crashes;
	unsigned generation;
	unsigned long long serial; /* of the worker now in the slot: names it in attempt tokens */
	bool awaiting_ready;   /* a replacement: the next one waits until this one's source is ready */
	bool heartbeat_killed; /* its exit is described as "heartbeat timeout" */
	long long backoff_until_ms;
	char last_exit[64];
	ev_timer backoff_timer;
	struct escalation stop; /* TERM -> QUIT -> KILL while draining */
};

struct pool {
	struct supervisor *sup;
	struct slot slots[CONFIG_MAX_WORKERS];
	int desired;
	bool stopping;
	int death_pipe[2]; /* workers hold the read end; EOF tells them the supervisor is gone */
	int wake_pipe[2];  /* workers poke the write end when their slot changes (scoreboard.h) */
	ev_io wake_watcher;
	unsigned long long spawned; /* workers ever started: the source of slot serials */
	struct children *children;  /* our own children, to find the orphans of dead workers */
	ev_child child_watcher;
	ev_timer heartbeat_timer;
	bool adopted; /* took over the workers of an upgraded image */
};

static void slot_start(struct slot *s);
static void pool_replace_next(struct pool *pool);
static bool pool_slot_ready(struct slot *s, const struct scoreboard_slot *board, long long now);

static bool slot_alive(const struct slot *s)
{
	return s->pid > 0;
}

static bool slot_wanted(const struct slot *s)
{
	return s->index < s->pool->desired;
}

/* Every change of a slot's state: one of slot.h's transitions (an other one is a bug, logged). */
static void slot_enter(struct slot *s, enum slot_state next)
{
	if (!slot_transition_allowed(s->state, next))
		log_error("worker %d: unexpected change of state %s -> %s", s->index, slot_state_name(s->state),
		          slot_state_name(next));
	s->state = next;
}

/* ESRCH is fine: the worker is gone and its exit is on its way to us. */
static void slot_signal(const struct slot *s, int signo)
{
	if (kill(s->pid, signo) < 0 && errno != ESRCH)
		log_warn("worker %d: cannot send signal %d to pid %d", s->index, signo, (int)s->pid);
}

static struct slot *pool_find(struct pool *pool, pid_t pid)
{
	for (int i = 0; i < CONFIG_MAX_WORKERS; i++)
		if (pool->slots[i].pid == pid)
			return &pool->slots[i];
	return NULL;
}

/* ---- the forked child ---------------------------------------------------- */

static int compare_int(const void *a, const void *b)
{
	return *(const int *)a - *(const int *)b;
}

/* Closes every inherited fd but stdio and keep[]: the control socket, the pid
 * file lock and the supervisor's libev fds must not live on in a worker. */
static void close_inherited_fds(int *keep, size_t count)
{
	qsort(keep, count, sizeof(int), compare_int);
	unsigned from = 3;
	for (size_t i = 0; i < count; i++) {
		if (keep[i] < 3)
			continue;
		if ((unsigned)keep[i] > from)
			close_range(from, (unsigned)keep[i] - 1, 0);
		from = (unsigned)keep[i] + 1;
	}
	close_range(from, ~0U, 0);
}

static void pool_child(struct slot *s)
{
	struct pool *pool = s->pool;
	struct supervisor *sup = pool->sup;
	int keep[] = { pool->death_pipe[0], pool->wake_pipe[1], log_fd() };

	close_inherited_fds(keep, ARRAY_LEN(keep));
	struct worker_params params = {
		.cfg = sup->cfg,
		.slot = s->index,
		.generation = sup->generation,
		.board = scoreboard_slot(sup->scoreboard, s->index),
		.parent_fd = pool->death_pipe[0],
		.wake_fd = pool->wake_pipe[1],
		.supervisor_pid = getppid(),
		.serial = s->serial,
	};
	_exit(worker_main(&params));
}

/* ---- spawning and back-off ----------------------------------------------- */

static void slot_backoff_cb(struct ev_loop *loop, ev_timer *timer, int revents)
{
	struct slot *s = timer->data;
	if (s->state == SLOT_BACKOFF && slot_wanted(s) && !s->pool->stopping)
		slot_start(s);
}

/* Event: the worker died unasked (or could not be forked): restart after a delay. */
static void slot_on_crash(struct slot *s)
{
	const struct config *cfg = s->pool->sup->cfg;
	s->consecutive_crashes = slot_crash_count(s->consecutive_crashes, now_ms() - s->started_mono_ms);
	s->restarts++;
	long long delay = slot_backoff_ms(cfg->restart_delay_ms, cfg->restart_delay_max_ms, s->consecutive_crashes,
	                                  random());
	slot_enter(s, SLOT_BACKOFF);
	s->backoff_until_ms = wall_ms() + delay;
	log_warnx("worker %d exited unexpectedly (%s); restart %u in %lld ms", s->index, s->last_exit, s->restarts,
	          delay);
	ev_timer_set(&s->backoff_timer, (double)delay / 1000.0, 0);
	ev_timer_start(s->pool->sup->loop, &s->backoff_timer);
}

/* Forks the slot's worker: STARTING, or BACKOFF when fork fails. */
static void slot_start(struct slot *s)
{
	struct pool *pool = s->pool;
	struct supervisor *sup = pool->sup;
	sigset_t all, old;

	scoreboard_reset_slot(scoreboard_slot(sup->scoreboard, s->index));
	s->serial = ++pool->spawned;
	sigfillset(&all);
	sigprocmask(SIG_SETMASK, &all, &old); /* no libev handler may run in the child */
	pid_t pid = fork();
	if (pid == 0)
		pool_child(s);
	int saved = errno;
	sigprocmask(SIG_SETMASK, &old, NULL);
	s->started_mono_ms = now_ms();
	s->started_wall_ms = wall_ms();
	s->awaiting_ready = false;
	if (pid < 0) {
		errno = saved;
		log_warn("cannot fork worker %d", s->index);
		snprintf(s->last_exit, sizeof(s->last_exit), "fork failed");
		slot_on_crash(s);
		return;
	}
	s->pid = pid;
	slot_enter(s, SLOT_STARTING);
	s->generation = sup->generation;
	s->heartbeat_killed = false;
	log_info("worker %d started, pid %d", s->index, (int)pid);
}

/* ---- stopping one worker --------------------------------------------------- */

/* One stage of a slot's stop ladder (escalate.h). */
static void slot_stop_stage(void *arg, enum escalate_stage stage, int signo, bool timed_out)
{
	struct slot *s = arg;
	if (!slot_alive(s))
		return;
	if (stage == ESCALATE_QUIT)
		log_warnx("worker %d did not drain within %lld ms; stopping its jobs", s->index,
		          s->pool->sup->cfg->shutdown_timeout_ms);
	else if (stage == ESCALATE_KILL)
		log_warnx("worker %d ignored QUIT; killing it", s->index);
	slot_signal(s, signo);
}

/* Event: asked to stop (replacement, scale down): TERM now, QUIT and KILL when it takes too long. */
static void slot_on_drain(struct slot *s)
{
	if (!slot_alive(s) || s->state == SLOT_DRAINING)
		return;
	slot_enter(s, SLOT_DRAINING);
	escalate_cancel(&s->stop);
	escalate_to_cfg(&s->stop, ESCALATE_TERM, s->pool->sup->cfg);
}

/* ---- reaping --------------------------------------------------------------- */

/* A dead worker's jobs and handler processes: their groups (pool_sweep_orphans gets what left them). */
static void pool_kill_handler_groups(const struct scoreboard_slot *copy)
{
	for (int i = 0; i < CONFIG_MAX_CONCURRENT; i++) {
		const struct scoreboard_job *job = &copy->jobs[i];
		struct log_fields fields = { .job_id = job->id, .attempt = job->attempt, .handler_pid = job->pgid };
		if (job->used && job->pgid > 0 && kill(-job->pgid, SIGKILL) == 0)
			log_job(LOG_LEVEL_WARN, &fields, "killed the handler group of a dead worker's job");
	}
	/* Persistent handler processes, busy or idle: each leads its own group. */
	int count = copy->handler_count < CONFIG_MAX_CONCURRENT ? copy->handler_count : CONFIG_MAX_CONCURRENT;
	for (int i = 0; i < count; i++) {
		pid_t pgid = copy->handlers[i].pid;
		if (pgid > 0 && kill(-pgid, SIGKILL) == 0)
			log_info("killed persistent handler group %d", (int)pgid);
	}
}

static bool pool_serial_alive(const struct pool *pool, unsigned long long serial)
{
	for (int i = 0; i < CONFIG_MAX_WORKERS; i++) {
		if (slot_alive(&pool->slots[i]) && pool->slots[i].serial == serial)
			return true;
	}
	return false;
}

/*
 * Kills those of our children that carry an attempt token of a worker of ours
 * that is gone: a dead worker's handlers and whatever of its jobs left their
 * process groups come to us (we are a child subreaper). Workers are skipped
 * without a look; a child without our token is only reaped. Called when a
 * worker dies and whenever a non-worker child is reaped (its children have
 * just come to us), and at exit (pool_final_sweep). Returns how many children
 * are not workers, killed or not (each is reaped when it exits).
 */
static size_t pool_sweep_orphans(struct pool *pool)
{
	const pid_t *pids;
	size_t count, strangers = 0;
	if (pool->children == NULL)
		return 0;
	if (children_list(pool->children, &pids, &count) < 0) {
		log_warn("cannot list the supervisor's child processes");
		return 0;
	}
	long long self = getpid();
	cgroup_collect(); /* dead workers' cgroups, once their killed processes are gone */
	for (size_t i = 0; i < count; i++) {
		struct attempt_token token;
		if (pool_find(pool, pids[i]) != NULL)
			continue;
		strangers++;
		if (attempt_token_of(pids[i], &token) != 1)
			continue;
		if (token.supervisor != self || pool_serial_alive(pool, token.worker))
			continue;
		if (orphan_kill(pids[i]))
			log_info("killed pid %d, left behind by a job of a worker that is gone", (int)pids[i]);
	}
	return strangers;
}

/* Reaps every child that has exited, without the loop (its child watcher is stopped by then). */
static void pool_reap_quietly(void)
{
	int status;
	for (;;) {
		pid_t pid = waitpid(-1, &status, WNOHANG);
		if (pid == 0 || (pid < 0 && errno != EINTR))
			return; /* none exited, or no children left */
	}
}

/*
 * At exit, once the workers are gone: a job's escapee whose own parent
 * outlived the last worker comes to us only when that parent dies, after the
 * last worker's sweep. So the sweep goes on, reaping as it goes, while we
 * still have children that are not workers, for at most FINAL_SWEEP_MS; a
 * child without our token (a daemon that left its job for good) may outlive
 * us after that. No children: no wait at all.
 */
static void pool_final_sweep(struct pool *pool)
{
	long long deadline = now_ms() + FINAL_SWEEP_MS;
	for (;;) {
		pool_reap_quietly();
		if (pool_sweep_orphans(pool) == 0 || now_ms() >= deadline)
			return;
		struct timespec pause = { .tv_sec = 0, .tv_nsec = FINAL_SWEEP_STEP_MS * 1000000L };
		nanosleep(&pause, NULL); /* EINTR only shortens one step */
	}
}

/* Each message the dead worker was running counts one death in the crash ledger. */
static void pool_record_crash(struct supervisor *sup, const struct scoreboard_slot *copy)
{
	for (int i = 0; i < CONFIG_MAX_CONCURRENT; i++)
		if (copy->jobs[i].used && copy->jobs[i].delivery != 0)
			scoreboard_crash_record(sup->scoreboard, copy->jobs[i].delivery);
}

/* What the dead worker leaves: its handler groups are killed, its counters
 * kept, its spool claims returned. */
static void pool_bury(struct slot *s, bool clean)
{
	struct supervisor *sup = s->pool->sup;
	struct scoreboard_slot *board = scoreboard_slot(sup->scoreboard, s->index);
	static struct scoreboard_slot copy; /* large: keep it off the stack */

	scoreboard_read_slot(board, &copy);
	pool_kill_handler_groups(&copy);
	cgroup_end_worker(getpid(), s->serial); /* what left the groups, wherever it went */
	pool_sweep_orphans(s->pool);
	if (!clean)
		pool_record_crash(sup, &copy);
	if (!clean && copy.in_flight > 0) {
		sup->jobs_lost += (uint64_t)copy.in_flight;
		log_warnx("worker %d died with %d job(s) in flight; they will run again", s->index, copy.in_flight);
	}
	scoreboard_counters_add(&sup->retired, &copy.counters);
	jobctl_keep_failures(sup, &copy);
	scoreboard_reset_slot(board);
	const struct queue_ops *queue = queue_ops_for(sup->cfg);
	int returned = queue->reclaim != NULL ? queue->reclaim(sup->cfg) : 0;
	if (returned > 0)
		log_info("returned %d claim(s) of worker %d to the queue", returned, s->index);
}

static void slot_note_exit(struct slot *s, int status, bool config_refused)
{
	if (s->heartbeat_killed)
		snprintf(s->last_exit, sizeof(s->last_exit), "heartbeat timeout");
	else if (config_refused)
		snprintf(s->last_exit, sizeof(s->last_exit), "exit %d: configuration refused", EX_CONFIG);
	else
		describe_wait_status(status, s->last_exit, sizeof(s->last_exit));
	log_info("worker %d (pid %d) exited: %s", s->index, (int)s->pid, s->last_exit);
}

/* Event: the slot's worker exited (slot.h's slot_after_exit says what follows). */
static void slot_on_exit(struct slot *s, int status)
{
	struct pool *pool = s->pool;
	bool clean = WIFEXITED(status) && WEXITSTATUS(status) == 0;
	bool refused = WIFEXITED(status) && WEXITSTATUS(status) == EX_CONFIG;

	slot_note_exit(s, status, refused);
	s->pid = 0;
	s->awaiting_ready = false;
	escalate_cancel(&s->stop);
	pool_bury(s, clean);

	enum slot_state next = slot_after_exit(s->state, slot_wanted(s), pool->stopping, refused);
	if (next == SLOT_STARTING) {
		slot_start(s);
		s->awaiting_ready = s->state == SLOT_STARTING; /* a replacement: the next waits for it */
	} else if (next == SLOT_BACKOFF) {
		slot_on_crash(s);
	} else {
		if (next == SLOT_FAILED)
			log_error("worker %d refused the configuration (exit %d); not restarted until a reload or scale",
			          s->index, EX_CONFIG);
		slot_enter(s, next);
	}
	if (pool->stopping) {
		if (pool_alive(pool) == 0)
			supervisor_workers_gone(pool->sup);
		return;
	}
	pool_replace_next(pool);
}

static void pool_on_child_exit(struct pool *pool, pid_t pid, int status)
{
	char how[64];
	struct slot *s = pool_find(pool, pid);

	if (s != NULL) {
		slot_on_exit(s, status);
		return;
	}
	/* An orphan re-parented to us (PID 1 or subreaper): reaped; its own children are ours now. */
	describe_wait_status(status, how, sizeof(how));
	log_debug("reaped pid %d, not a worker (%s)", (int)pid, how);
	pool_sweep_orphans(pool);
}

static void pool_child_cb(struct ev_loop *loop, ev_child *watcher, int revents)
{
	pool_on_child_exit(watcher->data, watcher->rpid, watcher->rstatus);
}

/*
 * After an upgrade: children that exited while the old image exec'd this one
 * are zombies whose SIGCHLD may be gone. Collected once at start and matched
 * to the adopted slots.
 */
static void pool_reap_exited(struct pool *pool)
{
	for (;;) {
		int status = 0;
		pid_t pid = waitpid(-1, &status, WNOHANG);
		if (pid < 0 && errno == EINTR)
			continue;
		if (pid <= 0)
			return;
		log_info("pid %d exited during the upgrade", (int)pid);
		pool_on_child_exit(pool, pid, status);
	}
}

/* ---- heartbeat ----------------------------------------------------------- */

/* Event: the worker published itself in the scoreboard. */
static void slot_on_published(struct slot *s)
{
	if (s->state != SLOT_STARTING)
		return;
	slot_enter(s, SLOT_RUNNING);
	pool_replace_next(s->pool);
}

/* Event: no heartbeat for heartbeat_timeout_ms. KILL; its exit backs off as a crash would. */
static void slot_on_silent(struct slot *s, long long silent_ms)
{
	if (s->heartbeat_killed)
		return;
	log_error("worker %d (pid %d) silent for %lld ms; killing it", s->index, (int)s->pid, silent_ms);
	s->heartbeat_killed = true;
	slot_signal(s, SIGKILL);
}

static void pool_check_slot(struct slot *s, long long now)
{
	const struct scoreboard_slot *board = scoreboard_slot(s->pool->sup->scoreboard, s->index);
	pid_t board_pid = __atomic_load_n(&board->pid, __ATOMIC_ACQUIRE);
	long long heartbeat = s->started_mono_ms;

	if (board_pid == s->pid) {
		heartbeat = __atomic_load_n(&board->heartbeat_ms, __ATOMIC_ACQUIRE);
		slot_on_published(s);
		if (s->awaiting_ready && pool_slot_ready(s, board, now))
			pool_replace_next(s->pool);
	}
	if (now - heartbeat > s->pool->sup->cfg->heartbeat_timeout_ms)
		slot_on_silent(s, now - heartbeat);
}

static void pool_check_slots(struct pool *pool)
{
	long long now = now_ms();
	for (int i = 0; i < CONFIG_MAX_WORKERS; i++)
		if (slot_alive(&pool->slots[i]))
			pool_check_slot(&pool->slots[i], now);
}

static void pool_heartbeat_cb(struct ev_loop *loop, ev_timer *timer, int revents)
{
	pool_check_slots(timer->data);
}

/* A worker started or became ready: look now (a restarted slot is running within milliseconds). */
static void pool_wake_cb(struct ev_loop *loop, ev_io *io, int revents)
{
	char buf[256];
	ssize_t n;

	do
		n = read(io->fd, buf, sizeof(buf));
	while (n == (ssize_t)sizeof(buf) || (n < 0 && errno == EINTR));
	pool_check_slots(io->data);
}

/* ---- rolling replacement ------------------------------------------------ */

/* How long a replacement may take to become ready before the next worker is replaced anyway. */
static long long ready_timeout_ms(const struct config *cfg)
{
	const struct queue_ops *queue = queue_ops_for(cfg);
	long long within = queue->ready_within_ms != NULL ? queue->ready_within_ms(cfg) : 0;
	/* A persistent-mode worker is ready once a handler process is too: allow it its start time. */
	if (cfg->handler_mode == HANDLER_MODE_PERSISTENT && cfg->handler_start_timeout_ms > within)
		within = cfg->handler_start_timeout_ms;
	return within + READY_MARGIN_MS;
}

/* Clears awaiting_ready once the replacement's source is ready, or it took too long (logged). */
static bool pool_slot_ready(struct slot *s, const struct scoreboard_slot *board, long long now)
{
	long long limit = ready_timeout_ms(s->pool->sup->cfg);
	if (scoreboard_worker_ready(board)) {
		s->awaiting_ready = false;
	} else if (now - s->started_mono_ms > limit) {
		log_warnx("worker %d not ready after %lld ms (no group assignment or ready handler process yet); "
		          "replacing the next one anyway", s->index, limit);
		s->awaiting_ready = false;
	}
	return !s->awaiting_ready;
}

static void pool_replace_next(struct pool *pool)
{
	struct slot_summary summary[CONFIG_MAX_WORKERS];
	if (pool->stopping)
		return;
	for (int i = 0; i < CONFIG_MAX_WORKERS; i++) {
		const struct slot *s = &pool->slots[i];
		summary[i] = (struct slot_summary){ .state = s->state, .wanted = slot_wanted(s),
			                            .awaiting_ready = s->awaiting_ready, .generation = s->generation };
	}
	int next = slot_next_replacement(summary, CONFIG_MAX_WORKERS, pool->sup->generation);
	if (next < 0)
		return;
	struct slot *s = &pool->slots[next];
	log_info("replacing worker %d (generation %u -> %u)", s->index, s->generation, pool->sup->generation);
	slot_on_drain(s);
}

void pool_replace_outdated(struct pool *pool)
{
	pool_replace_next(pool);
}

void pool_adopt_generation(struct pool *pool)
{
	for (int i = 0; i < CONFIG_MAX_WORKERS; i++)
		if (slot_alive(&pool->slots[i]))
			pool->slots[i].generation = pool->sup->generation;
}

/* ---- public --------------------------------------------------------------- */

/* A pool without pipes or workers yet. */
static struct pool *pool_alloc(struct supervisor *sup)
{
	struct pool *pool = calloc(1, sizeof(*pool));
	if (pool == NULL)
		return NULL;
	pool->sup = sup;
	pool->children = children_open();
	if (pool->children == NULL)
		log_warn("cannot open the supervisor's list of child processes; escaped job processes of dead "
		         "workers will not be stopped");
	for (int i = 0; i < CONFIG_MAX_WORKERS; i++) {
		struct slot *s = &pool->slots[i];
		s->pool = pool;
		s->index = i;
		s->state = SLOT_STOPPED;
		ev_timer_init(&s->backoff_timer, slot_backoff_cb, 0, 0);
		s->backoff_timer.data = s;
		escalate_init(&s->stop, sup->loop, slot_stop_stage, s);
	}
	ev_child_init(&pool->child_watcher, pool_child_cb, 0, 0);
	pool->child_watcher.data = pool;
	ev_timer_init(&pool->heartbeat_timer, pool_heartbeat_cb, HEARTBEAT_CHECK_S, HEARTBEAT_CHECK_S);
	pool->heartbeat_timer.data = pool;
	srandom((unsigned)(getpid() ^ wall_ms()));
	return pool;
}

static void pool_watch_wake_pipe(struct pool *pool)
{
	ev_io_init(&pool->wake_watcher, pool_wake_cb, pool->wake_pipe[0], EV_READ);
	pool->wake_watcher.data = pool;
}

struct pool *pool_create(struct supervisor *sup)
{
	struct pool *pool = pool_alloc(sup);
	if (pool == NULL)
		return NULL;
	if (pipe2(pool->death_pipe, O_CLOEXEC) < 0) {
		children_close(pool->children);
		free(pool);
		return NULL;
	}
	if (pipe2(pool->wake_pipe, O_CLOEXEC | O_NONBLOCK) < 0) {
		close(pool->death_pipe[0]);
		close(pool->death_pipe[1]);
		children_close(pool->children);
		free(pool);
		return NULL;
	}
	pool_watch_wake_pipe(pool);
	return pool;
}

/*
 * The old image's workers, as starting slots: the heartbeat check finds them
 * published and running, and since they run an older generation the rolling
 * replacement swaps them one at a time, each draining first.
 */
static void pool_adopt_slot(struct pool *pool, const struct handover_slot *h)
{
	struct slot *s = &pool->slots[h->index];
	const struct scoreboard_slot *board = scoreboard_slot(pool->sup->scoreboard, h->index);
	long long started = __atomic_load_n(&board->started_ms, __ATOMIC_RELAXED);
	s->pid = h->pid;
	s->serial = h->serial;
	s->generation = h->generation;
	s->restarts = h->restarts;
	s->started_wall_ms = started > 0 ? started : wall_ms();
	s->started_mono_ms = now_ms(); /* the heartbeat grace of a fresh start */
	slot_enter(s, SLOT_STARTING);
	log_info("worker %d (pid %d) adopted from the previous image", s->index, (int)s->pid);
}

struct pool *pool_create_adopting(struct supervisor *sup, const struct handover *h)
{
	struct pool *pool = pool_alloc(sup);
	if (pool == NULL)
		return NULL;
	memcpy(pool->death_pipe, h->death_pipe, sizeof(pool->death_pipe));
	memcpy(pool->wake_pipe, h->wake_pipe, sizeof(pool->wake_pipe));
	int fds[] = { h->death_pipe[0], h->death_pipe[1], h->wake_pipe[0], h->wake_pipe[1] };
	for (size_t i = 0; i < ARRAY_LEN(fds); i++)
		if (fd_set_cloexec(fds[i]) < 0)
			log_warn("cannot mark the handed-over fd %d close-on-exec", fds[i]);
	pool_watch_wake_pipe(pool);
	pool->spawned = h->spawned;
	pool->adopted = true;
	for (int i = 0; i < h->slot_count; i++)
		pool_adopt_slot(pool, &h->slots[i]);
	return pool;
}

int pool_handover(const struct pool *pool, struct handover *h, char *err, size_t errlen)
{
	memcpy(h->death_pipe, pool->death_pipe, sizeof(h->death_pipe));
	memcpy(h->wake_pipe, pool->wake_pipe, sizeof(h->wake_pipe));
	h->spawned = pool->spawned;
	h->slot_count = 0;
	for (int i = 0; i < CONFIG_MAX_WORKERS; i++) {
		const struct slot *s = &pool->slots[i];
		if (s->state == SLOT_DRAINING) {
			snprintf(err, errlen, "worker %d is draining (a replacement or scale-down is under way); "
			         "upgrade once it is done", s->index);
			return -1;
		}
		if (!slot_alive(s))
			continue;
		h->slots[h->slot_count++] = (struct handover_slot){ .index = s->index, .pid = s->pid,
			.serial = s->serial, .generation = s->generation, .restarts = s->restarts };
	}
	return 0;
}

void pool_destroy(struct pool *pool)
{
	if (pool == NULL)
		return;
	for (int i = 0; i < CONFIG_MAX_WORKERS; i++) {
		ev_timer_stop(pool->sup->loop, &pool->slots[i].backoff_timer);
		escalate_cancel(&pool->slots[i].stop);
	}
	ev_child_stop(pool->sup->loop, &pool->child_watcher);
	pool_final_sweep(pool);
	ev_timer_stop(pool->sup->loop, &pool->heartbeat_timer);
	ev_io_stop(pool->sup->loop, &pool->wake_watcher);
	close(pool->death_pipe[0]);
	close(pool->death_pipe[1]);
	close(pool->wake_pipe[0]);
	close(pool->wake_pipe[1]);
	children_close(pool->children);
	free(pool);
}

void pool_start(struct pool *pool)
{
	ev_child_start(pool->sup->loop, &pool->child_watcher);
	ev_timer_start(pool->sup->loop, &pool->heartbeat_timer);
	ev_io_start(pool->sup->loop, &pool->wake_watcher);
	pool->desired = pool->sup->cfg->workers;
	if (pool->adopted)
		pool_reap_exited(pool);
	pool_scale(pool, pool->sup->cfg->workers);
}

/* Event: wanted again (start, scale, reload): a stopped or failed slot starts afresh. */
static void slot_on_wanted(struct slot *s)
{
	if (s->state != SLOT_STOPPED && s->state != SLOT_FAILED)
		return;
	s->pool->sup->restarts_retired += s->restarts; /* drover_worker_restarts_total stays monotonic */
	s->restarts = 0;
	s->consecutive_crashes = 0;
	s->last_exit[0] = '\0';
	slot_start(s);
}

/* Event: no longer wanted (scale down): a waiting slot stops, a live one drains. */
static void slot_on_unwanted(struct slot *s)
{
	if (s->state == SLOT_BACKOFF || s->state == SLOT_FAILED) {
		ev_timer_stop(s->pool->sup->loop, &s->backoff_timer);
		slot_enter(s, SLOT_STOPPED);
	} else if (slot_alive(s)) {
		slot_on_drain(s);
	}
}

/* Event: the whole pool stops. The supervisor's own ladder (escalate.h) takes over from the slot's. */
static void slot_on_stop(struct slot *s, int signo)
{
	ev_timer_stop(s->pool->sup->loop, &s->backoff_timer);
	escalate_cancel(&s->stop);
	if (!slot_alive(s)) {
		slot_enter(s, SLOT_STOPPED);
		return;
	}
	slot_enter(s, SLOT_DRAINING);
	slot_signal(s, signo);
}

void pool_scale(struct pool *pool, int workers)
{
	if (pool->stopping)
		return;
	pool->desired = workers;
	for (int i = 0; i < CONFIG_MAX_WORKERS; i++) {
		if (slot_wanted(&pool->slots[i]))
			slot_on_wanted(&pool->slots[i]);
		else
			slot_on_unwanted(&pool->slots[i]);
	}
}

void pool_stop(struct pool *pool, enum stop_mode mode)
{
	pool->stopping = true;
	for (int i = 0; i < CONFIG_MAX_WORKERS; i++)
		slot_on_stop(&pool->slots[i], mode == STOP_FAST ? SIGQUIT : SIGTERM);
	if (pool_alive(pool) == 0)
		supervisor_workers_gone(pool->sup);
}

void pool_kill_all(struct pool *pool)
{
	static struct scoreboard_slot copy;
	for (int i = 0; i < CONFIG_MAX_WORKERS; i++) {
		struct slot *s = &pool->slots[i];
		if (!slot_alive(s))
			continue;
		slot_signal(s, SIGKILL);
		scoreboard_read_slot(scoreboard_slot(pool->sup->scoreboard, i), &copy);
		pool_kill_handler_groups(&copy);
	}
}

void pool_signal_all(struct pool *pool, int signo)
{
	for (int i = 0; i < CONFIG_MAX_WORKERS; i++)
		if (slot_alive(&pool->slots[i]))
			slot_signal(&pool->slots[i], signo);
}

int pool_desired(const struct pool *pool)
{
	return pool->desired;
}

int pool_alive(const struct pool *pool)
{
	int alive = 0;
	for (int i = 0; i < CONFIG_MAX_WORKERS; i++)
		alive += slot_alive(&pool->slots[i]);
	return alive;
}

int pool_slot_count(const struct pool *pool)
{
	int count = pool->desired;
	for (int i = count; i < CONFIG_MAX_WORKERS; i++)
		if (pool->slots[i].state != SLOT_STOPPED)
			count = i + 1;
	return count;
}

bool pool_view(const struct pool *pool, int index, struct slot_view *view)
{
	if (index < 0 || index >= CONFIG_MAX_WORKERS)
		return false;
	const struct slot *s = &pool->slots[index];
	memset(view, 0, sizeof(*view));
	view->slot = index;
	view->pid = s->pid;
	view->state = s->state;
	view->started_ms = slot_alive(s) ? s->started_wall_ms : 0;
	view->restarts = s->restarts;
	view->backoff_until_ms = s->state == SLOT_BACKOFF ? s->backoff_until_ms : 0;
	snprintf(view->last_exit, sizeof(view->last_exit), "%s", s->last_exit);
	return true;
}
