/*
 * proctitle: what `ps` and `top` show for drover's processes ("drover:
 * supervisor", "drover: worker 2 (spool)"), in the way of nginx's
 * ngx_setproctitle and PostgreSQL's ps_status: the strings of argv and of
 * the initial environment are one block of memory, which the kernel shows
 * as /proc/PID/cmdline; the environment is moved to the heap so the whole
 * block can hold the title.
 */
#ifndef DROVER_PROCTITLE_H
#define DROVER_PROCTITLE_H

/*
 * Call first thing in main, before anything keeps a pointer into argv or
 * the environment: argv[] and environ are pointed at heap copies (getopt
 * and getenv keep working), and the old block is wiped. Returns 0, or -1
 * when out of memory (titles are then left alone).
 */
int proctitle_init(int argc, char **argv);

/*
 * Sets the title to "drover: " and the formatted text, cut to the block's
 * size. comm, when not NULL, also becomes the thread name of /proc/PID/comm
 * (15 bytes at most: what `ps -e`, `top` and `pidof` show).
 */
void proctitle_set(const char *comm, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
