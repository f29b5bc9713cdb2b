/*
 * view: droverctl's renderings of the daemon's answers for people: the
 * status screen (workers, running jobs with a progress bar and message,
 * queued and faulted counts) and the jobs table, each fitted to a width so
 * that no line wraps.
 */
#ifndef DROVER_VIEW_H
#define DROVER_VIEW_H

#include <jansson.h>
#include <stdio.h>

#define VIEW_MIN_WIDTH 40

/* The terminal's width: TIOCGWINSZ when fd is a tty, else $COLUMNS, else 80 (never below VIEW_MIN_WIDTH). */
int view_width(int fd);
/* stats: the daemon's stats object; jobs: its jobs answer, or NULL (no queued/failed counts then). */
void view_status(FILE *out, json_t *stats, json_t *jobs, int width);
void view_jobs(FILE *out, json_t *jobs, int width);

#endif
