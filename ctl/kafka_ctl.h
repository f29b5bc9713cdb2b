/*
 * kafka_ctl: droverctl's Kafka commands. Each returns droverctl's exit code:
 * 0 ok, 1 the command failed, 69 cannot reach the brokers.
 */
#ifndef DROVER_KAFKA_CTL_H
#define DROVER_KAFKA_CTL_H

#include <stdio.h>

#include "shared/config.h"

/* Produces each JSON line of in to the requests topic (key = id), waits for acks, prints the ids. */
int kafkactl_submit(const struct config *cfg, FILE *in);
/* 0 only when the brokers answer a metadata request and the requests topic exists. */
int kafkactl_health(const struct config *cfg);
/* Creates every [topic:NAME]; existing topics are fine. */
int kafkactl_topics_create(const struct config *cfg);
/* Partitions and configs of every [topic:NAME]. */
int kafkactl_topics_list(const struct config *cfg);

#endif
