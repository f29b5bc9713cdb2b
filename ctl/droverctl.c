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
#include "ctl/view.h"

#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
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

struct options {
	const char *config_path; /* NULL = CONFIG_DEFAULT_FILE */
	const char *socket_path; /* -s */
};

static void usage(FILE *out)
{
	fputs("usage: droverctl [-c FILE] [-s SOCKET] COMMAND [ARG]\n"
	      "control (through the daemon's socket):\n"
	      "  status [--json] [--watch [-n SECONDS]]\n"
	      "                  workers, queued and faulted counts, running jobs with progress;\n"
	      "                  --watch redraws every second (or -n) until interrupted\n"
	      "  top [-n SECONDS] status --watch\n"
	      "  jobs [--json]   running, queued and recently failed jobs\n"
	      "  cancel ID       stop a running job or drop a queued one: it fails as cancelled\n"
	      "  retry ID        queue a failed job again, attempts reset (spool)\n"
	      "  pause           stop taking jobs (running ones go on)\n"
	      "  resume          take jobs again after a pause\n"
	      "  stats           statistics as JSON\n"
	      "  metrics         Prometheus metrics\n"
	      "  ping            check the daemon answers (liveness)\n"
	      "  reload          re-read the configuration (like SIGHUP)\n"
	      "  scale N         run N workers (1..256)\n"
	      "  stop            graceful stop (like SIGTERM)\n"
	      "  upgrade         re-execute the binary on disk, keeping the jobs (like SIGUSR2)\n"
	      "jobs (through the queue):\n"
	      "  submit [FILE|-] enqueue one job per JSON line; prints the ids\n"
	      "  health          the daemon's pool can make progress, the queue is usable\n"
	      "  topics create   create the Kafka topics of the configuration\n"
	      "  topics list     show the Kafka topics\n"
	      "options:\n"
	      "  -c FILE         configuration (default " CONFIG_DEFAULT_FILE ")\n"
	      "  -s SOCKET       control socket (default: [supervisor] control_socket)\n"
	      "  -V, --version   print the version and exit\n"
	      "  -h, --help      print this help and exit\n"
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
	char *line = NULL;
	if (asprintf(&line, "%s\n", command) < 0) {
		close(fd);
		fprintf(stderr, "droverctl: out of memory\n");
		return NULL;
	}
	/* A daemon that refuses us answers and closes at once, so a failed send still leaves an answer to read. */
	int sent = send_line(fd, line, strlen(line), deadline);
	int send_errno = errno;
	free(line);
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
	char *command = NULL;
	if (asprintf(&command, "%s%s%s", name, arg != NULL ? " " : "", arg != NULL ? arg : "") < 0)
		return EXIT_FAILURE;
	char *path = socket_path(opts);
	char *answer = path != NULL ? request(path, command) : NULL;
	free(command);
	if (path == NULL)
		return EXIT_FAILURE;
	free(path);
	if (answer == NULL)
		return EX_UNAVAILABLE;
	int rc;
	if (is_error_answer(answer)) {
		fprintf(stderr, "droverctl: %s", answer);
		rc = EXIT_FAILURE;
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

/* ---- views: status and jobs for people, --json for scripts ------------- */

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

struct view_options {
	bool json;
	bool watch;
	long interval_ms;
};

static volatile sig_atomic_t interrupted;

static void on_interrupt(int signo)
{
	interrupted = 1;
}

/* status [--json] [--watch [-n SECONDS]] | jobs [--json]. 0, or -1 after saying what is wrong. */
static int parse_view_options(const char *name, int argc, char **argv, struct view_options *vo)
{
	bool top = strcmp(name, "top") == 0;
	*vo = (struct view_options){ .interval_ms = 1000, .watch = top };
	bool status = top || strcmp(name, "status") == 0;
	for (int i = 0; i < argc; i++) {
		if (strcmp(argv[i], "--json") == 0) {
			vo->json = true;
		} else if (status && strcmp(argv[i], "--watch") == 0) {
			vo->watch = true;
		} else if (status && strcmp(argv[i], "-n") == 0 && i + 1 < argc) {
			char *end = NULL;
			double seconds = strtod(argv[++i], &end);
			if (end == argv[i] || *end != '\0' || !(seconds >= 0.1 && seconds <= 3600)) {
				usage_error("status -n: seconds must be a number in 0.1..3600");
				return -1;
			}
			vo->interval_ms = (long)(seconds * 1000);
			vo->watch = true;
		} else {
			usage_error("%s: unknown option %s", name, argv[i]);
			return -1;
		}
	}
	if (vo->json && vo->watch) {
		usage_error("status: --json and --watch do not go together");
		return -1;
	}
	return 0;
}

/* The daemon's JSON answer to command, or NULL after printing why (*rc: the exit code). */
static json_t *ask_json(const char *path, const char *command, bool quiet, int *rc)
{
	char *answer = request_quietly(path, command, quiet);
	if (answer == NULL) {
		*rc = EX_UNAVAILABLE;
		return NULL;
	}
	json_error_t error;
	json_t *value = is_error_answer(answer) ? NULL : json_loads(answer, 0, &error);
	if (!json_is_object(value)) {
		if (!quiet)
			fprintf(stderr, "droverctl: %s: %s", command, is_error_answer(answer) ? answer : "not a JSON object\n");
		json_decref(value);
		value = NULL;
		*rc = EXIT_FAILURE;
	}
	free(answer);
	return value;
}

/* One rendering of name into out. status also asks `jobs` for the queued and failed counts. */
static int render(const char *path, const char *name, const struct view_options *vo, FILE *out)
{
	int rc = EX_OK;
	bool status = strcmp(name, "status") == 0;
	json_t *main_answer = ask_json(path, status ? "stats" : "jobs", false, &rc);
	if (main_answer == NULL)
		return rc;
	int ignored;
	json_t *jobs = status ? ask_json(path, "jobs", true, &ignored) : json_incref(main_answer);
	if (vo->json) {
		if (status && jobs != NULL) {
			json_object_set(main_answer, "queued", json_object_get(jobs, "queued"));
			json_object_set(main_answer, "failed_jobs", json_object_get(jobs, "failed"));
		}
		rc = json_dumpf(main_answer, out, JSON_INDENT(2) | JSON_PRESERVE_ORDER) == 0 ? EX_OK : EXIT_FAILURE;
		fputc('\n', out);
	} else if (status) {
		view_status(out, main_answer, jobs, view_width(STDOUT_FILENO));
	} else {
		view_jobs(out, main_answer, view_width(STDOUT_FILENO));
	}
	json_decref(jobs);
	json_decref(main_answer);
	return rc;
}

/* Sleeps ms, or less when interrupted. */
static void nap(long ms)
{
	long long deadline = now_ms() + ms;
	while (!interrupted && remaining_ms(deadline) > 0)
		poll(NULL, 0, remaining_ms(deadline));
}

/*
 * Redraws in place until SIGINT/TERM: each frame is rendered first and then
 * written at once after "home + clear", so the screen never shows half a
 * frame. On a tty the alternate screen is used and left on exit, which gives
 * the operator's terminal back as it was.
 */
static int watch(const char *path, const struct view_options *vo)
{
	struct sigaction sa = { .sa_handler = on_interrupt }; /* no SA_RESTART: poll returns at once */
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGINT, &sa, NULL) < 0 || sigaction(SIGTERM, &sa, NULL) < 0)
		return EXIT_FAILURE;
	bool tty = isatty(STDOUT_FILENO);
	bool first = true;
	while (!interrupted) {
		char *frame = NULL;
		size_t len = 0;
		FILE *out = open_memstream(&frame, &len);
		if (out == NULL)
			break;
		int rc = render(path, "status", vo, out);
		fclose(out);
		if (rc != EX_OK && first) { /* no daemon to watch: say so as status would, nothing to redraw */
			free(frame);
			return rc;
		}
		if (first && tty)
			fputs("\033[?1049h\033[?25l", stdout);
		first = false;
		fputs("\033[H\033[2J", stdout);
		fwrite(frame, 1, len, stdout);
		if (rc != EX_OK) /* it went away while watched: keep trying, it may come back (a restart) */
			printf("(no answer from drover at %s; retrying)\n", path);
		fflush(stdout);
		free(frame);
		nap(vo->interval_ms);
	}
	if (tty && !first)
		fputs("\033[?25h\033[?1049l", stdout);
	return fflush(stdout) == 0 ? EX_OK : EXIT_FAILURE;
}

static int view_command(const struct options *opts, const char *name, int argc, char **argv)
{
	struct view_options vo;
	if (parse_view_options(name, argc, argv, &vo) < 0)
		return EX_USAGE;
	char *path = socket_path(opts);
	if (path == NULL)
		return EXIT_FAILURE;
	int rc = vo.watch ? watch(path, &vo) : render(path, name, &vo, stdout);
	free(path);
	if (fflush(stdout) != 0 && rc == EX_OK)
		rc = EXIT_FAILURE;
	return rc;
}

/*
 * retry ID: on a queue whose retry needs a client the supervisor must not
 * hold (Kafka, queue_ops.retry_in_client), droverctl re-produces the job
 * itself with the configuration's credentials; otherwise the daemon does it
 * (the spool: under the socket's permission rules).
 */
static int retry_command(const struct options *opts, const char *id)
{
	struct config_errors errs = { 0 };
	struct config *cfg = config_load_client(opts->config_path, &errs);
	config_errors_clear(&errs);
	const struct queue_ops *queue = cfg != NULL ? queue_ops_for(cfg) : NULL;
	if (queue == NULL || !queue->retry_in_client || queue->retry_failed == NULL) {
		config_free(cfg);
		return control_command(opts, "retry", id);
	}
	char why[1024] = "";
	enum queue_job_result result = queue->retry_failed(cfg, id, why, sizeof(why));
	config_free(cfg);
	switch (result) {
	case QUEUE_JOB_DONE:
		printf("ok: %s is queued again\n", id);
		return fflush(stdout) == 0 ? EX_OK : EXIT_FAILURE;
	case QUEUE_JOB_UNKNOWN:
		fprintf(stderr, "droverctl: error: no failed job %s\n", id);
		return EXIT_FAILURE;
	case QUEUE_JOB_BUSY:
	case QUEUE_JOB_ERROR:
		break;
	}
	fprintf(stderr, "droverctl: error: %s\n", why);
	return EXIT_FAILURE;
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

enum command_kind { CONTROL, QUEUE, VIEW };

struct command {
	const char *name;
	enum command_kind kind;
	int min_args, max_args;
};

static const struct command commands[] = {
	{ "status", VIEW, 0, 4 },    { "stats", CONTROL, 0, 0 },  { "metrics", CONTROL, 0, 0 },
	{ "ping", CONTROL, 0, 0 },   { "reload", CONTROL, 0, 0 }, { "scale", CONTROL, 1, 1 },
	{ "stop", CONTROL, 0, 0 },   { "submit", QUEUE, 0, 1 },   { "health", QUEUE, 0, 0 },
	{ "topics", QUEUE, 1, 1 },   { "upgrade", CONTROL, 0, 0 }, { "jobs", VIEW, 0, 1 },
	{ "cancel", CONTROL, 1, 1 }, { "retry", CONTROL, 1, 1 },  { "pause", CONTROL, 0, 0 },
	{ "resume", CONTROL, 0, 0 }, { "top", VIEW, 0, 2 },
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

/* One line and a hint, never the whole help: the error stays on the screen. */
static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...)
{
	va_list ap;

	fputs("droverctl: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputs("; try 'droverctl --help'\n", stderr);
	return EX_USAGE;
}

/* The option getopt refused, as the user typed it ("-x", "--frob"). */
static int refuse_option(char **argv, int opt_char, bool missing_argument)
{
	char shown[3] = { '-', (char)opt_char, '\0' };
	const char *name = opt_char != 0 ? shown : argv[optind - 1];
	if (missing_argument)
		return usage_error("missing argument for option %s", name);
	return usage_error("unknown option %s", name);
}

int main(int argc, char **argv)
{
	log_init("droverctl", LOG_LEVEL_WARN, LOG_FORMAT_TEXT);
	struct options opts = { 0 };
	static const struct option long_options[] = {
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ NULL, 0, NULL, 0 },
	};
	int opt;
	opterr = 0; /* the messages are ours: one line and a hint */
	while ((opt = getopt_long(argc, argv, "+:c:s:hV", long_options, NULL)) != -1) {
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
		case ':':
			return refuse_option(argv, optopt, true);
		default:
			return refuse_option(argv, optopt, false);
		}
	}
	if (optind >= argc)
		return usage_error("%s", "no command given");
	const char *name = argv[optind];
	const struct command *cmd = find_command(name);
	if (cmd == NULL)
		return usage_error("unknown command %s", name);
	int nargs = argc - optind - 1;
	if (nargs < cmd->min_args || nargs > cmd->max_args)
		return usage_error("wrong number of arguments for %s", name);
	if (cmd->kind == VIEW)
		return view_command(&opts, name, nargs, argv + optind + 1);
	const char *arg = nargs > 0 ? argv[optind + 1] : NULL;
	if (arg != NULL && !valid_argument(name, arg))
		return usage_error("invalid argument for %s", name);
	if (strcmp(name, "retry") == 0)
		return retry_command(&opts, arg);
	if (cmd->kind == CONTROL)
		return control_command(&opts, name, arg);
	return queue_command(&opts, name, arg);
}
