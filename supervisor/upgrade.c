/*
 * upgrade: checking the new binary and exec'ing it with the handover (see
 * upgrade.h). The handover is one line of "key=value" words; a binary that
 * finds a version word it does not know refuses it rather than guess.
 */
#include "supervisor/upgrade.h"
#include "shared/log.h"
#include "shared/scoreboard.h"
#include "shared/util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define HANDOVER_VERSION "v1"
#define HANDOVER_MAX (32u * 1024u)
/* How long the new binary's -t may take (it builds librdkafka handles, nothing remote). */
#define CHECK_TIMEOUT_MS 15000
#define CHECK_OUTPUT_MAX 1024

extern char **environ;

static char binary_path[PATH_MAX];
static char *notify_socket; /* "NOTIFY_SOCKET=..." as start-up found it, or NULL */

/* ---- the handover text ----------------------------------------------------- */

static int append(char *out, size_t cap, size_t *len, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int append(char *out, size_t cap, size_t *len, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(out + *len, cap - *len, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= cap - *len)
		return -1;
	*len += (size_t)n;
	return 0;
}

int handover_encode(const struct handover *h, char *out, size_t cap)
{
	size_t len = 0;
	if (cap == 0)
		return -1;
	out[0] = '\0';
	if (append(out, cap, &len, HANDOVER_VERSION " sb=%d ctl=%d pid=%d log=%d death=%d,%d wake=%d,%d gen=%u "
	           "spawned=%llu started=%lld", h->scoreboard_fd, h->control_fd, h->pid_fd, h->log_fd, h->death_pipe[0],
	           h->death_pipe[1], h->wake_pipe[0], h->wake_pipe[1], h->generation, h->spawned, h->started_ms) < 0)
		return -1;
	/* Optional (absent = -1), so that a binary without the HTTP endpoint can hand over to this one. */
	if (h->http_fd >= 0 && append(out, cap, &len, " http=%d", h->http_fd) < 0)
		return -1;
	for (int i = 0; i < h->slot_count; i++) {
		const struct handover_slot *s = &h->slots[i];
		if (append(out, cap, &len, " slot=%d:%d:%llu:%u:%u", s->index, (int)s->pid, s->serial, s->generation,
		           s->restarts) < 0)
			return -1;
	}
	return 0;
}

static bool valid_fd_number(int fd)
{
	return fd >= 0 && fd < 1 << 20;
}

static int parse_slot(const char *value, struct handover *h)
{
	struct handover_slot s;
	int pid, used = 0;
	if (h->slot_count == CONFIG_MAX_WORKERS)
		return -1;
	if (sscanf(value, "%d:%d:%llu:%u:%u%n", &s.index, &pid, &s.serial, &s.generation, &s.restarts, &used) != 5 ||
	    value[used] != '\0' || s.index < 0 || s.index >= CONFIG_MAX_WORKERS || pid <= 0)
		return -1;
	for (int i = 0; i < h->slot_count; i++)
		if (h->slots[i].index == s.index || h->slots[i].pid == pid)
			return -1;
	s.pid = pid;
	h->slots[h->slot_count++] = s;
	return 0;
}

static int parse_pair(const char *value, int pair[2])
{
	int used = 0;
	if (sscanf(value, "%d,%d%n", &pair[0], &pair[1], &used) != 2 || value[used] != '\0')
		return -1;
	return valid_fd_number(pair[0]) && valid_fd_number(pair[1]) ? 0 : -1;
}

static int parse_int(const char *value, long long min, long long *out)
{
	char *end = NULL;
	errno = 0;
	long long n = strtoll(value, &end, 10);
	if (errno != 0 || end == value || *end != '\0' || n < min)
		return -1;
	*out = n;
	return 0;
}

/* One "key=value" word. Every key but slot must come once; seen[] records which did. */
static int parse_word(const char *key, const char *value, struct handover *h, unsigned *seen)
{
	static const char *const keys[] = { "sb", "ctl", "pid", "log", "death", "wake", "gen", "spawned", "started" };
	long long n = 0;
	if (strcmp(key, "slot") == 0)
		return parse_slot(value, h);
	if (strcmp(key, "http") == 0) {
		if (h->http_fd >= 0 || parse_int(value, 0, &n) < 0 || n >= 1 << 20)
			return -1;
		h->http_fd = (int)n;
		return 0;
	}
	size_t k = 0;
	while (k < ARRAY_LEN(keys) && strcmp(keys[k], key) != 0)
		k++;
	if (k == ARRAY_LEN(keys) || (*seen & (1u << k)))
		return -1;
	*seen |= 1u << k;
	if (k == 4)
		return parse_pair(value, h->death_pipe);
	if (k == 5)
		return parse_pair(value, h->wake_pipe);
	bool optional_fd = k == 2 || k == 3; /* pid, log: -1 = none */
	if (parse_int(value, optional_fd ? -1 : 0, &n) < 0 || (k <= 3 && n >= 1 << 20))
		return -1;
	switch (k) {
	case 0: h->scoreboard_fd = (int)n; break;
	case 1: h->control_fd = (int)n; break;
	case 2: h->pid_fd = (int)n; break;
	case 3: h->log_fd = (int)n; break;
	case 6: h->generation = (unsigned)n; break;
	case 7: h->spawned = (unsigned long long)n; break;
	default: h->started_ms = n; break;
	}
	return 0;
}

int handover_parse(const char *text, struct handover *h)
{
	char *copy = strdup(text);
	char *save = NULL;
	unsigned seen = 0;
	int rc = -1;
	if (copy == NULL)
		return -1;
	memset(h, 0, sizeof(*h));
	h->http_fd = -1;
	char *word = strtok_r(copy, " ", &save);
	if (word == NULL || strcmp(word, HANDOVER_VERSION) != 0)
		goto out;
	while ((word = strtok_r(NULL, " ", &save)) != NULL) {
		char *eq = strchr(word, '=');
		if (eq == NULL)
			goto out;
		*eq = '\0';
		if (parse_word(word, eq + 1, h, &seen) < 0)
			goto out;
	}
	rc = seen == 0x1ffu ? 0 : -1;
out:
	free(copy);
	return rc;
}

/* ---- start-up --------------------------------------------------------------- */

static void resolve_binary(void)
{
	ssize_t n = readlink("/proc/self/exe", binary_path, sizeof(binary_path) - 1);
	binary_path[n > 0 ? n : 0] = '\0';
	if (n <= 0)
		log_warn("cannot resolve the running binary (/proc/self/exe): upgrades are off");
}

bool upgrade_init(struct handover *h)
{
	resolve_binary();
	const char *notify = getenv("NOTIFY_SOCKET");
	if (notify != NULL && notify[0] != '\0' && asprintf(&notify_socket, "NOTIFY_SOCKET=%s", notify) < 0)
		notify_socket = NULL;
	const char *text = getenv(UPGRADE_ENV);
	if (text == NULL)
		return false;
	bool ok = handover_parse(text, h) == 0;
	unsetenv(UPGRADE_ENV);
	if (!ok)
		log_fatalx(EX_SOFTWARE, "%s is set but is not a handover this binary understands", UPGRADE_ENV);
	return true;
}

const char *upgrade_binary(void)
{
	return binary_path;
}

/* ---- the environment of the new binary ------------------------------------ */

static bool is_ours(const char *entry)
{
	static const char *const names[] = { UPGRADE_ENV "=", UPGRADE_LAYOUT_ENV "=", "NOTIFY_SOCKET=" };
	for (size_t i = 0; i < ARRAY_LEN(names); i++)
		if (strncmp(entry, names[i], strlen(names[i])) == 0)
			return true;
	return false;
}

/*
 * environ, the secrets start-up took out of it, NOTIFY_SOCKET and extra (one
 * "NAME=value" or NULL): what the new binary would have been started with.
 * The array is malloc'd; its strings are borrowed.
 */
static char **child_environment(char *extra)
{
	const char *const *secrets = NULL;
	size_t secret_count = config_hidden_secrets(&secrets);
	size_t count = 0;
	while (environ != NULL && environ[count] != NULL)
		count++;
	char **env = calloc(count + secret_count + 3, sizeof(*env));
	if (env == NULL)
		return NULL;
	size_t n = 0;
	for (size_t i = 0; i < count; i++)
		if (!is_ours(environ[i]))
			env[n++] = environ[i];
	for (size_t i = 0; i < secret_count; i++)
		env[n++] = (char *)secrets[i];
	if (notify_socket != NULL)
		env[n++] = notify_socket;
	if (extra != NULL)
		env[n++] = extra;
	env[n] = NULL;
	return env;
}

/* ---- checking the new binary ---------------------------------------------- */

/* The child's output until EOF or the deadline; false when the deadline passed. */
static bool read_check_output(int fd, char *out, size_t cap)
{
	size_t len = 0;
	long long deadline = now_ms() + CHECK_TIMEOUT_MS;
	out[0] = '\0';
	for (;;) {
		long long left = deadline - now_ms();
		if (left <= 0)
			return false;
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		int rc = poll(&pfd, 1, (int)left);
		if (rc < 0 && errno == EINTR)
			continue;
		if (rc <= 0)
			return false; /* the deadline, or poll failed: the check is killed */
		char buf[512];
		ssize_t n = read(fd, buf, sizeof(buf));
		if (n < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (n <= 0)
			return true;
		size_t take = (size_t)n < cap - 1 - len ? (size_t)n : cap - 1 - len; /* the rest is read and dropped */
		memcpy(out + len, buf, take);
		len += take;
		out[len] = '\0';
	}
}

/* Multi-line output as one line ("; " between lines), for a log line and the command's answer. */
static void flatten(char *text)
{
	size_t len = strlen(text);
	while (len > 0 && (text[len - 1] == '\n' || text[len - 1] == ' '))
		text[--len] = '\0';
	for (char *p = text; *p != '\0'; p++)
		if (*p == '\n' || *p == '\r' || *p == '\t')
			*p = ' ';
}

static int spawn_check(const char *config_path, int out_fd, pid_t *pid)
{
	char layout[64];
	snprintf(layout, sizeof(layout), "%s=%u", UPGRADE_LAYOUT_ENV, scoreboard_layout());
	char **env = child_environment(layout);
	char *argv[] = { binary_path, (char *)"-t", (char *)"-c", (char *)config_path, NULL };
	posix_spawn_file_actions_t actions;
	posix_spawnattr_t attr;
	sigset_t none, all;
	sigemptyset(&none);
	sigfillset(&all);
	if (env == NULL)
		return ENOMEM;
	posix_spawn_file_actions_init(&actions);
	posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
	posix_spawn_file_actions_adddup2(&actions, out_fd, STDOUT_FILENO);
	posix_spawn_file_actions_adddup2(&actions, out_fd, STDERR_FILENO);
	posix_spawnattr_init(&attr);
	/* libev blocks the signals it watches (signalfd): the check must not inherit that. */
	posix_spawnattr_setsigmask(&attr, &none);
	posix_spawnattr_setsigdefault(&attr, &all);
	posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
	int rc = posix_spawn(pid, binary_path, &actions, &attr, argv, env);
	posix_spawnattr_destroy(&attr);
	posix_spawn_file_actions_destroy(&actions);
	free(env);
	return rc;
}

/* Runs `NEW -t -c CONFIG`: 0 when it accepts, else -1 with its output (or why it did not run) in err. */
static int run_config_check(const char *config_path, char *err, size_t errlen)
{
	int pipefd[2];
	pid_t pid;
	char output[CHECK_OUTPUT_MAX];
	if (pipe2(pipefd, O_CLOEXEC) < 0) {
		snprintf(err, errlen, "cannot check %s: pipe: %s", binary_path, strerror(errno));
		return -1;
	}
	int rc = spawn_check(config_path, pipefd[1], &pid);
	close(pipefd[1]);
	if (rc != 0) {
		close(pipefd[0]);
		snprintf(err, errlen, "cannot execute %s: %s", binary_path, strerror(rc));
		return -1;
	}
	bool finished = read_check_output(pipefd[0], output, sizeof(output));
	close(pipefd[0]);
	if (!finished && kill(pid, SIGKILL) < 0 && errno != ESRCH)
		log_warn("upgrade: cannot kill the configuration check (pid %d)", (int)pid);
	int status = 0;
	if (waitpid_retry(pid, &status, 0) < 0) {
		snprintf(err, errlen, "cannot check %s: waitpid: %s", binary_path, strerror(errno));
		return -1;
	}
	if (finished && WIFEXITED(status) && WEXITSTATUS(status) == 0)
		return 0;
	char how[64];
	flatten(output);
	describe_wait_status(status, how, sizeof(how));
	snprintf(err, errlen, "%s -t -c %s %s (%s)%s%s", binary_path, config_path,
	         finished ? "refused it" : "did not finish in time", how, output[0] != '\0' ? ": " : "", output);
	return -1;
}

int upgrade_check(const char *config_path, char *err, size_t errlen)
{
	struct stat st;
	if (binary_path[0] == '\0') {
		snprintf(err, errlen, "the running binary's path is unknown (/proc/self/exe could not be read at start)");
		return -1;
	}
	if (stat(binary_path, &st) < 0) {
		snprintf(err, errlen, "cannot execute %s: %s", binary_path, strerror(errno));
		return -1;
	}
	if (!S_ISREG(st.st_mode) || access(binary_path, X_OK) < 0) {
		snprintf(err, errlen, "cannot execute %s: %s", binary_path,
		         S_ISREG(st.st_mode) ? strerror(errno) : "not a regular file");
		return -1;
	}
	return run_config_check(config_path, err, errlen);
}

/* ---- the exec ----------------------------------------------------------------- */

static int handover_fds(const struct handover *h, int *fds)
{
	int n = 0;
	fds[n++] = h->scoreboard_fd;
	fds[n++] = h->control_fd;
	fds[n++] = h->death_pipe[0];
	fds[n++] = h->death_pipe[1];
	fds[n++] = h->wake_pipe[0];
	fds[n++] = h->wake_pipe[1];
	if (h->pid_fd >= 0)
		fds[n++] = h->pid_fd;
	if (h->log_fd >= 0)
		fds[n++] = h->log_fd;
	if (h->http_fd >= 0)
		fds[n++] = h->http_fd;
	return n;
}

static int set_cloexec_all(const int *fds, int count, bool on)
{
	for (int i = 0; i < count; i++) {
		int flags = fcntl(fds[i], F_GETFD);
		if (flags < 0 || fcntl(fds[i], F_SETFD, on ? flags | FD_CLOEXEC : flags & ~FD_CLOEXEC) < 0)
			return -1;
	}
	return 0;
}

int upgrade_exec(const struct handover *h, const char *config_path, char *err, size_t errlen)
{
	static char text[HANDOVER_MAX];
	int fds[9];
	int count = handover_fds(h, fds);
	size_t prefix = strlen(UPGRADE_ENV "=");
	memcpy(text, UPGRADE_ENV "=", prefix);
	if (handover_encode(h, text + prefix, sizeof(text) - prefix) < 0) {
		snprintf(err, errlen, "the handover does not fit in %u bytes", HANDOVER_MAX);
		return -1;
	}
	char **env = child_environment(text);
	if (env == NULL) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	char *argv[] = { binary_path, (char *)"-c", (char *)config_path, NULL };
	if (set_cloexec_all(fds, count, false) == 0) {
		/* The signal mask stays: signals libev blocked stay pending for the new image's loop. */
		execve(binary_path, argv, env);
	}
	int saved = errno;
	if (set_cloexec_all(fds, count, true) < 0)
		log_warn("upgrade: cannot mark the handed-over fds close-on-exec again");
	free(env);
	snprintf(err, errlen, "cannot execute %s: %s", binary_path, strerror(saved));
	return -1;
}
