/*
 * kafka_conf: builds the librdkafka property list of each Kafka handle from
 * drover's configuration, applies it, and keeps secrets out of every text
 * drover prints (see kafka_conf.h for the order of precedence).
 */
#include "queue/kafka_conf.h"
#include "shared/log.h"
#include "shared/util.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_SECRETS 32

/* Defaults a worker's consumer starts from; [librdkafka] may change each. */
static const struct { const char *key, *value; } consumer_defaults[] = {
	{ "partition.assignment.strategy", "cooperative-sticky" },
	{ "auto.offset.reset", "earliest" },       /* a job produced before the group existed still runs */
	{ "statistics.interval.ms", "5000" },      /* consumer lag for stats and metrics */
	{ "queued.min.messages", "1000" },         /* the prefetch stays small: jobs run for minutes */
	{ "queued.max.messages.kbytes", "4096" },
	{ "enable.partition.eof", "false" },
	{ "auto.commit.interval.ms", "1000" },     /* a kill -9 repeats at most about a second of finished work */
};

/* Keys whose values drover's guarantees depend on: a pass-through value is ignored. */
static const struct { enum kafka_role role; const char *key, *value; } enforced[] = {
	{ KAFKA_ROLE_CONSUMER, "enable.auto.offset.store", "false" }, /* only acknowledged work is stored */
	{ KAFKA_ROLE_CONSUMER, "enable.auto.commit", "true" },        /* commits what was stored, also at revoke */
	{ KAFKA_ROLE_PRODUCER, "enable.idempotence", "true" },
	{ KAFKA_ROLE_PRODUCER, "acks", "all" },
};

static char *secrets[MAX_SECRETS];
static size_t secret_count;

/* ---- property lists ----------------------------------------------------- */

static struct kafka_prop *props_find(struct kafka_props *props, const char *key)
{
	for (size_t i = 0; i < props->count; i++)
		if (strcmp(props->items[i].key, key) == 0)
			return &props->items[i];
	return NULL;
}

/* Sets key (replacing an earlier value). 0 or -1 (memory). */
static int props_set(struct kafka_props *props, const char *key, const char *value)
{
	char *copy = strdup(value);
	if (copy == NULL)
		return -1;
	struct kafka_prop *prop = props_find(props, key);
	if (prop != NULL) {
		free(prop->value);
		prop->value = copy;
		return 0;
	}
	if (props->count == props->cap) {
		size_t cap = props->cap ? props->cap * 2 : 32;
		struct kafka_prop *items = realloc(props->items, cap * sizeof(*items));
		if (items == NULL) {
			free(copy);
			return -1;
		}
		props->items = items;
		props->cap = cap;
	}
	char *key_copy = strdup(key);
	if (key_copy == NULL) {
		free(copy);
		return -1;
	}
	props->items[props->count++] = (struct kafka_prop){ .key = key_copy, .value = copy };
	return 0;
}

static int props_vsetf(struct kafka_props *props, const char *key, const char *fmt, va_list ap)
{
	char value[1024];
	int n = vsnprintf(value, sizeof(value), fmt, ap);
	if (n < 0 || (size_t)n >= sizeof(value))
		return -1;
	return props_set(props, key, value);
}

__attribute__((format(printf, 3, 4))) static int props_setf(struct kafka_props *props, const char *key,
                                                             const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int rc = props_vsetf(props, key, fmt, ap);
	va_end(ap);
	return rc;
}

const char *kafka_props_get(const struct kafka_props *props, const char *key)
{
	for (size_t i = 0; i < props->count; i++)
		if (strcmp(props->items[i].key, key) == 0)
			return props->items[i].value;
	return NULL;
}

void kafka_props_free(struct kafka_props *props)
{
	for (size_t i = 0; i < props->count; i++) {
		free(props->items[i].key);
		free(props->items[i].value);
	}
	free(props->items);
	*props = (struct kafka_props){ 0 };
}

/* ---- the mapping -------------------------------------------------------- */

static bool is_set(const char *s)
{
	return s != NULL && *s != '\0';
}

static const char *security_value(enum security_protocol protocol)
{
	switch (protocol) {
	case SECURITY_SSL: return "ssl";
	case SECURITY_SASL_PLAINTEXT: return "sasl_plaintext";
	case SECURITY_SASL_SSL: return "sasl_ssl";
	case SECURITY_PLAINTEXT: break;
	}
	return "plaintext";
}

static int map_security(const struct config *cfg, struct kafka_props *props, char *err, size_t errlen)
{
	enum security_protocol protocol = cfg->security_protocol;
	if (props_set(props, "security.protocol", security_value(protocol)) < 0)
		return -1;
	bool sasl = protocol == SECURITY_SASL_PLAINTEXT || protocol == SECURITY_SASL_SSL;
	bool ssl = protocol == SECURITY_SSL || protocol == SECURITY_SASL_SSL;
	if (sasl) {
		if (is_set(cfg->sasl_mechanism) && props_set(props, "sasl.mechanisms", cfg->sasl_mechanism) < 0)
			return -1;
		if (is_set(cfg->sasl_username) && props_set(props, "sasl.username", cfg->sasl_username) < 0)
			return -1;
		/* config_load reads the file into sasl_password; read it here only if nobody did. */
		if (is_set(cfg->sasl_password)) {
			if (props_set(props, "sasl.password", cfg->sasl_password) < 0)
				return -1;
		} else if (is_set(cfg->sasl_password_file)) {
			char why[512];
			char *password = read_secret_file(cfg->sasl_password_file, why, sizeof(why));
			if (password == NULL) {
				snprintf(err, errlen, "sasl_password_file: %s", why);
				return -1;
			}
			int rc = props_set(props, "sasl.password", password);
			secret_free(password);
			if (rc < 0)
				return -1;
		}
	}
	if (ssl && is_set(cfg->ssl_ca_location) && props_set(props, "ssl.ca.location", cfg->ssl_ca_location) < 0)
		return -1;
	return 0;
}

static int map_identity(const struct config *cfg, enum kafka_role role, int slot, struct kafka_props *props)
{
	const char *client = is_set(cfg->kafka_client_id) ? cfg->kafka_client_id : "drover";
	int rc = slot >= 0 ? props_setf(props, "client.id", "%s-%d", client, slot)
	                   : props_setf(props, "client.id", "%s-ctl", client);
	if (rc < 0 || role != KAFKA_ROLE_CONSUMER)
		return rc;
	if (props_set(props, "group.id", is_set(cfg->kafka_group_id) ? cfg->kafka_group_id : "drover-workers") < 0)
		return -1;
	if (cfg->static_membership && slot >= 0) {
		char host[256] = "drover";
		const char *instance = cfg->instance_id;
		if (!is_set(instance)) {
			if (gethostname(host, sizeof(host) - 1) == 0)
				host[sizeof(host) - 1] = '\0';
			instance = host;
		}
		return props_setf(props, "group.instance.id", "%s-%d", instance, slot);
	}
	return 0;
}

/* Keys the [kafka] section and the slot decide; a pass-through value of them would break the mapping. */
static bool identity_key(const char *key)
{
	return strcmp(key, "client.id") == 0 || strcmp(key, "group.instance.id") == 0;
}

static int apply_passthrough(const struct config *cfg, enum kafka_role role, struct kafka_props *props)
{
	for (size_t i = 0; i < cfg->librdkafka_count; i++) {
		const struct config_pair *pair = &cfg->librdkafka[i];
		if (identity_key(pair->key)) {
			log_warnx("[librdkafka] %s ignored: drover sets it from [kafka] client_id / instance_id and the slot",
			          pair->key);
			continue;
		}
		if (props_set(props, pair->key, pair->value) < 0)
			return -1;
	}
	return 0;
}

static int apply_enforced(enum kafka_role role, struct kafka_props *props)
{
	for (size_t i = 0; i < ARRAY_LEN(enforced); i++) {
		if (enforced[i].role != role)
			continue;
		const char *was = kafka_props_get(props, enforced[i].key);
		if (was != NULL && strcmp(was, enforced[i].value) != 0)
			log_warnx("[librdkafka] %s = %s ignored: drover's delivery guarantee needs %s", enforced[i].key,
			          was, enforced[i].value);
		if (props_set(props, enforced[i].key, enforced[i].value) < 0)
			return -1;
	}
	/* request.required.acks is an alias of acks: the pass-through could lower it under the other name. */
	if (role == KAFKA_ROLE_PRODUCER && kafka_props_get(props, "request.required.acks") != NULL &&
	    props_set(props, "request.required.acks", "all") < 0)
		return -1;
	return 0;
}

int kafka_props_build(const struct config *cfg, enum kafka_role role, int slot, struct kafka_props *props,
                      char *err, size_t errlen)
{
	*props = (struct kafka_props){ 0 };
	snprintf(err, errlen, "out of memory");
	if (props_set(props, "bootstrap.servers", is_set(cfg->kafka_brokers) ? cfg->kafka_brokers : "localhost:9092") < 0)
		goto fail;
	if (role == KAFKA_ROLE_CONSUMER) {
		for (size_t i = 0; i < ARRAY_LEN(consumer_defaults); i++)
			if (props_set(props, consumer_defaults[i].key, consumer_defaults[i].value) < 0)
				goto fail;
	}
	/* The mock cluster and brokers behind load balancers close idle connections: not worth a warning. */
	if (props_set(props, "log.connection.close", "false") < 0)
		goto fail;
	if (map_identity(cfg, role, slot, props) < 0 || map_security(cfg, props, err, errlen) < 0 ||
	    apply_passthrough(cfg, role, props) < 0 || apply_enforced(role, props) < 0)
		goto fail;
	err[0] = '\0';
	return 0;
fail:
	kafka_props_free(props);
	return -1;
}

/* ---- secrets ------------------------------------------------------------ */

bool kafka_conf_key_is_secret(const char *key)
{
	return strstr(key, "password") != NULL || strstr(key, "secret") != NULL ||
	       strcmp(key, "ssl.key.pem") == 0 || strcmp(key, "ssl_key") == 0 ||
	       strcmp(key, "sasl.oauthbearer.config") == 0 || strcmp(key, "ssl.keystore.location") == 0;
}

void kafka_props_describe(const struct kafka_props *props, char *buf, size_t len)
{
	size_t used = 0;
	if (len == 0)
		return;
	buf[0] = '\0';
	for (size_t i = 0; i < props->count && used < len; i++) {
		const struct kafka_prop *p = &props->items[i];
		int n = snprintf(buf + used, len - used, "%s%s=%s", used ? " " : "", p->key,
		                 kafka_conf_key_is_secret(p->key) ? KAFKA_REDACTED : p->value);
		if (n < 0)
			break;
		used += (size_t)n;
	}
}

void kafka_redact_register(const char *secret)
{
	if (!is_set(secret))
		return;
	for (size_t i = 0; i < secret_count; i++)
		if (strcmp(secrets[i], secret) == 0)
			return;
	if (secret_count == MAX_SECRETS)
		return;
	char *copy = strdup(secret);
	if (copy != NULL)
		secrets[secret_count++] = copy;
}

void kafka_redact_reset(void)
{
	for (size_t i = 0; i < secret_count; i++) {
		explicit_bzero(secrets[i], strlen(secrets[i]));
		free(secrets[i]);
	}
	secret_count = 0;
}

/* The longest registered secret that starts at text, or 0. */
static size_t secret_at(const char *text)
{
	size_t best = 0;
	for (size_t i = 0; i < secret_count; i++) {
		size_t len = strlen(secrets[i]);
		if (len > best && strncmp(text, secrets[i], len) == 0)
			best = len;
	}
	return best;
}

void kafka_redact(const char *text, char *out, size_t outlen)
{
	size_t used = 0;
	if (outlen == 0)
		return;
	while (*text != '\0' && used + 1 < outlen) {
		size_t skip = secret_at(text);
		if (skip == 0) {
			out[used++] = *text++;
			continue;
		}
		size_t mark = sizeof(KAFKA_REDACTED) - 1;
		if (used + mark >= outlen)
			break; /* never emit part of a secret: stop here instead */
		memcpy(out + used, KAFKA_REDACTED, mark);
		used += mark;
		text += skip;
	}
	out[used] = '\0';
}

/* ---- librdkafka configuration objects ----------------------------------- */

/* librdkafka's log lines (from its own threads; log.h writes each line with one write). */
static void log_from_librdkafka(const rd_kafka_t *rk, int level, const char *facility, const char *line)
{
	char clean[2048];
	kafka_redact(line, clean, sizeof(clean));
	const char *name = rk != NULL ? rd_kafka_name(rk) : "rdkafka";
	/* A pass-through property meant for the other handle type: expected, not a problem. */
	if (strcmp(facility, "CONFWARN") == 0 && strstr(line, "will be ignored") != NULL)
		level = 7;
	if (level <= 3)
		log_error("librdkafka %s: %s: %s", name, facility, clean);
	else if (level == 4)
		log_warnx("librdkafka %s: %s: %s", name, facility, clean);
	else if (level <= 6)
		log_info("librdkafka %s: %s: %s", name, facility, clean);
	else
		log_debug("librdkafka %s: %s: %s", name, facility, clean);
}

static void register_secrets(const struct kafka_props *props)
{
	for (size_t i = 0; i < props->count; i++)
		if (kafka_conf_key_is_secret(props->items[i].key))
			kafka_redact_register(props->items[i].value);
}

/*
 * librdkafka's first configuration in a process initialises Cyrus SASL, which
 * loads every plugin in /usr/lib/<arch>/sasl2 (Berkeley DB too, for sasldb):
 * about 0.8 MiB in each worker. librdkafka hands Cyrus only GSSAPI (PLAIN,
 * SCRAM and OAUTHBEARER are its own), so unless GSSAPI is configured (through
 * [librdkafka]) or the operator set SASL_PATH, the plugin path is pointed at a
 * directory that does not exist. Set before the first handle starts a thread;
 * handlers do not see it, their environment is taken before the queue opens.
 */
static void skip_sasl_plugins(const struct kafka_props *props)
{
	const char *mechanisms[] = { kafka_props_get(props, "sasl.mechanisms"), kafka_props_get(props, "sasl.mechanism") };
	if (getenv("SASL_PATH") != NULL)
		return;
	for (size_t i = 0; i < sizeof(mechanisms) / sizeof(mechanisms[0]); i++)
		if (mechanisms[i] != NULL && strcasestr(mechanisms[i], "GSSAPI") != NULL)
			return;
	if (setenv("SASL_PATH", "/nonexistent/drover-needs-no-sasl-plugins", 0) < 0)
		log_debug("kafka: setenv SASL_PATH: %s", strerror(errno));
}

rd_kafka_conf_t *kafka_conf_new(const struct config *cfg, enum kafka_role role, int slot, char *err, size_t errlen)
{
	struct kafka_props props;
	char raw[512];
	if (kafka_props_build(cfg, role, slot, &props, err, errlen) < 0)
		return NULL;
	register_secrets(&props);
	skip_sasl_plugins(&props);
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	if (conf == NULL) {
		snprintf(err, errlen, "out of memory");
		kafka_props_free(&props);
		return NULL;
	}
	for (size_t i = 0; i < props.count; i++) {
		const struct kafka_prop *p = &props.items[i];
		if (rd_kafka_conf_set(conf, p->key, p->value, raw, sizeof(raw)) != RD_KAFKA_CONF_OK) {
			char clean[512];
			kafka_redact(raw, clean, sizeof(clean));
			snprintf(err, errlen, "librdkafka property %s: %s", p->key, clean);
			rd_kafka_conf_destroy(conf);
			kafka_props_free(&props);
			return NULL;
		}
	}
	rd_kafka_conf_set_log_cb(conf, log_from_librdkafka);
	kafka_props_free(&props);
	return conf;
}
