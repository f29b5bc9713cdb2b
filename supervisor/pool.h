/*
 * pool: the supervisor's slot table (after nginx's ngx_processes[]): one
 * entry per worker slot with its state, pid, restart count and timers. It
 * forks workers, reaps every child (workers and, as PID 1 or subreaper,
 * strangers), restarts crashed workers with a doubling, jittered back-off,
 * kills workers whose heartbeat stopped, scales, and replaces workers one at
 * a time after a reload, each draining first.
 */
#ifndef DROVER_POOL_H
#define DROVER_POOL_H

#include <stdbool.h>

#include "supervisor/supervisor.h"
#include "supervisor/upgrade.h"

struct pool;

struct pool *pool_create(struct supervisor *sup);
/*
 * After a binary upgrade: the pipes and live workers of the old image (the
 * scoreboard is already attached). Its workers are replaced one at a time.
 */
struct pool *pool_create_adopting(struct supervisor *sup, const struct handover *h);
/*
 * Fills h's pipes, serial and live slots for an upgrade. -1 with why in err
 * while a worker is draining (the new image would not know it was asked to).
 */
int pool_handover(const struct pool *pool, struct handover *h, char *err, size_t errlen);
void pool_destroy(struct pool *pool);
/* Forks the start-up workers. */
void pool_start(struct pool *pool);
/* Desired number of workers (1..CONFIG_MAX_WORKERS); drains the surplus, forks the missing. */
void pool_scale(struct pool *pool, int workers);
/* After a reload: replace every worker of an older generation, one at a time. */
void pool_replace_outdated(struct pool *pool);
/* Marks every live worker as running the current generation (a reload that changed nothing for them). */
void pool_adopt_generation(struct pool *pool);
/* Graceful: TERM (drain) every worker; fast: QUIT. No restarts from now on. */
void pool_stop(struct pool *pool, enum stop_mode mode);
/* SIGKILL every worker and its handler groups (the last resort of a stop). */
void pool_kill_all(struct pool *pool);
void pool_signal_all(struct pool *pool, int signo);
int pool_desired(const struct pool *pool);
int pool_alive(const struct pool *pool);
int pool_slot_count(const struct pool *pool);
bool pool_view(const struct pool *pool, int slot, struct slot_view *view);

#endif
