/*
 * backend: the queue_ops table (source.h) chosen once from the configuration,
 * and what every backend shares about jobs.
 */
#include "queue/source.h"
#include "queue/kafka.h"
#include "queue/spool.h"
#include "shared/util.h"

#include <stdlib.h>
#include <string.h>

static const struct queue_ops *const backends[] = { &spool_queue_ops, &kafka_queue_ops };

const struct queue_ops *queue_ops_for(const struct config *cfg)
{
	return cfg->backend == BACKEND_KAFKA ? &kafka_queue_ops : &spool_queue_ops;
}

const struct queue_ops *queue_ops_named(const char *name)
{
	for (size_t i = 0; i < ARRAY_LEN(backends); i++)
		if (strcmp(backends[i]->name, name) == 0)
			return backends[i];
	return NULL;
}

const char *job_state_name(enum job_state state)
{
	switch (state) {
	case JOB_STARTED: return "started";
	case JOB_PROGRESS: return "progress";
	case JOB_RETRYING: return "retrying";
	case JOB_COMPLETED: return "completed";
	case JOB_FAILED: return "failed";
	}
	return "unknown";
}

void job_free(struct job *job)
{
	if (job == NULL)
		return;
	free(job->id);
	free(job->payload);
	free(job);
}

struct config *queue_config_load(const char *path, struct config_errors *errors)
{
	struct config *cfg = config_load(path, errors);
	if (cfg == NULL)
		return NULL;
	const struct queue_ops *queue = queue_ops_for(cfg);
	if (queue->check == NULL || queue->check(cfg, errors) == 0)
		return cfg;
	config_free(cfg);
	return NULL;
}
