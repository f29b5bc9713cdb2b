/*
 * test_log: a message never forges a line (text: control characters
 * escaped) and a JSON line is always valid JSON and UTF-8.
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shared/log.h"

static char path[] = "/tmp/drover-log-test-XXXXXX";

static void open_log(enum log_format format)
{
	int fd = mkstemp(path);
	cr_assert_geq(fd, 0);
	close(fd);
	log_init("test", LOG_LEVEL_DEBUG, format);
	cr_assert_eq(log_open(path), 0);
}

static char *read_log(void)
{
	FILE *fp = fopen(path, "r");
	cr_assert_not_null(fp);
	static char buf[16384];
	size_t n = fread(buf, 1, sizeof(buf) - 1, fp);
	buf[n] = '\0';
	fclose(fp);
	unlink(path);
	return buf;
}

static size_t count_lines(const char *text)
{
	size_t lines = 0;
	for (; *text != '\0'; text++)
		lines += *text == '\n';
	return lines;
}

Test(log, text_lines_escape_control_characters)
{
	open_log(LOG_FORMAT_TEXT);
	log_info("job %s: completed", "evil\n2026-01-01T00:00:00.000Z supervisor[1] error: forged\r\x1b[2J");
	char *text = read_log();
	cr_assert_eq(count_lines(text), 1, "one message, one line: %s", text);
	cr_assert_not_null(strstr(text, "job evil\\n2026-01-01T00:00:00.000Z supervisor[1] error: forged\\r\\x1b[2J: "
					 "completed\n"), "%s", text);
}

Test(log, json_lines_are_valid_utf8)
{
	open_log(LOG_FORMAT_JSON);
	/* a stray continuation byte, an overlong '/', a surrogate, a truncated sequence; then good UTF-8 */
	log_info("bad \x80 \xc0\xaf \xed\xa0\x80 \xe2\x82 ok \xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80 \n\x01");
	char *text = read_log();
	cr_assert_eq(count_lines(text), 1, "%s", text);
	json_error_t error;
	json_t *line = json_loads(text, 0, &error); /* jansson refuses invalid UTF-8 */
	cr_assert_not_null(line, "not valid JSON/UTF-8: %s: %s", error.text, text);
	const char *msg = json_string_value(json_object_get(line, "msg"));
	cr_assert_str_eq(msg, "bad \xef\xbf\xbd \xef\xbf\xbd\xef\xbf\xbd \xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd "
			      "\xef\xbf\xbd\xef\xbf\xbd ok \xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80 \n\x01");
	json_decref(line);
}
