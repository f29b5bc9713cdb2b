/*
 * stats: the `stats` JSON object and the Prometheus `metrics` text (README:
 * Operations, "Control socket"), computed from the slot table and the scoreboard alone, so they
 * answer even when every worker is busy.
 */
#ifndef DROVER_STATS_H
#define DROVER_STATS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

struct supervisor;

/* malloc'd, newline-terminated. */
char *stats_json(const struct supervisor *sup);
char *stats_metrics(const struct supervisor *sup);
/*
 * Whether the pool can make progress: some worker runs without a pool fault
 * (and, with check_queue, the spool takes a write). false with the reason in why.
 */
bool stats_health(const struct supervisor *sup, bool check_queue, char *why, size_t len);
/*
 * Called about once a second: notes whether jobs wait while running workers
 * have free job slots and no job starts (sup->progress), for the stall check
 * of health and the drover_pool_stalled metric.
 */
void stats_watch_progress(struct supervisor *sup);

/*
 * droverctl jobs: every running job (the stats job fields plus "worker") in
 * *running and, with Kafka, each assigned partition's lag ("topic",
 * "partition", "lag", "worker") in *lag and their sum (else *lag is NULL).
 * 0, or -1 (out of memory).
 */
int stats_running(const struct supervisor *sup, json_t **running, json_t **lag, long long *lag_total);

#endif
