/*
 * jobctl: the control socket's per-job commands: jobs (read), cancel ID,
 * retry ID, pause, resume (write). Each returns the malloc'd answer line(s)
 * ("ok: ...", "error: ...", or the jobs JSON), or NULL when out of memory.
 */
#ifndef DROVER_JOBCTL_H
#define DROVER_JOBCTL_H

#include <stdbool.h>

#include "shared/scoreboard.h"

struct supervisor;

/* A worker has exited: its last failures move into the supervisor's ring, so `jobs` still shows them. */
void jobctl_keep_failures(struct supervisor *sup, const struct scoreboard_slot *copy);

char *jobctl_jobs(const struct supervisor *sup);
char *jobctl_cancel(struct supervisor *sup, const char *id);
char *jobctl_retry(struct supervisor *sup, const char *id);
/* paused: stop taking jobs (running ones go on); false resumes. Kept until changed: restarts and reloads keep it. */
char *jobctl_pause(struct supervisor *sup, bool paused);

#endif
