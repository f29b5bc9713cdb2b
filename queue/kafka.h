/*
 * kafka: the Kafka backend (README: Kafka). Every worker is one member of
 * the consumer group, with its own consumer and producer created after fork.
 * Offsets are stored only as the contiguous low watermark of offsets whose
 * outcome event the broker acknowledged.
 */
#ifndef DROVER_KAFKA_H
#define DROVER_KAFKA_H

#include "shared/scoreboard.h"
#include "queue/source.h"

/* The worker's side (kafka.c); it shows partitions and lag in params->board and uses cb->revoke. */
extern const struct source_ops kafka_source_ops;
/* droverctl's and drover -t's side (kafka_admin.c): no consumer. */
extern const struct queue_ops kafka_queue_ops;
/* droverctl retry (kafka_jobs.c): the job of id's newest failed event, produced to the requests topic again. */
enum queue_job_result kafka_retry_failed(const struct config *cfg, const char *id, char *why, size_t len);

/*
 * The job id a message names: its "id" string field, else its key (malloc'd);
 * NULL when it names none. *problem is a static sentence when that id breaks
 * event_job_id_problem's rules (the id is returned all the same), else NULL.
 * Shared by the worker and droverctl submit (kafka_admin.c).
 */
char *kafka_message_id(const char *payload, size_t len, const void *key, size_t key_len, const char **problem);

#endif
