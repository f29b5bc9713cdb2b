/*
 * orphans: what is left of a job after its process group was killed. A
 * handler's descendant can leave the job's group (setsid, setpgid) and so
 * escape the group kill. Workers and the supervisor are child subreapers, so
 * such a process, once its parents are gone, becomes a child of the nearest
 * of them; it is recognised there by the attempt token every handler gets in
 * its environment (DROVER_ATTEMPT_TOKEN), which names the supervisor, the
 * worker (a serial unique within the supervisor's life) and the attempt.
 *
 * Nothing here scans /proc: a caller lists only its own children (one pread
 * of a file kept open) and reads the environment of the few that are neither
 * its workers nor its handlers. Nothing matches on a job id.
 */
#ifndef DROVER_ORPHANS_H
#define DROVER_ORPHANS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#define ATTEMPT_TOKEN_VAR "DROVER_ATTEMPT_TOKEN"

struct attempt_token {
	long long supervisor;     /* the supervisor's pid */
	unsigned long long worker;  /* the worker's serial in that supervisor */
	unsigned long long attempt; /* the attempt's serial in that worker */
};

/* "DROVER_ATTEMPT_TOKEN=S.W.A" into buf; -1 when it does not fit. */
int attempt_token_format(char *buf, size_t len, const struct attempt_token *token);
/* Parses the value "S.W.A". 0, or -1 when it is not a token. */
int attempt_token_parse(const char *value, struct attempt_token *token);
/* The token in pid's environment: 1 found, 0 none (or unreadable, or a zombie). */
int attempt_token_of(pid_t pid, struct attempt_token *token);

/* The calling thread's children, re-read on each call without reopening. */
struct children;
struct children *children_open(void);
/* 0 and a list valid until the next call, or -1 (errno). */
int children_list(struct children *c, const pid_t **pids, size_t *count);
void children_close(struct children *c);

/* SIGKILLs pid, and its process group first when it leads one. True when pid was there to kill. */
bool orphan_kill(pid_t pid);

#endif
