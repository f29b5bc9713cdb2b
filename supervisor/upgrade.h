/*
 * upgrade: the binary upgrade (SIGUSR2, `droverctl upgrade`). The running
 * supervisor checks the binary on disk (it must be executable and accept the
 * configuration with -t), then execs it with the same pid. What the new image
 * takes over is named in one environment variable (the handover): the
 * scoreboard's memory file, the listening control socket, the pid file and
 * its lock, the HTTP listening socket, the pipes the workers hold, and the
 * live worker slots. Those fds
 * lose close-on-exec only for the exec; the new image marks them again.
 */
#ifndef DROVER_UPGRADE_H
#define DROVER_UPGRADE_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "shared/config.h"

#define UPGRADE_ENV "DROVER_UPGRADE"
/* Set for the new binary's -t: it refuses a scoreboard layout other than the running one's. */
#define UPGRADE_LAYOUT_ENV "DROVER_UPGRADE_LAYOUT"

/* One live worker the new image adopts. */
struct handover_slot {
	int index;
	pid_t pid;
	unsigned long long serial; /* names its attempts (orphans.h) */
	unsigned generation;
	unsigned restarts;
};

struct handover {
	int scoreboard_fd;
	int control_fd;
	int pid_fd;        /* -1 when no pid file is kept */
	int log_fd;        /* the log file, -1 when logging to stderr */
	int http_fd;       /* the HTTP endpoint's listening socket, -1 when none */
	int death_pipe[2]; /* workers hold [0]: its write end must outlive the exec */
	int wake_pipe[2];  /* workers write [1] */
	unsigned generation;
	unsigned long long spawned;
	long long started_ms;
	int slot_count;
	struct handover_slot slots[CONFIG_MAX_WORKERS];
};

/* The text of the handover variable (without "NAME="). 0, or -1 when it does not fit. */
int handover_encode(const struct handover *h, char *out, size_t cap);
/* 0, or -1 when text is not a handover this binary understands. */
int handover_parse(const char *text, struct handover *h);

/*
 * At start, before anything changes the environment: resolves the binary's
 * path (/proc/self/exe, made a path string now: an upgrade execs whatever is
 * at that path then, not the old inode) and keeps NOTIFY_SOCKET for the new
 * image. Returns whether this image was started by an upgrade, with the
 * handover in h (the variable is removed from the environment).
 */
bool upgrade_init(struct handover *h);
/* The binary an upgrade execs ("" when it could not be resolved). */
const char *upgrade_binary(void);

/* The new binary is there, executable, and accepts config_path (-t). 0, or -1 with why in err. */
int upgrade_check(const char *config_path, char *err, size_t errlen);
/* Execs the new binary with the handover. Returns only on failure: -1, why in err, fds as before. */
int upgrade_exec(const struct handover *h, const char *config_path, char *err, size_t errlen);

#endif
