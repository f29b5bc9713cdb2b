/*
 * test_kafka_conf: drover's configuration mapped to librdkafka properties
 * (identity per slot, defaults, pass-through, what drover enforces, the
 * security keys) and the redaction of secrets in errors, descriptions and
 * librdkafka's own log lines. No broker is needed.
 */
#include <criterion/criterion.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "queue/kafka_conf.h"
#include "shared/log.h"
#include "shared/util.h"

#define SECRET "s3cr3t-Hunter2!"

static struct config_pair passthrough[8];
static struct config cfg;

static void base_config(void)
{
	memset(&cfg, 0, sizeof(cfg));
	memset(passthrough, 0, sizeof(passthrough));
	cfg.backend = BACKEND_KAFKA;
	cfg.kafka_brokers = "127.0.0.1:1";
	cfg.kafka_client_id = "drover";
	cfg.kafka_group_id = "drover-workers";
	cfg.requests_topic = "image.generation.requests";
	cfg.static_membership = true;
	cfg.instance_id = "host-a";
	cfg.security_protocol = SECURITY_PLAINTEXT;
	cfg.sasl_mechanism = "SCRAM-SHA-512";
	cfg.librdkafka = passthrough;
	cfg.shutdown_timeout_ms = 30000;
	cfg.max_concurrent = 4;
	kafka_redact_reset();
}

static void add_passthrough(const char *key, const char *value)
{
	passthrough[cfg.librdkafka_count].key = (char *)key;
	passthrough[cfg.librdkafka_count].value = (char *)value;
	cfg.librdkafka_count++;
}

static struct kafka_props props_for(enum kafka_role role, int slot)
{
	struct kafka_props props;
	char err[256];
	cr_assert_eq(kafka_props_build(&cfg, role, slot, &props, err, sizeof(err)), 0, "build failed: %s", err);
	return props;
}

static void expect(const struct kafka_props *props, const char *key, const char *value)
{
	const char *got = kafka_props_get(props, key);
	if (value == NULL)
		cr_expect_null(got, "%s should not be set, is %s", key, got);
	else
		cr_expect(got != NULL && strcmp(got, value) == 0, "%s: expected %s, got %s", key, value,
		          got ? got : "(unset)");
}

TestSuite(kafka_conf, .init = base_config, .fini = kafka_redact_reset);

Test(kafka_conf, consumer_identity_and_guarantees)
{
	struct kafka_props props = props_for(KAFKA_ROLE_CONSUMER, 3);
	expect(&props, "bootstrap.servers", "127.0.0.1:1");
	expect(&props, "client.id", "drover-3");
	expect(&props, "group.id", "drover-workers");
	expect(&props, "group.instance.id", "host-a-3");
	expect(&props, "partition.assignment.strategy", "cooperative-sticky");
	expect(&props, "enable.auto.offset.store", "false");
	expect(&props, "enable.auto.commit", "true");
	expect(&props, "auto.offset.reset", "earliest");
	expect(&props, "security.protocol", "plaintext");
	expect(&props, "enable.idempotence", NULL);
	kafka_props_free(&props);
}

Test(kafka_conf, no_instance_id_without_static_membership)
{
	cfg.static_membership = false;
	struct kafka_props props = props_for(KAFKA_ROLE_CONSUMER, 0);
	expect(&props, "group.instance.id", NULL);
	kafka_props_free(&props);
}

Test(kafka_conf, instance_id_defaults_to_the_host_name)
{
	char host[256] = "";
	cr_assert_eq(gethostname(host, sizeof(host) - 1), 0);
	cfg.instance_id = "";
	char want[300];
	snprintf(want, sizeof(want), "%s-7", host);
	struct kafka_props props = props_for(KAFKA_ROLE_CONSUMER, 7);
	expect(&props, "group.instance.id", want);
	kafka_props_free(&props);
}

Test(kafka_conf, producer_is_idempotent_with_acks_all)
{
	struct kafka_props props = props_for(KAFKA_ROLE_PRODUCER, 1);
	expect(&props, "enable.idempotence", "true");
	expect(&props, "acks", "all");
	expect(&props, "client.id", "drover-1");
	expect(&props, "group.id", NULL);
	expect(&props, "enable.auto.offset.store", NULL);
	kafka_props_free(&props);
}

Test(kafka_conf, droverctl_has_its_own_client_id)
{
	struct kafka_props props = props_for(KAFKA_ROLE_ADMIN, -1);
	expect(&props, "client.id", "drover-ctl");
	expect(&props, "group.instance.id", NULL);
	kafka_props_free(&props);
}

Test(kafka_conf, passthrough_overrides_defaults_but_not_guarantees)
{
	add_passthrough("partition.assignment.strategy", "range");
	add_passthrough("statistics.interval.ms", "1000");
	add_passthrough("enable.auto.offset.store", "true");
	add_passthrough("enable.idempotence", "false");
	add_passthrough("acks", "1");
	add_passthrough("request.required.acks", "0");
	add_passthrough("client.id", "mine");
	struct kafka_props consumer = props_for(KAFKA_ROLE_CONSUMER, 2);
	expect(&consumer, "partition.assignment.strategy", "range");
	expect(&consumer, "statistics.interval.ms", "1000");
	expect(&consumer, "enable.auto.offset.store", "false");
	expect(&consumer, "client.id", "drover-2");
	kafka_props_free(&consumer);
	struct kafka_props producer = props_for(KAFKA_ROLE_PRODUCER, 2);
	expect(&producer, "enable.idempotence", "true");
	expect(&producer, "acks", "all");
	expect(&producer, "request.required.acks", "all");
	kafka_props_free(&producer);
}

Test(kafka_conf, sasl_ssl_maps_every_security_key)
{
	cfg.security_protocol = SECURITY_SASL_SSL;
	cfg.sasl_username = "svc-drover";
	cfg.sasl_password = SECRET;
	cfg.ssl_ca_location = "/etc/ssl/ca.pem";
	struct kafka_props props = props_for(KAFKA_ROLE_PRODUCER, 0);
	expect(&props, "security.protocol", "sasl_ssl");
	expect(&props, "sasl.mechanisms", "SCRAM-SHA-512");
	expect(&props, "sasl.username", "svc-drover");
	expect(&props, "sasl.password", SECRET);
	expect(&props, "ssl.ca.location", "/etc/ssl/ca.pem");
	kafka_props_free(&props);
}

Test(kafka_conf, ssl_without_sasl_and_sasl_plaintext_without_ca)
{
	cfg.security_protocol = SECURITY_SSL;
	cfg.sasl_username = "ignored";
	cfg.ssl_ca_location = "/ca.pem";
	struct kafka_props ssl = props_for(KAFKA_ROLE_CONSUMER, 0);
	expect(&ssl, "security.protocol", "ssl");
	expect(&ssl, "ssl.ca.location", "/ca.pem");
	expect(&ssl, "sasl.username", NULL);
	expect(&ssl, "sasl.mechanisms", NULL);
	kafka_props_free(&ssl);

	cfg.security_protocol = SECURITY_SASL_PLAINTEXT;
	struct kafka_props sasl = props_for(KAFKA_ROLE_CONSUMER, 0);
	expect(&sasl, "security.protocol", "sasl_plaintext");
	expect(&sasl, "sasl.username", "ignored");
	expect(&sasl, "ssl.ca.location", NULL);
	kafka_props_free(&sasl);
}

Test(kafka_conf, plaintext_sets_no_credentials)
{
	cfg.sasl_username = "svc";
	cfg.sasl_password = SECRET;
	struct kafka_props props = props_for(KAFKA_ROLE_CONSUMER, 0);
	expect(&props, "sasl.username", NULL);
	expect(&props, "sasl.password", NULL);
	kafka_props_free(&props);
}

Test(kafka_conf, password_file_is_read_when_no_password_is_given)
{
	char path[] = "/tmp/test_kafka_conf.XXXXXX";
	int fd = mkstemp(path);
	cr_assert(fd >= 0);
	cr_assert_eq(write_all(fd, SECRET "\r\n", strlen(SECRET) + 2), 0); /* one line end stripped, as config's */
	close(fd);
	cfg.security_protocol = SECURITY_SASL_PLAINTEXT;
	cfg.sasl_password_file = path;
	struct kafka_props props = props_for(KAFKA_ROLE_CONSUMER, 0);
	expect(&props, "sasl.password", SECRET);
	kafka_props_free(&props);

	unlink(path);
	char err[256];
	cr_expect_eq(kafka_props_build(&cfg, KAFKA_ROLE_CONSUMER, 0, &props, err, sizeof(err)), -1);
	cr_expect(strstr(err, "sasl_password_file") != NULL, "error: %s", err);
}

Test(kafka_conf, description_hides_secret_values)
{
	cfg.security_protocol = SECURITY_SASL_SSL;
	cfg.sasl_username = "svc";
	cfg.sasl_password = SECRET;
	add_passthrough("ssl.key.password", "other-" SECRET);
	struct kafka_props props = props_for(KAFKA_ROLE_CONSUMER, 0);
	char text[4096];
	kafka_props_describe(&props, text, sizeof(text));
	cr_expect(strstr(text, SECRET) == NULL, "secret in: %s", text);
	cr_expect(strstr(text, "sasl.password=" KAFKA_REDACTED) != NULL, "%s", text);
	cr_expect(strstr(text, "sasl.username=svc") != NULL, "%s", text);
	kafka_props_free(&props);
}

Test(kafka_conf, secret_keys)
{
	cr_expect(kafka_conf_key_is_secret("sasl.password"));
	cr_expect(kafka_conf_key_is_secret("ssl.key.password"));
	cr_expect(kafka_conf_key_is_secret("ssl.keystore.password"));
	cr_expect(kafka_conf_key_is_secret("sasl.oauthbearer.client.secret"));
	cr_expect(kafka_conf_key_is_secret("ssl.key.pem"));
	cr_expect(!kafka_conf_key_is_secret("sasl.username"));
	cr_expect(!kafka_conf_key_is_secret("bootstrap.servers"));
}

Test(kafka_conf, redact_replaces_every_registered_secret)
{
	kafka_redact_register(SECRET);
	kafka_redact_register("pw2");
	char out[256];
	kafka_redact("user svc password " SECRET " and pw2, again " SECRET, out, sizeof(out));
	cr_expect_str_eq(out, "user svc password " KAFKA_REDACTED " and " KAFKA_REDACTED ", again " KAFKA_REDACTED);
}

Test(kafka_conf, redact_never_leaves_part_of_a_secret_when_truncating)
{
	kafka_redact_register(SECRET);
	char out[16];
	kafka_redact("abcdefghij " SECRET, out, sizeof(out));
	cr_expect(strstr(out, "s3cr") == NULL, "partial secret in %s", out);
	cr_expect_str_eq(out, "abcdefghij ");
}

Test(kafka_conf, conf_errors_are_redacted)
{
	cfg.security_protocol = SECURITY_SASL_PLAINTEXT;
	cfg.sasl_password = SECRET;
	add_passthrough("compression.codec", SECRET);
	char err[512];
	rd_kafka_conf_t *conf = kafka_conf_new(&cfg, KAFKA_ROLE_PRODUCER, 0, err, sizeof(err));
	cr_assert_null(conf);
	cr_expect(strstr(err, "compression.codec") != NULL, "error: %s", err);
	cr_expect(strstr(err, SECRET) == NULL, "secret in error: %s", err);
}

/* The lines kafka_conf_check appended, joined, for the assertions' messages. */
static const char *check_errors(struct config_errors *errs, int *rc)
{
	static char joined[2048];
	*rc = kafka_conf_check(&cfg, errs);
	config_errors_join(errs, joined, sizeof(joined));
	return joined;
}

Test(kafka_conf, unknown_passthrough_property_is_an_error)
{
	struct config_errors errs = { 0 };
	int rc;
	cfg.file = "drover.ini";
	add_passthrough("no.such.property", "1");
	passthrough[0].line = 7;
	const char *text = check_errors(&errs, &rc);
	cr_expect_eq(rc, -1);
	cr_expect_eq(errs.count, 1, "errors: %s", text);
	cr_expect(strncmp(text, "drover.ini:7: [librdkafka] no.such.property: ", 45) == 0, "error: %s", text);
	config_errors_clear(&errs);
}

/* Accepted by rd_kafka_conf_set, refused when a handle is made: caught by the check, not by the first worker. */
Test(kafka_conf, check_names_a_property_librdkafka_refuses_only_in_a_handle)
{
	struct config_errors errs = { 0 };
	int rc;
	cfg.file = "drover.ini";
	add_passthrough("statistics.interval.ms", "5000");
	add_passthrough("max.in.flight", "10"); /* more than 5 with the idempotent producer drover enforces */
	passthrough[0].line = 3;
	passthrough[1].line = 4;
	const char *text = check_errors(&errs, &rc);
	cr_expect_eq(rc, -1);
	cr_expect_eq(errs.count, 1, "one line per cause, not per handle: %s", text);
	cr_expect(strncmp(text, "drover.ini:4: [librdkafka] max.in.flight: ", 42) == 0, "error: %s", text);
	cr_expect(strstr(text, "idempotence") != NULL, "error: %s", text);
	config_errors_clear(&errs);
}

Test(kafka_conf, check_names_an_unknown_assignment_strategy)
{
	struct config_errors errs = { 0 };
	int rc;
	cfg.file = "drover.ini";
	add_passthrough("partition.assignment.strategy", "bogus");
	passthrough[0].line = 9;
	const char *text = check_errors(&errs, &rc);
	cr_expect_eq(rc, -1);
	cr_expect(strncmp(text, "drover.ini:9: [librdkafka] partition.assignment.strategy: ", 58) == 0, "error: %s",
	          text);
	config_errors_clear(&errs);
}

Test(kafka_conf, check_accepts_a_valid_configuration)
{
	struct config_errors errs = { 0 };
	int rc;
	cfg.file = "drover.ini";
	add_passthrough("statistics.interval.ms", "5000");
	add_passthrough("linger.ms", "10"); /* a producer property on the consumer too: only a warning */
	const char *text = check_errors(&errs, &rc);
	cr_expect_eq(rc, 0, "errors: %s", text);
	cr_expect_eq(errs.count, 0, "errors: %s", text);
	config_errors_clear(&errs);
}

/* librdkafka prints its whole configuration with debug=conf, secrets included: drover's log must not. */
Test(kafka_conf, librdkafka_config_dump_is_redacted_in_the_log)
{
	char path[] = "/tmp/test_kafka_conf_log.XXXXXX";
	int fd = mkstemp(path);
	cr_assert(fd >= 0);
	close(fd);
	log_init("test", LOG_LEVEL_DEBUG, LOG_FORMAT_TEXT);
	cr_assert_eq(log_open(path), 0);
	cfg.security_protocol = SECURITY_SASL_PLAINTEXT;
	cfg.sasl_mechanism = "PLAIN";
	cfg.sasl_username = "svc";
	cfg.sasl_password = SECRET;
	add_passthrough("debug", "conf");
	char err[512];
	rd_kafka_conf_t *conf = kafka_conf_new(&cfg, KAFKA_ROLE_PRODUCER, 0, err, sizeof(err));
	cr_assert_not_null(conf, "%s", err);
	rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
	cr_assert_not_null(rk, "%s", err);
	rd_kafka_destroy(rk);
	log_open("-");
	size_t len;
	char *text = read_file(path, 1 << 22, &len);
	unlink(path);
	cr_assert_not_null(text);
	cr_expect(strstr(text, "sasl.password") != NULL, "librdkafka did not dump its config; the test proves nothing");
	cr_expect(strstr(text, SECRET) == NULL, "secret in the log");
	free(text);
}

/* ---- the container seeds: KAFKA_SASL_USERNAME/PASSWORD ------------------ */

/* Loads a minimal Kafka config file under the given seed variables (NULL = unset). */
static struct config *load_with_seeds(const char *file_extra, const char *user, const char *password,
                                      const char *ssl, struct config_errors *errs)
{
	static const char *const vars[] = { "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD", "KAFKA_SSL",
		"DROVER_KAFKA_SECURITY_PROTOCOL", "DROVER_KAFKA_SASL_USERNAME", "DROVER_KAFKA_SASL_PASSWORD" };
	for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++)
		unsetenv(vars[i]);
	if (user != NULL)
		setenv("KAFKA_SASL_USERNAME", user, 1);
	if (password != NULL)
		setenv("KAFKA_SASL_PASSWORD", password, 1);
	if (ssl != NULL)
		setenv("KAFKA_SSL", ssl, 1);
	char path[] = "/tmp/drover-kafka-conf-XXXXXX";
	int fd = mkstemp(path);
	cr_assert(fd >= 0);
	FILE *f = fdopen(fd, "w");
	cr_assert_not_null(f);
	fprintf(f, "[jobs]\nhandler = /bin/cat\n[queue]\nbackend = kafka\n%s", file_extra);
	fclose(f);
	struct config *loaded = config_load(path, errs);
	unlink(path);
	return loaded;
}

static void expect_protocol(struct config *loaded, const char *protocol)
{
	struct kafka_props props;
	char err[256];
	cr_assert_eq(kafka_props_build(loaded, KAFKA_ROLE_CONSUMER, 0, &props, err, sizeof(err)), 0, "%s", err);
	expect(&props, "security.protocol", protocol);
	kafka_props_free(&props);
}

Test(kafka_conf, sasl_seeds_alone_select_sasl_plaintext)
{
	struct config_errors errs = { NULL, 0 };
	struct config *loaded = load_with_seeds("", "drover", SECRET, NULL, &errs);
	char text[1024];
	config_errors_join(&errs, text, sizeof(text));
	cr_assert_eq(errs.count, 0, "refused: %s", text);
	cr_assert_not_null(loaded);
	cr_expect_eq(loaded->security_protocol, SECURITY_SASL_PLAINTEXT);
	struct kafka_props props;
	char err[256];
	cr_assert_eq(kafka_props_build(loaded, KAFKA_ROLE_PRODUCER, 0, &props, err, sizeof(err)), 0, "%s", err);
	expect(&props, "security.protocol", "sasl_plaintext");
	expect(&props, "sasl.username", "drover");
	expect(&props, "sasl.password", SECRET);
	kafka_props_free(&props);
	config_free(loaded);
	config_errors_clear(&errs);
}

Test(kafka_conf, sasl_seeds_follow_kafka_ssl_and_an_explicit_protocol)
{
	struct config_errors errs = { NULL, 0 };
	struct config *loaded = load_with_seeds("", "drover", SECRET, "true", &errs);
	cr_assert_eq(errs.count, 0);
	expect_protocol(loaded, "sasl_ssl");
	config_free(loaded);
	config_errors_clear(&errs);
	/* A protocol written in the file is the operator's choice: a seeded user contradicting it is an error. */
	loaded = load_with_seeds("[kafka]\nsecurity_protocol = plaintext\n", "drover", SECRET, NULL, &errs);
	cr_expect_gt(errs.count, 0, "plaintext with a SASL user should be refused");
	config_free(loaded);
	config_errors_clear(&errs);
	unsetenv("KAFKA_SASL_USERNAME");
	unsetenv("KAFKA_SASL_PASSWORD");
	unsetenv("KAFKA_SSL");
}
