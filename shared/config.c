/*
 * config: loads drover's configuration. One static table of options (after
 * redis' config.c and nginx's command tables) drives everything: defaults,
 * parsing of the INI file (inih), environment overrides, validation, the
 * scope of a reloaded value (what changed, and where it applies) and the
 * printed reference. Every problem
 * is collected as "FILE:LINE: [section] key: what is wrong (allowed: ...)"
 * ("env NAME: ..." for the environment) so that an operator sees them all
 * at once.
 *
 * Order of a load: built-in defaults, the file, the environment (the seeds'
 * names first, then DROVER_<SECTION>_<KEY>, which wins), then cross-field
 * validation and derived values (handler path, password file, host name,
 * the topic list).
 */
#include "shared/config.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <ini.h>
#include <librdkafka/rdkafka.h>
#include <limits.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <unistd.h>

#include "shared/argv.h"
#include "shared/listen_addr.h"
#include "shared/util.h"

extern char **environ;

#define DAY_MS (24LL * 3600 * 1000)
#define JOB_MS_MAX (30 * DAY_MS)              /* bounds every job/supervisor duration */
#define RETENTION_MS_MAX (100 * 365 * DAY_MS)
#define RESULT_BYTES_MAX (1LL << 30)
#define LIMIT_BYTES_MAX (1LL << 50)            /* 1 PiB: past any real address space */
#define LINE_CHARS_MAX 4096                   /* longest accepted INI line */
#define CONFIG_FILE_MAX (1 << 20)             /* longest accepted configuration file */
#define TOPIC_NAME_MAX 249                    /* Kafka's own limit */
#define ENV_NAME_MAX 128

enum opt_type {
	OPT_INT,     /* int */
	OPT_BYTES,   /* long long; a K, M or G suffix multiplies by 1024, 1024^2, 1024^3 */
	OPT_LIMIT,   /* long long, a count; empty = not set (CONFIG_LIMIT_UNSET) */
	OPT_LIMIT_BYTES, /* long long, bytes as OPT_BYTES; empty = not set */
	OPT_MS,      /* long long, milliseconds */
	OPT_BOOL,    /* bool */
	OPT_STRING,  /* char * */
	OPT_PATH,    /* char *, a file system path */
	OPT_CHOICE,  /* char *, one of names[] (stored as spelled there) */
	OPT_ENUM,    /* an enum (int-sized), one of names[] */
	OPT_MODE,    /* int, octal permission bits */
	OPT_CODES,   /* bool[256], a list of exit codes */
	OPT_ARGV,    /* char * as written, split into handler_argv */
};

struct enum_name {
	const char *name;
	int value;
};

struct opt_spec {
	const char *section;
	const char *key;
	enum opt_type type;
	unsigned scope;          /* CONFIG_SCOPE_*: where a reloaded value takes effect */
	bool secret;             /* never echoed */
	size_t offset;           /* into struct config (or struct topic_config) */
	long long min, max;      /* numbers and modes */
	const char *def;         /* default, as it would be written in the file */
	const char *allowed;     /* text for errors; NULL = derived from type and bounds */
	const char *help;
	const char *seed_env;    /* the seeds' environment name, or NULL */
	const struct enum_name *names;
};

_Static_assert(sizeof(enum log_level) == sizeof(int), "enums are stored as int");
_Static_assert(sizeof(enum log_format) == sizeof(int), "enums are stored as int");
_Static_assert(sizeof(enum queue_backend) == sizeof(int), "enums are stored as int");
_Static_assert(sizeof(enum security_protocol) == sizeof(int), "enums are stored as int");
_Static_assert(sizeof(enum handler_mode) == sizeof(int), "enums are stored as int");

static const struct enum_name log_level_names[] = {
	{ "error", LOG_LEVEL_ERROR }, { "warn", LOG_LEVEL_WARN },
	{ "info", LOG_LEVEL_INFO }, { "debug", LOG_LEVEL_DEBUG }, { NULL, 0 },
};
static const struct enum_name log_format_names[] = {
	{ "text", LOG_FORMAT_TEXT }, { "json", LOG_FORMAT_JSON }, { NULL, 0 },
};
static const struct enum_name backend_names[] = {
	{ "spool", BACKEND_SPOOL }, { "kafka", BACKEND_KAFKA }, { NULL, 0 },
};
static const struct enum_name security_names[] = {
	{ "plaintext", SECURITY_PLAINTEXT }, { "ssl", SECURITY_SSL },
	{ "sasl_plaintext", SECURITY_SASL_PLAINTEXT }, { "sasl_ssl", SECURITY_SASL_SSL }, { NULL, 0 },
};
static const struct enum_name handler_mode_names[] = {
	{ "exec", HANDLER_MODE_EXEC }, { "persistent", HANDLER_MODE_PERSISTENT }, { NULL, 0 },
};
/* Only the mechanisms that authenticate with sasl_username/sasl_password. */
static const struct enum_name sasl_mechanism_names[] = {
	{ "PLAIN", 0 }, { "SCRAM-SHA-256", 0 }, { "SCRAM-SHA-512", 0 }, { NULL, 0 },
};

/* Short names for the table: where a reloaded value takes effect (config.h). */
#define SCOPE_START CONFIG_SCOPE_START
#define SCOPE_SUPERVISOR CONFIG_SCOPE_SUPERVISOR
#define SCOPE_WORKERS CONFIG_SCOPE_WORKERS
#define SCOPE_BOTH (CONFIG_SCOPE_SUPERVISOR | CONFIG_SCOPE_WORKERS)

#define CFG(field) offsetof(struct config, field)
#define TOPIC(field) offsetof(struct topic_config, field)

static const struct opt_spec option_table[] = {
	/* [supervisor] */
	{ "supervisor", "workers", OPT_INT, SCOPE_SUPERVISOR, false, CFG(workers), 1, CONFIG_MAX_WORKERS, "3", NULL,
	  "worker processes", "PROCESSING_WORKER_INSTANCES", NULL },
	{ "supervisor", "control_socket", OPT_PATH, SCOPE_START, false, CFG(control_socket), 0, 0, "/run/drover/drover.sock", NULL,
	  "the Unix socket of droverctl", NULL, NULL },
	{ "supervisor", "control_socket_mode", OPT_MODE, SCOPE_START, false, CFG(control_socket_mode), 0, 0777, "0660", NULL,
	  "permission bits of the control socket", NULL, NULL },
	{ "supervisor", "pid_file", OPT_PATH, SCOPE_START, false, CFG(pid_file), 0, 0, "/run/drover/drover.pid", NULL,
	  "locked pid file; empty = none", NULL, NULL },
	{ "supervisor", "user", OPT_STRING, SCOPE_START, false, CFG(user), 0, 0, "", "a user name, or empty",
	  "when started as root: drop to this user before forking workers", NULL, NULL },
	{ "supervisor", "group", OPT_STRING, SCOPE_START, false, CFG(group), 0, 0, "", "a group name, or empty",
	  "when started as root: drop to this group (default: the user's)", NULL, NULL },
	{ "supervisor", "log_file", OPT_PATH, SCOPE_BOTH, false, CFG(log_file), 0, 0, "-", NULL,
	  "\"-\" = stderr; reopened on SIGUSR1", NULL, NULL },
	{ "supervisor", "log_level", OPT_ENUM, SCOPE_BOTH, false, CFG(log_level), 0, 0, "info", NULL,
	  "least severe level logged", NULL, log_level_names },
	{ "supervisor", "log_format", OPT_ENUM, SCOPE_BOTH, false, CFG(log_format), 0, 0, "text", NULL,
	  "log line format", NULL, log_format_names },
	{ "supervisor", "shutdown_timeout_ms", OPT_MS, SCOPE_BOTH, false, CFG(shutdown_timeout_ms), 1, JOB_MS_MAX, "30000", NULL,
	  "graceful drain bound", NULL, NULL },
	{ "supervisor", "restart_delay_ms", OPT_MS, SCOPE_SUPERVISOR, false, CFG(restart_delay_ms), 1, JOB_MS_MAX, "100", NULL,
	  "delay before restarting a crashed slot; doubles per consecutive crash, with jitter", NULL, NULL },
	{ "supervisor", "restart_delay_max_ms", OPT_MS, SCOPE_SUPERVISOR, false, CFG(restart_delay_max_ms), 1, JOB_MS_MAX, "30000", NULL,
	  "upper bound of the restart delay", NULL, NULL },
	{ "supervisor", "heartbeat_timeout_ms", OPT_MS, SCOPE_SUPERVISOR, false, CFG(heartbeat_timeout_ms), 1, JOB_MS_MAX, "60000", NULL,
	  "a worker whose event loop is silent this long is killed and replaced", NULL, NULL },
	{ "supervisor", "http_listen", OPT_STRING, SCOPE_START, false, CFG(http_listen), 0, 0, "",
	  "IPV4:PORT or [IPV6]:PORT (numeric), or empty",
	  "HTTP endpoint for /metrics, /healthz and /stats; empty = off", NULL, NULL },
	{ "supervisor", "stall_timeout_ms", OPT_MS, SCOPE_SUPERVISOR, false, CFG(stall_timeout_ms), 1, JOB_MS_MAX, "60000", NULL,
	  "health fails when jobs wait, capacity is free and no job started for this long", NULL, NULL },

	/* [jobs] */
	{ "jobs", "handler", OPT_ARGV, SCOPE_WORKERS, false, CFG(handler), 0, 0, "/usr/lib/drover/handlers/demo --size 256",
	  "a program and its arguments; \"double quotes\" group words; a name without '/' is looked up in PATH",
	  "argv; split on spaces, \"double quotes\" group; never run through a shell", NULL, NULL },
	{ "jobs", "max_concurrent", OPT_INT, SCOPE_WORKERS, false, CFG(max_concurrent), 1, CONFIG_MAX_CONCURRENT, "10", NULL,
	  "jobs running at once in one worker", "MAX_CONCURRENT_GENERATIONS", NULL },
	{ "jobs", "timeout_ms", OPT_MS, SCOPE_WORKERS, false, CFG(timeout_ms), 1, JOB_MS_MAX, "300000", NULL,
	  "per job attempt", "GENERATION_TIMEOUT_MS", NULL },
	{ "jobs", "kill_grace_ms", OPT_MS, SCOPE_BOTH, false, CFG(kill_grace_ms), 0, JOB_MS_MAX, "5000", NULL,
	  "SIGTERM to the job's process group, SIGKILL after this", NULL, NULL },
	{ "jobs", "max_attempts", OPT_INT, SCOPE_WORKERS, false, CFG(max_attempts), 1, 100, "3", NULL,
	  "attempts per job before it fails for good", NULL, NULL },
	{ "jobs", "retry_delay_ms", OPT_MS, SCOPE_WORKERS, false, CFG(retry_delay_ms), 0, JOB_MS_MAX, "1000", NULL,
	  "before the 2nd attempt; doubles per attempt", NULL, NULL },
	{ "jobs", "no_retry_exit_codes", OPT_CODES, SCOPE_WORKERS, false, CFG(no_retry_exit), 1, 255, "64 65", NULL,
	  "exit codes that fail the job at once", NULL, NULL },
	{ "jobs", "max_result_bytes", OPT_BYTES, SCOPE_WORKERS, false, CFG(max_result_bytes), 1, RESULT_BYTES_MAX, "1048576", NULL,
	  "stdout beyond this fails the attempt: result_too_large", NULL, NULL },
	{ "jobs", "working_dir", OPT_PATH, SCOPE_WORKERS, false, CFG(working_dir), 0, 0, "", "an existing directory, or empty",
	  "the handler's working directory; empty = inherit", NULL, NULL },
	{ "jobs", "slow_job_ms", OPT_MS, SCOPE_BOTH, false, CFG(slow_job_ms), 0, JOB_MS_MAX, "0", NULL,
	  "an attempt running longer is logged at warn and counted as slow; 0 = off", NULL, NULL },
	{ "jobs", "handler_mode", OPT_ENUM, SCOPE_WORKERS, false, CFG(handler_mode), 0, 0, "exec", NULL,
	  "exec: a process per attempt; persistent: long-lived processes speaking the frame protocol",
	  NULL, handler_mode_names },
	{ "jobs", "handler_concurrency", OPT_INT, SCOPE_WORKERS, false, CFG(handler_concurrency), 1,
	  CONFIG_MAX_CONCURRENT, "1", NULL,
	  "persistent: jobs at once per handler process (ceil(max_concurrent / this) processes)", NULL, NULL },
	{ "jobs", "handler_max_jobs", OPT_INT, SCOPE_WORKERS, false, CFG(handler_max_jobs), 0, 1000000000, "0", NULL,
	  "persistent: recycle a process after this many jobs; 0 = never", NULL, NULL },
	{ "jobs", "handler_max_jobs_jitter", OPT_INT, SCOPE_WORKERS, false, CFG(handler_max_jobs_jitter), 0,
	  1000000000, "0", NULL, "persistent: a random 0..this added to each process's handler_max_jobs", NULL, NULL },
	{ "jobs", "handler_max_rss_mb", OPT_INT, SCOPE_WORKERS, false, CFG(handler_max_rss_mb), 0, 1048576, "0", NULL,
	  "persistent: recycle a process whose tree's RSS exceeds this; 0 = off", NULL, NULL },
	{ "jobs", "handler_start_timeout_ms", OPT_MS, SCOPE_WORKERS, false, CFG(handler_start_timeout_ms), 1,
	  JOB_MS_MAX, "60000", NULL, "persistent: how long a process may take to say ready", NULL, NULL },
	/* Limits of each handler, set in the child before exec; empty = inherited from drover. */
	{ "jobs", "rlimit_nofile", OPT_LIMIT, SCOPE_WORKERS, false, CFG(rlimit_nofile), 4, 1 << 30, "", NULL,
	  "open files per handler (RLIMIT_NOFILE); empty = inherit", NULL, NULL },
	{ "jobs", "rlimit_as", OPT_LIMIT_BYTES, SCOPE_WORKERS, false, CFG(rlimit_as), 1 << 20, LIMIT_BYTES_MAX, "", NULL,
	  "address space per handler in bytes, K/M/G suffixes (RLIMIT_AS); empty = inherit", NULL, NULL },
	{ "jobs", "rlimit_core", OPT_LIMIT_BYTES, SCOPE_WORKERS, false, CFG(rlimit_core), 0, LIMIT_BYTES_MAX, "", NULL,
	  "core file size per handler in bytes, K/M/G suffixes (RLIMIT_CORE); empty = inherit", NULL, NULL },
	{ "jobs", "rlimit_cpu", OPT_LIMIT, SCOPE_WORKERS, false, CFG(rlimit_cpu), 1, 1LL << 32, "", NULL,
	  "CPU seconds per attempt (RLIMIT_CPU: SIGXCPU, then SIGKILL); empty = inherit", NULL, NULL },
	{ "jobs", "nice", OPT_LIMIT, SCOPE_WORKERS, false, CFG(nice), 0, 19, "", NULL,
	  "the handler's nice value 0..19; empty = inherit", NULL, NULL },
	/* cgroup v2, where the host delegates a subtree (worker/cgroup.h). */
	{ "jobs", "cgroup_root", OPT_PATH, SCOPE_START, false, CFG(cgroup_root), 0, 0, "", "a cgroup v2 directory, or empty",
	  "delegated cgroup for the jobs' cgroups; empty = drover's own", NULL, NULL },
	{ "jobs", "memory_max", OPT_LIMIT_BYTES, SCOPE_WORKERS, false, CFG(memory_max), 1 << 20, LIMIT_BYTES_MAX, "", NULL,
	  "memory limit of each attempt's cgroup (v2 memory.max, or the v1 memory controller), K/M/G suffixes; "
	  "empty = none", NULL, NULL },
	{ "jobs", "cpu_max", OPT_LIMIT, SCOPE_WORKERS, false, CFG(cpu_max), 1, 100 * CONFIG_MAX_CONCURRENT, "", NULL,
	  "cpu.max of each attempt's cgroup, in percent of one CPU; empty = none", NULL, NULL },
	{ "jobs", "pids_max", OPT_LIMIT, SCOPE_WORKERS, false, CFG(pids_max), 1, 4194304, "", NULL,
	  "pids.max of each attempt's cgroup (processes and threads); empty = none", NULL, NULL },

	/* [queue] */
	{ "queue", "backend", OPT_ENUM, SCOPE_BOTH, false, CFG(backend), 0, 0, "spool", NULL,
	  "the job queue; USE_KAFKA=true|false selects kafka|spool", NULL, backend_names },

	/* [spool] */
	{ "spool", "dir", OPT_PATH, SCOPE_BOTH, false, CFG(spool_dir), 0, 0, "/var/lib/drover/spool", "a directory path",
	  "the spool directory (incoming/, processing/, complete/, failed/, tmp/)", NULL, NULL },

	/* [kafka] */
	{ "kafka", "brokers", OPT_STRING, SCOPE_WORKERS, false, CFG(kafka_brokers), 0, 0, "localhost:9092", "host:port[,host:port...]",
	  "bootstrap brokers", "KAFKA_BROKERS", NULL },
	{ "kafka", "client_id", OPT_STRING, SCOPE_WORKERS, false, CFG(kafka_client_id), 0, 0, "drover", NULL,
	  "client.id", "KAFKA_CLIENT_ID", NULL },
	{ "kafka", "group_id", OPT_STRING, SCOPE_WORKERS, false, CFG(kafka_group_id), 0, 0, "drover-workers", NULL,
	  "consumer group", "KAFKA_CONSUMER_GROUP", NULL },
	{ "kafka", "requests_topic", OPT_STRING, SCOPE_WORKERS, false, CFG(requests_topic), 0, 0, "image.generation.requests",
	  "a topic name: letters, digits, '.', '_', '-'", "jobs are read from here", NULL, NULL },
	{ "kafka", "status_topic", OPT_STRING, SCOPE_WORKERS, false, CFG(status_topic), 0, 0, "image.generation.status",
	  "a topic name: letters, digits, '.', '_', '-'; or empty", "status events; empty = no status events",
	  NULL, NULL },
	{ "kafka", "complete_topic", OPT_STRING, SCOPE_WORKERS, false, CFG(complete_topic), 0, 0, "image.generation.complete",
	  "a topic name: letters, digits, '.', '_', '-'", "results of completed jobs", NULL, NULL },
	{ "kafka", "failed_topic", OPT_STRING, SCOPE_WORKERS, false, CFG(failed_topic), 0, 0, "image.generation.failed",
	  "a topic name: letters, digits, '.', '_', '-'", "failed jobs (dead letters)", NULL, NULL },
	{ "kafka", "static_membership", OPT_BOOL, SCOPE_WORKERS, false, CFG(static_membership), 0, 0, "true", NULL,
	  "group.instance.id = <instance_id>-<slot>", NULL, NULL },
	{ "kafka", "instance_id", OPT_STRING, SCOPE_WORKERS, false, CFG(instance_id), 0, 0, "", NULL,
	  "default: the host name", NULL, NULL },
	{ "kafka", "max_uncommitted", OPT_INT, SCOPE_WORKERS, false, CFG(kafka_max_uncommitted), 0, 1000000, "0", NULL,
	  "per partition, offsets past the oldest unfinished one a worker may take (what a crash can repeat); "
	  "0 = 2 x max_concurrent", NULL, NULL },
	{ "kafka", "security_protocol", OPT_ENUM, SCOPE_WORKERS, false, CFG(security_protocol), 0, 0, "plaintext", NULL,
	  "KAFKA_SSL=true selects ssl (sasl_ssl when a SASL user is set), false plaintext (sasl_plaintext); "
	  "KAFKA_SASL_USERNAME alone selects sasl_plaintext",
	  NULL, security_names },
	{ "kafka", "sasl_mechanism", OPT_CHOICE, SCOPE_WORKERS, false, CFG(sasl_mechanism), 0, 0, "SCRAM-SHA-512", NULL,
	  "SASL mechanism", NULL, sasl_mechanism_names },
	{ "kafka", "sasl_username", OPT_STRING, SCOPE_WORKERS, false, CFG(sasl_username), 0, 0, "", NULL,
	  "SASL user", "KAFKA_SASL_USERNAME", NULL },
	{ "kafka", "sasl_password", OPT_STRING, SCOPE_WORKERS, true, CFG(sasl_password), 0, 0, "", NULL,
	  "SASL password (a secret: prefer sasl_password_file)", "KAFKA_SASL_PASSWORD", NULL },
	{ "kafka", "sasl_password_file", OPT_PATH, SCOPE_WORKERS, false, CFG(sasl_password_file), 0, 0, "", "a readable file, or empty",
	  "preferred: read at start and on reload; trailing newline stripped", NULL, NULL },
	{ "kafka", "ssl_ca_location", OPT_PATH, SCOPE_WORKERS, false, CFG(ssl_ca_location), 0, 0, "",
	  "a readable file or directory, or empty",
	  "CA certificates; empty = librdkafka's default", NULL, NULL },
};
#define OPTION_COUNT ARRAY_LEN(option_table)

/* Keys of a [topic:NAME] section. Defaults depend on the topic's role (topic_roles). */
static const struct opt_spec topic_option_table[] = {
	{ "topic:NAME", "partitions", OPT_INT, SCOPE_WORKERS, false, TOPIC(partitions), 1, 100000, "3", NULL,
	  "partitions (requests: 6, others: 3)", NULL, NULL },
	{ "topic:NAME", "replication_factor", OPT_INT, SCOPE_WORKERS, false, TOPIC(replication_factor), 1, 32767, "1", NULL,
	  "replicas per partition", NULL, NULL },
	{ "topic:NAME", "retention_ms", OPT_MS, SCOPE_WORKERS, false, TOPIC(retention_ms), -1, RETENTION_MS_MAX, "604800000", NULL,
	  "-1 = forever (status: 1 day, others: 7 days)", NULL, NULL },
};
#define TOPIC_OPTION_COUNT ARRAY_LEN(topic_option_table)

/* The four topics drover uses, always present under the names of the *_topic keys. */
struct topic_role {
	size_t name_offset;
	int partitions;
	int replication_factor;
	long long retention_ms;
};

static const struct topic_role topic_roles[] = {
	{ CFG(requests_topic), 6, 1, 7 * DAY_MS },
	{ CFG(status_topic), 3, 1, DAY_MS },
	{ CFG(complete_topic), 3, 1, 7 * DAY_MS },
	{ CFG(failed_topic), 3, 1, 7 * DAY_MS },
};
static const struct topic_role extra_topic_role = { 0, 3, 1, 7 * DAY_MS };

static const char *const plain_sections[] = { "supervisor", "jobs", "queue", "spool", "kafka" };
#define SECTIONS_ALLOWED "supervisor, jobs, queue, spool, kafka, topic:NAME, librdkafka"

/* Where a value came from: a file line, an environment variable, or (neither) the default. */
struct origin {
	int line;
	const char *env;
};

struct topic_draft {
	char *name;
	int line;
	struct topic_config values;
	struct origin origin[TOPIC_OPTION_COUNT];
};

enum section_state { SECTION_NONE, SECTION_KNOWN, SECTION_UNKNOWN };

struct loader {
	struct config *cfg;
	struct config_errors *errs;
	const char *file;
	FILE *fp;
	char *raw;
	size_t raw_cap;
	int lineno;                 /* the line inih is working on */
	size_t bytes_read;
	int syntax_error_line;      /* last line the reader already reported */
	enum section_state section;
	int section_line;           /* of the current section's header */
	struct origin origin[OPTION_COUNT]; /* of each option's current value */
	int file_line[OPTION_COUNT];        /* where the file set it, for duplicates */
	bool invalid[OPTION_COUNT];         /* a bad value was reported: skip cross-checks */
	char env_names[OPTION_COUNT][ENV_NAME_MAX]; /* DROVER_<SECTION>_<KEY> */
	struct topic_draft *drafts;
	size_t draft_count;
	rd_kafka_conf_t *rdkafka_probe; /* validates [librdkafka] properties */
	bool client;                /* droverctl: skip what only the daemon's host must satisfy */
	bool oom;
};

/* ---- errors ------------------------------------------------------------ */

static void errors_addv(struct config_errors *errs, const char *fmt, va_list ap)
{
	char *line = NULL;
	if (vasprintf(&line, fmt, ap) < 0)
		return;
	char **grown = realloc(errs->lines, (errs->count + 1) * sizeof(*grown));
	if (grown == NULL) {
		free(line);
		return;
	}
	errs->lines = grown;
	errs->lines[errs->count++] = line;
}

static void errors_add(struct config_errors *errs, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void errors_add(struct config_errors *errs, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	errors_addv(errs, fmt, ap);
	va_end(ap);
}

/* One error about an option: "<where>: [section] key: <message>". */
static void report(struct loader *ld, const struct origin *o, const char *section, const char *key,
		   const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static void report(struct loader *ld, const struct origin *o, const char *section, const char *key,
		   const char *fmt, ...)
{
	char where[PATH_MAX + 64];
	char message[1024];
	va_list ap;

	if (o->env != NULL)
		snprintf(where, sizeof(where), "env %s", o->env);
	else if (o->line > 0)
		snprintf(where, sizeof(where), "%s:%d", ld->file, o->line);
	else
		snprintf(where, sizeof(where), "%s", ld->file);
	va_start(ap, fmt);
	vsnprintf(message, sizeof(message), fmt, ap);
	va_end(ap);
	if (section != NULL)
		errors_add(ld->errs, "%s: [%s] %s: %s", where, section, key, message);
	else
		errors_add(ld->errs, "%s: %s", where, message);
}

static struct origin at_line(const struct loader *ld)
{
	return (struct origin){ .line = ld->lineno, .env = NULL };
}

static char *dup_checked(struct loader *ld, const char *s)
{
	char *copy = strdup(s);
	if (copy == NULL)
		ld->oom = true;
	return copy;
}

void config_errors_clear(struct config_errors *errs)
{
	if (errs == NULL)
		return;
	for (size_t i = 0; i < errs->count; i++)
		free(errs->lines[i]);
	free(errs->lines);
	errs->lines = NULL;
	errs->count = 0;
}

void config_errors_add(struct config_errors *errs, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	errors_addv(errs, fmt, ap);
	va_end(ap);
}

void config_errors_join(const struct config_errors *errs, char *buf, size_t len)
{
	if (len == 0)
		return;
	buf[0] = '\0';
	size_t used = 0;
	for (size_t i = 0; errs != NULL && i < errs->count && used + 1 < len; i++) {
		int n = snprintf(buf + used, len - used, "%s%s", i > 0 ? "; " : "", errs->lines[i]);
		if (n < 0)
			break;
		used += (size_t)n;
	}
}

/* ---- parsing single values ------------------------------------------------ */

static void *field_of(const struct opt_spec *opt, void *base)
{
	return (char *)base + opt->offset;
}

static const void *const_field_of(const struct opt_spec *opt, const void *base)
{
	return (const char *)base + opt->offset;
}

static void join_names(const struct enum_name *names, char *buf, size_t len)
{
	size_t used = 0;
	buf[0] = '\0';
	for (size_t i = 0; names[i].name != NULL && used < len; i++) {
		int n = snprintf(buf + used, len - used, "%s%s", i > 0 ? ", " : "", names[i].name);
		if (n < 0)
			break;
		used += (size_t)n;
	}
}

static void describe_allowed(const struct opt_spec *opt, char *buf, size_t len)
{
	if (opt->allowed != NULL) {
		snprintf(buf, len, "%s", opt->allowed);
		return;
	}
	switch (opt->type) {
	case OPT_INT:
		snprintf(buf, len, "%lld..%lld", opt->min, opt->max);
		break;
	case OPT_BYTES:
		snprintf(buf, len, "%lld..%lld bytes, K/M/G suffixes", opt->min, opt->max);
		break;
	case OPT_LIMIT:
		snprintf(buf, len, "%lld..%lld, or empty", opt->min, opt->max);
		break;
	case OPT_LIMIT_BYTES:
		snprintf(buf, len, "%lld..%lld bytes, K/M/G suffixes, or empty", opt->min, opt->max);
		break;
	case OPT_MS:
		snprintf(buf, len, "%lld..%lld milliseconds", opt->min, opt->max);
		break;
	case OPT_BOOL:
		snprintf(buf, len, "true, false, yes, no, on, off, 1, 0");
		break;
	case OPT_ENUM:
	case OPT_CHOICE:
		join_names(opt->names, buf, len);
		break;
	case OPT_MODE:
		snprintf(buf, len, "an octal mode 0000..%04llo", opt->max);
		break;
	case OPT_CODES:
		snprintf(buf, len, "exit codes %lld..%lld separated by spaces or commas, or empty", opt->min, opt->max);
		break;
	case OPT_STRING:
	case OPT_PATH:
	case OPT_ARGV:
		snprintf(buf, len, "any text");
		break;
	}
}

enum number_status { NUMBER_OK, NUMBER_EMPTY, NUMBER_NOT_A_NUMBER, NUMBER_JUNK, NUMBER_RANGE };

static enum number_status parse_number(const char *text, long long min, long long max, long long *out)
{
	if (*text == '\0')
		return NUMBER_EMPTY;
	const char *digits = text + (*text == '-' || *text == '+');
	if (!isdigit((unsigned char)*digits))
		return NUMBER_NOT_A_NUMBER;
	char *end;
	errno = 0;
	long long value = strtoll(text, &end, 10);
	if (*end != '\0')
		return NUMBER_JUNK;
	if (errno == ERANGE || value < min || value > max)
		return NUMBER_RANGE;
	*out = value;
	return NUMBER_OK;
}

/* A number of bytes: digits and an optional K, M or G (powers of 1024, either case). */
static enum number_status parse_size(const char *text, long long min, long long max, long long *out)
{
	static const char units[] = "KMG";
	char digits[32];
	size_t len = strlen(text);
	const char *unit = len > 0 ? strchr(units, toupper((unsigned char)text[len - 1])) : NULL;
	if (unit == NULL)
		return parse_number(text, min, max, out);
	if (len - 1 >= sizeof(digits))
		return NUMBER_JUNK;
	memcpy(digits, text, len - 1);
	digits[len - 1] = '\0';
	long long value;
	enum number_status status = parse_number(digits, 0, LLONG_MAX, &value);
	if (status != NUMBER_OK)
		return status == NUMBER_EMPTY ? NUMBER_NOT_A_NUMBER : status;
	int shift = 10 * (int)(unit - units + 1);
	if (value > (max >> shift) || (value << shift) < min)
		return NUMBER_RANGE;
	*out = value << shift;
	return NUMBER_OK;
}

static const char *number_problem(enum number_status status)
{
	switch (status) {
	case NUMBER_EMPTY:
		return "is empty";
	case NUMBER_NOT_A_NUMBER:
		return "is not a number";
	case NUMBER_JUNK:
		return "has junk after the number";
	case NUMBER_RANGE:
		return "is out of range";
	case NUMBER_OK:
		break;
	}
	return "is fine";
}

static bool parse_bool(const char *text, bool *out)
{
	static const char *const yes[] = { "true", "yes", "on", "1" };
	static const char *const no[] = { "false", "no", "off", "0" };
	for (size_t i = 0; i < ARRAY_LEN(yes); i++) {
		if (strcasecmp(text, yes[i]) == 0) {
			*out = true;
			return true;
		}
		if (strcasecmp(text, no[i]) == 0) {
			*out = false;
			return true;
		}
	}
	return false;
}

static const struct enum_name *find_name(const struct enum_name *names, const char *text)
{
	for (size_t i = 0; names[i].name != NULL; i++)
		if (strcasecmp(names[i].name, text) == 0)
			return &names[i];
	return NULL;
}

/* "0660": one to four octal digits. */
static bool parse_mode(const char *text, long long max, int *out)
{
	size_t len = strlen(text);
	if (len == 0 || len > 4 || strspn(text, "01234567") != len)
		return false;
	long long value = strtoll(text, NULL, 8);
	if (value > max)
		return false;
	*out = (int)value;
	return true;
}

/* "64 65" or "64,65": the set of codes; on error *bad names the offending item. */
static bool parse_codes(const char *text, long long min, long long max, bool set[256], char *bad, size_t bad_len)
{
	memset(set, 0, 256 * sizeof(bool));
	const char *p = text;
	while (*p != '\0') {
		size_t skip = strspn(p, " \t,");
		p += skip;
		size_t len = strcspn(p, " \t,");
		if (len == 0)
			break;
		char item[32];
		snprintf(item, sizeof(item), "%.*s", (int)(len < sizeof(item) - 1 ? len : sizeof(item) - 1), p);
		long long code;
		if (len >= sizeof(item) || parse_number(item, min, max, &code) != NUMBER_OK) {
			snprintf(bad, bad_len, "%.*s", (int)len, p);
			return false;
		}
		set[code] = true;
		p += len;
	}
	return true;
}

static bool replace_string(struct loader *ld, char **slot, const char *value)
{
	char *copy = dup_checked(ld, value);
	if (copy == NULL)
		return false;
	free(*slot);
	*slot = copy;
	return true;
}

static bool set_handler(struct loader *ld, const struct opt_spec *opt, const char *value, const struct origin *o,
			const char *section)
{
	char allowed[256];
	const char *why = NULL;
	char **argv = argv_split(value, &why);

	if (!replace_string(ld, &ld->cfg->handler, value)) {
		argv_free(argv);
		return false;
	}
	argv_free(ld->cfg->handler_argv);
	ld->cfg->handler_argv = argv;
	if (argv == NULL) {
		describe_allowed(opt, allowed, sizeof(allowed));
		report(ld, o, section, opt->key, "%s (allowed: %s)", why, allowed);
		return false;
	}
	return true;
}

/* A number, a size or a limit (empty = CONFIG_LIMIT_UNSET) into field. */
static bool set_number(struct loader *ld, const struct opt_spec *opt, void *field, const char *value,
		       const char *allowed, const struct origin *o, const char *section)
{
	long long number = 0;
	bool limit = opt->type == OPT_LIMIT || opt->type == OPT_LIMIT_BYTES;
	if (limit && value[0] == '\0') {
		*(long long *)field = CONFIG_LIMIT_UNSET;
		return true;
	}
	enum number_status status = opt->type == OPT_BYTES || opt->type == OPT_LIMIT_BYTES
	                                    ? parse_size(value, opt->min, opt->max, &number)
	                                    : parse_number(value, opt->min, opt->max, &number);
	if (status != NUMBER_OK) {
		report(ld, o, section, opt->key, "\"%s\" %s (allowed: %s)", value, number_problem(status), allowed);
		return false;
	}
	if (opt->type == OPT_INT)
		*(int *)field = (int)number;
	else
		*(long long *)field = number;
	return true;
}

/* One of opt->names: its value (OPT_ENUM) or its name (OPT_CHOICE) into field. */
static bool set_named(struct loader *ld, const struct opt_spec *opt, void *field, const char *value,
		      const char *allowed, const struct origin *o, const char *section)
{
	const struct enum_name *name = find_name(opt->names, value);
	if (name == NULL) {
		report(ld, o, section, opt->key, "\"%s\" is not a known value (allowed: %s)", value, allowed);
		return false;
	}
	if (opt->type == OPT_ENUM) {
		*(int *)field = name->value;
		return true;
	}
	return replace_string(ld, (char **)field, name->name);
}

/*
 * Parses value for opt and stores it in base (a struct config or a struct
 * topic_config). On error reports it (never echoing a secret) and keeps the
 * previous value.
 */
static bool set_value(struct loader *ld, const struct opt_spec *opt, void *base, const char *value,
		      const struct origin *o, const char *section)
{
	void *field = field_of(opt, base);
	char allowed[256];

	describe_allowed(opt, allowed, sizeof(allowed));
	switch (opt->type) {
	case OPT_LIMIT:
	case OPT_LIMIT_BYTES:
	case OPT_INT:
	case OPT_BYTES:
	case OPT_MS:
		return set_number(ld, opt, field, value, allowed, o, section);
	case OPT_BOOL:
		if (!parse_bool(value, (bool *)field)) {
			report(ld, o, section, opt->key, "\"%s\" is not a boolean (allowed: %s)", value, allowed);
			return false;
		}
		return true;
	case OPT_ENUM:
	case OPT_CHOICE:
		return set_named(ld, opt, field, value, allowed, o, section);
	case OPT_MODE:
		if (!parse_mode(value, opt->max, (int *)field)) {
			report(ld, o, section, opt->key, "\"%s\" is not a permission mode (allowed: %s)", value, allowed);
			return false;
		}
		return true;
	case OPT_CODES: {
		bool set[256];
		char bad[64];
		if (!parse_codes(value, opt->min, opt->max, set, bad, sizeof(bad))) {
			report(ld, o, section, opt->key, "\"%s\" is not an exit code (allowed: %s)", bad, allowed);
			return false;
		}
		memcpy(field, set, sizeof(set));
		return true;
	}
	case OPT_STRING:
	case OPT_PATH:
		return replace_string(ld, (char **)field, value);
	case OPT_ARGV:
		return set_handler(ld, opt, value, o, section);
	}
	return false;
}

/* ---- the file ---------------------------------------------------------------- */

static const struct opt_spec *find_option(const struct opt_spec *table, size_t count, const char *section,
					  const char *key, size_t *index)
{
	for (size_t i = 0; i < count; i++) {
		if ((section == NULL || strcmp(table[i].section, section) == 0) && strcmp(table[i].key, key) == 0) {
			if (index != NULL)
				*index = i;
			return &table[i];
		}
	}
	return NULL;
}

static void section_keys(const struct opt_spec *table, size_t count, const char *section, char *buf, size_t len)
{
	size_t used = 0;
	buf[0] = '\0';
	for (size_t i = 0; i < count && used < len; i++) {
		if (section != NULL && strcmp(table[i].section, section) != 0)
			continue;
		int n = snprintf(buf + used, len - used, "%s%s", used > 0 ? ", " : "", table[i].key);
		if (n < 0)
			break;
		used += (size_t)n;
	}
	if (section != NULL && strcmp(section, "jobs") == 0 && used < len)
		snprintf(buf + used, len - used, ", env.NAME");
}

static bool valid_topic_name(const char *name)
{
	size_t len = strlen(name);
	if (len == 0 || len > TOPIC_NAME_MAX || strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
		return false;
	for (const char *p = name; *p != '\0'; p++)
		if (!isalnum((unsigned char)*p) && *p != '.' && *p != '_' && *p != '-')
			return false;
	return true;
}

static bool valid_env_name(const char *name)
{
	if (*name == '\0' || isdigit((unsigned char)*name))
		return false;
	for (const char *p = name; *p != '\0'; p++)
		if (!isalnum((unsigned char)*p) && *p != '_')
			return false;
	return true;
}

static bool known_section(const char *name)
{
	for (size_t i = 0; i < ARRAY_LEN(plain_sections); i++)
		if (strcmp(name, plain_sections[i]) == 0)
			return true;
	if (strcmp(name, "librdkafka") == 0)
		return true;
	return strncmp(name, "topic:", 6) == 0 && valid_topic_name(name + 6);
}

static void set_option_from_file(struct loader *ld, const char *section, const char *key, const char *value)
{
	size_t index;
	const struct opt_spec *opt = find_option(option_table, OPTION_COUNT, section, key, &index);
	struct origin here = at_line(ld);

	if (opt == NULL) {
		char keys[1024];
		section_keys(option_table, OPTION_COUNT, section, keys, sizeof(keys));
		report(ld, &here, section, key, "unknown key (allowed: %s)", keys);
		return;
	}
	if (ld->file_line[index] > 0) {
		report(ld, &here, section, key, "duplicate key, first set on line %d (allowed: each key once)",
		       ld->file_line[index]);
		return;
	}
	ld->file_line[index] = here.line;
	if (set_value(ld, opt, ld->cfg, value, &here, section))
		ld->origin[index] = here;
	else
		ld->invalid[index] = true;
}

static void set_handler_env(struct loader *ld, const char *key, const char *value)
{
	struct config *cfg = ld->cfg;
	const char *name = key + 4; /* after "env." */
	struct origin here = at_line(ld);

	if (!valid_env_name(name)) {
		report(ld, &here, "jobs", key, "\"%s\" is not an environment variable name "
		       "(allowed: env.NAME with letters, digits and '_', not starting with a digit)", name);
		return;
	}
	for (size_t i = 0; i < cfg->handler_env_count; i++) {
		if (strcmp(cfg->handler_env[i].key, name) == 0) {
			report(ld, &here, "jobs", key, "duplicate key, first set on line %d (allowed: each key once)",
			       cfg->handler_env[i].line);
			return;
		}
	}
	struct config_pair *grown = realloc(cfg->handler_env, (cfg->handler_env_count + 1) * sizeof(*grown));
	if (grown == NULL) {
		ld->oom = true;
		return;
	}
	cfg->handler_env = grown;
	struct config_pair *pair = &cfg->handler_env[cfg->handler_env_count];
	pair->key = dup_checked(ld, name);
	pair->value = dup_checked(ld, value);
	pair->line = here.line;
	if (pair->key == NULL || pair->value == NULL) {
		free(pair->key);
		free(pair->value);
		return;
	}
	cfg->handler_env_count++;
}

/*
 * Sets a librdkafka property (a new one, or replacing one with the same key
 * when replace is set), after librdkafka itself accepted it.
 */
static void set_librdkafka(struct loader *ld, const char *key, const char *value, const struct origin *o,
			   bool replace)
{
	struct config *cfg = ld->cfg;
	char why[512];

	for (size_t i = 0; i < cfg->librdkafka_count; i++) {
		if (strcmp(cfg->librdkafka[i].key, key) != 0)
			continue;
		if (!replace) {
			report(ld, o, "librdkafka", key, "duplicate key, first set on line %d (allowed: each key once)",
			       cfg->librdkafka[i].line);
			return;
		}
	}
	if (ld->rdkafka_probe != NULL &&
	    rd_kafka_conf_set(ld->rdkafka_probe, key, value, why, sizeof(why)) != RD_KAFKA_CONF_OK) {
		report(ld, o, "librdkafka", key, "%s (allowed: a librdkafka property, see CONFIGURATION.md)", why);
		return;
	}
	char *value_copy = dup_checked(ld, value);
	if (value_copy == NULL)
		return;
	for (size_t i = 0; i < cfg->librdkafka_count; i++) {
		if (strcmp(cfg->librdkafka[i].key, key) == 0) {
			free(cfg->librdkafka[i].value);
			cfg->librdkafka[i].value = value_copy;
			cfg->librdkafka[i].line = o->line;
			return;
		}
	}
	struct config_pair *grown = realloc(cfg->librdkafka, (cfg->librdkafka_count + 1) * sizeof(*grown));
	char *key_copy = dup_checked(ld, key);
	if (grown == NULL || key_copy == NULL) {
		if (grown != NULL)
			cfg->librdkafka = grown;
		ld->oom = true;
		free(key_copy);
		free(value_copy);
		return;
	}
	cfg->librdkafka = grown;
	cfg->librdkafka[cfg->librdkafka_count++] = (struct config_pair){ key_copy, value_copy, o->line };
}

static struct topic_draft *find_draft(struct loader *ld, const char *name)
{
	for (size_t i = 0; i < ld->draft_count; i++)
		if (strcmp(ld->drafts[i].name, name) == 0)
			return &ld->drafts[i];
	struct topic_draft *grown = realloc(ld->drafts, (ld->draft_count + 1) * sizeof(*grown));
	if (grown == NULL) {
		ld->oom = true;
		return NULL;
	}
	ld->drafts = grown;
	struct topic_draft *draft = &ld->drafts[ld->draft_count];
	memset(draft, 0, sizeof(*draft));
	draft->name = dup_checked(ld, name);
	if (draft->name == NULL)
		return NULL;
	draft->line = ld->section_line;
	ld->draft_count++;
	return draft;
}

static void set_topic_option(struct loader *ld, const char *section, const char *key, const char *value)
{
	size_t index;
	const struct opt_spec *opt = find_option(topic_option_table, TOPIC_OPTION_COUNT, NULL, key, &index);
	struct origin here = at_line(ld);

	if (opt == NULL) {
		char keys[256];
		section_keys(topic_option_table, TOPIC_OPTION_COUNT, NULL, keys, sizeof(keys));
		report(ld, &here, section, key, "unknown key (allowed: %s)", keys);
		return;
	}
	struct topic_draft *draft = find_draft(ld, section + 6);
	if (draft == NULL)
		return;
	if (draft->origin[index].line > 0) {
		report(ld, &here, section, key, "duplicate key, first set on line %d (allowed: each key once)",
		       draft->origin[index].line);
		return;
	}
	set_value(ld, opt, &draft->values, value, &here, section);
	draft->origin[index] = here;
}

/* inih calls this right after read_line handed it the line, so ld->lineno is the key's line. */
static int handle_key(void *user, const char *section, const char *key, const char *value)
{
	struct loader *ld = user;

	if (value == NULL)
		value = "";
	if (strncmp(section, "topic:", 6) == 0)
		set_topic_option(ld, section, key, value);
	else if (strcmp(section, "librdkafka") == 0) {
		struct origin here = at_line(ld);
		set_librdkafka(ld, key, value, &here, false);
	} else if (strcmp(section, "jobs") == 0 && strncmp(key, "env.", 4) == 0)
		set_handler_env(ld, key, value);
	else
		set_option_from_file(ld, section, key, value);
	return 1; /* errors are collected here, not counted by inih */
}

static void report_syntax(struct loader *ld, const char *what)
{
	errors_add(ld->errs, "%s:%d: %s", ld->file, ld->lineno, what);
	ld->syntax_error_line = ld->lineno;
}

/*
 * Puts the line in the shape inih parses without surprises: no BOM, no
 * leading blanks (so it is never taken as a multi-line continuation), no
 * inline "; comment" (a ';' after a blank, the rule of inih's inline
 * comments; Debian builds it with them on, but we do not depend on that), no
 * trailing blanks. Returns the start; the line is cut in place.
 */
static char *normalize_line(char *line, int lineno)
{
	if (lineno == 1 && strncmp(line, "\xEF\xBB\xBF", 3) == 0)
		line += 3;
	while (*line == ' ' || *line == '\t')
		line++;
	if (*line != ';' && *line != '#') {
		for (char *p = line + 1; *line != '\0' && *p != '\0'; p++) {
			if (*p == ';' && (p[-1] == ' ' || p[-1] == '\t')) {
				*p = '\0';
				break;
			}
		}
	}
	size_t len = strlen(line);
	while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r' || line[len - 1] == ' ' ||
			   line[len - 1] == '\t'))
		line[--len] = '\0';
	return line;
}

/*
 * Checks what inih would reject or what needs the line number of a section
 * header. Returns false when the line was reported and must not reach inih.
 */
static bool check_line(struct loader *ld, const char *line)
{
	if (*line == '\0' || *line == ';' || *line == '#')
		return true;
	if (*line == '[') {
		const char *end = strchr(line, ']');
		if (end == NULL) {
			report_syntax(ld, "syntax error: section header without ']' (allowed: [section])");
			ld->section = SECTION_UNKNOWN;
			return false;
		}
		char name[LINE_CHARS_MAX];
		snprintf(name, sizeof(name), "%.*s", (int)(end - line - 1), line + 1);
		ld->section_line = ld->lineno;
		if (known_section(name)) {
			ld->section = SECTION_KNOWN;
		} else {
			errors_add(ld->errs, "%s:%d: [%s]: unknown section (allowed: " SECTIONS_ALLOWED ")", ld->file,
				   ld->lineno, name);
			ld->section = SECTION_UNKNOWN;
		}
		return true;
	}
	size_t key_len = strcspn(line, "=:");
	if (line[key_len] == '\0') {
		report_syntax(ld, "syntax error: expected \"key = value\" or \"[section]\"");
		return false;
	}
	if (ld->section == SECTION_UNKNOWN)
		return false; /* reported once, at the header */
	if (ld->section == SECTION_NONE) {
		while (key_len > 0 && (line[key_len - 1] == ' ' || line[key_len - 1] == '\t'))
			key_len--;
		errors_add(ld->errs, "%s:%d: %.*s: key outside any section (allowed: after one of [" SECTIONS_ALLOWED
			   "])", ld->file, ld->lineno, (int)key_len, line);
		return false;
	}
	return true;
}

/* inih's reader: one line per call, counted, normalized and pre-checked. */
static char *read_line(char *buf, int size, void *stream)
{
	struct loader *ld = stream;
	ssize_t n = getline(&ld->raw, &ld->raw_cap, ld->fp);

	if (n < 0) {
		if (ferror(ld->fp))
			errors_add(ld->errs, "%s:%d: read error: %s", ld->file, ld->lineno + 1, strerror(errno));
		return NULL;
	}
	ld->lineno++;
	ld->bytes_read += (size_t)n;
	if (ld->bytes_read > CONFIG_FILE_MAX) { /* it grew after the size check */
		errors_add(ld->errs, "%s:%d: file too large (allowed: at most %d bytes)", ld->file, ld->lineno,
			   CONFIG_FILE_MAX);
		return NULL;
	}
	bool has_nul = strlen(ld->raw) != (size_t)n;
	char *line = normalize_line(ld->raw, ld->lineno);
	size_t len = strlen(line);
	bool pass;
	if (has_nul) {
		report_syntax(ld, "syntax error: NUL byte in line");
		pass = false;
	} else if (len + 2 >= (size_t)size) {
		char what[128];
		snprintf(what, sizeof(what), "line too long (allowed: at most %d characters)", size - 3);
		report_syntax(ld, what);
		pass = false;
	} else {
		pass = check_line(ld, line);
	}
	if (!pass)
		line[0] = '\0';
	len = strlen(line);
	memcpy(buf, line, len);
	buf[len] = '\n';
	buf[len + 1] = '\0';
	return buf;
}

/*
 * Opens the configuration without ever blocking or reading without bound: a
 * FIFO would block open(2) and read(2), /dev/zero would never end. Only a
 * regular file of at most CONFIG_FILE_MAX bytes (or /dev/null) is read.
 */
static FILE *open_config_file(struct config_errors *errs, const char *path)
{
	const char *refusal;
	int fd = open_bounded(path, CONFIG_FILE_MAX, NULL, &refusal); /* /dev/null: the environment alone */
	if (fd < 0 && refusal == NULL) {
		errors_add(errs, "%s: cannot open: %s", path, strerror(errno));
		return NULL;
	}
	FILE *fp = fd >= 0 ? fdopen(fd, "r") : NULL;
	if (fp == NULL) {
		errors_add(errs, "%s: cannot read: %s (allowed: a regular file of at most %d bytes)", path,
			   refusal != NULL ? refusal : strerror(errno), CONFIG_FILE_MAX);
		if (fd >= 0)
			close(fd);
	}
	return fp;
}

/* Returns false when the file cannot be read at all. */
static bool parse_file(struct loader *ld, const char *path)
{
	ld->fp = open_config_file(ld->errs, path);
	if (ld->fp == NULL)
		return false;
	/* Debian's inih takes its line buffer size at run time; handler lines can be long. */
	int saved_max_line = ini_max_line;
	ini_max_line = LINE_CHARS_MAX + 3;
	int first_error = ini_parse_stream(read_line, ld, handle_key, ld);
	ini_max_line = saved_max_line;
	if (first_error > 0 && first_error != ld->syntax_error_line) {
		/* Should not happen: read_line hands inih only lines it parses. */
		errors_add(ld->errs, "%s:%d: syntax error", path, first_error);
	} else if (first_error < 0) {
		ld->oom = true;
	}
	fclose(ld->fp);
	ld->fp = NULL;
	return true;
}

/* ---- the environment ------------------------------------------------------ */

static void make_env_name(const char *section, const char *key, char *buf, size_t len)
{
	snprintf(buf, len, "DROVER_%s_%s", section, key);
	for (char *p = buf; *p != '\0'; p++)
		*p = (*p == '.' || *p == '-' || *p == ':') ? '_' : (char)toupper((unsigned char)*p);
}

static bool is_text_type(enum opt_type type)
{
	return type == OPT_STRING || type == OPT_PATH || type == OPT_ARGV;
}

/*
 * Secrets taken out of the environment (config_hide_secrets) live on here,
 * so that environment overrides stay in force across reloads while no other
 * process (a handler of the same uid reading /proc/PID/environ) can see them.
 */
static char **secret_env;
static size_t secret_env_count;

/* The environment as the loader sees it: environ, then the hidden secrets. NULL past the end. */
static const char *env_entry(size_t index)
{
	size_t count = 0;
	while (environ != NULL && environ[count] != NULL)
		count++;
	if (index < count)
		return environ[index];
	index -= count;
	return index < secret_env_count ? secret_env[index] : NULL;
}

static const char *env_get(const char *name)
{
	size_t len = strlen(name);
	for (size_t i = 0; i < secret_env_count; i++)
		if (strncmp(secret_env[i], name, len) == 0 && secret_env[i][len] == '=')
			return secret_env[i] + len + 1;
	return getenv(name);
}

/* Moves one secret out of environ and wipes its bytes where they were (what /proc/PID/environ shows). */
static int hide_secret(char *entry)
{
	char **grown = realloc(secret_env, (secret_env_count + 1) * sizeof(*grown));
	if (grown == NULL)
		return -1;
	secret_env = grown;
	char *copy = strdup(entry);
	if (copy == NULL)
		return -1;
	size_t name_len = strcspn(entry, "=");
	char name[ENV_NAME_MAX * 2];
	snprintf(name, sizeof(name), "%.*s", (int)name_len, entry);
	if (unsetenv(name) < 0) {
		explicit_bzero(copy, strlen(copy));
		free(copy);
		return -1;
	}
	secret_env[secret_env_count++] = copy;
	explicit_bzero(entry, strlen(entry));
	return 0;
}

size_t config_hidden_secrets(const char *const **entries)
{
	*entries = (const char *const *)secret_env;
	return secret_env_count;
}

int config_hide_secrets(void)
{
	int rc = 0;
	for (size_t i = 0; environ != NULL && environ[i] != NULL;) {
		if (!config_env_is_secret(environ[i])) {
			i++;
			continue;
		}
		if (hide_secret(environ[i]) < 0) {
			rc = -1;
			i++; /* left in place: the caller reports it */
		}
	}
	return rc;
}

/* An empty variable means "unset" for anything but text (VAR= in an env file). */
static const char *env_value(const struct opt_spec *opt, const char *name)
{
	const char *value = env_get(name);
	if (value == NULL || (*value == '\0' && !is_text_type(opt->type)))
		return NULL;
	return value;
}

static void apply_env_option(struct loader *ld, size_t index, const char *name)
{
	const struct opt_spec *opt = &option_table[index];
	const char *value = env_value(opt, name);
	if (value == NULL)
		return;
	struct origin o = { .line = 0, .env = name };
	if (set_value(ld, opt, ld->cfg, value, &o, opt->section)) {
		ld->origin[index] = o;
		ld->invalid[index] = false; /* the environment replaced the file's bad value */
	} else {
		ld->invalid[index] = true;
	}
}

static size_t option_index(const char *section, const char *key)
{
	size_t index = 0;
	find_option(option_table, OPTION_COUNT, section, key, &index);
	return index;
}

/* The option's value came from its seed variable (KAFKA_SASL_USERNAME...). */
static bool seeded(const struct loader *ld, const char *section, const char *key)
{
	size_t index = option_index(section, key);
	const char *env = ld->origin[index].env;
	return env != NULL && option_table[index].seed_env != NULL && strcmp(env, option_table[index].seed_env) == 0;
}

/* USE_KAFKA and KAFKA_SSL: booleans of the seeds that select an enum value. */
static bool seed_flag(struct loader *ld, const char *name, size_t index, bool *flag)
{
	const char *value = env_get(name);
	const char *stronger = env_get(ld->env_names[index]);
	if (value == NULL || *value == '\0' || (stronger != NULL && *stronger != '\0'))
		return false; /* DROVER_<SECTION>_<KEY> wins */
	if (!parse_bool(value, flag)) {
		struct origin o = { .line = 0, .env = name };
		report(ld, &o, option_table[index].section, option_table[index].key,
		       "\"%s\" is not a boolean (allowed: true, false, yes, no, on, off, 1, 0)", value);
		ld->invalid[index] = true;
		return false;
	}
	ld->origin[index] = (struct origin){ .line = 0, .env = name };
	return true;
}

static void apply_seed_flags(struct loader *ld)
{
	struct config *cfg = ld->cfg;
	bool flag;

	if (seed_flag(ld, "USE_KAFKA", option_index("queue", "backend"), &flag))
		cfg->backend = flag ? BACKEND_KAFKA : BACKEND_SPOOL;
	size_t protocol = option_index("kafka", "security_protocol");
	bool sasl = cfg->sasl_username != NULL && cfg->sasl_username[0] != '\0';
	if (seed_flag(ld, "KAFKA_SSL", protocol, &flag)) {
		if (flag)
			cfg->security_protocol = sasl ? SECURITY_SASL_SSL : SECURITY_SSL;
		else
			cfg->security_protocol = sasl ? SECURITY_SASL_PLAINTEXT : SECURITY_PLAINTEXT;
	} else if (sasl && seeded(ld, "kafka", "sasl_username") && ld->origin[protocol].line == 0 &&
	           ld->origin[protocol].env == NULL) {
		/* KAFKA_SASL_USERNAME/PASSWORD alone, protocol not set anywhere: SASL without TLS. */
		cfg->security_protocol = SECURITY_SASL_PLAINTEXT;
		ld->origin[protocol] = ld->origin[option_index("kafka", "sasl_username")];
	}
}

/* DROVER_LIBRDKAFKA_STATISTICS_INTERVAL_MS=5000 sets statistics.interval.ms. */
static void apply_librdkafka_env(struct loader *ld)
{
	static const char prefix[] = "DROVER_LIBRDKAFKA_";
	const char *entry;
	for (size_t i = 0; (entry = env_entry(i)) != NULL; i++) {
		if (strncmp(entry, prefix, sizeof(prefix) - 1) != 0)
			continue;
		const char *rest = entry + sizeof(prefix) - 1;
		const char *eq = strchr(rest, '=');
		if (eq == NULL || eq == rest)
			continue;
		char key[256];
		char name[ENV_NAME_MAX + 64];
		snprintf(key, sizeof(key), "%.*s", (int)(eq - rest), rest);
		snprintf(name, sizeof(name), "%.*s", (int)(eq - entry), entry);
		for (char *p = key; *p != '\0'; p++)
			*p = *p == '_' ? '.' : (char)tolower((unsigned char)*p);
		struct origin o = { .line = 0, .env = name };
		set_librdkafka(ld, key, eq + 1, &o, true);
	}
}

/* A DROVER_<SECTION>_ variable that names no option is most likely a typo. */
static void report_unknown_env(struct loader *ld)
{
	const char *entry;
	for (size_t n = 0; (entry = env_entry(n)) != NULL; n++) {
		if (strncmp(entry, "DROVER_", 7) != 0)
			continue;
		size_t name_len = strcspn(entry, "=");
		if (name_len >= ENV_NAME_MAX)
			continue;
		char name[ENV_NAME_MAX];
		snprintf(name, sizeof(name), "%.*s", (int)name_len, entry);
		for (size_t s = 0; s < ARRAY_LEN(plain_sections); s++) {
			char prefix[64];
			make_env_name(plain_sections[s], "", prefix, sizeof(prefix));
			size_t prefix_len = strlen(prefix);
			if (strncmp(name, prefix, prefix_len) != 0 || name[prefix_len] == '\0')
				continue;
			bool known = false;
			for (size_t i = 0; i < OPTION_COUNT && !known; i++)
				known = strcmp(ld->env_names[i], name) == 0;
			if (known)
				break;
			char key[ENV_NAME_MAX];
			char keys[1024];
			snprintf(key, sizeof(key), "%s", name + prefix_len);
			for (char *p = key; *p != '\0'; p++)
				*p = (char)tolower((unsigned char)*p);
			section_keys(option_table, OPTION_COUNT, plain_sections[s], keys, sizeof(keys));
			errors_add(ld->errs, "env %s: [%s] %s: unknown key (allowed: %s)", name, plain_sections[s], key,
				   keys);
			break;
		}
	}
}

static void apply_environment(struct loader *ld)
{
	for (size_t i = 0; i < OPTION_COUNT; i++) {
		if (option_table[i].seed_env != NULL)
			apply_env_option(ld, i, option_table[i].seed_env);
		apply_env_option(ld, i, ld->env_names[i]);
	}
	apply_seed_flags(ld);
	apply_librdkafka_env(ld);
	report_unknown_env(ld);
}

/* ---- validation and derived values ------------------------------------------ */

static void report_option(struct loader *ld, const char *section, const char *key, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static void report_option(struct loader *ld, const char *section, const char *key, const char *fmt, ...)
{
	char message[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(message, sizeof(message), fmt, ap);
	va_end(ap);
	report(ld, &ld->origin[option_index(section, key)], section, key, "%s", message);
}

static int check_executable(const char *path)
{
	struct stat st;
	if (stat(path, &st) != 0)
		return errno;
	if (S_ISDIR(st.st_mode))
		return EISDIR;
	if (!S_ISREG(st.st_mode))
		return EACCES;
	if (access(path, X_OK) != 0)
		return errno;
	return 0;
}

/* Finds name like execvp would; returns a malloc'd absolute-or-as-found path, or NULL with *err. */
static char *search_path(const char *name, int *err)
{
	const char *path = getenv("PATH");
	if (path == NULL || *path == '\0')
		path = "/usr/local/bin:/usr/bin:/bin";
	*err = ENOENT;
	while (*path != '\0') {
		size_t len = strcspn(path, ":");
		char *candidate = NULL;
		if (asprintf(&candidate, "%.*s/%s", (int)(len == 0 ? 1 : len), len == 0 ? "." : path, name) < 0) {
			*err = ENOMEM;
			return NULL;
		}
		int e = check_executable(candidate);
		if (e == 0)
			return candidate;
		if (e != ENOENT && e != ENOTDIR)
			*err = e; /* a found but unusable file explains more than "not found" */
		free(candidate);
		path += len + (path[len] == ':');
	}
	return NULL;
}

/* A relative program path would change meaning under working_dir or after -d's chdir /. */
static char *absolute_path(const char *path, int *err)
{
	if (path[0] == '/')
		return strdup(path);
	char cwd[PATH_MAX];
	char *result = NULL;
	if (getcwd(cwd, sizeof(cwd)) == NULL) {
		*err = errno;
		return NULL;
	}
	if (asprintf(&result, "%s/%s", cwd, path[0] == '.' && path[1] == '/' ? path + 2 : path) < 0) {
		*err = ENOMEM;
		return NULL;
	}
	return result;
}

static void resolve_handler(struct loader *ld)
{
	struct config *cfg = ld->cfg;
	if (cfg->handler_argv == NULL)
		return; /* already reported by the split */
	const char *program = cfg->handler_argv[0];
	int err = 0;
	char *resolved;

	if (strchr(program, '/') == NULL) {
		resolved = search_path(program, &err);
		if (resolved == NULL) {
			if (err == ENOENT)
				report_option(ld, "jobs", "handler", "\"%s\" not found in PATH (allowed: an executable file; "
					      "a name without '/' is looked up in PATH)", program);
			else
				report_option(ld, "jobs", "handler", "cannot run \"%s\": %s (allowed: an executable file)",
					      program, strerror(err));
			return;
		}
	} else {
		err = check_executable(program);
		if (err != 0) {
			report_option(ld, "jobs", "handler", "cannot run \"%s\": %s (allowed: an executable file)", program,
				      strerror(err));
			return;
		}
		resolved = absolute_path(program, &err);
		if (resolved == NULL) {
			report_option(ld, "jobs", "handler", "cannot resolve \"%s\": %s (allowed: an executable file)",
				      program, strerror(err));
			return;
		}
	}
	free(cfg->handler_argv[0]);
	cfg->handler_argv[0] = resolved;
}

static bool is_valid(const struct loader *ld, const char *section, const char *key)
{
	return !ld->invalid[option_index(section, key)];
}

static bool is_explicit(const struct loader *ld, const char *section, const char *key)
{
	const struct origin *o = &ld->origin[option_index(section, key)];
	return o->line > 0 || o->env != NULL;
}

/* Blames whichever of the two the operator set (the max when both were). */
static void check_delay_bounds(struct loader *ld)
{
	const struct config *cfg = ld->cfg;
	if (cfg->restart_delay_ms <= cfg->restart_delay_max_ms || !is_valid(ld, "supervisor", "restart_delay_ms") ||
	    !is_valid(ld, "supervisor", "restart_delay_max_ms"))
		return;
	if (is_explicit(ld, "supervisor", "restart_delay_max_ms") || !is_explicit(ld, "supervisor", "restart_delay_ms"))
		report_option(ld, "supervisor", "restart_delay_max_ms", "%lld is less than restart_delay_ms %lld "
			      "(allowed: at least restart_delay_ms)", cfg->restart_delay_max_ms, cfg->restart_delay_ms);
	else
		report_option(ld, "supervisor", "restart_delay_ms", "%lld is greater than restart_delay_max_ms %lld "
			      "(allowed: at most restart_delay_max_ms)", cfg->restart_delay_ms, cfg->restart_delay_max_ms);
}

static void check_http_listen(struct loader *ld)
{
	struct listen_addr addr;
	char why[128];
	const char *text = ld->cfg->http_listen;
	if (text[0] != '\0' && listen_addr_parse(text, &addr, why, sizeof(why)) < 0)
		report_option(ld, "supervisor", "http_listen", "\"%.100s\": %s (allowed: IPV4:PORT or [IPV6]:PORT, "
			      "numeric, e.g. 127.0.0.1:9464 or [::1]:9464; or empty = off)", text, why);
}

static void validate_supervisor(struct loader *ld)
{
	struct config *cfg = ld->cfg;

	check_delay_bounds(ld);
	if (cfg->control_socket[0] == '\0')
		report_option(ld, "supervisor", "control_socket", "empty (allowed: a socket path)");
	else if (strlen(cfg->control_socket) >= sizeof(((struct sockaddr_un *)NULL)->sun_path))
		report_option(ld, "supervisor", "control_socket", "path too long for a Unix socket (allowed: at most "
			      "%zu bytes)", sizeof(((struct sockaddr_un *)NULL)->sun_path) - 1);
	check_http_listen(ld);
	if (cfg->log_file[0] == '\0')
		report_option(ld, "supervisor", "log_file", "empty (allowed: \"-\" for stderr, or a file path)");
	if (ld->client)
		return;
	if (cfg->user[0] != '\0' && getpwnam(cfg->user) == NULL)
		report_option(ld, "supervisor", "user", "no such user \"%s\" (allowed: a user name, or empty)", cfg->user);
	if (cfg->group[0] != '\0' && getgrnam(cfg->group) == NULL)
		report_option(ld, "supervisor", "group", "no such group \"%s\" (allowed: a group name, or empty)",
			      cfg->group);
}

static void validate_jobs(struct loader *ld)
{
	struct config *cfg = ld->cfg;
	struct stat st;

	if (!ld->client)
		resolve_handler(ld);
	if (cfg->working_dir[0] != '\0' && !ld->client) {
		if (stat(cfg->working_dir, &st) != 0)
			report_option(ld, "jobs", "working_dir", "cannot use \"%s\": %s (allowed: an existing directory, "
				      "or empty)", cfg->working_dir, strerror(errno));
		else if (!S_ISDIR(st.st_mode))
			report_option(ld, "jobs", "working_dir", "\"%s\" is not a directory (allowed: an existing "
				      "directory, or empty)", cfg->working_dir);
	}
	if (cfg->spool_dir[0] == '\0')
		report_option(ld, "spool", "dir", "empty (allowed: a directory path)");
	/* A jitter on no limit would silently do nothing: the operator meant a limit. */
	if (cfg->handler_max_jobs_jitter > 0 && cfg->handler_max_jobs == 0 && is_valid(ld, "jobs", "handler_max_jobs") &&
	    is_valid(ld, "jobs", "handler_max_jobs_jitter"))
		report_option(ld, "jobs", "handler_max_jobs_jitter", "%d without handler_max_jobs (allowed: 0 while "
			      "handler_max_jobs is 0)", cfg->handler_max_jobs_jitter);
}

static void validate_topic_names(struct loader *ld)
{
	static const char *const keys[] = { "requests_topic", "status_topic", "complete_topic", "failed_topic" };
	struct config *cfg = ld->cfg;

	for (size_t i = 0; i < ARRAY_LEN(topic_roles); i++) {
		const char *name = *(char *const *)((const char *)cfg + topic_roles[i].name_offset);
		if (name[0] == '\0') {
			if (topic_roles[i].name_offset != CFG(status_topic))
				report_option(ld, "kafka", keys[i], "empty (allowed: a topic name)");
			continue;
		}
		if (!valid_topic_name(name)) {
			report_option(ld, "kafka", keys[i], "\"%s\" is not a valid topic name (allowed: 1..%d letters, "
				      "digits, '.', '_', '-')", name, TOPIC_NAME_MAX);
			continue;
		}
		for (size_t j = 0; j < i; j++) {
			const char *other = *(char *const *)((const char *)cfg + topic_roles[j].name_offset);
			if (strcmp(name, other) != 0)
				continue;
			/* blame the one the operator set */
			bool blame_later = is_explicit(ld, "kafka", keys[i]) || !is_explicit(ld, "kafka", keys[j]);
			report_option(ld, "kafka", keys[blame_later ? i : j], "\"%s\" is also %s (allowed: four different "
				      "topics)", name, keys[blame_later ? j : i]);
		}
	}
}

static void read_password_file(struct loader *ld)
{
	struct config *cfg = ld->cfg;
	char why[PATH_MAX + 64];
	char *secret = read_secret_file(cfg->sasl_password_file, why, sizeof(why));

	if (secret == NULL) {
		report_option(ld, "kafka", "sasl_password_file", "%s (allowed: %s)", why,
			      errno == EBADMSG ? "a file holding the password" : "a readable file, or empty");
		return;
	}
	secret_free(cfg->sasl_password);
	cfg->sasl_password = secret;
}

static bool is_sasl(enum security_protocol protocol)
{
	return protocol == SECURITY_SASL_PLAINTEXT || protocol == SECURITY_SASL_SSL;
}

static void validate_kafka(struct loader *ld)
{
	struct config *cfg = ld->cfg;
	const char *protocol = config_security_name(cfg->security_protocol);

	if (cfg->backend == BACKEND_KAFKA && is_valid(ld, "queue", "backend") && cfg->kafka_brokers[0] == '\0')
		report_option(ld, "kafka", "brokers", "empty while the queue backend is kafka (allowed: host:port"
			      "[,host:port...])");
	validate_topic_names(ld);
	if (cfg->sasl_password[0] != '\0' && cfg->sasl_password_file[0] != '\0')
		report_option(ld, "kafka", "sasl_password_file", "set together with sasl_password (allowed: one of "
			      "sasl_password, sasl_password_file)");
	else if (cfg->sasl_password_file[0] != '\0')
		read_password_file(ld);
	if (!is_valid(ld, "kafka", "security_protocol")) {
		/* reported already; the SASL checks below would only add noise */
	} else if (is_sasl(cfg->security_protocol)) {
		if (cfg->sasl_username[0] == '\0')
			report_option(ld, "kafka", "security_protocol", "%s without sasl_username (allowed: set "
				      "sasl_username, or plaintext/ssl)", protocol);
		if (cfg->sasl_password[0] == '\0' && cfg->sasl_password_file[0] == '\0')
			report_option(ld, "kafka", "security_protocol", "%s without sasl_password or sasl_password_file "
				      "(allowed: set one of them, or plaintext/ssl)", protocol);
	} else if (cfg->sasl_username[0] != '\0') {
		report_option(ld, "kafka", "sasl_username", "set while security_protocol is %s, so it would be ignored "
			      "(allowed: security_protocol sasl_plaintext or sasl_ssl)", protocol);
	}
	if (cfg->ssl_ca_location[0] != '\0' && access(cfg->ssl_ca_location, R_OK) != 0)
		report_option(ld, "kafka", "ssl_ca_location", "cannot read \"%s\": %s (allowed: a readable file or "
			      "directory, or empty)", cfg->ssl_ca_location, strerror(errno));
	if (cfg->instance_id[0] == '\0') {
		char host[256] = "";
		if (gethostname(host, sizeof(host) - 1) != 0 || host[0] == '\0')
			snprintf(host, sizeof(host), "localhost");
		replace_string(ld, &cfg->instance_id, host);
	}
}

static bool add_topic(struct loader *ld, const char *name, const struct topic_role *role,
		      const struct topic_draft *draft)
{
	struct config *cfg = ld->cfg;
	struct topic_config *grown = realloc(cfg->topics, (cfg->topic_count + 1) * sizeof(*grown));
	if (grown == NULL) {
		ld->oom = true;
		return false;
	}
	cfg->topics = grown;
	struct topic_config *t = &cfg->topics[cfg->topic_count];
	*t = (struct topic_config){
		.name = dup_checked(ld, name),
		.partitions = role->partitions,
		.replication_factor = role->replication_factor,
		.retention_ms = role->retention_ms,
		.line = draft != NULL ? draft->line : 0,
	};
	if (t->name == NULL)
		return false;
	if (draft != NULL) {
		if (draft->origin[0].line > 0)
			t->partitions = draft->values.partitions;
		if (draft->origin[1].line > 0)
			t->replication_factor = draft->values.replication_factor;
		if (draft->origin[2].line > 0)
			t->retention_ms = draft->values.retention_ms;
	}
	cfg->topic_count++;
	return true;
}

/* The four role topics under their configured names, then any other [topic:NAME]. */
static void build_topics(struct loader *ld)
{
	struct config *cfg = ld->cfg;
	bool used[ld->draft_count + 1];
	memset(used, 0, sizeof(used));

	_Static_assert(TOPIC_OPTION_COUNT == 3, "add_topic knows the topic options by position");
	for (size_t i = 0; i < ARRAY_LEN(topic_roles); i++) {
		const char *name = *(char *const *)((const char *)cfg + topic_roles[i].name_offset);
		if (name[0] == '\0' || !valid_topic_name(name))
			continue;
		bool seen = false;
		for (size_t t = 0; t < cfg->topic_count; t++)
			seen = seen || strcmp(cfg->topics[t].name, name) == 0;
		if (seen)
			continue; /* reported as a duplicate name */
		const struct topic_draft *draft = NULL;
		for (size_t d = 0; d < ld->draft_count; d++) {
			if (strcmp(ld->drafts[d].name, name) == 0) {
				draft = &ld->drafts[d];
				used[d] = true;
			}
		}
		add_topic(ld, name, &topic_roles[i], draft);
	}
	for (size_t d = 0; d < ld->draft_count; d++)
		if (!used[d])
			add_topic(ld, ld->drafts[d].name, &extra_topic_role, &ld->drafts[d]);
}

static void validate(struct loader *ld)
{
	validate_supervisor(ld);
	validate_jobs(ld);
	validate_kafka(ld);
	build_topics(ld);
}

/* ---- load and free ------------------------------------------------------------- */

static void set_defaults(struct loader *ld)
{
	static const struct origin builtin = { 0, NULL };
	for (size_t i = 0; i < OPTION_COUNT; i++) {
		const struct opt_spec *opt = &option_table[i];
		make_env_name(opt->section, opt->key, ld->env_names[i], sizeof(ld->env_names[i]));
		set_value(ld, opt, ld->cfg, opt->def, &builtin, opt->section);
	}
}

static void free_pairs(struct config_pair *pairs, size_t count)
{
	for (size_t i = 0; i < count; i++) {
		free(pairs[i].key);
		free(pairs[i].value);
	}
	free(pairs);
}

void config_free(struct config *cfg)
{
	if (cfg == NULL)
		return;
	for (size_t i = 0; i < OPTION_COUNT; i++) {
		const struct opt_spec *opt = &option_table[i];
		if (opt->type != OPT_STRING && opt->type != OPT_PATH && opt->type != OPT_CHOICE && opt->type != OPT_ARGV)
			continue;
		char **slot = field_of(opt, cfg);
		if (*slot != NULL && opt->secret)
			explicit_bzero(*slot, strlen(*slot));
		free(*slot);
	}
	argv_free(cfg->handler_argv);
	free_pairs(cfg->handler_env, cfg->handler_env_count);
	for (size_t i = 0; i < cfg->librdkafka_count; i++)
		if (config_env_is_secret(cfg->librdkafka[i].key) && cfg->librdkafka[i].value != NULL)
			explicit_bzero(cfg->librdkafka[i].value, strlen(cfg->librdkafka[i].value));
	free_pairs(cfg->librdkafka, cfg->librdkafka_count);
	for (size_t i = 0; i < cfg->topic_count; i++)
		free(cfg->topics[i].name);
	free(cfg->topics);
	free(cfg->file);
	free(cfg);
}

static void loader_release(struct loader *ld)
{
	for (size_t i = 0; i < ld->draft_count; i++)
		free(ld->drafts[i].name);
	free(ld->drafts);
	free(ld->raw);
	if (ld->rdkafka_probe != NULL)
		rd_kafka_conf_destroy(ld->rdkafka_probe);
}

static struct config *load(const char *path, struct config_errors *errs, bool client)
{
	struct config_errors local = { NULL, 0 };
	struct loader *ld = calloc(1, sizeof(*ld));
	struct config *cfg = calloc(1, sizeof(*cfg));

	if (errs == NULL)
		errs = &local;
	if (path == NULL)
		path = CONFIG_DEFAULT_FILE;
	if (ld == NULL || cfg == NULL || (cfg->file = strdup(path)) == NULL) {
		errors_add(errs, "%s: out of memory", path);
		free(ld);
		config_free(cfg);
		config_errors_clear(&local);
		return NULL;
	}
	size_t errors_before = errs->count;
	ld->cfg = cfg;
	ld->errs = errs;
	ld->file = path;
	ld->client = client;
	ld->rdkafka_probe = rd_kafka_conf_new();

	set_defaults(ld);
	if (parse_file(ld, path)) { /* else checking the defaults would only bury that one error */
		apply_environment(ld);
		validate(ld);
	}
	if (ld->oom)
		errors_add(errs, "%s: out of memory", path);
	loader_release(ld);
	free(ld);
	bool failed = errs->count > errors_before;
	config_errors_clear(&local);
	if (failed) {
		config_free(cfg);
		return NULL;
	}
	return cfg;
}

struct config *config_load(const char *path, struct config_errors *errs)
{
	return load(path, errs, false);
}

struct config *config_load_client(const char *path, struct config_errors *errs)
{
	return load(path, errs, true);
}

/* ---- comparisons and names ------------------------------------------------------- */

static bool strings_equal(const char *a, const char *b)
{
	if (a == NULL || b == NULL)
		return a == b;
	return strcmp(a, b) == 0;
}

static bool option_equal(const struct opt_spec *opt, const void *a, const void *b)
{
	const void *fa = const_field_of(opt, a);
	const void *fb = const_field_of(opt, b);
	switch (opt->type) {
	case OPT_INT:
	case OPT_ENUM:
	case OPT_MODE:
		return *(const int *)fa == *(const int *)fb;
	case OPT_BYTES:
	case OPT_MS:
	case OPT_LIMIT:
	case OPT_LIMIT_BYTES:
		return *(const long long *)fa == *(const long long *)fb;
	case OPT_BOOL:
		return *(const bool *)fa == *(const bool *)fb;
	case OPT_CODES:
		return memcmp(fa, fb, 256 * sizeof(bool)) == 0;
	case OPT_STRING:
	case OPT_PATH:
	case OPT_CHOICE:
	case OPT_ARGV:
		return strings_equal(*(char *const *)fa, *(char *const *)fb);
	}
	return false;
}

static bool pairs_equal(const struct config_pair *a, size_t na, const struct config_pair *b, size_t nb)
{
	if (na != nb)
		return false;
	for (size_t i = 0; i < na; i++)
		if (!strings_equal(a[i].key, b[i].key) || !strings_equal(a[i].value, b[i].value))
			return false;
	return true;
}

static bool topics_equal(const struct config *a, const struct config *b)
{
	if (a->topic_count != b->topic_count)
		return false;
	for (size_t i = 0; i < a->topic_count; i++) {
		const struct topic_config *x = &a->topics[i], *y = &b->topics[i];
		if (!strings_equal(x->name, y->name) || x->partitions != y->partitions ||
		    x->replication_factor != y->replication_factor || x->retention_ms != y->retention_ms)
			return false;
	}
	return true;
}

size_t config_diff(const struct config *a, const struct config *b, config_change_fn visit, void *ctx)
{
	char name[160];
	size_t changed = 0;
	for (size_t i = 0; i < OPTION_COUNT; i++) {
		const struct opt_spec *opt = &option_table[i];
		if (option_equal(opt, a, b))
			continue;
		snprintf(name, sizeof(name), "[%s] %s", opt->section, opt->key);
		visit(ctx, name, opt->scope);
		changed++;
	}
	/* What lives beside the table: handler_argv follows handler, which the table compares. */
	const struct {
		const char *name;
		bool equal;
	} extras[] = {
		{ "[jobs] env.*", pairs_equal(a->handler_env, a->handler_env_count, b->handler_env, b->handler_env_count) },
		{ "[librdkafka]", pairs_equal(a->librdkafka, a->librdkafka_count, b->librdkafka, b->librdkafka_count) },
		{ "[topic:NAME]", topics_equal(a, b) },
	};
	for (size_t i = 0; i < ARRAY_LEN(extras); i++) {
		if (extras[i].equal)
			continue;
		visit(ctx, extras[i].name, CONFIG_SCOPE_WORKERS);
		changed++;
	}
	return changed;
}

static void collect_scope(void *ctx, const char *name, unsigned scope)
{
	*(unsigned *)ctx |= scope;
}

unsigned config_changed_scopes(const struct config *a, const struct config *b)
{
	unsigned scopes = 0;
	config_diff(a, b, collect_scope, &scopes);
	return scopes;
}

bool config_worker_equal(const struct config *a, const struct config *b)
{
	return (config_changed_scopes(a, b) & CONFIG_SCOPE_WORKERS) == 0;
}

bool config_env_is_secret(const char *name)
{
	size_t len = strcspn(name, "="); /* accepts "NAME" and "NAME=value" */
	char upper[ENV_NAME_MAX * 2];
	if (len >= sizeof(upper))
		len = sizeof(upper) - 1;
	for (size_t i = 0; i < len; i++)
		upper[i] = (char)toupper((unsigned char)name[i]);
	upper[len] = '\0';
	return strcmp(upper, "KAFKA_SASL_PASSWORD") == 0 || strcmp(upper, "DROVER_KAFKA_SASL_PASSWORD") == 0 ||
	       strncmp(upper, "DROVER_LIBRDKAFKA_", 18) == 0 || strstr(upper, "PASSWORD") != NULL ||
	       strstr(upper, "SECRET") != NULL;
}

static int find_socket_key(void *user, const char *section, const char *key, const char *value)
{
	char **path = user;
	if (strcmp(section, "supervisor") == 0 && strcmp(key, "control_socket") == 0 && value[0] != '\0') {
		char *copy = strdup(value);
		if (copy != NULL) {
			free(*path);
			*path = copy;
		}
	}
	return 1;
}

char *config_find_control_socket(const char *path)
{
	const struct opt_spec *opt = &option_table[option_index("supervisor", "control_socket")];
	char *found = NULL;
	char env_name[ENV_NAME_MAX];
	make_env_name(opt->section, opt->key, env_name, sizeof(env_name));
	const char *env = getenv(env_name);
	if (env != NULL && env[0] != '\0')
		return strdup(env);
	struct config_errors ignored = { NULL, 0 };
	FILE *fp = open_config_file(&ignored, path != NULL ? path : CONFIG_DEFAULT_FILE);
	config_errors_clear(&ignored);
	if (fp == NULL)
		return NULL; /* no readable file: nothing says where a daemon would listen */
	(void)ini_parse_file(fp, find_socket_key, &found);
	fclose(fp);
	return found != NULL ? found : strdup(opt->def);
}

const char *config_backend_name(enum queue_backend backend)
{
	for (size_t i = 0; backend_names[i].name != NULL; i++)
		if (backend_names[i].value == (int)backend)
			return backend_names[i].name;
	return "unknown";
}

const char *config_security_name(enum security_protocol protocol)
{
	for (size_t i = 0; security_names[i].name != NULL; i++)
		if (security_names[i].value == (int)protocol)
			return security_names[i].name;
	return "unknown";
}

/* ---- the reference ------------------------------------------------------------- */

static void print_option(FILE *out, const struct opt_spec *opt, const char *section, const char *env_name)
{
	char allowed[256];
	describe_allowed(opt, allowed, sizeof(allowed));
	fprintf(out, "[%s] %s = %s ; %s (allowed: %s", section, opt->key, opt->def, opt->help, allowed);
	if (opt->seed_env != NULL || env_name != NULL) {
		fprintf(out, "; env:");
		if (opt->seed_env != NULL)
			fprintf(out, " %s", opt->seed_env);
		if (env_name != NULL)
			fprintf(out, " %s", env_name);
	}
	fprintf(out, ")\n");
}

void config_print_reference(FILE *out)
{
	char env_name[ENV_NAME_MAX];
	for (size_t i = 0; i < OPTION_COUNT; i++) {
		const struct opt_spec *opt = &option_table[i];
		make_env_name(opt->section, opt->key, env_name, sizeof(env_name));
		print_option(out, opt, opt->section, env_name);
		if (strcmp(opt->key, "working_dir") == 0)
			fprintf(out, "[jobs] env.NAME = value ; extra handler environment; {slot} expands to the "
				     "worker's slot number\n");
	}
	for (size_t i = 0; i < TOPIC_OPTION_COUNT; i++)
		print_option(out, &topic_option_table[i], "topic:NAME", NULL);
	fprintf(out, "[librdkafka] NAME = value ; any librdkafka property, passed to every Kafka handle "
		     "(env: DROVER_LIBRDKAFKA_NAME, '.' as '_')\n");
}
