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

extern const struct source_ops kafka_source_ops;

/*
 * The worker's scoreboard slot: the source publishes its assigned partitions
 * and their lag there (partition_count, partitions[]), inside
 * scoreboard_write_begin/end. Call after open(); NULL detaches.
 */
void kafka_source_set_scoreboard(struct source *src, struct scoreboard_slot *slot);

/*
 * On a rebalance that revokes partitions, jobs from them still running after
 * the drain time are handed to revoke(job, arg): the worker kills the handler
 * and then calls release() for the job as usual (it will run again on the new
 * owner). Without a hook, unfinished jobs are simply left to run and their
 * outcome is still produced, but their offsets are not committed by this
 * worker any more.
 */
void kafka_source_set_revoke_hook(struct source *src, void (*revoke)(struct job *job, void *arg), void *arg);

/*
 * The job id a message names: its "id" string field, else its key (malloc'd);
 * NULL when it names none. *problem is a static sentence when that id breaks
 * event_job_id_problem's rules (the id is returned all the same), else NULL.
 * Shared by the worker and droverctl submit.
 */
char *kafka_message_id(const char *payload, size_t len, const void *key, size_t key_len, const char **problem);

#endif
