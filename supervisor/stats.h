/*
 * stats: the `stats` JSON object and the Prometheus `metrics` text (README:
 * Operations, "Control socket"), computed from the slot table and the scoreboard alone, so they
 * answer even when every worker is busy.
 */
#ifndef DROVER_STATS_H
#define DROVER_STATS_H

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

#endif
