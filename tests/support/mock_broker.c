/*
 * mock_broker: a Kafka-protocol cluster for the integration tests, built on
 * librdkafka's mock cluster (rdkafka_mock.h) and run in its own process so
 * that drover, droverctl and kcat all talk to it over TCP like to a real one.
 *
 *   mock_broker [-n BROKERS] [TOPIC[:PARTITIONS] ...]
 *
 * Creates the topics (default 3 partitions), prints the bootstrap address as
 * the first line on stdout, then reads commands on stdin, one per line, and
 * answers each with one line, "ok ..." or "error ...":
 *
 *   ping                          ok
 *   down N|all / up N|all         broker N (1-based) or every broker refuses / accepts connections
 *   rtt N|all MS                  delays every response of broker N
 *   error APIKEY ERR [ERR ...]    the next requests of APIKEY fail with ERR, in turn
 *   clear APIKEY                  drops the queued errors of APIKEY
 *   apiversion APIKEY MIN MAX     the versions of APIKEY advertised (-1 -1: not supported)
 *   topic-error TOPIC ERR         Metadata reports ERR for TOPIC (NO_ERROR clears it)
 *   create TOPIC PARTITIONS       creates a topic
 *   committed GROUP TOPIC         ok P=OFFSET ... (the group's committed offsets; -1001 = none)
 *   watermarks TOPIC              ok P=LOW:HIGH ...
 *
 * APIKEY is a name (Produce, Fetch, Metadata, OffsetCommit, JoinGroup, ...) or
 * a number; ERR is a librdkafka error name (NOT_LEADER_FOR_PARTITION,
 * _TRANSPORT, ...) or a number. Exits on stdin EOF, SIGTERM or SIGINT.
 */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#define QUERY_TIMEOUT_MS 5000
#define MAX_ERRORS 64

static volatile sig_atomic_t stop_requested;

struct mock {
	rd_kafka_t *rk; /* owns the cluster's threads */
	rd_kafka_mock_cluster_t *cluster;
	const char *bootstrap;
	int brokers;
};

static const struct { const char *name; int16_t key; } api_keys[] = {
	{ "Produce", 0 }, { "Fetch", 1 }, { "ListOffsets", 2 }, { "Metadata", 3 },
	{ "OffsetCommit", 8 }, { "OffsetFetch", 9 }, { "FindCoordinator", 10 },
	{ "JoinGroup", 11 }, { "Heartbeat", 12 }, { "LeaveGroup", 13 }, { "SyncGroup", 14 },
	{ "DescribeGroups", 15 }, { "ListGroups", 16 }, { "ApiVersions", 18 },
	{ "CreateTopics", 19 }, { "InitProducerId", 22 }, { "DescribeConfigs", 32 },
};

static void on_signal(int sig)
{
	(void)sig;
	stop_requested = 1;
}

static void reply(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void reply(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	fflush(stdout);
}

static int parse_int(const char *text, long min, long max, long *out)
{
	char *end;
	errno = 0;
	long value = strtol(text, &end, 10);
	if (errno != 0 || end == text || *end != '\0' || value < min || value > max)
		return -1;
	*out = value;
	return 0;
}

static int parse_api_key(const char *text, int16_t *key)
{
	for (size_t i = 0; i < sizeof(api_keys) / sizeof(api_keys[0]); i++) {
		if (strcasecmp(text, api_keys[i].name) == 0) {
			*key = api_keys[i].key;
			return 0;
		}
	}
	long value;
	if (parse_int(text, 0, 100, &value) != 0)
		return -1;
	*key = (int16_t)value;
	return 0;
}

static int parse_error(const char *text, rd_kafka_resp_err_t *err)
{
	const struct rd_kafka_err_desc *descs;
	size_t count;
	rd_kafka_get_err_descs(&descs, &count);
	const char *name = strncmp(text, "ERR_", 4) == 0 ? text + 4 : text;
	for (size_t i = 0; i < count; i++) {
		if (descs[i].name != NULL && strcasecmp(name, descs[i].name) == 0) {
			*err = descs[i].code;
			return 0;
		}
	}
	long value;
	if (parse_int(text, INT_MIN, INT_MAX, &value) != 0)
		return -1;
	*err = (rd_kafka_resp_err_t)value;
	return 0;
}

/* "all" = -1, else a broker id in 1..brokers. */
static int parse_broker(const struct mock *mock, const char *text, int32_t *id)
{
	if (strcmp(text, "all") == 0) {
		*id = -1;
		return 0;
	}
	long value;
	if (parse_int(text, 1, mock->brokers, &value) != 0)
		return -1;
	*id = (int32_t)value;
	return 0;
}

static int create_topic(struct mock *mock, const char *spec)
{
	char name[256];
	long partitions = 3;
	const char *colon = strrchr(spec, ':');
	size_t len = colon != NULL ? (size_t)(colon - spec) : strlen(spec);
	if (len == 0 || len >= sizeof(name))
		return -1;
	memcpy(name, spec, len);
	name[len] = '\0';
	if (colon != NULL && parse_int(colon + 1, 1, 10000, &partitions) != 0)
		return -1;
	rd_kafka_resp_err_t err = rd_kafka_mock_topic_create(mock->cluster, name, (int)partitions, 1);
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
		fprintf(stderr, "mock_broker: creating %s: %s\n", name, rd_kafka_err2str(err));
		return -1;
	}
	return 0;
}

/* A short-lived client of the cluster, for the queries. */
static rd_kafka_t *query_client(const struct mock *mock, const char *group)
{
	char errstr[512];
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	if (rd_kafka_conf_set(conf, "bootstrap.servers", mock->bootstrap, errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK ||
	    rd_kafka_conf_set(conf, "group.id", group, errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK ||
	    rd_kafka_conf_set(conf, "log_level", "3", errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK) {
		rd_kafka_conf_destroy(conf);
		return NULL;
	}
	rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
	if (rk == NULL)
		rd_kafka_conf_destroy(conf);
	return rk;
}

/* The partition list of topic, from a metadata request. NULL when it does not exist. */
static rd_kafka_topic_partition_list_t *topic_partitions(rd_kafka_t *rk, const char *topic, char *why, size_t whylen)
{
	const struct rd_kafka_metadata *md;
	rd_kafka_resp_err_t err = rd_kafka_metadata(rk, 1, NULL, &md, QUERY_TIMEOUT_MS);
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
		snprintf(why, whylen, "metadata: %s", rd_kafka_err2str(err));
		return NULL;
	}
	rd_kafka_topic_partition_list_t *list = NULL;
	for (int i = 0; i < md->topic_cnt; i++) {
		const struct rd_kafka_metadata_topic *t = &md->topics[i];
		if (strcmp(t->topic, topic) != 0 || t->err != RD_KAFKA_RESP_ERR_NO_ERROR)
			continue;
		list = rd_kafka_topic_partition_list_new(t->partition_cnt);
		for (int p = 0; p < t->partition_cnt; p++)
			rd_kafka_topic_partition_list_add(list, topic, t->partitions[p].id);
	}
	rd_kafka_metadata_destroy(md);
	if (list == NULL)
		snprintf(why, whylen, "no topic %s", topic);
	return list;
}

static int compare_partition(const void *a, const void *b, void *opaque)
{
	(void)opaque;
	const rd_kafka_topic_partition_t *pa = a, *pb = b;
	return (pa->partition > pb->partition) - (pa->partition < pb->partition);
}

/* A query client and the topic's partitions, sorted; on failure the error is replied and NULL returned. */
static rd_kafka_topic_partition_list_t *open_query(const struct mock *mock, const char *group, const char *topic,
                                                   rd_kafka_t **rk)
{
	char why[256];
	*rk = query_client(mock, group);
	if (*rk == NULL) {
		reply("error cannot create a client");
		return NULL;
	}
	rd_kafka_topic_partition_list_t *list = topic_partitions(*rk, topic, why, sizeof(why));
	if (list == NULL) {
		reply("error %s", why);
		rd_kafka_destroy(*rk);
		return NULL;
	}
	rd_kafka_topic_partition_list_sort(list, compare_partition, NULL);
	return list;
}

static void query_committed(const struct mock *mock, const char *group, const char *topic)
{
	rd_kafka_t *rk;
	rd_kafka_topic_partition_list_t *list = open_query(mock, group, topic, &rk);
	if (list == NULL)
		return;
	rd_kafka_resp_err_t err = rd_kafka_committed(rk, list, QUERY_TIMEOUT_MS);
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
		reply("error committed: %s", rd_kafka_err2str(err));
	} else {
		char line[8192];
		size_t used = (size_t)snprintf(line, sizeof(line), "ok");
		for (int i = 0; i < list->cnt && used < sizeof(line); i++)
			used += (size_t)snprintf(line + used, sizeof(line) - used, " %d=%lld",
			                         (int)list->elems[i].partition, (long long)list->elems[i].offset);
		reply("%s", line);
	}
	rd_kafka_topic_partition_list_destroy(list);
	rd_kafka_destroy(rk);
}

static void query_watermarks(const struct mock *mock, const char *topic)
{
	rd_kafka_t *rk;
	rd_kafka_topic_partition_list_t *list = open_query(mock, "mock-broker-query", topic, &rk);
	if (list == NULL)
		return;
	char line[8192];
	size_t used = (size_t)snprintf(line, sizeof(line), "ok");
	for (int i = 0; i < list->cnt && used < sizeof(line); i++) {
		int64_t low, high;
		rd_kafka_resp_err_t err = rd_kafka_query_watermark_offsets(rk, topic, list->elems[i].partition,
		                                                           &low, &high, QUERY_TIMEOUT_MS);
		if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
			snprintf(line, sizeof(line), "error watermarks: %s", rd_kafka_err2str(err));
			break;
		}
		used += (size_t)snprintf(line + used, sizeof(line) - used, " %d=%lld:%lld",
		                         (int)list->elems[i].partition, (long long)low, (long long)high);
	}
	reply("%s", line);
	rd_kafka_topic_partition_list_destroy(list);
	rd_kafka_destroy(rk);
}

static void push_errors(struct mock *mock, char **words, int count)
{
	int16_t key;
	rd_kafka_resp_err_t errs[MAX_ERRORS];
	if (count < 3 || count - 2 > MAX_ERRORS || parse_api_key(words[1], &key) != 0) {
		reply("error usage: error APIKEY ERR [ERR ...]");
		return;
	}
	for (int i = 2; i < count; i++) {
		if (parse_error(words[i], &errs[i - 2]) != 0) {
			reply("error unknown error %s", words[i]);
			return;
		}
	}
	rd_kafka_mock_push_request_errors_array(mock->cluster, key, (size_t)(count - 2), errs);
	reply("ok");
}

static void set_broker(struct mock *mock, char **words, int count)
{
	int32_t id;
	if (count != 2 || parse_broker(mock, words[1], &id) != 0) {
		reply("error usage: %s N|all", words[0]);
		return;
	}
	rd_kafka_resp_err_t err = strcmp(words[0], "down") == 0 ? rd_kafka_mock_broker_set_down(mock->cluster, id)
	                                                        : rd_kafka_mock_broker_set_up(mock->cluster, id);
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
		reply("error %s", rd_kafka_err2str(err));
	else
		reply("ok");
}

static void run_command(struct mock *mock, char *line)
{
	char *words[MAX_ERRORS + 4];
	int count = 0;
	for (char *save = NULL, *w = strtok_r(line, " \t\r", &save); w != NULL && count < (int)(sizeof(words) / sizeof(words[0]));
	     w = strtok_r(NULL, " \t\r", &save))
		words[count++] = w;
	if (count == 0)
		return;

	const char *cmd = words[0];
	long value;
	int16_t key;
	int32_t id;
	rd_kafka_resp_err_t err;
	if (strcmp(cmd, "ping") == 0) {
		reply("ok");
	} else if (strcmp(cmd, "down") == 0 || strcmp(cmd, "up") == 0) {
		set_broker(mock, words, count);
	} else if (strcmp(cmd, "rtt") == 0) {
		if (count != 3 || parse_broker(mock, words[1], &id) != 0 || parse_int(words[2], 0, 600000, &value) != 0)
			reply("error usage: rtt N|all MS");
		else if ((err = rd_kafka_mock_broker_set_rtt(mock->cluster, id, (int)value)) != RD_KAFKA_RESP_ERR_NO_ERROR)
			reply("error %s", rd_kafka_err2str(err));
		else
			reply("ok");
	} else if (strcmp(cmd, "error") == 0) {
		push_errors(mock, words, count);
	} else if (strcmp(cmd, "apiversion") == 0) {
		long min, max;
		if (count != 4 || parse_api_key(words[1], &key) != 0 || parse_int(words[2], -1, 100, &min) != 0 ||
		    parse_int(words[3], -1, 100, &max) != 0)
			reply("error usage: apiversion APIKEY MIN MAX");
		else if ((err = rd_kafka_mock_set_apiversion(mock->cluster, key, (int16_t)min, (int16_t)max)) !=
		         RD_KAFKA_RESP_ERR_NO_ERROR)
			reply("error %s", rd_kafka_err2str(err));
		else
			reply("ok");
	} else if (strcmp(cmd, "clear") == 0) {
		if (count != 2 || parse_api_key(words[1], &key) != 0) {
			reply("error usage: clear APIKEY");
		} else {
			rd_kafka_mock_clear_request_errors(mock->cluster, key);
			reply("ok");
		}
	} else if (strcmp(cmd, "topic-error") == 0) {
		if (count != 3 || parse_error(words[2], &err) != 0) {
			reply("error usage: topic-error TOPIC ERR");
		} else {
			rd_kafka_mock_topic_set_error(mock->cluster, words[1], err);
			reply("ok");
		}
	} else if (strcmp(cmd, "create") == 0) {
		char spec[512];
		if (count != 3 || snprintf(spec, sizeof(spec), "%s:%s", words[1], words[2]) >= (int)sizeof(spec) ||
		    create_topic(mock, spec) != 0)
			reply("error usage: create TOPIC PARTITIONS");
		else
			reply("ok");
	} else if (strcmp(cmd, "committed") == 0) {
		if (count != 3)
			reply("error usage: committed GROUP TOPIC");
		else
			query_committed(mock, words[1], words[2]);
	} else if (strcmp(cmd, "watermarks") == 0) {
		if (count != 2)
			reply("error usage: watermarks TOPIC");
		else
			query_watermarks(mock, words[1]);
	} else {
		reply("error unknown command %s", cmd);
	}
}

/* Reads commands until EOF or a stop signal. */
static void serve_stdin(struct mock *mock)
{
	char buf[16384];
	size_t used = 0;
	while (!stop_requested) {
		struct pollfd pfd = { .fd = STDIN_FILENO, .events = POLLIN };
		int ready = poll(&pfd, 1, 1000);
		if (ready < 0 && errno != EINTR) {
			perror("mock_broker: poll");
			return;
		}
		if (ready <= 0)
			continue;
		ssize_t n = read(STDIN_FILENO, buf + used, sizeof(buf) - 1 - used);
		if (n < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (n <= 0)
			return;
		used += (size_t)n;
		char *start = buf, *nl;
		while ((nl = memchr(start, '\n', used - (size_t)(start - buf))) != NULL) {
			*nl = '\0';
			run_command(mock, start);
			start = nl + 1;
		}
		used -= (size_t)(start - buf);
		memmove(buf, start, used);
		if (used == sizeof(buf) - 1) {
			reply("error line too long");
			used = 0;
		}
	}
}

static int start_cluster(struct mock *mock)
{
	char errstr[512];
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	/* The handle only hosts the cluster; it never connects anywhere. */
	if (rd_kafka_conf_set(conf, "log_level", "3", errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK) {
		fprintf(stderr, "mock_broker: %s\n", errstr);
		rd_kafka_conf_destroy(conf);
		return -1;
	}
	mock->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
	if (mock->rk == NULL) {
		fprintf(stderr, "mock_broker: %s\n", errstr);
		rd_kafka_conf_destroy(conf);
		return -1;
	}
	mock->cluster = rd_kafka_mock_cluster_new(mock->rk, mock->brokers);
	if (mock->cluster == NULL) {
		fprintf(stderr, "mock_broker: cannot create the mock cluster\n");
		rd_kafka_destroy(mock->rk);
		return -1;
	}
	mock->bootstrap = rd_kafka_mock_cluster_bootstraps(mock->cluster);
	return 0;
}

int main(int argc, char **argv)
{
	struct mock mock = { .brokers = 1 };
	int opt;
	long value;
	while ((opt = getopt(argc, argv, "n:")) != -1) {
		if (opt == 'n' && parse_int(optarg, 1, 16, &value) == 0) {
			mock.brokers = (int)value;
		} else {
			fprintf(stderr, "usage: mock_broker [-n BROKERS] [TOPIC[:PARTITIONS] ...]\n");
			return 64;
		}
	}

	struct sigaction sa = { .sa_handler = on_signal };
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);

	if (start_cluster(&mock) != 0)
		return 69;
	for (int i = optind; i < argc; i++) {
		if (create_topic(&mock, argv[i]) != 0) {
			fprintf(stderr, "mock_broker: bad topic %s (TOPIC[:PARTITIONS])\n", argv[i]);
			rd_kafka_mock_cluster_destroy(mock.cluster);
			rd_kafka_destroy(mock.rk);
			return 64;
		}
	}
	reply("%s", mock.bootstrap);

	serve_stdin(&mock);

	rd_kafka_mock_cluster_destroy(mock.cluster);
	rd_kafka_destroy(mock.rk);
	return 0;
}
