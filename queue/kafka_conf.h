/*
 * kafka_conf: drover's configuration mapped to librdkafka properties, shared
 * by the worker (consumer + producer) and droverctl (producer, admin), with
 * the redaction of secrets: librdkafka's own messages (and its config dump)
 * repeat secrets verbatim, so every text from librdkafka that drover logs or
 * shows passes through kafka_redact().
 *
 * Properties are applied in this order, a later value of a key replacing an
 * earlier one:
 *   1. drover's defaults (cooperative-sticky, earliest, small prefetch, stats),
 *   2. the [kafka] section (brokers, client id, group, security),
 *   3. the [librdkafka] pass-through (like kcat -X),
 *   4. what drover's guarantees depend on (manual offset store with auto
 *      commit, idempotent producer with acks=all, client.id and
 *      group.instance.id per slot): a pass-through value of these keys is
 *      ignored with a warning.
 */
#ifndef DROVER_KAFKA_CONF_H
#define DROVER_KAFKA_CONF_H

#include <stdbool.h>
#include <stddef.h>

#include <librdkafka/rdkafka.h>

#include "shared/config.h"

#define KAFKA_REDACTED "[redacted]"

enum kafka_role {
	KAFKA_ROLE_CONSUMER, /* a worker's group member */
	KAFKA_ROLE_PRODUCER, /* a worker's outcome producer, droverctl submit */
	KAFKA_ROLE_ADMIN,    /* droverctl health / topics: metadata and admin API */
};

struct kafka_prop {
	char *key;
	char *value;
};

struct kafka_props {
	struct kafka_prop *items;
	size_t count;
	size_t cap;
};

/*
 * The properties of a handle of role for worker slot (slot < 0: droverctl,
 * client.id <client_id>-ctl). Each key appears once, with its final value.
 * 0, or -1 with err (memory, or the sasl_password_file cannot be read).
 */
int kafka_props_build(const struct config *cfg, enum kafka_role role, int slot, struct kafka_props *props,
                      char *err, size_t errlen);
/* The value of key, or NULL. */
const char *kafka_props_get(const struct kafka_props *props, const char *key);
void kafka_props_free(struct kafka_props *props);

/*
 * A librdkafka configuration for role: kafka_props_build applied with
 * rd_kafka_conf_set, secrets registered for redaction, librdkafka's log lines
 * routed (redacted) to log.h. NULL with a redacted err on failure.
 */
rd_kafka_conf_t *kafka_conf_new(const struct config *cfg, enum kafka_role role, int slot, char *err, size_t errlen);
/*
 * drover -t and start-up (kafka_check.c): creates each role's handle the way
 * a worker would, without brokers and in a short-lived child process (the
 * caller never runs a librdkafka thread), so that what librdkafka refuses
 * only when a handle is made (a strategy it does not know, max.in.flight
 * above 5 with the idempotent producer, an unknown SASL mechanism, an
 * unreadable certificate) fails the check instead of every worker. Appends
 * "FILE:LINE: [librdkafka] key: what is wrong" (FILE: [kafka]: ... when no
 * single pass-through key is the cause) to errs. 0, or -1 when errs grew.
 */
int kafka_conf_check(const struct config *cfg, struct config_errors *errs);

/* True for property names whose values are secrets (passwords, private keys, client secrets). */
bool kafka_conf_key_is_secret(const char *key);
/* "key=value key=value ..." with secret values shown as [redacted] (for debug logs). */
void kafka_props_describe(const struct kafka_props *props, char *buf, size_t len);

/* Remembers a secret value: kafka_redact() hides it from then on. */
void kafka_redact_register(const char *secret);
/* Forgets every registered secret (tests). */
void kafka_redact_reset(void);
/* Copies text into out (always NUL-terminated, truncated to outlen), each registered secret replaced by [redacted]. */
void kafka_redact(const char *text, char *out, size_t outlen);


#endif
