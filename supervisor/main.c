/*
 * drover: the supervisor's entry point. Start-up is the only place allowed to
 * give up: it checks the configuration (-t), takes the pid file lock and the
 * control socket (never clobbering a live instance), daemonizes (-d), drops
 * privileges, prepares the queue, maps the scoreboard, and hands over to
 * supervisor_run. After a binary upgrade (upgrade.h) the same start takes
 * over what the old image handed over instead of creating it: the pid file
 * and its lock, the control socket, the scoreboard and the workers. Exit
 * codes follow sysexits(3): 64 usage, 78 configuration, 69 cannot start,
 * 70 internal error.
 */
#include "shared/config.h"
#include "supervisor/control.h"
#include "supervisor/http.h"
#include "shared/log.h"
#include "shared/proctitle.h"
#include "supervisor/notify.h"
#include "supervisor/pool.h"
#include "shared/scoreboard.h"
#include "queue/source.h"
#include "supervisor/supervisor.h"
#include "supervisor/upgrade.h"
#include "shared/util.h"
#include "worker/cgroup.h"

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

static void help(void)
{
	printf("usage: drover [-c FILE] [-t] [-d] [-V] [-h] [--print-options]\n"
	       "Runs a pool of worker processes that take jobs from a queue and run a handler\n"
	       "program for each (see drover(8), drover.ini(5)).\n"
	       "  -c FILE          configuration file (default %s)\n"
	       "  -t               check the configuration, print whether it is ok, and exit\n"
	       "  -d               run in the background (for init scripts)\n"
	       "  -V, --version    print the version and exit\n"
	       "  -h, --help       print this help and exit\n"
	       "  --print-options  print every option with its default and environment names\n"
	       "exit codes: 0 ok, 64 usage, 69 cannot start, 70 internal error, 78 configuration\n",
	       CONFIG_DEFAULT_FILE);
	exit(0);
}

/* One line and a hint, never the whole help: the error stays on the screen. */
static void usage_error(const char *what, const char *name)
{
	fprintf(stderr, "drover: %s %s; try 'drover --help'\n", what, name);
	exit(EX_USAGE);
}

/* The option getopt refused, as the user typed it ("-x", "--frob"). */
static void refuse_option(char **argv, int opt_char, bool missing_argument)
{
	char shown[3] = { '-', (char)opt_char, '\0' };
	const char *name = opt_char != 0 ? shown : argv[optind - 1];
	usage_error(missing_argument ? "missing argument for option" : "unknown option", name);
}

static void parse_options(int argc, char **argv, struct options *opts)
{
	static const struct option long_options[] = {
		{ "print-options", no_argument, NULL, 'P' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ NULL, 0, NULL, 0 },
	};
	int c;
	opts->config_path = CONFIG_DEFAULT_FILE;
	opterr = 0; /* the messages are ours: one line and a hint */
	while ((c = getopt_long(argc, argv, ":c:tdVh", long_options, NULL)) != -1) {
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
		case 'h': help(); break;
		case ':': refuse_option(argv, optopt, true); break;
		default: refuse_option(argv, optopt, false); break;
		}
	}
	if (optind != argc)
		usage_error("unexpected argument", argv[optind]);
}

/*
 * Under an upgrade's check (-t with UPGRADE_LAYOUT_ENV): a binary whose
 * scoreboard differs from the running one's cannot adopt its workers.
 */
static void check_upgrade_layout(void)
{
	const char *running = getenv(UPGRADE_LAYOUT_ENV);
	if (running == NULL || strtoul(running, NULL, 10) == scoreboard_layout())
		return;
	fprintf(stderr, "drover: this binary's scoreboard layout (%u) differs from the running drover's (%s): "
	        "upgrade by stop and start instead\n", scoreboard_layout(), running);
	exit(EX_CONFIG);
}

static struct config *load_or_exit(const char *path, bool test_only)
{
	if (test_only)
		check_upgrade_layout();
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

/* ---- log file ---------------------------------------------------------------- */

static bool log_is_file(const char *path)
{
	return path[0] != '\0' && strcmp(path, "-") != 0;
}

static bool path_exists(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0;
}

/*
 * A log file that drover created as root, before the privilege drop, gets
 * what logrotate's `create 0640 drover adm` gives the next one: the user
 * drover runs as, the group of its directory (adm for /var/log/drover as the
 * package makes it) and mode 0640. Else it would stay root's, and drover
 * could not reopen it by name after a rotation that missed its create step.
 */
static void give_new_log_file(const char *path, const struct identity *id)
{
	char dir[PATH_MAX];
	struct stat st;
	snprintf(dir, sizeof(dir), "%s", path);
	char *slash = strrchr(dir, '/');
	if (slash == NULL)
		snprintf(dir, sizeof(dir), ".");
	else if (slash == dir)
		dir[1] = '\0';
	else
		*slash = '\0';
	if (stat(dir, &st) < 0) {
		log_warn("log file %s: cannot stat its directory", path);
		return;
	}
	if (fchown(log_fd(), id->uid, st.st_gid) < 0 || fchmod(log_fd(), 0640) < 0)
		log_warn("cannot give log file %s to user %s", path, id->name);
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

/* ---- after a binary upgrade ------------------------------------------------- */

static bool same_file(const char *path, int fd)
{
	struct stat by_path, by_fd;
	return stat(path, &by_path) == 0 && fstat(fd, &by_fd) == 0 && by_path.st_dev == by_fd.st_dev &&
	       by_path.st_ino == by_fd.st_ino;
}

/*
 * The log file. After an upgrade the old image's open file is kept while the
 * configuration still names it: drover's user may be unable to open it again
 * (it was created before the privilege drop, as at a fresh start).
 */
static void open_log_file(const char *path, int handed_fd)
{
	if (handed_fd >= 0 && strcmp(path, "-") != 0 && path[0] != '\0' && same_file(path, handed_fd) &&
	    fd_set_cloexec(handed_fd) == 0) {
		log_adopt(handed_fd, path);
		return;
	}
	if (handed_fd >= 0)
		close(handed_fd);
	if (log_open(path) < 0)
		log_fatal(EX_UNAVAILABLE, "cannot open log file %s", path);
}

/* The pid file the old image locked: the lock lives on in the open file it hands over. */
static char *adopted_pid_path(int fd)
{
	char link[64], path[PATH_MAX];
	if (fd < 0)
		return strdup("");
	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	ssize_t n = readlink(link, path, sizeof(path) - 1);
	if (n <= 0 || fd_set_cloexec(fd) < 0)
		log_fatal(EX_SOFTWARE, "handed-over pid file fd %d", fd);
	path[n] = '\0';
	return strdup(path);
}

static void adopt_handover(struct supervisor *sup, const struct handover *h)
{
	char err[512];
	sup->control = control_adopt(sup, h->control_fd, err, sizeof(err));
	if (sup->control == NULL)
		log_fatalx(EX_SOFTWARE, "upgrade: %s", err);
	sup->scoreboard = scoreboard_attach(h->scoreboard_fd);
	if (sup->scoreboard == NULL)
		log_fatal(EX_SOFTWARE, "upgrade: cannot map the handed-over scoreboard");
	const struct scoreboard_carry *carry = scoreboard_carry(sup->scoreboard);
	sup->retired = carry->retired;
	sup->jobs_lost = carry->jobs_lost;
	sup->restarts_retired = carry->restarts_retired;
	/* A generation newer than every adopted worker's: the rolling replacement swaps them all. */
	sup->generation = h->generation + 1;
	sup->started_ms = h->started_ms;
	/* The listening socket carries on (a port below 1024 could not be bound again after the drop). */
	if (h->http_fd >= 0 && (sup->http = http_adopt(sup, h->http_fd, err, sizeof(err))) == NULL)
		log_warnx("upgrade: the HTTP endpoint is off: %s", err);
	log_info("upgraded to drover %s (%s): adopting %d worker(s)", DROVER_VERSION, upgrade_binary(), h->slot_count);
}

/* The log file's owner, the pid file, the control socket, the HTTP listener and the privilege drop of a fresh start. */
static void start_fresh(struct supervisor *sup, const struct config *cfg, bool daemonize_it, bool new_log_file)
{
	char err[512];
	struct identity id = resolve_identity(cfg);
	if (new_log_file && id.drop)
		give_new_log_file(cfg->log_file, &id);
	sup->pid_fd = pidfile_lock(cfg->pid_file, &id);
	make_parent_dir(cfg->control_socket, &id);
	sup->control = control_open(sup, cfg->control_socket, cfg->control_socket_mode,
	                            id.drop ? id.uid : (uid_t)-1, id.gid, err, sizeof(err));
	if (sup->control == NULL)
		log_fatalx(EX_UNAVAILABLE, "control socket %s: %s", cfg->control_socket, err);
	/* Bound here, before the privilege drop, like the control socket. */
	if (cfg->http_listen[0] != '\0' && (sup->http = http_open(sup, cfg->http_listen, err, sizeof(err))) == NULL)
		log_fatalx(EX_UNAVAILABLE, "[supervisor] http_listen %s: %s", cfg->http_listen, err);
	if (daemonize_it)
		daemonize();
	drop_privileges(&id);
}

/* After the stop: the socket and pid file go, so that the next start finds the place free. */
static void release_everything(struct supervisor *sup, char *pid_path)
{
	control_close(sup->control);
	http_close(sup->http);
	pool_destroy(sup->pool);
	cgroup_release(); /* after the last worker: the tree as it was found */
	if (sup->pid_fd >= 0) {
		if (unlink(pid_path) < 0 && errno != ENOENT)
			log_warn("cannot remove pid file %s", pid_path);
		close(sup->pid_fd);
	}
	free(pid_path);
	scoreboard_destroy(sup->scoreboard);
	log_info("stopped");
	config_free(sup->cfg);
}

/* The queue, the cgroup layout, the scoreboard and the worker pool (adopted after an upgrade). */
static void build_pool(struct supervisor *sup, const struct config *cfg, bool upgraded, const struct handover *handover)
{
	prepare_queue(cfg);
	/* Before the workers exist: they inherit the cgroup layout (and drover's move into its leaf). */
	const struct cgroup_limits cgroup_wanted = { .memory_max = cfg->memory_max, .cpu_max = cfg->cpu_max,
	                                             .pids_max = cfg->pids_max };
	cgroup_prepare(cfg->cgroup_root, &cgroup_wanted);
	if (!upgraded)
		sup->scoreboard = scoreboard_create();
	if (sup->scoreboard == NULL)
		log_fatal(EX_SOFTWARE, "cannot map the scoreboard");
	/* Orphaned handler processes of a dead worker come back to us to be reaped. The flag
	 * survives exec (prctl(2)); set again after an upgrade all the same. */
	if (getpid() != 1 && prctl(PR_SET_CHILD_SUBREAPER, 1) < 0)
		log_warn("cannot become a child subreaper");
	sup->pool = upgraded ? pool_create_adopting(sup, handover) : pool_create(sup);
	if (sup->pool == NULL)
		log_fatal(EX_SOFTWARE, "cannot create the worker pool");
}

int main(int argc, char **argv)
{
	struct options opts = { 0 };
	struct handover handover;

	/* Before the environment moves to the heap: the secrets are wiped where
	 * /proc/PID/environ shows them (protect_secrets reports a failure). */
	(void)config_hide_secrets();
	if (proctitle_init(argc, argv) < 0)
		fprintf(stderr, "drover: out of memory at start: the process title stays\n");
	log_init("supervisor", LOG_LEVEL_INFO, LOG_FORMAT_TEXT);
	bool upgraded = upgrade_init(&handover);
	parse_options(argc, argv, &opts);
	const char *config_path = absolute_config_path(opts.config_path);
	struct config *cfg = load_or_exit(opts.test_only ? opts.config_path : config_path, opts.test_only);

	/* comm stays "drover": start-stop-daemon --name and pidof look for it. */
	proctitle_set(NULL, "supervisor");
	protect_secrets();
	log_set_level(cfg->log_level);
	log_set_format(cfg->log_format);
	bool new_log_file = !upgraded && log_is_file(cfg->log_file) && !path_exists(cfg->log_file);
	open_log_file(cfg->log_file, upgraded ? handover.log_fd : -1);
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
	sup.pid_fd = -1;

	char *pid_path;
	if (upgraded) {
		/* Already the drover user when it dropped privileges: nothing to drop again. */
		sup.pid_fd = handover.pid_fd;
		pid_path = adopted_pid_path(handover.pid_fd);
		adopt_handover(&sup, &handover);
	} else {
		pid_path = strdup(cfg->pid_file); /* a reload must not move it */
		start_fresh(&sup, cfg, opts.daemonize, new_log_file);
	}
	protect_secrets();
	build_pool(&sup, cfg, upgraded, &handover);

	supervisor_start(&sup);
	/* Written once the pool is up, so that the pid file means "ready" for init scripts. */
	pidfile_write(sup.pid_fd, pid_path);
	daemon_ready();
	int code = supervisor_serve(&sup);
	release_everything(&sup, pid_path);
	return code;
}
