/*
 * source: the worker's half of the backend choice. Kept apart from backend.c
 * because naming the ops links every backend's consumer: only the worker
 * calls this, so droverctl, which uses queue_ops alone, links none of them.
 */
#include "queue/source.h"
#include "queue/kafka.h"
#include "queue/spool.h"

const struct source_ops *source_for(const struct config *cfg)
{
	return cfg->backend == BACKEND_KAFKA ? &kafka_source_ops : &spool_source_ops;
}
