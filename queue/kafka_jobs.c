/*
 * kafka_jobs: droverctl retry on Kafka (queue_ops retry_failed). The job is
 * taken from its newest failed event on the failed topic and produced to the
 * requests topic again under its id, so it runs again with its attempts
 * counted afresh (the crash ledger keys on the new offset).
 *
 * droverctl runs this itself, not the supervisor: a librdkafka handle starts
 * threads, and the supervisor forks its workers, so it never holds one
 * (queue_ops.retry_in_client). Only the newest KAFKA_RETRY_SCAN events of
 * each partition are read: a retry is for recent failures, and the scan of a
 * topic kept for weeks must stay bounded.
 */
#include "queue/kafka.h"
#include "queue/kafka_conf.h"
#include "queue/events.h"
#include "shared/util.h"

#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define KAFKA_RETRY_SCAN 10000      /* events read per partition of the failed topic, newest */
#define KAFKA_RETRY_TIMEOUT_MS 30000 /* to read them, and then for the broker to take the job */
#define KAFKA_META_TIMEOUT_MS 10000

struct found {
	char *job;     /* the job bytes of the newest failed event of the id, or NULL */
	size_t len;
	int64_t offset;
};

static rd_kafka_t *reader_handle(const struct config *cfg, char *why, size_t len)
{
	rd_kafka_conf_t *conf = kafka_conf_new(cfg, KAFKA_ROLE_ADMIN, -1, why, len);
	if (conf == NULL)
		return NULL;
	char err[256], group[64];
	/* librdkafka's assign() needs a group.id; this one is never joined and never commits. */
	snprintf(group, sizeof(group), "droverctl-retry-%ld", (long)getpid());
	if (rd_kafka_conf_set(conf, "group.id", group, err, sizeof(err)) != RD_KAFKA_CONF_OK ||
	    rd_kafka_conf_set(conf, "enable.partition.eof", "true", err, sizeof(err)) != RD_KAFKA_CONF_OK ||
	    rd_kafka_conf_set(conf, "enable.auto.commit", "false", err, sizeof(err)) != RD_KAFKA_CONF_OK) {
		snprintf(why, len, "%s", err);
		rd_kafka_conf_destroy(conf);
		return NULL;
	}
	rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof(err));
	if (rk == NULL) {
		snprintf(why, len, "cannot create a Kafka consumer: %s", err);
		rd_kafka_conf_destroy(conf);
	}
	return rk;
}

/* The newest KAFKA_RETRY_SCAN offsets of each partition of topic; NULL and why when none can be read. */
static rd_kafka_topic_partition_list_t *scan_range(rd_kafka_t *rk, const char *topic, int *partitions, char *why,
                                                   size_t len)
{
	rd_kafka_topic_t *t = rd_kafka_topic_new(rk, topic, NULL);
	const struct rd_kafka_metadata *md = NULL;
	rd_kafka_resp_err_t err = t != NULL ? rd_kafka_metadata(rk, 0, t, &md, KAFKA_META_TIMEOUT_MS)
	                                    : RD_KAFKA_RESP_ERR__INVALID_ARG;
	if (t != NULL)
		rd_kafka_topic_destroy(t);
	if (err == RD_KAFKA_RESP_ERR_NO_ERROR && md != NULL && md->topic_cnt == 1)
		err = md->topics[0].err;
	else if (err == RD_KAFKA_RESP_ERR_NO_ERROR)
		err = RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC;
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
		snprintf(why, len, "cannot read the failed topic %s: %s", topic, rd_kafka_err2str(err));
		if (md != NULL)
			rd_kafka_metadata_destroy(md);
		return NULL;
	}
	rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(md->topics[0].partition_cnt);
	*partitions = 0;
	for (int i = 0; list != NULL && i < md->topics[0].partition_cnt; i++) {
		int32_t p = md->topics[0].partitions[i].id;
		int64_t low = 0, high = 0;
		if (rd_kafka_query_watermark_offsets(rk, topic, p, &low, &high, KAFKA_META_TIMEOUT_MS) != 0 || high <= low)
			continue;
		rd_kafka_topic_partition_list_add(list, topic, p)->offset =
			high - low > KAFKA_RETRY_SCAN ? high - KAFKA_RETRY_SCAN : low;
		(*partitions)++;
	}
	rd_kafka_metadata_destroy(md);
	return list;
}

/* A failed event of id: keeps its job when it is newer than what was found. */
static void consider(const rd_kafka_message_t *m, const char *id, struct found *found)
{
	if (m->key_len != strlen(id) || memcmp(m->key, id, m->key_len) != 0 || m->offset < found->offset)
		return;
	json_t *doc = json_loadb(m->payload, m->len, 0, NULL);
	json_t *job = json_object_get(doc, "job");
	const char *its = json_string_value(json_object_get(doc, "id"));
	if (its != NULL && strcmp(its, id) == 0 && job != NULL) {
		free(found->job);
		if (json_is_string(job)) {
			found->job = strndup(json_string_value(job), json_string_length(job));
			found->len = json_string_length(job);
		} else {
			found->job = json_dumps(job, JSON_COMPACT | JSON_PRESERVE_ORDER);
			found->len = found->job != NULL ? strlen(found->job) : 0;
		}
		found->offset = m->offset;
	}
	json_decref(doc);
}

/* Reads the assigned ranges to their ends (partition EOF each). 0, or -1 and why. */
static int scan(rd_kafka_t *rk, int partitions, const char *id, struct found *found, char *why, size_t len)
{
	long long deadline = now_ms() + KAFKA_RETRY_TIMEOUT_MS;
	int at_end = 0;
	while (at_end < partitions) {
		if (now_ms() >= deadline) {
			snprintf(why, len, "reading the failed topic took longer than %d ms", KAFKA_RETRY_TIMEOUT_MS);
			return -1;
		}
		rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 200);
		if (m == NULL)
			continue;
		if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF)
			at_end++;
		else if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR)
			consider(m, id, found);
		rd_kafka_message_destroy(m);
	}
	return 0;
}

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
	*(rd_kafka_resp_err_t *)opaque = m->err;
}

/* Produces the job to the requests topic under its id and waits for the broker's acknowledgement. */
static int produce_again(const struct config *cfg, const char *id, const struct found *found, char *why, size_t len)
{
	rd_kafka_resp_err_t delivered = RD_KAFKA_RESP_ERR__IN_PROGRESS;
	rd_kafka_conf_t *conf = kafka_conf_new(cfg, KAFKA_ROLE_PRODUCER, -1, why, len);
	if (conf == NULL)
		return -1;
	rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
	rd_kafka_conf_set_opaque(conf, &delivered);
	char err[256];
	rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
	if (rk == NULL) {
		snprintf(why, len, "cannot create a Kafka producer: %s", err);
		rd_kafka_conf_destroy(conf);
		return -1;
	}
	rd_kafka_resp_err_t rc = rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(cfg->requests_topic),
	                                           RD_KAFKA_V_KEY(id, strlen(id)),
	                                           RD_KAFKA_V_VALUE(found->job, found->len),
	                                           RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
	if (rc == RD_KAFKA_RESP_ERR_NO_ERROR)
		rd_kafka_flush(rk, KAFKA_RETRY_TIMEOUT_MS);
	else
		delivered = rc;
	rd_kafka_destroy(rk);
	if (delivered != RD_KAFKA_RESP_ERR_NO_ERROR) {
		snprintf(why, len, "the job was not acknowledged by the requests topic %s: %s", cfg->requests_topic,
		         rd_kafka_err2str(delivered));
		return -1;
	}
	return 0;
}

enum queue_job_result kafka_retry_failed(const struct config *cfg, const char *id, char *why, size_t len)
{
	struct found found = { .offset = -1 };
	int partitions = 0;
	rd_kafka_t *rk = reader_handle(cfg, why, len);
	if (rk == NULL)
		return QUEUE_JOB_ERROR;
	rd_kafka_topic_partition_list_t *range = scan_range(rk, cfg->failed_topic, &partitions, why, len);
	int rc = range != NULL ? 0 : -1;
	rd_kafka_resp_err_t err = RD_KAFKA_RESP_ERR_NO_ERROR;
	if (rc == 0 && partitions > 0 && (err = rd_kafka_assign(rk, range)) != RD_KAFKA_RESP_ERR_NO_ERROR) {
		snprintf(why, len, "cannot read the failed topic %s: %s", cfg->failed_topic, rd_kafka_err2str(err));
		rc = -1;
	}
	if (rc == 0 && partitions > 0)
		rc = scan(rk, partitions, id, &found, why, len);
	if (range != NULL)
		rd_kafka_topic_partition_list_destroy(range);
	rd_kafka_consumer_close(rk);
	rd_kafka_destroy(rk);
	enum queue_job_result result = rc < 0 ? QUEUE_JOB_ERROR : found.job == NULL ? QUEUE_JOB_UNKNOWN : QUEUE_JOB_DONE;
	if (result == QUEUE_JOB_DONE && produce_again(cfg, id, &found, why, len) < 0)
		result = QUEUE_JOB_ERROR;
	free(found.job);
	return result;
}
