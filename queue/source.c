/*
 * source: picks the backend's ops for a config and holds what every backend
 * shares.
 */
#include "queue/source.h"
#include "queue/kafka.h"
#include "queue/spool.h"

#include <stdlib.h>

const struct source_ops *source_for(const struct config *cfg)
{
	return cfg->backend == BACKEND_KAFKA ? &kafka_source_ops : &spool_source_ops;
}

void job_free(struct job *job)
{
	if (job == NULL)
		return;
	free(job->id);
	free(job->payload);
	free(job);
}
