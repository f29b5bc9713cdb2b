/*
 * kafka_admin: Kafka's queue_ops (source.h), droverctl's Kafka commands:
 * submit (produce jobs and wait for the brokers' acknowledgement), health
 * (metadata answered and the requests topic exists), topics create (admin
 * API; topics that exist are fine, so it can run on every deploy) and topics
 * list; and the configuration check of drover -t (kafka_conf_check). Every
 * handle is built by kafka_conf, so droverctl connects exactly like the
 * workers (security, pass-through). Nothing here consumes: droverctl links
 * this file without the worker's consumer (kafka.c). Each command returns
 * droverctl's exit code: 0 ok, 1 the command failed, 69 (EX_UNAVAILABLE)
 * cannot reach the brokers.
 */
#include "queue/events.h"
#include "queue/kafka.h"
#include "queue/kafka_conf.h"
#include "shared/util.h"

#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sysexits.h>

#include <librdkafka/rdkafka.h>


#define METADATA_TIMEOUT_MS 5000
#define ADMIN_TIMEOUT_MS 10000 /* or socket.timeout.ms of [librdkafka] when shorter */
#define SUBMIT_TIMEOUT_MS 30000
#define ID_BYTES 8

static int admin_timeout_ms = ADMIN_TIMEOUT_MS;

struct submitted {
	char **ids;
	rd_kafka_resp_err_t *errs;
	bool *acked;
	size_t count, cap;
};

static void say_verror(const char *fmt, va_list ap)
{
	char raw[1024], clean[1024];
	vsnprintf(raw, sizeof(raw), fmt, ap);
	kafka_redact(raw, clean, sizeof(clean));
	fprintf(stderr, "droverctl: %s\n", clean);
}

/* An error for the operator, with every known secret redacted. */
__attribute__((format(printf, 1, 2))) static void say_error(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	say_verror(fmt, ap);
	va_end(ap);
}

/* A producer-type handle (admin requests and metadata work on any handle). */
static rd_kafka_t *ctl_handle(const struct config *cfg, enum kafka_role role)
{
	char err[512];
	rd_kafka_conf_t *conf = kafka_conf_new(cfg, role, -1, err, sizeof(err));
	if (conf == NULL) {
		say_error("%s", err);
		return NULL;
	}
	rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
	if (rk == NULL) {
		say_error("cannot create a Kafka client: %s", err);
		rd_kafka_conf_destroy(conf);
	}
	return rk;
}

/* Metadata of every topic; NULL (and a message) when the brokers do not answer. */
static const struct rd_kafka_metadata *cluster_metadata(rd_kafka_t *rk, const struct config *cfg)
{
	const struct rd_kafka_metadata *md = NULL;
	rd_kafka_resp_err_t err = rd_kafka_metadata(rk, 1, NULL, &md, METADATA_TIMEOUT_MS);
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
		say_error("cannot reach the Kafka brokers %s: %s", cfg->kafka_brokers, rd_kafka_err2str(err));
		return NULL;
	}
	return md;
}

static const struct rd_kafka_metadata_topic *find_topic(const struct rd_kafka_metadata *md, const char *name)
{
	for (int i = 0; i < md->topic_cnt; i++)
		if (strcmp(md->topics[i].topic, name) == 0 && md->topics[i].err == RD_KAFKA_RESP_ERR_NO_ERROR)
			return &md->topics[i];
	return NULL;
}

/* ---- health ------------------------------------------------------------- */

static int kafka_ops_health(const struct config *cfg, FILE *out)
{
	rd_kafka_t *rk = ctl_handle(cfg, KAFKA_ROLE_ADMIN);
	if (rk == NULL)
		return EXIT_FAILURE;
	const struct rd_kafka_metadata *md = cluster_metadata(rk, cfg);
	if (md == NULL) {
		rd_kafka_destroy(rk);
		return EX_UNAVAILABLE;
	}
	int rc = EX_OK;
	const struct rd_kafka_metadata_topic *topic = find_topic(md, cfg->requests_topic);
	if (topic == NULL || topic->partition_cnt == 0) {
		say_error("requests topic %s does not exist (droverctl topics create)", cfg->requests_topic);
		rc = EXIT_FAILURE;
	} else {
		fprintf(out, "ok: %d broker(s), topic %s with %d partition(s)\n", md->broker_cnt, topic->topic,
		        topic->partition_cnt);
	}
	rd_kafka_metadata_destroy(md);
	rd_kafka_destroy(rk);
	return rc;
}

/* ---- submit ------------------------------------------------------------- */

char *kafka_message_id(const char *payload, size_t len, const void *key, size_t key_len, const char **problem)
{
	json_t *doc = json_loadb(payload, len, 0, NULL);
	json_t *field = json_object_get(doc, "id");
	char *id = NULL;
	*problem = NULL;
	/* An empty "id" names nothing: the key, or the message's place, names the job then. */
	if (json_is_string(field) && json_string_length(field) > 0) {
		*problem = event_job_id_problem(json_string_value(field), json_string_length(field));
		id = strndup(json_string_value(field), json_string_length(field));
	} else if (key != NULL && key_len > 0) {
		*problem = event_job_id_problem(key, key_len);
		id = strndup(key, key_len);
	}
	json_decref(doc);
	return id;
}

static int submitted_add(struct submitted *s, char *id)
{
	if (s->count == s->cap) {
		size_t cap = s->cap ? s->cap * 2 : 64;
		char **ids = realloc(s->ids, cap * sizeof(*ids));
		if (ids == NULL)
			return -1;
		s->ids = ids;
		rd_kafka_resp_err_t *errs = realloc(s->errs, cap * sizeof(*errs));
		if (errs == NULL)
			return -1;
		s->errs = errs;
		bool *acked = realloc(s->acked, cap * sizeof(*acked));
		if (acked == NULL)
			return -1;
		s->acked = acked;
		s->cap = cap;
	}
	s->ids[s->count] = id;
	s->errs[s->count] = RD_KAFKA_RESP_ERR__IN_PROGRESS;
	s->acked[s->count] = false;
	s->count++;
	return 0;
}

static void submitted_free(struct submitted *s)
{
	for (size_t i = 0; i < s->count; i++)
		free(s->ids[i]);
	free(s->ids);
	free(s->errs);
	free(s->acked);
}

static void on_submit_delivery(rd_kafka_t *rk, const rd_kafka_message_t *msg, void *opaque)
{
	struct submitted *s = opaque;
	size_t index = (size_t)(uintptr_t)msg->_private;
	if (index < s->count) {
		s->errs[index] = msg->err;
		s->acked[index] = msg->err == RD_KAFKA_RESP_ERR_NO_ERROR;
	}
}

/* A job without an "id" gets one as its key (README, The handler protocol: the key is the id then). */
static char *new_job_id(void)
{
	unsigned char raw[ID_BYTES];
	size_t got = 0;
	while (got < sizeof(raw)) {
		ssize_t n = getrandom(raw + got, sizeof(raw) - got, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return NULL;
		got += (size_t)n;
	}
	char *id = malloc(2 * ID_BYTES + 1);
	if (id == NULL)
		return NULL;
	for (size_t i = 0; i < ID_BYTES; i++)
		snprintf(id + 2 * i, 3, "%02x", raw[i]);
	return id;
}

static int produce_job(rd_kafka_t *rk, const char *topic, const char *id, const char *line, size_t len, size_t index)
{
	for (;;) {
		rd_kafka_resp_err_t err = rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(id, strlen(id)),
		                                            RD_KAFKA_V_VALUE((void *)line, len),
		                                            RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
		                                            RD_KAFKA_V_OPAQUE((void *)(uintptr_t)index), RD_KAFKA_V_END);
		if (err == RD_KAFKA_RESP_ERR_NO_ERROR)
			return 0;
		if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL) {
			say_error("job %s not submitted: %s", id, rd_kafka_err2str(err));
			return -1;
		}
		rd_kafka_poll(rk, 100); /* let deliveries make room */
	}
}

/* Reads JSON lines and produces each; returns the number of bad lines, or -1 on a fatal error. */
static int submit_lines(rd_kafka_t *rk, const struct config *cfg, FILE *in, struct submitted *s)
{
	char *line = NULL;
	size_t size = 0;
	ssize_t len;
	int bad = 0;
	unsigned lineno = 0;
	while ((len = getline(&line, &size, in)) >= 0) {
		lineno++;
		while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
			line[--len] = '\0';
		if (len == 0 || strspn(line, " \t") == (size_t)len)
			continue;
		if (!event_payload_is_object(line, (size_t)len)) {
			say_error("line %u: not a JSON object; not submitted", lineno);
			bad++;
			continue;
		}
		const char *problem;
		char *id = kafka_message_id(line, (size_t)len, NULL, 0, &problem);
		if (problem != NULL) {
			say_error("line %u: %s; not submitted", lineno, problem);
			free(id);
			bad++;
			continue;
		}
		if (id == NULL)
			id = new_job_id();
		if (id == NULL || submitted_add(s, id) < 0) {
			free(id);
			free(line);
			say_error("out of memory");
			return -1;
		}
		if (produce_job(rk, cfg->requests_topic, id, line, (size_t)len, s->count - 1) < 0)
			bad++;
		rd_kafka_poll(rk, 0);
	}
	free(line);
	if (ferror(in)) {
		say_error("reading the jobs: %s", strerror(errno));
		return -1;
	}
	return bad;
}

static int kafka_ops_submit(const struct config *cfg, FILE *in, FILE *out)
{
	char err[512];
	struct submitted s = { 0 };
	rd_kafka_conf_t *conf = kafka_conf_new(cfg, KAFKA_ROLE_PRODUCER, -1, err, sizeof(err));
	if (conf == NULL) {
		say_error("%s", err);
		return EXIT_FAILURE;
	}
	rd_kafka_conf_set_dr_msg_cb(conf, on_submit_delivery);
	rd_kafka_conf_set_opaque(conf, &s);
	rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
	if (rk == NULL) {
		say_error("cannot create a Kafka producer: %s", err);
		rd_kafka_conf_destroy(conf);
		return EXIT_FAILURE;
	}
	const struct rd_kafka_metadata *md = cluster_metadata(rk, cfg);
	if (md == NULL) {
		rd_kafka_destroy(rk);
		return EX_UNAVAILABLE;
	}
	bool exists = find_topic(md, cfg->requests_topic) != NULL;
	rd_kafka_metadata_destroy(md);
	if (!exists) {
		say_error("requests topic %s does not exist (droverctl topics create)", cfg->requests_topic);
		rd_kafka_destroy(rk);
		return EXIT_FAILURE;
	}

	int bad = submit_lines(rk, cfg, in, &s);
	long long deadline = now_ms() + SUBMIT_TIMEOUT_MS;
	while (rd_kafka_outq_len(rk) > 0 && now_ms() < deadline)
		rd_kafka_poll(rk, 100);
	if (rd_kafka_outq_len(rk) > 0) {
		rd_kafka_purge(rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
		rd_kafka_poll(rk, 0);
	}

	int rc = bad != 0 ? EXIT_FAILURE : EX_OK;
	for (size_t i = 0; i < s.count; i++) {
		if (s.acked[i]) {
			fprintf(out, "%s\n", s.ids[i]);
		} else {
			say_error("job %s not acknowledged: %s", s.ids[i], rd_kafka_err2str(s.errs[i]));
			rc = EXIT_FAILURE;
		}
	}
	if (fflush(out) != 0)
		rc = EXIT_FAILURE;
	submitted_free(&s);
	rd_kafka_destroy(rk);
	return rc;
}

/* ---- topics ------------------------------------------------------------- */

/* Waits for the one admin result on queue; NULL (and a message) on timeout. */
static rd_kafka_event_t *admin_wait(rd_kafka_queue_t *queue, const char *what)
{
	rd_kafka_event_t *ev = rd_kafka_queue_poll(queue, admin_timeout_ms + 5000);
	if (ev == NULL) {
		say_error("%s: no answer from the brokers", what);
		return NULL;
	}
	if (rd_kafka_event_error(ev) != RD_KAFKA_RESP_ERR_NO_ERROR) {
		say_error("%s: %s (a broker without the admin API, such as librdkafka's mock cluster, cannot do this)",
		          what, rd_kafka_event_error_string(ev));
		rd_kafka_event_destroy(ev);
		return NULL;
	}
	return ev;
}

/* A shorter socket.timeout.ms bounds the admin requests too (brokers without the admin API never answer). */
static void admin_timeout_from(const struct config *cfg)
{
	for (size_t i = 0; i < cfg->librdkafka_count; i++) {
		if (strcmp(cfg->librdkafka[i].key, "socket.timeout.ms") != 0)
			continue;
		int ms = atoi(cfg->librdkafka[i].value);
		if (ms > 0 && ms < ADMIN_TIMEOUT_MS)
			admin_timeout_ms = ms;
	}
}

static rd_kafka_AdminOptions_t *admin_options(rd_kafka_t *rk, rd_kafka_admin_op_t op)
{
	char err[256];
	rd_kafka_AdminOptions_t *options = rd_kafka_AdminOptions_new(rk, op);
	if (options == NULL)
		return NULL;
	rd_kafka_AdminOptions_set_request_timeout(options, admin_timeout_ms, err, sizeof(err));
	if (op == RD_KAFKA_ADMIN_OP_CREATETOPICS)
		rd_kafka_AdminOptions_set_operation_timeout(options, admin_timeout_ms, err, sizeof(err));
	return options;
}

static rd_kafka_NewTopic_t *new_topic(const struct topic_config *t)
{
	char err[256], retention[32];
	rd_kafka_NewTopic_t *nt = rd_kafka_NewTopic_new(t->name, t->partitions, t->replication_factor, err, sizeof(err));
	if (nt == NULL) {
		say_error("topic %s: %s", t->name, err);
		return NULL;
	}
	snprintf(retention, sizeof(retention), "%lld", t->retention_ms);
	if (t->retention_ms > 0)
		rd_kafka_NewTopic_set_config(nt, "retention.ms", retention);
	return nt;
}

/* Sends CreateTopics for the missing topics and reports each; returns the exit code. */
static int create_missing(rd_kafka_t *rk, rd_kafka_NewTopic_t **topics, size_t count)
{
	rd_kafka_queue_t *queue = rd_kafka_queue_new(rk);
	rd_kafka_AdminOptions_t *options = admin_options(rk, RD_KAFKA_ADMIN_OP_CREATETOPICS);
	rd_kafka_CreateTopics(rk, topics, count, options, queue);
	rd_kafka_event_t *ev = admin_wait(queue, "creating topics");
	int rc = EXIT_FAILURE;
	if (ev != NULL) {
		size_t n;
		const rd_kafka_topic_result_t **results =
			rd_kafka_CreateTopics_result_topics(rd_kafka_event_CreateTopics_result(ev), &n);
		rc = EX_OK;
		for (size_t i = 0; i < n; i++) {
			const char *name = rd_kafka_topic_result_name(results[i]);
			rd_kafka_resp_err_t err = rd_kafka_topic_result_error(results[i]);
			if (err == RD_KAFKA_RESP_ERR_NO_ERROR) {
				printf("%s: created\n", name);
			} else if (err == RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS) {
				printf("%s: exists\n", name);
			} else {
				const char *why = rd_kafka_topic_result_error_string(results[i]);
				say_error("%s: %s", name, why != NULL ? why : rd_kafka_err2str(err));
				rc = EXIT_FAILURE;
			}
		}
		rd_kafka_event_destroy(ev);
	}
	rd_kafka_AdminOptions_destroy(options);
	rd_kafka_queue_destroy(queue);
	return rc;
}

/* An admin handle and the cluster's metadata, for the topics commands. An exit code. */
static int open_admin(const struct config *cfg, rd_kafka_t **rk, const struct rd_kafka_metadata **md)
{
	admin_timeout_from(cfg);
	*rk = ctl_handle(cfg, KAFKA_ROLE_ADMIN);
	if (*rk == NULL)
		return EXIT_FAILURE;
	*md = cluster_metadata(*rk, cfg);
	if (*md == NULL) {
		rd_kafka_destroy(*rk);
		return EX_UNAVAILABLE;
	}
	return EX_OK;
}

static int kafka_ops_topics_create(const struct config *cfg)
{
	rd_kafka_t *rk;
	const struct rd_kafka_metadata *md;
	int opened = open_admin(cfg, &rk, &md);
	if (opened != EX_OK)
		return opened;
	int rc = EX_OK;
	rd_kafka_NewTopic_t **missing = calloc(cfg->topic_count ? cfg->topic_count : 1, sizeof(void *));
	size_t count = 0;
	for (size_t i = 0; missing != NULL && i < cfg->topic_count; i++) {
		const struct topic_config *t = &cfg->topics[i];
		const struct rd_kafka_metadata_topic *have = find_topic(md, t->name);
		if (have != NULL) {
			/* Existing topics are left alone, even with other settings: changing them is an operator's call. */
			printf("%s: exists (%d partition(s))\n", t->name, have->partition_cnt);
			continue;
		}
		rd_kafka_NewTopic_t *nt = new_topic(t);
		if (nt == NULL)
			rc = EXIT_FAILURE;
		else
			missing[count++] = nt;
	}
	rd_kafka_metadata_destroy(md);
	if (missing == NULL) {
		say_error("out of memory");
		rc = EXIT_FAILURE;
	} else if (count > 0) {
		int created = create_missing(rk, missing, count);
		if (created != EX_OK)
			rc = created;
	}
	for (size_t i = 0; i < count; i++)
		rd_kafka_NewTopic_destroy(missing[i]);
	free(missing);
	rd_kafka_destroy(rk);
	return rc;
}

static void print_partitions(const struct rd_kafka_metadata_topic *t)
{
	for (int p = 0; p < t->partition_cnt; p++) {
		const struct rd_kafka_metadata_partition *mp = &t->partitions[p];
		printf("  partition %d: leader %d, replicas", (int)mp->id, (int)mp->leader);
		for (int r = 0; r < mp->replica_cnt; r++)
			printf("%c%d", r ? ',' : ' ', (int)mp->replicas[r]);
		printf(", isr");
		for (int r = 0; r < mp->isr_cnt; r++)
			printf("%c%d", r ? ',' : ' ', (int)mp->isrs[r]);
		printf("\n");
	}
}

/* Prints the non-default configs of each described topic. */
static void print_configs(const rd_kafka_DescribeConfigs_result_t *result)
{
	size_t count;
	const rd_kafka_ConfigResource_t **resources = rd_kafka_DescribeConfigs_result_resources(result, &count);
	for (size_t i = 0; i < count; i++) {
		const char *name = rd_kafka_ConfigResource_name(resources[i]);
		if (rd_kafka_ConfigResource_error(resources[i]) != RD_KAFKA_RESP_ERR_NO_ERROR) {
			printf("%s: configs unavailable: %s\n", name, rd_kafka_ConfigResource_error_string(resources[i]));
			continue;
		}
		size_t n;
		const rd_kafka_ConfigEntry_t **entries = rd_kafka_ConfigResource_configs(resources[i], &n);
		printf("%s: configs:", name);
		for (size_t e = 0; e < n; e++) {
			const char *key = rd_kafka_ConfigEntry_name(entries[e]);
			bool shown = !rd_kafka_ConfigEntry_is_default(entries[e]) || strcmp(key, "retention.ms") == 0;
			if (!shown)
				continue;
			const char *value = rd_kafka_ConfigEntry_value(entries[e]);
			bool secret = rd_kafka_ConfigEntry_is_sensitive(entries[e]) || kafka_conf_key_is_secret(key);
			printf(" %s=%s", key, secret ? KAFKA_REDACTED : value != NULL ? value : "");
		}
		printf("\n");
	}
}

static void describe_configs(rd_kafka_t *rk, const char **names, size_t count)
{
	rd_kafka_ConfigResource_t **resources = calloc(count, sizeof(void *));
	if (resources == NULL)
		return;
	for (size_t i = 0; i < count; i++)
		resources[i] = rd_kafka_ConfigResource_new(RD_KAFKA_RESOURCE_TOPIC, names[i]);
	rd_kafka_queue_t *queue = rd_kafka_queue_new(rk);
	rd_kafka_AdminOptions_t *options = admin_options(rk, RD_KAFKA_ADMIN_OP_DESCRIBECONFIGS);
	rd_kafka_DescribeConfigs(rk, resources, count, options, queue);
	rd_kafka_event_t *ev = admin_wait(queue, "describing topic configs");
	if (ev != NULL) {
		print_configs(rd_kafka_event_DescribeConfigs_result(ev));
		rd_kafka_event_destroy(ev);
	}
	rd_kafka_AdminOptions_destroy(options);
	rd_kafka_queue_destroy(queue);
	for (size_t i = 0; i < count; i++)
		rd_kafka_ConfigResource_destroy(resources[i]);
	free(resources);
}

static int kafka_ops_topics_list(const struct config *cfg)
{
	rd_kafka_t *rk;
	const struct rd_kafka_metadata *md;
	int opened = open_admin(cfg, &rk, &md);
	if (opened != EX_OK)
		return opened;
	const char **present = calloc(cfg->topic_count ? cfg->topic_count : 1, sizeof(*present));
	size_t count = 0;
	for (size_t i = 0; i < cfg->topic_count; i++) {
		const char *name = cfg->topics[i].name;
		const struct rd_kafka_metadata_topic *t = find_topic(md, name);
		if (t == NULL) {
			printf("%s: missing (droverctl topics create)\n", name);
			continue;
		}
		int replicas = t->partition_cnt > 0 ? t->partitions[0].replica_cnt : 0;
		printf("%s: %d partition(s), replication %d\n", name, t->partition_cnt, replicas);
		print_partitions(t);
		if (present != NULL)
			present[count++] = name;
	}
	fflush(stdout);
	if (count > 0)
		describe_configs(rk, present, count);
	free(present);
	rd_kafka_metadata_destroy(md);
	rd_kafka_destroy(rk);
	return EX_OK;
}

/* A worker is ready once it joined the group: up to a session timeout (librdkafka's default is 45 s). */
static long long kafka_ops_ready_within_ms(const struct config *cfg)
{
	long long session = 45000;
	for (size_t i = 0; i < cfg->librdkafka_count; i++)
		if (strcmp(cfg->librdkafka[i].key, "session.timeout.ms") == 0 && atoll(cfg->librdkafka[i].value) > 0)
			session = atoll(cfg->librdkafka[i].value);
	return session;
}

const struct queue_ops kafka_queue_ops = {
	.name = "kafka",
	.has_partitions = true,
	.health = kafka_ops_health,
	.submit = kafka_ops_submit,
	.topics_create = kafka_ops_topics_create,
	.topics_list = kafka_ops_topics_list,
	.check = kafka_conf_check,
	.ready_within_ms = kafka_ops_ready_within_ms,
	.retry_failed = kafka_retry_failed,
	.retry_in_client = true,
};
