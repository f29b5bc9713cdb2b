/*
 * control: the Unix control socket (README, Operations:
 * "Control socket"). One command line in
 * (at most 4 KiB), one answer, close. Non-blocking throughout: a slow or
 * silent client is dropped after an idle timeout and never stalls the loop.
 * Peer credentials are checked on accept.
 */
#ifndef DROVER_CONTROL_H
#define DROVER_CONTROL_H

#include <stddef.h>
#include <sys/types.h>

struct supervisor;
struct control;

/*
 * Creates the socket at path with mode, refusing to clobber a live one (a
 * socket that accepts a connection). Returns NULL with err set: exit 69.
 */
struct control *control_open(struct supervisor *sup, const char *path, int mode, uid_t owner, gid_t group,
                             char *err, size_t errlen);
/* Starts serving on sup->loop. */
void control_start(struct control *ctl);
/* Closes the listening socket and every client, unlinks the path. */
void control_close(struct control *ctl);
/* Executes one command line with write access and returns the malloc'd answer (tests/unit/test_supervisor_control.c). */
char *control_execute(struct supervisor *sup, const char *line);

#endif
