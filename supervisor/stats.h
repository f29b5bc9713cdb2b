/*
 * stats: the `stats` JSON object and the Prometheus `metrics` text (spec
 * section 7), computed from the slot table and the scoreboard alone, so they
 * answer even when every worker is busy.
 */
#ifndef DROVER_STATS_H
#define DROVER_STATS_H

struct supervisor;

/* malloc'd, newline-terminated. */
char *stats_json(const struct supervisor *sup);
char *stats_metrics(const struct supervisor *sup);

#endif
