/*
 * control: the supervisor's Unix control socket (README, Operations:
 * "Control socket").
 *
 * Each client is a tiny state machine on the supervisor's libev loop: read
 * one line (at most CONTROL_LINE_MAX bytes) under an idle deadline, execute
 * it, write the answer with a write watcher under a write deadline, close.
 * Nothing here blocks: a client that sends nothing or never reads its answer
 * only costs one fd until its deadline, and the number of clients is capped
 * (accepting pauses at the cap and after EMFILE instead of spinning).
 *
 * The socket is never clobbered: an existing path that still accepts
 * connections belongs to a live instance and start-up fails; only a stale
 * socket (ECONNREFUSED) is replaced. Peers are checked with SO_PEERCRED and
 * SO_PEERGROUPS: the groups the peer process holds, not /etc/group.
 */
#include "supervisor/control.h"
#include "supervisor/jobctl.h"
#include "shared/log.h"
#include "supervisor/stats.h"
#include "supervisor/supervisor.h"
#include "shared/util.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define CONTROL_LINE_MAX 4096      /* README: one line of at most 4 KiB, newline included */
#define CONTROL_MAX_CLIENTS 512
#define CONTROL_IDLE_TIMEOUT 5.0   /* seconds to send a complete line */
#define CONTROL_WRITE_TIMEOUT 5.0  /* seconds to take the whole answer */
#define CONTROL_ACCEPT_BACKOFF 0.1 /* pause after EMFILE/ENFILE */
#define CONTROL_DRAIN_MAX (16u << 20) /* input discarded after an early answer before giving up */

#ifndef SO_PEERGROUPS
#define SO_PEERGROUPS 59 /* Linux 4.13; older C libraries lack the name */
#endif

enum access { ACCESS_NONE, ACCESS_READ, ACCESS_WRITE };

struct client {
	struct control *ctl;
	int fd;
	ev_io io;       /* EV_READ while reading the line, EV_WRITE while answering */
	ev_timer timer; /* idle deadline, then write deadline */
	size_t len;
	char buf[CONTROL_LINE_MAX];
	char *out;
	size_t out_len;
	size_t out_off;
	bool stop_after; /* `stop`: stop the supervisor once this client is done */
	enum access access;
	bool unread_input; /* answered before the whole request was read (too long, refused) */
	size_t drained;
	struct client *prev, *next;
};

struct control {
	struct supervisor *sup;
	int fd;
	char *path;
	dev_t dev; /* identity of the socket file we bound, so close unlinks only ours */
	ino_t ino;
	gid_t group; /* the socket file's group: its members may read */
	uid_t euid;
	ev_io accept_io;
	ev_timer accept_pause;
	bool started;
	bool paused; /* after EMFILE/ENFILE, until accept_pause fires */
	void (*quiet_cb)(struct supervisor *sup); /* set while quiescing for an upgrade */
	struct client *clients;
	int client_count;
};

static void client_close(struct client *c);

/* ---- creating the socket ------------------------------------------------ */

static int fill_address(struct sockaddr_un *addr, const char *path, char *err, size_t errlen)
{
	memset(addr, 0, sizeof(*addr));
	addr->sun_family = AF_UNIX;
	if (strlen(path) >= sizeof(addr->sun_path)) {
		snprintf(err, errlen, "control socket path %s is too long (at most %zu bytes)", path,
			 sizeof(addr->sun_path) - 1);
		return -1;
	}
	memcpy(addr->sun_path, path, strlen(path) + 1);
	return 0;
}

/*
 * Makes the path free for bind: absent is fine; a socket nobody listens on is
 * removed; a live socket or anything that is not a socket is left alone and
 * reported.
 */
static int clear_stale_socket(const struct sockaddr_un *addr, const char *path, char *err, size_t errlen)
{
	struct stat st;
	if (lstat(path, &st) < 0) {
		if (errno == ENOENT)
			return 0;
		snprintf(err, errlen, "control socket %s: %s", path, strerror(errno));
		return -1;
	}
	if (!S_ISSOCK(st.st_mode)) {
		snprintf(err, errlen, "control socket %s exists and is not a socket; not replacing it", path);
		return -1;
	}
	int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (probe < 0) {
		snprintf(err, errlen, "socket: %s", strerror(errno));
		return -1;
	}
	int rc;
	do
		rc = connect(probe, (const struct sockaddr *)addr, sizeof(*addr));
	while (rc < 0 && errno == EINTR);
	int saved = errno;
	close(probe);
	/* EAGAIN: a full backlog, which only a live listener has. */
	if (rc == 0 || saved == EAGAIN || saved == EINPROGRESS) {
		snprintf(err, errlen, "control socket %s is in use by a running drover", path);
		return -1;
	}
	if (saved != ECONNREFUSED) {
		snprintf(err, errlen, "control socket %s: cannot tell whether it is in use: %s", path,
			 strerror(saved));
		return -1;
	}
	if (unlink(path) < 0 && errno != ENOENT) {
		snprintf(err, errlen, "cannot remove stale control socket %s: %s", path, strerror(errno));
		return -1;
	}
	log_info("removed stale control socket %s", path);
	return 0;
}

/* bind under a umask, so the socket is never reachable with a wider mode, even briefly. */
static int bind_restricted(int fd, const struct sockaddr_un *addr, int mode)
{
	mode_t old = umask((mode_t)(~mode & 0777));
	int rc = bind(fd, (const struct sockaddr *)addr, sizeof(*addr));
	int saved = errno;
	umask(old);
	errno = saved;
	return rc;
}

static int set_ownership(struct control *ctl, int mode, uid_t owner, gid_t group, char *err, size_t errlen)
{
	if (chmod(ctl->path, (mode_t)mode) < 0) {
		snprintf(err, errlen, "chmod %04o %s: %s", mode, ctl->path, strerror(errno));
		return -1;
	}
	if ((owner != (uid_t)-1 || group != (gid_t)-1) && chown(ctl->path, owner, group) < 0) {
		snprintf(err, errlen, "chown %s: %s", ctl->path, strerror(errno));
		return -1;
	}
	struct stat st;
	if (stat(ctl->path, &st) < 0) {
		snprintf(err, errlen, "stat %s: %s", ctl->path, strerror(errno));
		return -1;
	}
	ctl->dev = st.st_dev;
	ctl->ino = st.st_ino;
	ctl->group = st.st_gid;
	return 0;
}

/* Unlinks the path only while it is still the socket this instance created. */
static void unlink_own_socket(const struct control *ctl)
{
	struct stat st;
	if (lstat(ctl->path, &st) == 0 && st.st_dev == ctl->dev && st.st_ino == ctl->ino)
		unlink(ctl->path);
}

/* The listener's state, without its socket yet (fd -1). NULL and err when out of memory. */
static struct control *control_new(struct supervisor *sup, const char *path, char *err, size_t errlen)
{
	struct control *ctl = calloc(1, sizeof(*ctl));
	if (ctl == NULL || (ctl->path = strdup(path)) == NULL) {
		snprintf(err, errlen, "out of memory");
		free(ctl);
		return NULL;
	}
	ctl->sup = sup;
	ctl->euid = geteuid();
	ctl->fd = -1;
	return ctl;
}

struct control *control_open(struct supervisor *sup, const char *path, int mode, uid_t owner, gid_t group,
                             char *err, size_t errlen)
{
	struct sockaddr_un addr;
	if (fill_address(&addr, path, err, errlen) < 0)
		return NULL;
	if (clear_stale_socket(&addr, path, err, errlen) < 0)
		return NULL;

	struct control *ctl = control_new(sup, path, err, errlen);
	if (ctl == NULL)
		return NULL;
	ctl->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (ctl->fd < 0) {
		snprintf(err, errlen, "socket: %s", strerror(errno));
		goto fail;
	}
	if (bind_restricted(ctl->fd, &addr, mode) < 0) {
		snprintf(err, errlen, "bind %s: %s", path, strerror(errno));
		goto fail;
	}
	if (set_ownership(ctl, mode, owner, group, err, errlen) < 0) {
		unlink(path);
		goto fail;
	}
	if (listen(ctl->fd, SOMAXCONN) < 0) {
		snprintf(err, errlen, "listen %s: %s", path, strerror(errno));
		unlink_own_socket(ctl);
		goto fail;
	}
	return ctl;
fail:
	if (ctl->fd >= 0)
		close(ctl->fd);
	free(ctl->path);
	free(ctl);
	return NULL;
}

/* The path the socket is bound to, from the socket itself (the new configuration may name another). */
static int bound_path(int fd, char *path, size_t cap)
{
	struct sockaddr_un addr;
	socklen_t len = sizeof(addr);
	memset(&addr, 0, sizeof(addr));
	if (getsockname(fd, (struct sockaddr *)&addr, &len) < 0)
		return -1;
	if (addr.sun_family != AF_UNIX || addr.sun_path[0] == '\0') {
		errno = ENOTSOCK;
		return -1;
	}
	snprintf(path, cap, "%.*s", (int)sizeof(addr.sun_path), addr.sun_path);
	return 0;
}

struct control *control_adopt(struct supervisor *sup, int fd, char *err, size_t errlen)
{
	char path[sizeof(((struct sockaddr_un *)0)->sun_path) + 1];
	struct stat st;
	if (bound_path(fd, path, sizeof(path)) < 0 || stat(path, &st) < 0) {
		snprintf(err, errlen, "handed-over control socket fd %d: %s", fd, strerror(errno));
		return NULL;
	}
	struct control *ctl = control_new(sup, path, err, errlen);
	if (ctl == NULL)
		return NULL;
	ctl->fd = fd;
	ctl->dev = st.st_dev;
	ctl->ino = st.st_ino;
	ctl->group = st.st_gid;
	if (fd_set_cloexec(fd) < 0 || fd_set_nonblock(fd) < 0)
		log_warn("control: cannot set the flags of the handed-over socket");
	return ctl;
}

int control_fd(const struct control *ctl)
{
	return ctl != NULL ? ctl->fd : -1;
}

/* ---- peer credentials --------------------------------------------------- */

/* The peer's supplementary groups, as the kernel holds them for its process (not /etc/group). */
static bool peer_in_group(int fd, gid_t group)
{
	gid_t small[64];
	gid_t *groups = small;
	socklen_t len = sizeof(small);
	if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len) < 0) {
		if (errno != ERANGE || len == 0 || (groups = malloc(len)) == NULL)
			return false;
		if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len) < 0) {
			free(groups);
			return false;
		}
	}
	bool member = false;
	for (size_t i = 0; i < len / sizeof(gid_t) && !member; i++)
		member = groups[i] == group;
	if (groups != small)
		free(groups);
	return member;
}

/*
 * What a peer may do, from its credentials at connect time (SO_PEERCRED,
 * SO_PEERGROUPS): root and the daemon's own user may write (reload, scale,
 * stop); a process whose primary or supplementary groups include the
 * socket's group may read (ping, health, stats, metrics); anyone else is
 * refused.
 */
static enum access peer_access(const struct control *ctl, int fd)
{
	struct ucred cred;
	socklen_t len = sizeof(cred);
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
		log_warn("control: SO_PEERCRED");
		return ACCESS_NONE;
	}
	if (cred.uid == 0 || cred.uid == ctl->euid)
		return ACCESS_WRITE;
	if (cred.gid == ctl->group || peer_in_group(fd, ctl->group))
		return ACCESS_READ;
	log_warnx("control: refused connection from pid %ld uid %ld gid %ld", (long)cred.pid, (long)cred.uid,
		  (long)cred.gid);
	return ACCESS_NONE;
}

/* ---- commands ----------------------------------------------------------- */

/* An error answer is one line: newlines from multi-line messages become "; ". */
static char *error_answer(const char *message)
{
	size_t len = strlen(message);
	char *flat = malloc(len * 2 + 1);
	if (flat == NULL)
		return NULL;
	size_t o = 0;
	for (size_t i = 0; i < len; i++) {
		if (message[i] == '\n' && i + 1 < len) {
			flat[o++] = ';';
			flat[o++] = ' ';
		} else if (message[i] != '\n') {
			flat[o++] = message[i];
		}
	}
	flat[o] = '\0';
	char *out = str_printf("error: %s\n", flat);
	free(flat);
	return out;
}

/* The first few bytes of a bad command, printable, for the error answer. */
static void printable_excerpt(const char *word, char *out, size_t cap)
{
	size_t o = 0;
	for (size_t i = 0; word[i] != '\0' && o + 4 < cap; i++) {
		unsigned char ch = (unsigned char)word[i];
		out[o++] = (ch >= 0x20 && ch < 0x7f) ? (char)ch : '?';
		if (i == 40) {
			memcpy(out + o, "...", 3);
			o += 3;
			break;
		}
	}
	out[o] = '\0';
}

static char *command_scale(struct supervisor *sup, const char *arg)
{
	if (arg == NULL)
		return str_printf("error: usage: scale N (1..%d)\n", CONFIG_MAX_WORKERS);
	char *end = NULL;
	errno = 0;
	long n = strtol(arg, &end, 10);
	if (errno != 0 || end == arg || *end != '\0' || n < 1 || n > CONFIG_MAX_WORKERS)
		return str_printf("error: scale: workers must be an integer in 1..%d\n", CONFIG_MAX_WORKERS);
	char err[1024] = "";
	if (supervisor_scale(sup, (int)n, err, sizeof(err)) < 0)
		return error_answer(err[0] != '\0' ? err : "scale failed");
	return strdup("ok\n");
}

static char *command_reload(struct supervisor *sup)
{
	char err[4096] = "";
	if (supervisor_reload(sup, err, sizeof(err)) < 0)
		return error_answer(err[0] != '\0' ? err : "reload failed");
	return strdup("ok\n");
}

/*
 * health: the pool can make progress and the queue takes a write. ping is
 * liveness only (the supervisor's loop answers): a liveness probe that failed
 * on a broker outage or a broken handler would get the pod restarted, which
 * fixes neither; readiness and alerting use health.
 */
static char *command_health(struct supervisor *sup)
{
	char why[512];
	if (!stats_health(sup, true, why, sizeof(why)))
		return error_answer(why);
	return strdup("ok\n");
}

/* Splits line into at most max words (spaces and tabs); returns the count, or max + 1 when there are more. */
static int split_words(char *line, char **words, int max)
{
	int count = 0;
	char *save = NULL;
	for (char *w = strtok_r(line, " \t\r", &save); w != NULL; w = strtok_r(NULL, " \t\r", &save)) {
		if (count == max)
			return max + 1;
		words[count++] = w;
	}
	return count;
}

/* What the socket's group may not run (README: Control socket). */
static bool is_write_command(const char *word)
{
	static const char *const writes[] = { "reload", "scale", "stop", "upgrade", "cancel", "retry", "pause", "resume" };
	for (size_t i = 0; i < ARRAY_LEN(writes); i++)
		if (strcmp(word, writes[i]) == 0)
			return true;
	return false;
}

#define COMMAND_LIST \
	"ping, health, stats, metrics, jobs, reload, scale N, stop, upgrade, cancel ID, retry ID, pause, resume"

static bool takes_argument(const char *word)
{
	return strcmp(word, "scale") == 0 || strcmp(word, "cancel") == 0 || strcmp(word, "retry") == 0;
}

/* scale N, cancel ID, retry ID. */
static char *execute_with_argument(struct supervisor *sup, const char *word, const char *arg)
{
	if (strcmp(word, "scale") == 0)
		return command_scale(sup, arg);
	if (arg == NULL)
		return str_printf("error: usage: %s ID\n", word);
	return strcmp(word, "cancel") == 0 ? jobctl_cancel(sup, arg) : jobctl_retry(sup, arg);
}

/* The commands without an argument. */
/* The exec waits until this answer (and every other client's) is out: control_quiesce. */
static char *command_upgrade(struct supervisor *sup)
{
	char err[2048] = "";
	if (supervisor_upgrade(sup, err, sizeof(err)) < 0)
		return error_answer(err[0] != '\0' ? err : "upgrade failed");
	return strdup("ok\n");
}

static char *execute_plain(struct supervisor *sup, const char *word, bool *stop_after)
{
	if (strcmp(word, "ping") == 0)
		return strdup("pong\n");
	if (strcmp(word, "health") == 0)
		return command_health(sup);
	if (strcmp(word, "stats") == 0)
		return stats_json(sup);
	if (strcmp(word, "metrics") == 0)
		return stats_metrics(sup);
	if (strcmp(word, "jobs") == 0)
		return jobctl_jobs(sup);
	if (strcmp(word, "pause") == 0 || strcmp(word, "resume") == 0)
		return jobctl_pause(sup, strcmp(word, "pause") == 0);
	if (strcmp(word, "reload") == 0)
		return command_reload(sup);
	if (strcmp(word, "upgrade") == 0)
		return command_upgrade(sup);
	if (strcmp(word, "stop") == 0) {
		*stop_after = true;
		return strdup("ok\n");
	}
	char excerpt[64];
	printable_excerpt(word, excerpt, sizeof(excerpt));
	return str_printf("error: unknown command \"%s\" (try: " COMMAND_LIST ")\n", excerpt);
}

static char *execute_words(struct supervisor *sup, char **words, int count, enum access access, bool *stop_after)
{
	if (count == 0)
		return strdup("error: empty command (try: " COMMAND_LIST ")\n");
	if (count > 2)
		return strdup("error: too many arguments\n");
	const char *word = words[0], *arg = count == 2 ? words[1] : NULL;
	if (access != ACCESS_WRITE && is_write_command(word))
		return str_printf("error: permission denied: %s needs root or the daemon's user\n", word);
	if (takes_argument(word))
		return execute_with_argument(sup, word, arg);
	if (arg != NULL) {
		char excerpt[64];
		printable_excerpt(word, excerpt, sizeof(excerpt));
		return str_printf("error: %s takes no argument\n", excerpt);
	}
	return execute_plain(sup, word, stop_after);
}

/*
 * Runs one command. `stop` only sets *stop_after, so that the caller can send
 * the answer before the supervisor starts shutting down.
 */
static char *execute(struct supervisor *sup, const char *line, size_t len, enum access access, bool *stop_after)
{
	if (memchr(line, '\0', len) != NULL)
		return strdup("error: malformed command (NUL byte)\n");
	char *copy = strndup(line, len);
	if (copy == NULL)
		return NULL;
	char *words[3];
	int count = split_words(copy, words, 2);
	char *answer = execute_words(sup, words, count, access, stop_after);
	free(copy);
	return answer;
}

char *control_execute(struct supervisor *sup, const char *line)
{
	bool stop_after = false;
	size_t len = strlen(line);
	if (len > 0 && line[len - 1] == '\n')
		len--;
	char *answer = execute(sup, line, len, ACCESS_WRITE, &stop_after);
	if (stop_after)
		supervisor_stop(sup, STOP_GRACEFUL);
	return answer;
}

/* ---- accepting ---------------------------------------------------------- */

/* The accept watcher runs exactly while there is room for a client and no EMFILE pause. */
static void accept_update(struct control *ctl)
{
	bool want = ctl->started && !ctl->paused && ctl->quiet_cb == NULL && ctl->client_count < CONTROL_MAX_CLIENTS;
	if (want && !ev_is_active(&ctl->accept_io))
		ev_io_start(ctl->sup->loop, &ctl->accept_io);
	else if (!want && ev_is_active(&ctl->accept_io))
		ev_io_stop(ctl->sup->loop, &ctl->accept_io);
}

static void on_accept_pause_end(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct control *ctl = w->data;
	ctl->paused = false;
	accept_update(ctl);
}

static void pause_accepting(struct control *ctl)
{
	ctl->paused = true;
	ev_timer_set(&ctl->accept_pause, CONTROL_ACCEPT_BACKOFF, 0);
	ev_timer_start(ctl->sup->loop, &ctl->accept_pause);
	accept_update(ctl);
}

/* ---- one client ------------------------------------------------------------ */

/* Unlinks, closes and frees one client; returns whether it asked for `stop`. */
static bool client_release(struct control *ctl, struct client *c)
{
	bool stop_after = c->stop_after;
	ev_io_stop(ctl->sup->loop, &c->io);
	ev_timer_stop(ctl->sup->loop, &c->timer);
	if (ctl->clients == c)
		ctl->clients = c->next;
	else if (c->prev != NULL)
		c->prev->next = c->next;
	if (c->next != NULL)
		c->next->prev = c->prev;
	/* shutdown, not only close: should any other process hold a copy of this fd, the client still sees EOF. */
	shutdown(c->fd, SHUT_RDWR);
	close(c->fd);
	free(c->out);
	free(c);
	ctl->client_count--;
	return stop_after;
}

/* Quiescing for an upgrade and the last client is gone: the upgrade goes on (it may exec). */
static void check_quiet(struct control *ctl)
{
	void (*done)(struct supervisor *sup) = ctl->quiet_cb;
	if (done == NULL || ctl->client_count > 0)
		return;
	ctl->quiet_cb = NULL;
	done(ctl->sup);
}

static void client_close(struct client *c)
{
	struct control *ctl = c->ctl;
	struct supervisor *sup = ctl->sup;
	bool stop_after = client_release(ctl, c);
	accept_update(ctl);
	/* Last, because stopping may close the control socket and free ctl. */
	if (stop_after)
		supervisor_stop(sup, STOP_GRACEFUL);
	else
		check_quiet(ctl);
}

/* Writes as much of the answer as the socket takes. 1 done, 0 would block, -1 error. */
static int client_flush(struct client *c)
{
	while (c->out_off < c->out_len) {
		ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return 0;
			return -1;
		}
		c->out_off += (size_t)n;
	}
	return 1;
}

/*
 * Input left unread when we close makes the kernel send a reset, and the
 * client loses the answer it has not read yet. So after an early answer:
 * half-close (the client sees EOF after the answer), then read and discard
 * until the client closes, bounded in bytes and by the timer.
 */
static void on_client_drain(struct ev_loop *loop, ev_io *w, int revents)
{
	struct client *c = w->data;
	char sink[4096];
	for (;;) {
		ssize_t n = recv(c->fd, sink, sizeof(sink), MSG_DONTWAIT);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return;
		if (n <= 0 || (c->drained += (size_t)n) > CONTROL_DRAIN_MAX)
			break;
	}
	client_close(c);
}

static void client_start_drain(struct client *c)
{
	struct ev_loop *loop = c->ctl->sup->loop;
	ev_io_stop(loop, &c->io);
	ev_timer_stop(loop, &c->timer);
	if (shutdown(c->fd, SHUT_WR) < 0) {
		client_close(c);
		return;
	}
	ev_io_init(&c->io, on_client_drain, c->fd, EV_READ);
	c->io.data = c;
	ev_io_start(loop, &c->io);
	ev_timer_set(&c->timer, CONTROL_IDLE_TIMEOUT, 0);
	ev_timer_start(loop, &c->timer);
}

/* After client_flush: 1 the answer is out, else (-1) the client is gone. */
static void client_done(struct client *c, int flushed)
{
	if (flushed == 1 && c->unread_input)
		client_start_drain(c);
	else
		client_close(c);
}

static void on_client_write(struct ev_loop *loop, ev_io *w, int revents)
{
	struct client *c = w->data;
	int rc = client_flush(c);
	if (rc != 0)
		client_done(c, rc);
}

/* Takes ownership of answer; NULL means we ran out of memory. */
static void client_answer(struct client *c, char *answer)
{
	struct ev_loop *loop = c->ctl->sup->loop;
	static const char oom[] = "error: out of memory\n";
	if (answer == NULL)
		answer = strdup(oom);
	if (answer == NULL) {
		client_close(c);
		return;
	}
	c->out = answer;
	c->out_len = strlen(answer);
	c->out_off = 0;
	ev_io_stop(loop, &c->io);
	ev_timer_stop(loop, &c->timer);
	int rc = client_flush(c);
	if (rc != 0) {
		client_done(c, rc);
		return;
	}
	ev_io_init(&c->io, on_client_write, c->fd, EV_WRITE);
	c->io.data = c;
	ev_io_start(loop, &c->io);
	ev_timer_set(&c->timer, CONTROL_WRITE_TIMEOUT, 0);
	ev_timer_start(loop, &c->timer);
}

static void client_dispatch(struct client *c, size_t line_len)
{
	bool stop_after = false;
	char *answer = execute(c->ctl->sup, c->buf, line_len, c->access, &stop_after);
	c->stop_after = stop_after;
	client_answer(c, answer);
}

static void on_client_read(struct ev_loop *loop, ev_io *w, int revents)
{
	struct client *c = w->data;
	for (;;) {
		if (c->len == sizeof(c->buf)) {
			c->unread_input = true;
			client_answer(c, strdup("error: line too long (at most 4096 bytes)\n"));
			return;
		}
		ssize_t n = recv(c->fd, c->buf + c->len, sizeof(c->buf) - c->len, MSG_DONTWAIT);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN && errno != EWOULDBLOCK)
				client_close(c);
			return;
		}
		if (n == 0) {
			/* EOF: an unterminated last line still counts (printf ping | nc -U). */
			if (c->len == 0)
				client_close(c);
			else
				client_dispatch(c, c->len);
			return;
		}
		char *nl = memchr(c->buf + c->len, '\n', (size_t)n);
		c->len += (size_t)n;
		if (nl != NULL) {
			client_dispatch(c, (size_t)(nl - c->buf));
			return;
		}
	}
}

static void on_client_timeout(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct client *c = w->data;
	log_debug("control: dropping a client that was %s too long",
		  c->out == NULL ? "silent" : c->out_off < c->out_len ? "not reading" : "sending after its answer");
	client_close(c);
}

static void client_start(struct control *ctl, int fd)
{
	struct client *c = calloc(1, sizeof(*c));
	if (c == NULL) {
		log_warnx("control: out of memory, dropping a connection");
		close(fd);
		return;
	}
	c->ctl = ctl;
	c->fd = fd;
	c->next = ctl->clients;
	if (ctl->clients != NULL)
		ctl->clients->prev = c;
	ctl->clients = c;
	ctl->client_count++;
	ev_init(&c->io, on_client_read);
	c->io.data = c;
	ev_timer_init(&c->timer, on_client_timeout, CONTROL_IDLE_TIMEOUT, 0);
	c->timer.data = c;
	c->access = peer_access(ctl, fd);
	if (c->access == ACCESS_NONE) {
		c->unread_input = true;
		client_answer(c, strdup("error: permission denied\n"));
		return;
	}
	ev_io_set(&c->io, fd, EV_READ);
	ev_io_start(ctl->sup->loop, &c->io);
	ev_timer_start(ctl->sup->loop, &c->timer);
}

static void on_accept(struct ev_loop *loop, ev_io *w, int revents)
{
	struct control *ctl = w->data;
	while (ctl->client_count < CONTROL_MAX_CLIENTS) {
		int fd = accept4(ctl->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd >= 0) {
			client_start(ctl, fd);
			continue;
		}
		if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO)
			continue;
		if (errno == EAGAIN || errno == EWOULDBLOCK)
			break;
		if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
			log_warn("control: accept (pausing %.0f ms)", CONTROL_ACCEPT_BACKOFF * 1000);
			pause_accepting(ctl);
			return;
		}
		log_warn("control: accept");
		break;
	}
	accept_update(ctl);
}

/* ---- lifecycle ------------------------------------------------------------- */

void control_start(struct control *ctl)
{
	ev_io_init(&ctl->accept_io, on_accept, ctl->fd, EV_READ);
	ctl->accept_io.data = ctl;
	ev_init(&ctl->accept_pause, on_accept_pause_end);
	ctl->accept_pause.data = ctl;
	ctl->started = true;
	accept_update(ctl);
}

void control_quiesce(struct control *ctl, void (*done)(struct supervisor *sup))
{
	ctl->quiet_cb = done;
	accept_update(ctl);
	check_quiet(ctl);
}

void control_resume(struct control *ctl)
{
	ctl->quiet_cb = NULL;
	accept_update(ctl);
}

void control_close(struct control *ctl)
{
	if (ctl == NULL)
		return;
	ctl->started = false;
	/* A pending `stop` is moot: we are closing. */
	while (ctl->clients != NULL)
		client_release(ctl, ctl->clients);
	if (ev_is_active(&ctl->accept_io))
		ev_io_stop(ctl->sup->loop, &ctl->accept_io);
	if (ev_is_active(&ctl->accept_pause))
		ev_timer_stop(ctl->sup->loop, &ctl->accept_pause);
	unlink_own_socket(ctl);
	close(ctl->fd);
	free(ctl->path);
	free(ctl);
}
