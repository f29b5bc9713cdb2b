/*
 * droverctl: the operator's client (README: Operations, droverctl;
 * droverctl(8)).
 *
 *   droverctl [-c FILE] [-s SOCKET] COMMAND [ARG]
 *
 * Control commands send one line to the supervisor's control socket and
 * print its answer (status renders the stats JSON as a table). Job commands
 * (submit, health, topics) talk to the queue directly, through the queue_ops
 * of the configured backend (queue/source.h). Exit codes: 0 ok, 1 the command failed,
 * 64 usage, 69 cannot reach the daemon or the queue.
 */
#include "shared/config.h"
#include "shared/log.h"
#include "queue/source.h"
#include "shared/util.h"

#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sysexits.h>
#include <unistd.h>

#ifndef DROVER_VERSION
#define DROVER_VERSION "unknown"
#endif

/* sysexits(3), plus 1 (EXIT_FAILURE) for a command that ran and failed. */

#define IO_TIMEOUT_MS 10000
#define ANSWER_MAX (64u << 20)
#define STATUS_JOBS_SHOWN 6

struct options {
	const char *config_path; /* NULL = CONFIG_DEFAULT_FILE */
	const char *socket_path; /* -s */
};

static void usage(FILE *out)
{
	fputs("usage: droverctl [-c FILE] [-s SOCKET] COMMAND\n"
	      "control (through the daemon's socket):\n"
	      "  status          workers and their running jobs, as a table\n"
	      "  stats           statistics as JSON\n"
	      "  metrics         Prometheus metrics\n"
	      "  ping            check the daemon answers (liveness)\n"
	      "  reload          re-read the configuration (like SIGHUP)\n"
	      "  scale N         run N workers (1..256)\n"
	      "  stop            graceful stop (like SIGTERM)\n"
	      "jobs (through the queue):\n"
	      "  submit [FILE|-] enqueue one job per JSON line; prints the ids\n"
	      "  health          the daemon's pool can make progress, the queue is usable\n"
	      "  topics create   create the Kafka topics of the configuration\n"
	      "  topics list     show the Kafka topics\n"
	      "options:\n"
	      "  -c FILE         configuration (default " CONFIG_DEFAULT_FILE ")\n"
	      "  -s SOCKET       control socket (default: [supervisor] control_socket)\n"
	      "exit codes: 0 ok, 1 failed, 64 usage, 69 cannot reach the daemon or the queue,\n"
	      "  78 the configuration has errors (only commands that need it)\n",
	      out);
}

/* ---- configuration ------------------------------------------------------ */

static struct config *load_config(const struct options *opts)
{
	struct config_errors errs = { 0 };
	struct config *cfg = config_load_client(opts->config_path, &errs);
	if (cfg == NULL) {
		for (size_t i = 0; i < errs.count; i++)
			fprintf(stderr, "droverctl: %s\n", errs.lines[i]);
		if (errs.count == 0)
			fprintf(stderr, "droverctl: cannot load %s\n",
				opts->config_path != NULL ? opts->config_path : CONFIG_DEFAULT_FILE);
	}
	config_errors_clear(&errs);
	return cfg;
}

/*
 * The socket: -s, else the configuration's (which already applies
 * DROVER_SUPERVISOR_CONTROL_SOCKET). A file with errors elsewhere must not
 * cut the operator off from a running daemon: its control_socket (or the
 * default) is used, with a note.
 */
static char *socket_path(const struct options *opts)
{
	if (opts->socket_path != NULL)
		return strdup(opts->socket_path);
	struct config_errors errs = { 0 };
	struct config *cfg = config_load_client(opts->config_path, &errs);
	char *path;
	if (cfg != NULL) {
		path = strdup(cfg->control_socket);
		config_free(cfg);
	} else {
		path = config_find_control_socket(opts->config_path);
		for (size_t i = 0; path == NULL && i < errs.count; i++)
			fprintf(stderr, "droverctl: %s\n", errs.lines[i]);
		if (path != NULL)
			fprintf(stderr, "droverctl: note: %s has %zu error(s) (drover -t shows them); using control socket %s\n",
				opts->config_path != NULL ? opts->config_path : CONFIG_DEFAULT_FILE, errs.count, path);
	}
	config_errors_clear(&errs);
	return path;
}

/* ---- talking to the daemon ---------------------------------------------- */

static int remaining_ms(long long deadline)
{
	long long left = deadline - now_ms();
	return left > 0 ? (int)left : 0;
}

/* Waits until fd is ready for events; 0, or -1 with errno (ETIMEDOUT at the deadline). */
static int wait_fd(int fd, short events, long long deadline)
{
	for (;;) {
		struct pollfd pfd = { .fd = fd, .events = events };
		int rc = poll(&pfd, 1, remaining_ms(deadline));
		if (rc > 0)
			return 0;
		if (rc == 0) {
			errno = ETIMEDOUT;
			return -1;
		}
		if (errno != EINTR)
			return -1;
	}
}

static int connect_socket(const char *path, long long deadline)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof(addr.sun_path)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	memcpy(addr.sun_path, path, strlen(path) + 1);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	for (;;) {
		if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0)
			return fd;
		if (errno == EINTR)
			continue;
		/* A Unix socket says EAGAIN when the daemon's backlog is full: retry until the deadline. */
		if (errno == EAGAIN && remaining_ms(deadline) > 0) {
			poll(NULL, 0, 20);
			continue;
		}
		int saved = errno == EAGAIN ? ETIMEDOUT : errno;
		close(fd);
		errno = saved;
		return -1;
	}
}

static int send_line(int fd, const char *line, size_t len, long long deadline)
{
	size_t off = 0;
	while (off < len) {
		ssize_t n = send(fd, line + off, len - off, MSG_NOSIGNAL);
		if (n >= 0) {
			off += (size_t)n;
			continue;
		}
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN && errno != EWOULDBLOCK)
			return -1;
		if (wait_fd(fd, POLLOUT, deadline) < 0)
			return -1;
	}
	return 0;
}

/* Reads the answer until the daemon closes; malloc'd and NUL-terminated, or NULL with errno. */
static char *read_answer(int fd, long long deadline)
{
	size_t len = 0, cap = 4096;
	char *buf = malloc(cap);
	while (buf != NULL) {
		if (len + 1 == cap) {
			char *grown = cap < ANSWER_MAX ? realloc(buf, cap * 2) : NULL;
			if (grown == NULL) {
				free(buf);
				errno = EFBIG;
				return NULL;
			}
			buf = grown;
			cap *= 2;
		}
		ssize_t n = read_some(fd, buf + len, cap - len - 1);
		if (n > 0) {
			len += (size_t)n;
		} else if (n == 0 || (errno == ECONNRESET && len > 0)) {
			/* End of the answer. A reset after some of it means the daemon answered
			 * without reading all we sent (a refusal): the answer stands. */
			buf[len] = '\0';
			return buf;
		} else if (errno != EAGAIN || wait_fd(fd, POLLIN, deadline) < 0) {
			int saved = errno;
			free(buf);
			errno = saved;
			return NULL;
		}
	}
	errno = ENOMEM;
	return NULL;
}

/*
 * Sends command and returns the daemon's answer, or NULL after printing why
 * (exit 69). quiet: say nothing when no daemon listens (health without one).
 */
static char *request_quietly(const char *path, const char *command, bool quiet)
{
	long long deadline = now_ms() + IO_TIMEOUT_MS;
	int fd = connect_socket(path, deadline);
	if (fd < 0) {
		if (!quiet)
			fprintf(stderr, "droverctl: cannot reach drover at %s: %s\n", path, strerror(errno));
		return NULL;
	}
	char line[128];
	snprintf(line, sizeof(line), "%s\n", command);
	/* A daemon that refuses us answers and closes at once, so a failed send still leaves an answer to read. */
	int sent = send_line(fd, line, strlen(line), deadline);
	int send_errno = errno;
	char *answer = read_answer(fd, deadline);
	int saved = errno;
	close(fd);
	if (answer != NULL && answer[0] == '\0') {
		free(answer);
		answer = NULL;
		saved = sent < 0 ? send_errno : ECONNRESET;
	}
	if (answer == NULL)
		fprintf(stderr, "droverctl: no answer from drover at %s: %s\n", path, strerror(saved));
	return answer;
}

static char *request(const char *path, const char *command)
{
	return request_quietly(path, command, false);
}

static bool is_error_answer(const char *answer)
{
	return strncmp(answer, "error", 5) == 0;
}

/* ---- status: the stats JSON as a table -------------------------------- */

static void format_duration(long long ms, char *out, size_t cap)
{
	long long s = ms > 0 ? ms / 1000 : 0;
	if (s < 60)
		snprintf(out, cap, "%llds", s);
	else if (s < 3600)
		snprintf(out, cap, "%lldm%02llds", s / 60, s % 60);
	else if (s < 86400)
		snprintf(out, cap, "%lldh%02lldm", s / 3600, s % 3600 / 60);
	else
		snprintf(out, cap, "%lldd%02lldh", s / 86400, s % 86400 / 3600);
}

static long long int_of(json_t *obj, const char *key)
{
	json_t *v = json_object_get(obj, key);
	return json_is_integer(v) ? (long long)json_integer_value(v) : 0;
}

static const char *str_of(json_t *obj, const char *key)
{
	const char *s = json_string_value(json_object_get(obj, key));
	return s != NULL ? s : "";
}

static void print_status_header(json_t *stats)
{
	char uptime[32];
	format_duration(int_of(stats, "uptime_ms"), uptime, sizeof(uptime));
	json_t *jobs = json_object_get(stats, "jobs");
	printf("drover %s  pid %lld  up %s  backend %s  config generation %lld  workers %lld/%lld%s\n",
	       str_of(stats, "version"), int_of(stats, "pid"), uptime, str_of(stats, "backend"),
	       int_of(stats, "config_generation"), int_of(stats, "workers_alive"), int_of(stats, "workers_desired"),
	       json_is_true(json_object_get(stats, "stopping")) ? "  (stopping)" : "");
	printf("jobs: %lld running, %lld completed, %lld failed, %lld timed out, %lld retried, %lld lost\n",
	       int_of(jobs, "in_flight"), int_of(jobs, "completed"), int_of(jobs, "failed"), int_of(jobs, "timed_out"),
	       int_of(jobs, "retried"), int_of(stats, "jobs_lost"));
	const char *reload = str_of(stats, "last_reload");
	if (reload[0] != '\0' && strcmp(reload, "ok") != 0)
		printf("last reload failed: %s\n", reload);
}

/* "id(12s, 40%) id(3s)", at most STATUS_JOBS_SHOWN of them, or the worker's fault. */
static void format_jobs(json_t *worker, char *out, size_t cap)
{
	size_t used = 0;
	out[0] = '\0';
	const char *fault = str_of(worker, "fault");
	if (fault[0] != '\0')
		used += (size_t)snprintf(out, cap, "[fault: %s] ", fault);
	json_t *jobs = json_object_get(worker, "jobs");
	size_t count = json_array_size(jobs);
	for (size_t i = 0; i < count && used < cap; i++) {
		if (i == STATUS_JOBS_SHOWN) {
			snprintf(out + used, cap - used, "+%zu more", count - i);
			return;
		}
		json_t *job = json_array_get(jobs, i);
		char age[32], progress[16] = "";
		format_duration(int_of(job, "age_ms"), age, sizeof(age));
		json_t *p = json_object_get(job, "progress");
		if (json_is_number(p))
			snprintf(progress, sizeof(progress), ", %.0f%%", json_number_value(p) * 100.0);
		int n = snprintf(out + used, cap - used, "%s(%s%s) ", str_of(job, "id"), age, progress);
		if (n < 0)
			return;
		used += (size_t)n;
	}
	if (used > 0 && used < cap && out[used - 1] == ' ')
		out[used - 1] = '\0';
}

static void print_status_row(json_t *w)
{
	char uptime[32] = "-", pid[24] = "-", jobs[1024];
	if (int_of(w, "pid") > 0) {
		snprintf(pid, sizeof(pid), "%lld", int_of(w, "pid"));
		format_duration(int_of(w, "uptime_ms"), uptime, sizeof(uptime));
	}
	format_jobs(w, jobs, sizeof(jobs));
	printf("%-4lld %-8s %-9s %-8s %6lld %6lld %8lld  %s\n", int_of(w, "slot"), pid, str_of(w, "state"), uptime,
	       int_of(w, "completed"), int_of(w, "failed"), int_of(w, "restarts"), jobs);
}

static int print_status(const char *answer)
{
	json_error_t error;
	json_t *stats = json_loads(answer, 0, &error);
	if (!json_is_object(stats)) {
		fprintf(stderr, "droverctl: error: stats answer is not a JSON object: %s\n", error.text);
		json_decref(stats);
		return EXIT_FAILURE;
	}
	print_status_header(stats);
	printf("%-4s %-8s %-9s %-8s %6s %6s %8s  %s\n", "SLOT", "PID", "STATE", "UPTIME", "DONE", "FAILED", "RESTARTS",
	       "JOBS");
	json_t *workers = json_object_get(stats, "workers");
	for (size_t i = 0; i < json_array_size(workers); i++)
		print_status_row(json_array_get(workers, i));
	json_decref(stats);
	return EX_OK;
}

static int print_pretty_json(const char *answer)
{
	json_error_t error;
	json_t *stats = json_loads(answer, 0, &error);
	if (stats == NULL) {
		fputs(answer, stdout);
		return EX_OK;
	}
	int rc = json_dumpf(stats, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER) == 0 ? EX_OK : EXIT_FAILURE;
	putchar('\n');
	json_decref(stats);
	return rc;
}

/* ---- control commands --------------------------------------------------- */

static int control_command(const struct options *opts, const char *name, const char *arg)
{
	char command[64];
	if (arg != NULL)
		snprintf(command, sizeof(command), "%s %s", name, arg);
	else
		snprintf(command, sizeof(command), "%s", name);
	char *path = socket_path(opts);
	if (path == NULL)
		return EXIT_FAILURE;
	const char *wire = strcmp(name, "status") == 0 ? "stats" : command;
	char *answer = request(path, wire);
	free(path);
	if (answer == NULL)
		return EX_UNAVAILABLE;
	int rc;
	if (is_error_answer(answer)) {
		fprintf(stderr, "droverctl: %s", answer);
		rc = EXIT_FAILURE;
	} else if (strcmp(name, "status") == 0) {
		rc = print_status(answer);
	} else if (strcmp(name, "stats") == 0) {
		rc = print_pretty_json(answer);
	} else {
		fputs(answer, stdout);
		rc = EX_OK;
	}
	free(answer);
	if (fflush(stdout) != 0 && rc == EX_OK)
		rc = EXIT_FAILURE;
	return rc;
}

/* ---- job commands ------------------------------------------------------ */

static int submit_with_config(const struct options *opts, FILE *in)
{
	struct config *cfg = load_config(opts);
	if (cfg == NULL)
		return EX_CONFIG;
	int rc = queue_ops_for(cfg)->submit(cfg, in, stdout);
	config_free(cfg);
	return rc;
}

/* The spool directory the daemon named in stats: a spool needs no configuration file. */
static int submit_to_spool_dir(const char *backend, const char *dir, FILE *in)
{
	struct config at = { .spool_dir = strdup(dir) }; /* all the spool's submit reads */
	if (at.spool_dir == NULL) {
		fprintf(stderr, "droverctl: error: out of memory\n");
		return EXIT_FAILURE;
	}
	int rc = queue_ops_named(backend)->submit(&at, in, stdout);
	free(at.spool_dir);
	return rc;
}

/*
 * With -s, jobs go to the queue of the daemon behind that socket: it tells
 * its backend and spool directory in stats. A spool needs no configuration
 * here; Kafka does (brokers, credentials), and its backend must agree.
 */
static int submit_through_daemon(const struct options *opts, FILE *in)
{
	char *answer = request_quietly(opts->socket_path, "stats", opts->config_path != NULL);
	if (answer == NULL && opts->config_path != NULL)
		return submit_with_config(opts, in); /* no daemon there: the named configuration says where */
	if (answer == NULL) {
		fprintf(stderr, "droverctl: error: submit -s: cannot learn the queue of the drover at %s "
			"(give -c FILE to submit while it is down)\n", opts->socket_path);
		return EX_UNAVAILABLE;
	}
	json_t *stats = is_error_answer(answer) ? NULL : json_loads(answer, 0, NULL);
	const char *backend = json_string_value(json_object_get(stats, "backend"));
	const char *spool_dir = json_string_value(json_object_get(stats, "spool_dir"));
	int rc;
	if (backend == NULL) {
		fprintf(stderr, "droverctl: error: submit -s: the drover at %s did not tell its queue: %s",
			opts->socket_path, answer);
		rc = EXIT_FAILURE;
	} else if (spool_dir != NULL && queue_ops_named(backend) != NULL) {
		rc = submit_to_spool_dir(backend, spool_dir, in);
	} else {
		struct config *cfg = load_config(opts);
		if (cfg == NULL) {
			rc = EX_CONFIG;
		} else if (strcmp(config_backend_name(cfg->backend), backend) != 0) {
			fprintf(stderr, "droverctl: error: submit -s: the drover at %s uses the %s queue, the configuration "
				"the %s queue\n", opts->socket_path, backend, config_backend_name(cfg->backend));
			rc = EXIT_FAILURE;
		} else {
			rc = queue_ops_for(cfg)->submit(cfg, in, stdout);
		}
		config_free(cfg);
	}
	json_decref(stats);
	free(answer);
	return rc;
}

static int submit_command(const struct options *opts, const char *file)
{
	bool use_stdin = file == NULL || strcmp(file, "-") == 0;
	FILE *in = use_stdin ? stdin : fopen(file, "r");
	if (in == NULL) {
		fprintf(stderr, "droverctl: error: %s: %s\n", file, strerror(errno));
		return EXIT_FAILURE;
	}
	int rc = opts->socket_path != NULL ? submit_through_daemon(opts, in) : submit_with_config(opts, in);
	if (!use_stdin)
		fclose(in);
	return rc;
}

/*
 * The daemon's verdict, when one listens: its pool can make progress and its
 * spool takes a write. EX_OK also when no daemon answers (the queue check
 * alone then decides); *reached says which.
 */
static int daemon_health(const struct options *opts, bool *reached)
{
	*reached = false;
	char *path = socket_path(opts);
	if (path == NULL)
		return EX_OK;
	char *answer = request_quietly(path, "health", true);
	free(path);
	if (answer == NULL)
		return EX_OK;
	*reached = true;
	int rc = EX_OK;
	if (is_error_answer(answer)) {
		fprintf(stderr, "droverctl: %s", answer);
		rc = EXIT_FAILURE;
	}
	free(answer);
	return rc;
}

static int health_command(const struct config *cfg)
{
	int rc = queue_ops_for(cfg)->health(cfg, stdout);
	if (fflush(stdout) != 0 && rc == EX_OK)
		rc = EXIT_FAILURE;
	return rc;
}

static int topics_command(const struct config *cfg, const char *action)
{
	const struct queue_ops *queue = queue_ops_for(cfg);
	if (queue->topics_create == NULL || queue->topics_list == NULL) {
		fprintf(stderr, "droverctl: error: topics: the queue backend is %s; topics exist only with kafka\n",
			queue->name);
		return EXIT_FAILURE;
	}
	return action != NULL && strcmp(action, "create") == 0 ? queue->topics_create(cfg) : queue->topics_list(cfg);
}

/* The daemon's health, then the queue's; a broken file only skips the queue's when a daemon vouched. */
static int health_flow(const struct options *opts)
{
	bool reached;
	int rc = daemon_health(opts, &reached);
	if (rc != EX_OK)
		return rc;
	struct config *cfg = load_config(opts);
	if (cfg == NULL) {
		if (!reached)
			return EX_CONFIG;
		fprintf(stderr, "droverctl: the queue was not checked (configuration errors); the daemon is healthy\n");
		printf("ok: daemon\n");
		return EX_OK;
	}
	rc = health_command(cfg);
	config_free(cfg);
	return rc;
}

/* Commands that need the configuration: a broken file is exit 78. */
static int queue_command(const struct options *opts, const char *name, const char *arg)
{
	if (strcmp(name, "health") == 0)
		return health_flow(opts);
	if (strcmp(name, "submit") == 0)
		return submit_command(opts, arg);
	struct config *cfg = load_config(opts);
	if (cfg == NULL)
		return EX_CONFIG;
	int rc = topics_command(cfg, arg);
	config_free(cfg);
	return rc;
}

/* ---- command line ------------------------------------------------------- */

enum command_kind { CONTROL, QUEUE };

struct command {
	const char *name;
	enum command_kind kind;
	int min_args, max_args;
};

static const struct command commands[] = {
	{ "status", CONTROL, 0, 0 }, { "stats", CONTROL, 0, 0 },  { "metrics", CONTROL, 0, 0 },
	{ "ping", CONTROL, 0, 0 },   { "reload", CONTROL, 0, 0 }, { "scale", CONTROL, 1, 1 },
	{ "stop", CONTROL, 0, 0 },   { "submit", QUEUE, 0, 1 },   { "health", QUEUE, 0, 0 },
	{ "topics", QUEUE, 1, 1 },
};

static const struct command *find_command(const char *name)
{
	for (size_t i = 0; i < ARRAY_LEN(commands); i++)
		if (strcmp(commands[i].name, name) == 0)
			return &commands[i];
	return NULL;
}

/* Arguments the daemon or the queue would refuse anyway are usage errors here (exit 64). */
static bool valid_argument(const char *name, const char *arg)
{
	if (strcmp(name, "scale") == 0) {
		char *end = NULL;
		errno = 0;
		long n = strtol(arg, &end, 10);
		return errno == 0 && end != arg && *end == '\0' && n >= 1 && n <= CONFIG_MAX_WORKERS;
	}
	if (strcmp(name, "topics") == 0)
		return strcmp(arg, "create") == 0 || strcmp(arg, "list") == 0;
	return true;
}

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...)
{
	va_list ap;

	fputs("droverctl: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	usage(stderr);
	return EX_USAGE;
}

int main(int argc, char **argv)
{
	log_init("droverctl", LOG_LEVEL_WARN, LOG_FORMAT_TEXT);
	struct options opts = { 0 };
	int opt;
	while ((opt = getopt(argc, argv, "+c:s:hV")) != -1) {
		switch (opt) {
		case 'c':
			opts.config_path = optarg;
			break;
		case 's':
			opts.socket_path = optarg;
			break;
		case 'h':
			usage(stdout);
			return EX_OK;
		case 'V':
			printf("droverctl %s\n", DROVER_VERSION);
			return EX_OK;
		default:
			usage(stderr);
			return EX_USAGE;
		}
	}
	if (optind >= argc)
		return usage_error("%s", "no command given");
	const char *name = argv[optind];
	const struct command *cmd = find_command(name);
	if (cmd == NULL)
		return usage_error("unknown command: %s", name);
	int nargs = argc - optind - 1;
	if (nargs < cmd->min_args || nargs > cmd->max_args)
		return usage_error("wrong number of arguments for %s", name);
	const char *arg = nargs > 0 ? argv[optind + 1] : NULL;
	if (arg != NULL && !valid_argument(name, arg))
		return usage_error("invalid argument for %s", name);
	if (cmd->kind == CONTROL)
		return control_command(&opts, name, arg);
	return queue_command(&opts, name, arg);
}
