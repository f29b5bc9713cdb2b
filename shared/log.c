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

static void log_emit(enum log_level level, const char *msg)
{
	char line[8192];
	char stamp[40];
	struct timespec ts;
	struct tm tm;
	int n;

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	n = (int)strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(stamp + n, sizeof(stamp) - (size_t)n, ".%03ldZ", ts.tv_nsec / 1000000);

	if (log_fmt == LOG_FORMAT_JSON) {
		char esc_msg[6144], esc_name[160];
		json_escape(esc_msg, sizeof(esc_msg), msg);
		json_escape(esc_name, sizeof(esc_name), log_name);
		n = snprintf(line, sizeof(line), "{\"ts\":\"%s\",\"level\":\"%s\",\"proc\":\"%s\",\"pid\":%d,\"msg\":\"%s\"}\n",
		             stamp, level_names[level], esc_name, (int)getpid(), esc_msg);
	} else {
		char esc_msg[6144];
		text_escape(esc_msg, sizeof(esc_msg), msg);
		n = snprintf(line, sizeof(line), "%s %s[%d] %s: %s\n", stamp, log_name, (int)getpid(),
		             level_names[level], esc_msg);
	}
	if (n < 0)
		return;
	if ((size_t)n >= sizeof(line)) {
		n = (int)sizeof(line) - 1;
		line[n - 1] = '\n';
	}
	(void)write_all(log_target, line, (size_t)n);
}

static void log_vlog(enum log_level level, int with_errno, const char *fmt, va_list ap)
{
	char msg[4096];
	int saved = errno;
	int n;

	if (level > log_min)
		return;
	n = vsnprintf(msg, sizeof(msg), fmt, ap);
	if (with_errno && n >= 0 && (size_t)n < sizeof(msg))
		snprintf(msg + n, sizeof(msg) - (size_t)n, ": %s", strerror(saved));
	log_emit(level, msg);
	errno = saved;
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
