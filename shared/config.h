/*
 * config: drover's configuration. One table of options (section, key, type,
 * bounds, default, environment names) drives parsing (inih), environment
 * overrides, validation and the reference documentation. Precedence:
 * environment > file > default. All errors are collected, each formatted as
 *   FILE:LINE: [section] key: what is wrong (allowed: ...)
 * (for an environment override, FILE:LINE is replaced by "env NAME").
 */
#ifndef DROVER_CONFIG_H
#define DROVER_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "shared/log.h"

#define CONFIG_MAX_WORKERS 256
#define CONFIG_MAX_CONCURRENT 256
#define CONFIG_DEFAULT_FILE "/etc/drover/drover.ini"
#define CONFIG_LIMIT_UNSET (-1LL)     /* an rlimit_* or nice key left empty: inherited */

enum queue_backend { BACKEND_SPOOL, BACKEND_KAFKA };
enum handler_mode { HANDLER_MODE_EXEC, HANDLER_MODE_PERSISTENT };
enum security_protocol { SECURITY_PLAINTEXT, SECURITY_SSL, SECURITY_SASL_PLAINTEXT, SECURITY_SASL_SSL };

struct config_pair {
	char *key;
	char *value;
	int line;
};

struct topic_config {
	char *name;
	int partitions;
	int replication_factor;
	long long retention_ms;
	int line;
};

struct config {
	char *file; /* the path it was loaded from */

	/* [supervisor] */
	int workers;
	char *control_socket;
	int control_socket_mode;
	char *pid_file;
	char *user;
	char *group;
	char *log_file;
	enum log_level log_level;
	enum log_format log_format;
	long long shutdown_timeout_ms;
	long long restart_delay_ms;
	long long restart_delay_max_ms;
	long long heartbeat_timeout_ms;
	char *http_listen;          /* "" = no HTTP endpoint (listen_addr.h) */
	long long stall_timeout_ms; /* health: jobs wait, capacity free, nothing started this long */

	/* [jobs] */
	char *handler;       /* as written */
	char **handler_argv; /* split (argv.h), NULL-terminated */
	int max_concurrent;
	long long timeout_ms;
	long long kill_grace_ms;
	int max_attempts;
	long long retry_delay_ms;
	bool no_retry_exit[256]; /* no_retry_exit_codes as a set */
	long long max_result_bytes;
	char *working_dir;       /* "" = inherit */
	long long slow_job_ms;   /* 0 = off */
	/* Per-handler limits (runner.h), CONFIG_LIMIT_UNSET = inherited from drover. */
	long long rlimit_nofile, rlimit_as, rlimit_core, rlimit_cpu, nice;
	char *cgroup_root;       /* "" = drover's own cgroup (worker/cgroup.h) */
	long long memory_max, cpu_max, pids_max; /* the attempt's cgroup; CONFIG_LIMIT_UNSET = none */
	struct config_pair *handler_env; /* env.NAME = value, value unexpanded */
	size_t handler_env_count;
	enum handler_mode handler_mode;  /* exec: a process per attempt; persistent: long-lived ones (worker/warm.h) */
	int handler_concurrency;         /* persistent: jobs at once per handler process */
	int handler_max_jobs;            /* persistent: recycle after this many jobs, 0 = never */
	int handler_max_jobs_jitter;     /* plus a random 0..this per process */
	int handler_max_rss_mb;          /* persistent: recycle above this RSS of the process tree, 0 = off */
	long long handler_start_timeout_ms; /* persistent: how long a process may take to say ready */

	/* [queue] */
	enum queue_backend backend;

	/* [spool] */
	char *spool_dir;

	/* [kafka] */
	char *kafka_brokers;
	char *kafka_client_id;
	char *kafka_group_id;
	char *requests_topic;
	char *status_topic; /* "" = no status events */
	char *complete_topic;
	char *failed_topic;
	bool static_membership;
	char *instance_id; /* defaults to the host name */
	int kafka_max_uncommitted; /* per partition; 0 = 2 x max_concurrent */
	enum security_protocol security_protocol;
	char *sasl_mechanism;
	char *sasl_username;
	char *sasl_password; /* from sasl_password or read from sasl_password_file: a secret */
	char *sasl_password_file;
	char *ssl_ca_location;

	/* [topic:NAME], with the four default topics always present */
	struct topic_config *topics;
	size_t topic_count;

	/* [librdkafka] pass-through properties */
	struct config_pair *librdkafka;
	size_t librdkafka_count;
};

struct config_errors {
	char **lines;
	size_t count;
};

/*
 * Loads path (or CONFIG_DEFAULT_FILE when NULL), applies the environment, and
 * validates, including that the handler exists and is executable. Returns the
 * config, or NULL with every problem appended to errs.
 */
struct config *config_load(const char *path, struct config_errors *errs);
/*
 * The same for droverctl: skips what only the daemon's host must satisfy (the
 * handler program, working_dir, user and group), so that an operator can submit
 * and query with the daemon's file even where those do not resolve.
 */
struct config *config_load_client(const char *path, struct config_errors *errs);
void config_free(struct config *cfg);
void config_errors_clear(struct config_errors *errs);
/* Appends one error line (checks outside this module: the queue backend's, for drover -t). */
void config_errors_add(struct config_errors *errs, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* All errors joined with "; " into buf (for stats.last_reload). */
void config_errors_join(const struct config_errors *errs, char *buf, size_t len);

/*
 * Where a reloaded value takes effect: each option of the table carries its
 * scope (after redis' IMMUTABLE/MODIFIABLE flags), and reload, its warnings
 * and stats.last_reload derive from it. An option may be both SUPERVISOR and
 * WORKERS (log_file: the supervisor reopens it, new workers inherit it).
 */
enum config_scope {
	CONFIG_SCOPE_START = 1,      /* read once at start: a change needs a restart */
	CONFIG_SCOPE_SUPERVISOR = 2, /* applied live by the supervisor */
	CONFIG_SCOPE_WORKERS = 4,    /* applied by replacing the workers one at a time */
};

/* Called once per option whose value differs; name is "[section] key". */
typedef void (*config_change_fn)(void *ctx, const char *name, unsigned scope);
/* Visits every changed option from a to b (env.*, [topic:*], [librdkafka] as one name each); returns the count. */
size_t config_diff(const struct config *a, const struct config *b, config_change_fn visit, void *ctx);
/* The union of the scopes of every changed option (0: nothing changed). */
unsigned config_changed_scopes(const struct config *a, const struct config *b);
/* True when nothing a worker runs with changed (no changed option has CONFIG_SCOPE_WORKERS). */
bool config_worker_equal(const struct config *a, const struct config *b);

/* Environment variable names that carry secrets: never logged, never passed to handlers. */
bool config_env_is_secret(const char *name);
/*
 * Moves every secret variable out of the process environment, wiping the
 * bytes /proc/PID/environ shows; later loads (reload) still see them.
 * Returns 0, or -1 when one could not be moved (out of memory).
 */
int config_hide_secrets(void);
/*
 * The secret "NAME=value" entries config_hide_secrets took out of the
 * environment, so that a binary upgrade can hand them to the new image (its
 * execve environment) as start-up received them. Returns their count.
 */
size_t config_hidden_secrets(const char *const **entries);

/*
 * The control socket a file names, for droverctl when the file has errors
 * elsewhere: the environment override, else the file's [supervisor]
 * control_socket if that line parses, else the default. malloc'd; NULL when
 * the file cannot be read (or out of memory).
 */
char *config_find_control_socket(const char *path);

/* Canonical names, for stats and logs. */
const char *config_backend_name(enum queue_backend backend);
const char *config_security_name(enum security_protocol protocol);

/*
 * The option table as text: one "[section] key = default ; help" line per option,
 * for the reference in conf/drover.ini and drover.ini(5) (drover --print-options).
 */
void config_print_reference(FILE *out);

#endif
