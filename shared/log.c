/*
 * log: formats one line per call and writes it with a single write(2), so
 * that lines of the supervisor and its workers, sharing one file opened with
 * O_APPEND, never interleave. A message never spans lines (control
 * characters are escaped), and a JSON line is always valid UTF-8.
 */
#include "shared/log.h"
#include "shared/util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static char log_name[64] = "drover";
static enum log_level log_min = LOG_LEVEL_INFO;
static enum log_format log_fmt = LOG_FORMAT_TEXT;
static int log_target = STDERR_FILENO;
static char log_path[4096];
static int log_worker = -1;

static const char *const level_names[] = { "error", "warn", "info", "debug" };

void log_init(const char *name, enum log_level level, enum log_format format)
{
	log_set_name(name);
	log_min = level;
	log_fmt = format;
}

void log_set_name(const char *name)
{
	snprintf(log_name, sizeof(log_name), "%s", name);
}

void log_set_level(enum log_level level) { log_min = level; }
void log_set_worker(int slot) { log_worker = slot; }
void log_set_format(enum log_format format) { log_fmt = format; }
int log_fd(void) { return log_target; }

int log_open(const char *path)
{
	if (path == NULL || strcmp(path, "-") == 0 || path[0] == '\0') {
		if (log_target != STDERR_FILENO)
			close(log_target);
		log_target = STDERR_FILENO;
		log_path[0] = '\0';
		return 0;
	}
	int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
	if (fd < 0)
		return -1;
	if (log_target != STDERR_FILENO)
		close(log_target);
	log_target = fd;
	if (path != log_path)
		snprintf(log_path, sizeof(log_path), "%s", path);
	return 0;
}

void log_adopt(int fd, const char *path)
{
	if (log_target != STDERR_FILENO && log_target != fd)
		close(log_target);
	log_target = fd;
	snprintf(log_path, sizeof(log_path), "%s", path);
}

int log_reopen(void)
{
	if (log_path[0] == '\0')
		return 0;
	return log_open(log_path);
}

/*
 * Length of the valid UTF-8 sequence at in (1..4), or 0 when the bytes there
 * are not one (a stray continuation byte, an overlong form, a surrogate, a
 * truncated sequence, a code point past U+10FFFF).
 */
static size_t utf8_sequence(const unsigned char *in)
{
	unsigned char c = in[0];
	size_t len;
	unsigned min;
	unsigned cp;
	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf) {
		len = 2, min = 0x80, cp = c & 0x1fu;
	} else if (c >= 0xe0 && c <= 0xef) {
		len = 3, min = 0x800, cp = c & 0x0fu;
	} else if (c >= 0xf0 && c <= 0xf4) {
		len = 4, min = 0x10000, cp = c & 0x07u;
	} else {
		return 0;
	}
	for (size_t i = 1; i < len; i++) {
		if ((in[i] & 0xc0) != 0x80) /* also stops at the NUL */
			return 0;
		cp = (cp << 6) | (in[i] & 0x3fu);
	}
	if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return len;
}

/* JSON string contents: always valid UTF-8 (a bad byte becomes U+FFFD), control characters escaped. */
static size_t json_escape(char *out, size_t cap, const char *in)
{
	size_t n = 0;
	const unsigned char *p = (const unsigned char *)in;
	while (*p != '\0' && n + 7 < cap) {
		size_t len = utf8_sequence(p);
		if (len == 0) {
			memcpy(out + n, "\\ufffd", 6);
			n += 6;
			p++;
		} else if (*p == '"' || *p == '\\') {
			out[n++] = '\\';
			out[n++] = (char)*p++;
		} else if (*p < 0x20 || *p == 0x7f) {
			n += (size_t)snprintf(out + n, cap - n, "\\u%04x", *p++);
		} else {
			memcpy(out + n, p, len);
			n += len;
			p += len;
		}
	}
	out[n] = '\0';
	return n;
}

/*
 * A text line stays one line: control characters (a newline in a job id, an
 * escape sequence from a handler's stderr) are written as \n, \r, \t or \xHH,
 * so that no message can forge another line.
 */
static void text_escape(char *out, size_t cap, const char *in)
{
	size_t n = 0;
	for (const unsigned char *p = (const unsigned char *)in; *p != '\0' && n + 5 < cap; p++) {
		if (*p >= 0x20 && *p != 0x7f) {
			out[n++] = (char)*p;
		} else if (*p == '\n' || *p == '\r' || *p == '\t') {
			out[n++] = '\\';
			out[n++] = *p == '\n' ? 'n' : *p == '\r' ? 'r' : 't';
		} else {
			n += (size_t)snprintf(out + n, cap - n, "\\x%02x", *p);
		}
	}
	out[n] = '\0';
}

/*
 * The fields of a job line. A job id is bounded here (ids past 1024 bytes are
 * refused before any handler runs, but their refusal is logged too), escaped
 * like the message: quotes, backslashes and control characters cannot break
 * the JSON object or forge a text line.
 */
size_t log_render_fields(char *out, size_t cap, const struct log_fields *fields, enum log_format format)
{
	char esc_id[1100];
	size_t n = 0;
	int k;

	out[0] = '\0';
	if (fields == NULL || cap == 0)
		return 0;
	if (fields->job_id != NULL) {
		if (format == LOG_FORMAT_JSON)
			json_escape(esc_id, sizeof(esc_id), fields->job_id);
		else
			text_escape(esc_id, sizeof(esc_id), fields->job_id);
		k = snprintf(out, cap, format == LOG_FORMAT_JSON ? ",\"job_id\":\"%s\"" : "job=%s ", esc_id);
		n = k < 0 ? 0 : (size_t)k < cap ? (size_t)k : cap - 1;
	}
	if (fields->attempt > 0 && n < cap) {
		k = snprintf(out + n, cap - n, format == LOG_FORMAT_JSON ? ",\"attempt\":%d" : "attempt=%d ",
		             fields->attempt);
		n += k < 0 ? 0 : (size_t)k < cap - n ? (size_t)k : cap - n - 1;
	}
	if (fields->handler_pid > 0 && n < cap) {
		k = snprintf(out + n, cap - n, format == LOG_FORMAT_JSON ? ",\"handler_pid\":%d" : "handler=%d ",
		             (int)fields->handler_pid);
		n += k < 0 ? 0 : (size_t)k < cap - n ? (size_t)k : cap - n - 1;
	}
	return n;
}

static void log_stamp(char *stamp, size_t cap)
{
	struct timespec ts;
	struct tm tm;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	size_t n = strftime(stamp, cap, "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(stamp + n, cap - n, ".%03ldZ", ts.tv_nsec / 1000000);
}

static int format_json(char *line, size_t cap, enum log_level level, const struct log_fields *fields,
                       const char *msg)
{
	char stamp[40], esc_msg[6144], esc_name[160], extra[1400], worker[32] = "";
	log_stamp(stamp, sizeof(stamp));
	json_escape(esc_msg, sizeof(esc_msg), msg);
	json_escape(esc_name, sizeof(esc_name), log_name);
	log_render_fields(extra, sizeof(extra), fields, LOG_FORMAT_JSON);
	if (log_worker >= 0)
		snprintf(worker, sizeof(worker), ",\"worker\":%d", log_worker);
	return snprintf(line, cap, "{\"ts\":\"%s\",\"level\":\"%s\",\"proc\":\"%s\",\"pid\":%d%s%s,\"msg\":\"%s\"}\n",
	                stamp, level_names[level], esc_name, (int)getpid(), worker, extra, esc_msg);
}

static int format_text(char *line, size_t cap, enum log_level level, const struct log_fields *fields,
                       const char *msg)
{
	char stamp[40], esc_msg[6144], prefix[1400];
	log_stamp(stamp, sizeof(stamp));
	text_escape(esc_msg, sizeof(esc_msg), msg);
	log_render_fields(prefix, sizeof(prefix), fields, LOG_FORMAT_TEXT);
	return snprintf(line, cap, "%s %s[%d] %s: %s%s\n", stamp, log_name, (int)getpid(), level_names[level],
	                prefix, esc_msg);
}

static void log_emit(enum log_level level, const struct log_fields *fields, const char *msg)
{
	char line[16384];
	int n = log_fmt == LOG_FORMAT_JSON ? format_json(line, sizeof(line), level, fields, msg)
	                                   : format_text(line, sizeof(line), level, fields, msg);
	if (n < 0)
		return;
	if ((size_t)n >= sizeof(line)) {
		n = (int)sizeof(line) - 1;
		line[n - 1] = '\n';
	}
	(void)write_all(log_target, line, (size_t)n);
}

static void log_vlog_fields(enum log_level level, const struct log_fields *fields, int with_errno,
                            const char *fmt, va_list ap)
{
	char msg[4096];
	int saved = errno;
	int n;

	if (level > log_min)
		return;
	n = vsnprintf(msg, sizeof(msg), fmt, ap);
	if (with_errno && n >= 0 && (size_t)n < sizeof(msg))
		snprintf(msg + n, sizeof(msg) - (size_t)n, ": %s", strerror(saved));
	log_emit(level, fields, msg);
	errno = saved;
}

static void log_vlog(enum log_level level, int with_errno, const char *fmt, va_list ap)
{
	log_vlog_fields(level, NULL, with_errno, fmt, ap);
}

void log_job(enum log_level level, const struct log_fields *fields, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	log_vlog_fields(level, fields, 0, fmt, ap);
	va_end(ap);
}

#define LOG_FN(fn, level, with_errno)                                                                \
	void fn(const char *fmt, ...)                                                                \
	{                                                                                            \
		va_list ap;                                                                          \
		va_start(ap, fmt);                                                                   \
		log_vlog(level, with_errno, fmt, ap);                                                \
		va_end(ap);                                                                          \
	}

LOG_FN(log_error, LOG_LEVEL_ERROR, 0)
LOG_FN(log_warn, LOG_LEVEL_WARN, 1)
LOG_FN(log_warnx, LOG_LEVEL_WARN, 0)
LOG_FN(log_info, LOG_LEVEL_INFO, 0)
LOG_FN(log_debug, LOG_LEVEL_DEBUG, 0)

void log_fatal(int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	log_vlog(LOG_LEVEL_ERROR, 1, fmt, ap);
	va_end(ap);
	exit(code);
}

void log_fatalx(int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	log_vlog(LOG_LEVEL_ERROR, 0, fmt, ap);
	va_end(ap);
	exit(code);
}
