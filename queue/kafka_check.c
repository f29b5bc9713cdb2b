/*
 * kafka_check: drover -t's check of a Kafka configuration against librdkafka
 * itself (kafka_conf_check, declared in kafka_conf.h). config_load already
 * sets each [librdkafka] property on its own; what librdkafka refuses only
 * when a handle is made from drover's full property list (a property that
 * clashes with the idempotent producer, an assignment strategy or SASL
 * mechanism it does not know, a certificate it cannot read) would otherwise
 * fail every worker at start. Handles are made without brokers, in a child
 * process: librdkafka starts threads, and the supervisor must fork workers
 * without any (models.md).
 */
#include "queue/kafka_conf.h"
#include "shared/util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define CHECK_OUTPUT_MAX 65536

/* The handles a worker and droverctl make, as they make them. */
static const struct {
	enum kafka_role role;
	rd_kafka_type_t type;
	int slot;
	const char *what;
} handles[] = {
	{ KAFKA_ROLE_CONSUMER, RD_KAFKA_CONSUMER, 0, "consumer" },
	{ KAFKA_ROLE_PRODUCER, RD_KAFKA_PRODUCER, 0, "producer" },
	{ KAFKA_ROLE_ADMIN, RD_KAFKA_PRODUCER, -1, "admin client" },
};

/* The check's handles have no broker to talk about: nothing they log matters. */
static void discard_log(const rd_kafka_t *rk, int level, const char *facility, const char *line)
{
}

/* Makes and destroys handle h for cfg, without brokers. 0, or -1 and a redacted why. */
static int try_handle(const struct config *cfg, size_t h, char *why, size_t len)
{
	char raw[512];
	rd_kafka_conf_t *conf = kafka_conf_new(cfg, handles[h].role, handles[h].slot, why, len);
	if (conf == NULL)
		return -1;
	rd_kafka_conf_set_log_cb(conf, discard_log);
	if (rd_kafka_conf_set(conf, "bootstrap.servers", "", raw, sizeof(raw)) != RD_KAFKA_CONF_OK) {
		rd_kafka_conf_destroy(conf);
		kafka_redact(raw, why, len);
		return -1;
	}
	rd_kafka_t *rk = rd_kafka_new(handles[h].type, conf, raw, sizeof(raw));
	if (rk == NULL) {
		rd_kafka_conf_destroy(conf);
		kafka_redact(raw, why, len);
		return -1;
	}
	rd_kafka_destroy(rk);
	return 0;
}

/* One error line to the parent; a lost line only shortens the report. */
static void report(int fd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void report(int fd, const char *fmt, ...)
{
	char line[1024];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(line, sizeof(line) - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	size_t len = (size_t)n < sizeof(line) - 1 ? (size_t)n : sizeof(line) - 2;
	for (size_t i = 0; i < len; i++)
		if (line[i] == '\n')
			line[i] = ' ';
	line[len++] = '\n';
	(void)write_all(fd, line, len);
}

static void report_key(int fd, const struct config *cfg, const struct config_pair *pair, const char *why)
{
	if (pair->line > 0)
		report(fd, "%s:%d: [librdkafka] %s: %s", cfg->file, pair->line, pair->key, why);
	else
		report(fd, "%s: [librdkafka] %s: %s", cfg->file, pair->key, why);
}

/* The pass-through key librdkafka's message names, or NULL. */
static const struct config_pair *key_named_in(const struct config *cfg, const char *why)
{
	for (size_t i = 0; i < cfg->librdkafka_count; i++)
		if (strstr(why, cfg->librdkafka[i].key) != NULL)
			return &cfg->librdkafka[i];
	return NULL;
}

/*
 * Handle h failed with cfg: names the cause. Without the pass-through the
 * [kafka] section is the cause; else each [librdkafka] key that fails alone;
 * else the key librdkafka's message names, or all of them together. The
 * lines name no handle, so that one cause shared by every handle is one line.
 */
static void blame(const struct config *cfg, size_t h, const char *why, int fd)
{
	struct config alone = *cfg;
	char one_why[512];
	bool named = false;

	alone.librdkafka_count = 0;
	if (try_handle(&alone, h, one_why, sizeof(one_why)) < 0) {
		report(fd, "%s: [kafka]: librdkafka refuses the configuration: %s", cfg->file, one_why);
		return;
	}
	for (size_t i = 0; i < cfg->librdkafka_count; i++) {
		alone.librdkafka = &cfg->librdkafka[i];
		alone.librdkafka_count = 1;
		if (try_handle(&alone, h, one_why, sizeof(one_why)) == 0)
			continue;
		named = true;
		report_key(fd, cfg, &cfg->librdkafka[i], one_why);
	}
	const struct config_pair *named_in_why = named ? NULL : key_named_in(cfg, why);
	if (named_in_why != NULL)
		report_key(fd, cfg, named_in_why, why);
	else if (!named)
		report(fd, "%s: [librdkafka]: librdkafka refuses these properties together: %s", cfg->file, why);
}

/* The child's work: every handle tried, one line per problem written to fd. */
static void check_handles(const struct config *cfg, int fd)
{
	char why[512];
	for (size_t h = 0; h < ARRAY_LEN(handles); h++)
		if (try_handle(cfg, h, why, sizeof(why)) < 0)
			blame(cfg, h, why, fd);
}

/*
 * What the child wrote, NUL-terminated: its first CHECK_OUTPUT_MAX bytes; the
 * rest is read and dropped, so that the child never blocks on a full pipe
 * while we wait for it. NULL on a read error.
 */
static char *read_report(int fd)
{
	char *buf = malloc(CHECK_OUTPUT_MAX + 1);
	char rest[4096];
	ssize_t n;
	if (buf == NULL)
		return NULL;
	n = read_full(fd, buf, CHECK_OUTPUT_MAX);
	while (n == CHECK_OUTPUT_MAX && read_full(fd, rest, sizeof(rest)) > 0)
		continue;
	if (n < 0) {
		free(buf);
		return NULL;
	}
	buf[n] = '\0';
	return buf;
}

/* Each distinct line of text into errs (a key refused by several handles is named once). The number added. */
static size_t add_lines(char *text, struct config_errors *errs)
{
	size_t added = 0;
	char *save = NULL;
	for (char *line = strtok_r(text, "\n", &save); line != NULL; line = strtok_r(NULL, "\n", &save)) {
		bool seen = false;
		for (size_t i = 0; i < errs->count && !seen; i++)
			seen = strcmp(errs->lines[i], line) == 0;
		if (!seen) {
			config_errors_add(errs, "%s", line);
			added++;
		}
	}
	return added;
}

/* Waits for the child; an abnormal end is itself an error (the check did not finish). */
static int reap_checker(pid_t pid, const struct config *cfg, struct config_errors *errs)
{
	int status;
	char how[64];
	if (waitpid_retry(pid, &status, 0) < 0) {
		config_errors_add(errs, "%s: [librdkafka]: cannot check the properties: %s", cfg->file, strerror(errno));
		return -1;
	}
	if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
		return 0;
	describe_wait_status(status, how, sizeof(how));
	config_errors_add(errs, "%s: [librdkafka]: the check of the properties did not finish (%s)", cfg->file, how);
	return -1;
}

int kafka_conf_check(const struct config *cfg, struct config_errors *errs)
{
	int fds[2];
	if (pipe2(fds, O_CLOEXEC) < 0) {
		config_errors_add(errs, "%s: [librdkafka]: cannot check the properties: %s", cfg->file, strerror(errno));
		return -1;
	}
	fflush(NULL); /* nothing buffered is written twice */
	pid_t pid = fork();
	if (pid < 0) {
		config_errors_add(errs, "%s: [librdkafka]: cannot check the properties: %s", cfg->file, strerror(errno));
		close(fds[0]);
		close(fds[1]);
		return -1;
	}
	if (pid == 0) {
		close(fds[0]);
		check_handles(cfg, fds[1]);
		_exit(0);
	}
	close(fds[1]);
	char *text = read_report(fds[0]);
	close(fds[0]);
	int rc = reap_checker(pid, cfg, errs);
	if (text == NULL) {
		config_errors_add(errs, "%s: [librdkafka]: cannot read the check's report: %s", cfg->file, strerror(errno));
		rc = -1;
	} else if (add_lines(text, errs) > 0) {
		rc = -1;
	}
	free(text);
	return rc;
}
