/*
 * drover: the supervisor's entry point. Start-up is the only place allowed to
 * give up: it checks the configuration (-t), takes the pid file lock and the
 * control socket (never clobbering a live instance), daemonizes (-d), drops
 * privileges, prepares the queue, maps the scoreboard, and hands over to
 * supervisor_run. Exit codes follow sysexits(3): 64 usage, 78 configuration,
 * 69 cannot start, 70 internal error.
 */
#include "shared/config.h"
#include "supervisor/control.h"
#include "shared/log.h"
#include "supervisor/notify.h"
#include "supervisor/pool.h"
#include "shared/scoreboard.h"
#include "queue/source.h"
#include "supervisor/supervisor.h"
#include "shared/util.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sysexits.h>
#include <unistd.h>

#define NOFILE_WANTED 65536

struct options {
	const char *config_path;
	bool test_only;
	bool daemonize;
};

static void usage(void)
{
	fprintf(stderr, "usage: drover [-c FILE] [-t] [-d] [-V] [--print-options]\n");
	exit(EX_USAGE);
}

static void parse_options(int argc, char **argv, struct options *opts)
{
	static const struct option long_options[] = {
		{ "print-options", no_argument, NULL, 'P' },
		{ NULL, 0, NULL, 0 },
	};
	int c;
	opts->config_path = CONFIG_DEFAULT_FILE;
	while ((c = getopt_long(argc, argv, "c:tdVh", long_options, NULL)) != -1) {
		switch (c) {
		case 'P':
			config_print_reference(stdout);
			exit(EX_OK);
		case 'c': opts->config_path = optarg; break;
		case 't': opts->test_only = true; break;
		case 'd': opts->daemonize = true; break;
		case 'V':
			printf("drover %s\n", DROVER_VERSION);
			exit(EX_OK);
		default: usage();
		}
	}
	if (optind != argc)
		usage();
}

static struct config *load_or_exit(const char *path, bool test_only)
{
	struct config_errors errors = { 0 };
	struct config *cfg = queue_config_load(path, &errors);
	if (cfg == NULL) {
		for (size_t i = 0; i < errors.count; i++)
			fprintf(stderr, "%s\n", errors.lines[i]);
		fprintf(stderr, "drover: configuration %s has %zu error(s)\n", path, errors.count);
		config_errors_clear(&errors);
		exit(EX_CONFIG);
	}
	if (test_only) {
		printf("drover: configuration %s is ok\n", path);
		config_free(cfg);
		exit(EX_OK);
	}
	return cfg;
}

/*
 * A handler runs as drover's user: keep it (and anything else of that uid)
 * from reading drover's memory or /proc/PID/environ. Secrets leave the
 * environment once the config has read them, and the processes are not
 * dumpable; workers inherit that through fork. A change of uid resets the
 * flag, so this runs again after the privilege drop.
 */
static void protect_secrets(void)
{
	if (config_hide_secrets() < 0)
		log_warnx("cannot remove every secret from the environment (out of memory)");
	if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0)
		log_warn("cannot make drover non-dumpable");
}

static void raise_fd_limit(void)
{
	struct rlimit limit;
	if (getrlimit(RLIMIT_NOFILE, &limit) < 0)
		return;
	rlim_t wanted = limit.rlim_max < NOFILE_WANTED ? limit.rlim_max : NOFILE_WANTED;
	if (limit.rlim_cur < wanted) {
		limit.rlim_cur = wanted;
		if (setrlimit(RLIMIT_NOFILE, &limit) < 0)
			log_warn("cannot raise the open file limit");
	}
}

struct identity {
	bool drop;
	uid_t uid;
	gid_t gid;
	const char *name;
};

/* ---- pid file ----------------------------------------------------------- */

/*
 * The directory of the pid file or the control socket. After a privilege
 * drop drover can remove them at stop only if its user may write that
 * directory: a directory drover creates is given to that user (like
 * systemd's RuntimeDirectory); an existing one that is not the user's gets a
 * warning, since the file will be left behind.
 */
static void make_parent_dir(const char *path, const struct identity *id)
{
	char dir[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s", path);
	char *slash = strrchr(dir, '/');
	if (slash == NULL || slash == dir)
		return;
	*slash = '\0';
	struct stat st;
	if (stat(dir, &st) < 0) {
		if (mkdir_p(dir, 0755) < 0) {
			log_warn("cannot create %s", dir);
			return;
		}
		if (id->drop && chown(dir, id->uid, id->gid) < 0)
			log_warn("cannot give %s to user %s", dir, id->name);
		return;
	}
	if (id->drop && !(st.st_uid == id->uid && (st.st_mode & S_IWUSR)))
		log_warnx("%s will be left behind at stop: its directory %s is not writable by user %s "
		          "(let drover create it, or give it to %s)", path, dir, id->name, id->name);
}

/* Opens and locks the pid file; the lock (not the pid in it) says an instance lives. */
static int pidfile_lock(const char *path, const struct identity *id)
{
	if (path[0] == '\0')
		return -1; /* no pid file wanted */
	make_parent_dir(path, id);
	int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0)
		log_fatal(EX_UNAVAILABLE, "cannot open pid file %s", path);
	if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		char pid[32] = "";
		ssize_t n = read_full(fd, pid, sizeof(pid) - 1);
		pid[n > 0 ? n : 0] = '\0';
		pid[strcspn(pid, "\n")] = '\0';
		log_fatalx(EX_UNAVAILABLE, "pid file %s is held by a running drover (pid %s)", path,
		           pid[0] != '\0' ? pid : "unknown");
	}
	return fd;
}

static void pidfile_write(int fd, const char *path)
{
	char buf[32];
	if (fd < 0)
		return;
	int len = snprintf(buf, sizeof(buf), "%d\n", (int)getpid());
	if (ftruncate(fd, 0) < 0 || lseek(fd, 0, SEEK_SET) < 0 || write_all(fd, buf, (size_t)len) < 0)
		log_fatal(EX_UNAVAILABLE, "cannot write pid file %s", path);
}

/* ---- daemon and privileges -------------------------------------------------- */

/* Write end of the pipe the original `drover -d` process waits on (-1 in the foreground). */
static int daemon_ready_fd = -1;

/*
 * Double fork and setsid. The original process stays until the daemon is
 * ready (a byte on the pipe: exit 0) or has died during start-up (EOF: exit
 * 69), so that `drover -d` and init scripts learn whether the start worked.
 */
static void daemonize(void)
{
	int ready[2];
	if (pipe2(ready, O_CLOEXEC) < 0)
		log_fatal(EX_SOFTWARE, "pipe");
	pid_t pid = fork();
	if (pid < 0)
		log_fatal(EX_SOFTWARE, "fork");
	if (pid > 0) {
		char byte;
		close(ready[1]);
		_exit(read_full(ready[0], &byte, 1) == 1 ? EX_OK : EX_UNAVAILABLE);
	}
	close(ready[0]);
	if (setsid() < 0)
		log_fatal(EX_SOFTWARE, "setsid");
	pid = fork();
	if (pid < 0)
		log_fatal(EX_SOFTWARE, "fork");
	if (pid > 0)
		_exit(EX_OK);
	if (chdir("/") < 0)
		log_fatal(EX_SOFTWARE, "chdir /");
	int null = open("/dev/null", O_RDWR);
	if (null < 0)
		log_fatal(EX_SOFTWARE, "/dev/null");
	dup2(null, STDIN_FILENO);
	dup2(null, STDOUT_FILENO);
	if (log_fd() != STDERR_FILENO)
		dup2(null, STDERR_FILENO);
	if (null > STDERR_FILENO)
		close(null);
	daemon_ready_fd = ready[1];
}

static void daemon_ready(void)
{
	if (daemon_ready_fd < 0)
		return;
	if (write_all(daemon_ready_fd, "R", 1) < 0)
		log_warn("cannot tell the starting process that drover is ready");
	close(daemon_ready_fd);
	daemon_ready_fd = -1;
}


/* The socket's group: [supervisor] group when set, else the user's own (or unchanged). */
static gid_t configured_group(const struct config *cfg, gid_t fallback)
{
	if (cfg->group[0] == '\0')
		return fallback;
	struct group *gr = getgrnam(cfg->group);
	if (gr == NULL)
		log_fatalx(EX_UNAVAILABLE, "[supervisor] group %s does not exist", cfg->group);
	return gr->gr_gid;
}

static struct identity resolve_identity(const struct config *cfg)
{
	struct identity id = { .drop = false, .uid = (uid_t)-1, .gid = (gid_t)-1 };
	if (geteuid() != 0)
		return id;
	if (cfg->user[0] == '\0') {
		log_warnx("running as root: set [supervisor] user to drop privileges");
		id.gid = configured_group(cfg, (gid_t)-1);
		return id;
	}
	struct passwd *pw = getpwnam(cfg->user);
	if (pw == NULL)
		log_fatalx(EX_UNAVAILABLE, "[supervisor] user %s does not exist", cfg->user);
	id.drop = true;
	id.uid = pw->pw_uid;
	id.gid = configured_group(cfg, pw->pw_gid);
	id.name = cfg->user;
	return id;
}

static void drop_privileges(const struct identity *id)
{
	if (!id->drop)
		return;
	if (initgroups(id->name, id->gid) < 0 || setgid(id->gid) < 0 || setuid(id->uid) < 0)
		log_fatal(EX_UNAVAILABLE, "cannot drop privileges to %s", id->name);
	if (setuid(0) == 0)
		log_fatalx(EX_UNAVAILABLE, "privileges could be regained after dropping them");
	log_info("running as user %s (uid %d, gid %d)", id->name, (int)id->uid, (int)id->gid);
}

static void prepare_queue(const struct config *cfg)
{
	const struct queue_ops *queue = queue_ops_for(cfg);
	char err[512];
	if (queue->prepare != NULL && queue->prepare(cfg, err, sizeof(err)) < 0)
		log_fatalx(EX_UNAVAILABLE, "%s", err);
	int returned = queue->reclaim != NULL ? queue->reclaim(cfg) : 0;
	if (returned > 0)
		log_info("returned %d claim(s) of a previous run to the queue", returned);
}

/* An absolute path, so that reload still finds the file after -d's chdir("/"). */
static const char *absolute_config_path(const char *path)
{
	static char resolved[PATH_MAX];
	if (realpath(path, resolved) == NULL)
		return path;
	return resolved;
}

int main(int argc, char **argv)
{
	struct options opts = { 0 };
	char err[512];

	log_init("supervisor", LOG_LEVEL_INFO, LOG_FORMAT_TEXT);
	parse_options(argc, argv, &opts);
	const char *config_path = absolute_config_path(opts.config_path);
	struct config *cfg = load_or_exit(opts.test_only ? opts.config_path : config_path, opts.test_only);

	protect_secrets();
	log_set_level(cfg->log_level);
	log_set_format(cfg->log_format);
	if (log_open(cfg->log_file) < 0)
		log_fatal(EX_UNAVAILABLE, "cannot open log file %s", cfg->log_file);
	char notify_err[160];
	if (notify_init(notify_err, sizeof(notify_err)) < 0)
		log_warnx("systemd notification is off: %s", notify_err);
	signal(SIGPIPE, SIG_IGN);
	raise_fd_limit();

	static struct supervisor sup;
	sup.cfg = cfg;
	sup.config_path = config_path;
	sup.generation = 1;
	sup.started_ms = wall_ms();
	sup.loop = EV_DEFAULT;

	struct identity id = resolve_identity(cfg);
	char *pid_path = strdup(cfg->pid_file); /* a reload must not move it */
	int pid_fd = pidfile_lock(cfg->pid_file, &id);
	make_parent_dir(cfg->control_socket, &id);
	sup.control = control_open(&sup, cfg->control_socket, cfg->control_socket_mode,
	                           id.drop ? id.uid : (uid_t)-1, id.gid, err, sizeof(err));
	if (sup.control == NULL)
		log_fatalx(EX_UNAVAILABLE, "control socket %s: %s", cfg->control_socket, err);
	if (opts.daemonize)
		daemonize();
	drop_privileges(&id);
	protect_secrets();
	prepare_queue(cfg);

	sup.scoreboard = scoreboard_create();
	if (sup.scoreboard == NULL)
		log_fatal(EX_SOFTWARE, "cannot map the scoreboard");
	/* Orphaned handler processes of a dead worker come back to us to be reaped. */
	if (getpid() != 1 && prctl(PR_SET_CHILD_SUBREAPER, 1) < 0)
		log_warn("cannot become a child subreaper");
	sup.pool = pool_create(&sup);
	if (sup.pool == NULL)
		log_fatal(EX_SOFTWARE, "cannot create the worker pool");

	supervisor_start(&sup);
	/* Written once the pool is up, so that the pid file means "ready" for init scripts. */
	pidfile_write(pid_fd, pid_path);
	daemon_ready();
	int code = supervisor_serve(&sup);

	control_close(sup.control);
	pool_destroy(sup.pool);
	if (pid_fd >= 0) {
		if (unlink(pid_path) < 0 && errno != ENOENT)
			log_warn("cannot remove pid file %s", pid_path);
		close(pid_fd);
	}
	free(pid_path);
	scoreboard_destroy(sup.scoreboard);
	log_info("stopped");
	config_free(sup.cfg);
	return code;
}
