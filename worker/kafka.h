/*
 * kafka: the Kafka backend (spec sections 2-5). Every worker is one member of
 * the consumer group, with its own consumer and producer created after fork.
 * Offsets are stored only as the contiguous low watermark of offsets whose
 * outcome event the broker acknowledged.
 */
#ifndef DROVER_KAFKA_H
#define DROVER_KAFKA_H

#include "source.h"

extern const struct source_ops kafka_source_ops;

#endif
