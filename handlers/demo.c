/*
 * demo: drover's example handler, a stand-in for an image generator.
 *
 * Reads one job {"id": ..., "prompt": ..., ...} from stdin, spends one to
 * three seconds (derived from the prompt's hash) "rendering" while it reports
 * progress on fd 3, writes a plasma picture coloured by that hash as a binary
 * PPM (P6) to OUT/<id>.ppm atomically (temp file, fsync, rename, fsync of the
 * directory), and prints {"image": PATH, "width": N, "height": N}.
 *
 *   demo [--size N] [--out DIR] [--duration-ms N]
 *
 * OUT defaults to $DROVER_DEMO_OUT, else /var/lib/drover/images. The job id
 * falls back to $DROVER_JOB_ID. Exit codes (sysexits): 0 done, 64 usage,
 * 65 bad job (not a JSON object, no "prompt", no usable id), 73 cannot
 * create the image, 74 I/O error, 143 stopped by SIGTERM (temp file removed).
 *
 *   demo --persistent [--size N] [--out DIR] [--duration-ms N]
 *
 * With --persistent, or when drover sets DROVER_HANDLER_MODE=persistent, it
 * speaks drover's persistent protocol instead (README "Persistent handlers"):
 * one process renders many jobs, several at once, taking job and cancel frames
 * on stdin and answering with progress, result, error and cancelled frames on
 * stdout. A bad job is an error frame with retry false (exit 65's equivalent).
 *
 * Self-contained on purpose (libc and libm only): it shows what a handler
 * needs and nothing more.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum {
	EXIT_USAGE = 64,
	EXIT_DATAERR = 65,
	EXIT_CANTCREAT = 73,
	EXIT_IOERR = 74,
	EXIT_TERMINATED = 128 + SIGTERM,
};

#define DEFAULT_OUT "/var/lib/drover/images"
#define DEFAULT_SIZE 256
#define MIN_SIZE 8
#define MAX_SIZE 4096
#define MAX_JOB_BYTES (1024 * 1024)
#define MAX_ID_LEN 200
#define PROGRESS_FD 3
#define RENDER_STEPS 10

struct options {
	int size;
	const char *out_dir;
	long duration_ms; /* -1 = derive from the prompt */
	bool persistent;  /* drover's persistent protocol instead of one job per process */
};

struct job_fields {
	char *id;     /* malloc'd, decoded; NULL when absent */
	char *prompt; /* malloc'd, decoded; NULL when absent */
};

static volatile sig_atomic_t terminate_requested;

static void on_sigterm(int sig)
{
	(void)sig;
	terminate_requested = 1;
}

/* ---- I/O that survives EINTR and partial transfers ---------------------- */

static int write_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;
	while (len > 0) {
		ssize_t n = write(fd, p, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Reads all of fd into a NUL-terminated buffer; NULL with errno (EFBIG past max). */
static char *read_all(int fd, size_t max, size_t *len_out)
{
	size_t cap = 4096, len = 0;
	char *buf = malloc(cap + 1);
	if (!buf)
		return NULL;
	for (;;) {
		if (len == cap) {
			if (cap >= max) {
				free(buf);
				errno = EFBIG;
				return NULL;
			}
			cap = cap * 2 > max ? max : cap * 2;
			char *bigger = realloc(buf, cap + 1);
			if (!bigger) {
				free(buf);
				return NULL;
			}
			buf = bigger;
		}
		ssize_t n = read(fd, buf + len, cap - len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			free(buf);
			return NULL;
		}
		if (n == 0)
			break;
		len += (size_t)n;
	}
	buf[len] = '\0';
	*len_out = len;
	return buf;
}

/* ---- a minimal JSON reader: validates the document, keeps two strings --- */

struct json_reader {
	const char *p;
	const char *end;
	int depth;
};

#define JSON_MAX_DEPTH 64

static void json_skip_space(struct json_reader *r)
{
	while (r->p < r->end && (*r->p == ' ' || *r->p == '\t' || *r->p == '\n' || *r->p == '\r'))
		r->p++;
}

static int hex_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

static bool json_read_hex4(struct json_reader *r, unsigned *out)
{
	if (r->end - r->p < 4)
		return false;
	unsigned v = 0;
	for (int i = 0; i < 4; i++) {
		int h = hex_value(r->p[i]);
		if (h < 0)
			return false;
		v = v << 4 | (unsigned)h;
	}
	r->p += 4;
	*out = v;
	return true;
}

/* Appends code point cp as UTF-8 to out (which has room for 4 more bytes). */
static size_t put_utf8(char *out, unsigned cp)
{
	if (cp < 0x80) {
		out[0] = (char)cp;
		return 1;
	}
	if (cp < 0x800) {
		out[0] = (char)(0xC0 | cp >> 6);
		out[1] = (char)(0x80 | (cp & 0x3F));
		return 2;
	}
	if (cp < 0x10000) {
		out[0] = (char)(0xE0 | cp >> 12);
		out[1] = (char)(0x80 | (cp >> 6 & 0x3F));
		out[2] = (char)(0x80 | (cp & 0x3F));
		return 3;
	}
	out[0] = (char)(0xF0 | cp >> 18);
	out[1] = (char)(0x80 | (cp >> 12 & 0x3F));
	out[2] = (char)(0x80 | (cp >> 6 & 0x3F));
	out[3] = (char)(0x80 | (cp & 0x3F));
	return 4;
}

/* After a backslash: decodes one escape (surrogate pairs joined). */
static bool json_read_escape(struct json_reader *r, unsigned *cp)
{
	if (r->p >= r->end)
		return false;
	char c = *r->p++;
	switch (c) {
	case '"': *cp = '"'; return true;
	case '\\': *cp = '\\'; return true;
	case '/': *cp = '/'; return true;
	case 'b': *cp = '\b'; return true;
	case 'f': *cp = '\f'; return true;
	case 'n': *cp = '\n'; return true;
	case 'r': *cp = '\r'; return true;
	case 't': *cp = '\t'; return true;
	case 'u': break;
	default: return false;
	}
	unsigned hi;
	if (!json_read_hex4(r, &hi))
		return false;
	if (hi < 0xD800 || hi > 0xDFFF) {
		*cp = hi;
		return true;
	}
	unsigned lo;
	if (hi > 0xDBFF || r->end - r->p < 2 || r->p[0] != '\\' || r->p[1] != 'u')
		return false;
	r->p += 2;
	if (!json_read_hex4(r, &lo) || lo < 0xDC00 || lo > 0xDFFF)
		return false;
	*cp = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
	return true;
}

/*
 * Reads a string at r->p (which points at the opening quote). With out != NULL,
 * stores the decoded text as a malloc'd string (NUL in the text is refused).
 */
static bool json_read_string(struct json_reader *r, char **out)
{
	if (r->p >= r->end || *r->p != '"')
		return false;
	r->p++;
	/* Decoded text is never longer than its escaped form. */
	char *text = out ? malloc((size_t)(r->end - r->p) + 1) : NULL;
	size_t len = 0;
	if (out && !text)
		return false;
	while (r->p < r->end && *r->p != '"') {
		unsigned char c = (unsigned char)*r->p++;
		unsigned cp = c;
		if (c < 0x20)
			goto bad;
		if (c == '\\' && (!json_read_escape(r, &cp) || cp == 0))
			goto bad;
		if (text) {
			if (c == '\\')
				len += put_utf8(text + len, cp);
			else
				text[len++] = (char)c;
		}
	}
	if (r->p >= r->end)
		goto bad;
	r->p++;
	if (text) {
		text[len] = '\0';
		*out = text;
	}
	return true;
bad:
	free(text);
	return false;
}

static bool json_skip_literal(struct json_reader *r, const char *word)
{
	size_t n = strlen(word);
	if ((size_t)(r->end - r->p) < n || memcmp(r->p, word, n) != 0)
		return false;
	r->p += n;
	return true;
}

static bool json_skip_number(struct json_reader *r)
{
	const char *start = r->p;
	if (r->p < r->end && *r->p == '-')
		r->p++;
	const char *digits = r->p;
	while (r->p < r->end && ((*r->p >= '0' && *r->p <= '9') || *r->p == '.' || *r->p == 'e' ||
	                         *r->p == 'E' || *r->p == '+' || *r->p == '-'))
		r->p++;
	return r->p > digits && r->p > start && *digits >= '0' && *digits <= '9';
}

static bool json_skip_value(struct json_reader *r);

static bool json_skip_container(struct json_reader *r, char open, char close)
{
	if (++r->depth > JSON_MAX_DEPTH)
		return false;
	r->p++; /* the opening bracket */
	json_skip_space(r);
	if (r->p < r->end && *r->p == close) {
		r->p++;
		r->depth--;
		return true;
	}
	for (;;) {
		json_skip_space(r);
		if (open == '{') {
			if (!json_read_string(r, NULL))
				return false;
			json_skip_space(r);
			if (r->p >= r->end || *r->p++ != ':')
				return false;
		}
		if (!json_skip_value(r))
			return false;
		json_skip_space(r);
		if (r->p >= r->end)
			return false;
		char c = *r->p++;
		if (c == close)
			break;
		if (c != ',')
			return false;
	}
	r->depth--;
	return true;
}

static bool json_skip_value(struct json_reader *r)
{
	json_skip_space(r);
	if (r->p >= r->end)
		return false;
	switch (*r->p) {
	case '"': return json_read_string(r, NULL);
	case '{': return json_skip_container(r, '{', '}');
	case '[': return json_skip_container(r, '[', ']');
	case 't': return json_skip_literal(r, "true");
	case 'f': return json_skip_literal(r, "false");
	case 'n': return json_skip_literal(r, "null");
	default: return json_skip_number(r);
	}
}

/*
 * The members an object reader keeps: a string value is stored in *text (decoded,
 * malloc'd; a repeated key: the last one wins, as in most parsers), an object value
 * is read with the fields of *object. Every other member is validated and skipped.
 */
struct json_field {
	const char *key;
	char **text;
	const struct json_fields *object;
};

struct json_fields {
	const struct json_field *fields;
	size_t count;
};

static bool json_read_object(struct json_reader *r, const struct json_fields *spec);

static const struct json_field *json_field_of(const struct json_fields *spec, const char *key)
{
	for (size_t i = 0; i < spec->count; i++)
		if (strcmp(spec->fields[i].key, key) == 0)
			return &spec->fields[i];
	return NULL;
}

static bool json_read_member(struct json_reader *r, const struct json_fields *spec)
{
	char *key = NULL;
	json_skip_space(r);
	if (!json_read_string(r, &key))
		return false;
	json_skip_space(r);
	bool ok = r->p < r->end && *r->p++ == ':';
	if (ok) {
		json_skip_space(r);
		const struct json_field *field = json_field_of(spec, key);
		char next = r->p < r->end ? *r->p : '\0';
		if (field && field->text && next == '"') {
			free(*field->text);
			*field->text = NULL;
			ok = json_read_string(r, field->text);
		} else if (field && field->object && next == '{') {
			ok = json_read_object(r, field->object);
		} else {
			ok = json_skip_value(r);
		}
	}
	free(key);
	return ok;
}

/* An object at r->p, keeping the members spec names. */
static bool json_read_object(struct json_reader *r, const struct json_fields *spec)
{
	if (++r->depth > JSON_MAX_DEPTH || r->p >= r->end || *r->p++ != '{')
		return false;
	json_skip_space(r);
	if (r->p < r->end && *r->p == '}') {
		r->p++;
	} else {
		for (;;) {
			if (!json_read_member(r, spec))
				return false;
			json_skip_space(r);
			if (r->p >= r->end)
				return false;
			char c = *r->p++;
			if (c == '}')
				break;
			if (c != ',')
				return false;
		}
	}
	r->depth--;
	return true;
}

/* Parses a whole document that must be one JSON object. */
static bool json_parse_document(const char *text, size_t len, const struct json_fields *spec)
{
	struct json_reader r = { .p = text, .end = text + len, .depth = 0 };
	json_skip_space(&r);
	if (!json_read_object(&r, spec))
		return false;
	json_skip_space(&r);
	return r.p == r.end;
}

static bool parse_job(const char *text, size_t len, struct job_fields *job)
{
	const struct json_field fields[] = { { "id", &job->id, NULL }, { "prompt", &job->prompt, NULL } };
	const struct json_fields spec = { fields, sizeof fields / sizeof fields[0] };
	return json_parse_document(text, len, &spec);
}

/* ---- helpers ------------------------------------------------------------ */

/* FNV-1a, then a splitmix64 finaliser so that similar prompts look different. */
static uint64_t hash_text(const char *s)
{
	uint64_t h = 0xcbf29ce484222325ULL;
	for (; *s; s++) {
		h ^= (unsigned char)*s;
		h *= 0x100000001b3ULL;
	}
	h ^= h >> 30;
	h *= 0xbf58476d1ce4e5b9ULL;
	h ^= h >> 27;
	h *= 0x94d049bb133111ebULL;
	h ^= h >> 31;
	return h;
}

/*
 * A file name from the id: [A-Za-z0-9._-] kept, anything else as '_', no
 * leading dot. When anything was replaced, a hash of the whole id is appended
 * so that "a/b" and "a_b" do not share a file.
 */
static bool id_to_file_stem(const char *id, char *out, size_t outlen)
{
	size_t n = strlen(id);
	if (n == 0 || n > MAX_ID_LEN || n + 2 + 17 > outlen)
		return false;
	size_t j = 0;
	bool replaced = id[0] == '.';
	if (replaced)
		out[j++] = '_';
	for (size_t i = 0; i < n; i++) {
		char c = id[i];
		bool safe = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		            c == '.' || c == '_' || c == '-';
		replaced |= !safe;
		out[j++] = safe ? c : '_';
	}
	out[j] = '\0';
	if (replaced)
		snprintf(out + j, outlen - j, "-%08llx", (unsigned long long)(hash_text(id) & 0xffffffffULL));
	return true;
}

/* Appends s to buf as a JSON string literal. false when it does not fit. */
static bool json_quote(char *buf, size_t len, size_t *pos, const char *s)
{
	if (*pos + 1 >= len)
		return false;
	buf[(*pos)++] = '"';
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		char esc[8];
		int n;
		if (c == '"' || c == '\\')
			n = snprintf(esc, sizeof esc, "\\%c", c);
		else if (c < 0x20)
			n = snprintf(esc, sizeof esc, "\\u%04x", c);
		else
			n = snprintf(esc, sizeof esc, "%c", c);
		if (n < 0 || *pos + (size_t)n + 1 >= len)
			return false;
		memcpy(buf + *pos, esc, (size_t)n);
		*pos += (size_t)n;
	}
	buf[(*pos)++] = '"';
	return true;
}

/* Sleeps ms, waking early on SIGTERM (nanosleep returns EINTR then). */
static void sleep_ms(long ms)
{
	struct timespec left = { .tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L };
	while (!terminate_requested && nanosleep(&left, &left) < 0 && errno == EINTR)
		;
}

/* ---- progress on fd 3 --------------------------------------------------- */

static bool progress_open;

static void progress_init(void)
{
	progress_open = fcntl(PROGRESS_FD, F_GETFD) != -1;
}

static void progress_report(double fraction, const char *message)
{
	if (!progress_open)
		return;
	char line[128];
	int n = snprintf(line, sizeof line, "{\"progress\":%.2f,\"message\":\"%s\"}\n", fraction, message);
	/* A reader that went away must not fail the job: stop reporting instead. */
	if (n < 0 || (size_t)n >= sizeof line || write_all(PROGRESS_FD, line, (size_t)n) < 0)
		progress_open = false;
}

/* ---- the picture -------------------------------------------------------- */

struct palette {
	double freq[4];
	double phase[4];
	double tint[3];
};

static double hash_unit(uint64_t *state)
{
	/* splitmix64 step: a stream of numbers in [0, 1) from one hash. */
	uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	z ^= z >> 31;
	return (double)(z >> 11) / 9007199254740992.0;
}

static struct palette palette_from_hash(uint64_t hash)
{
	struct palette pal;
	uint64_t state = hash;
	for (int i = 0; i < 4; i++) {
		pal.freq[i] = 2.0 + 10.0 * hash_unit(&state);
		pal.phase[i] = 2.0 * M_PI * hash_unit(&state);
	}
	for (int i = 0; i < 3; i++)
		pal.tint[i] = 2.0 * M_PI * hash_unit(&state);
	return pal;
}

/* Classic plasma: a sum of waves, mapped through three phase-shifted cosines. */
static void render_rows(unsigned char *pixels, int size, int row_from, int row_to, const struct palette *pal)
{
	for (int y = row_from; y < row_to; y++) {
		double v = (double)y / size;
		for (int x = 0; x < size; x++) {
			double u = (double)x / size;
			double du = u - 0.5, dv = v - 0.5;
			double s = sin(u * pal->freq[0] + pal->phase[0]) + sin(v * pal->freq[1] + pal->phase[1]) +
			           sin((u + v) * pal->freq[2] + pal->phase[2]) +
			           sin(sqrt(du * du + dv * dv) * pal->freq[3] * 2.0 + pal->phase[3]);
			unsigned char *px = pixels + ((size_t)y * (size_t)size + (size_t)x) * 3;
			for (int c = 0; c < 3; c++)
				px[c] = (unsigned char)lround(127.5 + 127.5 * cos(M_PI * s / 2.0 + pal->tint[c]));
		}
	}
}

/* ---- writing the image atomically ---------------------------------------- */

static int fsync_dir(const char *dir)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	int rc = fsync(fd);
	int saved = errno;
	close(fd);
	errno = saved;
	return rc;
}

static int mkdir_p(const char *path)
{
	char buf[PATH_MAX];
	size_t n = strlen(path);
	if (n == 0 || n >= sizeof buf) {
		errno = ENAMETOOLONG;
		return -1;
	}
	memcpy(buf, path, n + 1);
	for (size_t i = 1; i <= n; i++) {
		if (buf[i] != '/' && buf[i] != '\0')
			continue;
		char saved = buf[i];
		buf[i] = '\0';
		if (mkdir(buf, 0755) < 0 && errno != EEXIST)
			return -1;
		buf[i] = saved;
	}
	return 0;
}

/* temp file, fsync, rename: a reader never sees half an image. 0 or an exit code. */
static int write_ppm(const char *tmp, const char *final, const unsigned char *pixels, int size)
{
	int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (fd < 0)
		return EXIT_CANTCREAT;
	char header[64];
	int n = snprintf(header, sizeof header, "P6\n%d %d\n255\n", size, size);
	size_t bytes = (size_t)size * (size_t)size * 3;
	bool ok = n > 0 && write_all(fd, header, (size_t)n) == 0 && write_all(fd, pixels, bytes) == 0 &&
	          fsync(fd) == 0;
	ok = close(fd) == 0 && ok;
	ok = ok && rename(tmp, final) == 0;
	if (!ok) {
		int saved = errno;
		unlink(tmp);
		errno = saved;
		return EXIT_IOERR;
	}
	return 0;
}

/* ---- main --------------------------------------------------------------- */

static void usage(void)
{
	fputs("usage: demo [--size N] [--out DIR] [--duration-ms N]  (job JSON on stdin)\n"
	      "       demo --persistent [--size N] [--out DIR] [--duration-ms N]  (protocol frames on stdin)\n",
	      stderr);
}

static bool parse_long(const char *s, long min, long max, long *out)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < min || v > max)
		return false;
	*out = v;
	return true;
}

static int parse_options(int argc, char **argv, struct options *opt)
{
	const char *env_out = getenv("DROVER_DEMO_OUT");
	const char *mode = getenv("DROVER_HANDLER_MODE");
	opt->persistent = mode && strcmp(mode, "persistent") == 0;
	opt->size = DEFAULT_SIZE;
	opt->out_dir = env_out && *env_out ? env_out : DEFAULT_OUT;
	opt->duration_ms = -1;
	for (int i = 1; i < argc; i++) {
		long v;
		if (strcmp(argv[i], "--persistent") == 0) {
			opt->persistent = true;
			continue;
		}
		if (i + 1 >= argc) {
			fprintf(stderr, "demo: %s: missing value or unknown option\n", argv[i]);
			return -1;
		}
		const char *arg = argv[i], *val = argv[++i];
		if (strcmp(arg, "--size") == 0 && parse_long(val, MIN_SIZE, MAX_SIZE, &v)) {
			opt->size = (int)v;
		} else if (strcmp(arg, "--out") == 0 && *val) {
			opt->out_dir = val;
		} else if (strcmp(arg, "--duration-ms") == 0 && parse_long(val, 0, 600000, &v)) {
			opt->duration_ms = v;
		} else {
			fprintf(stderr, "demo: bad option %s %s (--size %d..%d, --out DIR, --duration-ms 0..600000)\n",
			        arg, val, MIN_SIZE, MAX_SIZE);
			return -1;
		}
	}
	return 0;
}

/* Reads and checks the job; 0, or an exit code with the reason on stderr. */
static int read_job(struct job_fields *job)
{
	size_t len;
	char *text = read_all(STDIN_FILENO, MAX_JOB_BYTES, &len);
	if (!text) {
		fprintf(stderr, "demo: reading the job: %s\n", strerror(errno));
		return errno == EFBIG ? EXIT_DATAERR : EXIT_IOERR;
	}
	bool parsed = parse_job(text, len, job);
	free(text);
	if (!parsed) {
		fputs("demo: the job is not a JSON object\n", stderr);
		return EXIT_DATAERR;
	}
	if (!job->prompt || !*job->prompt) {
		fputs("demo: the job has no \"prompt\" string\n", stderr);
		return EXIT_DATAERR;
	}
	if (!job->id) {
		const char *env_id = getenv("DROVER_JOB_ID");
		job->id = env_id ? strdup(env_id) : NULL;
	}
	if (!job->id || !*job->id || strlen(job->id) > MAX_ID_LEN) {
		fprintf(stderr, "demo: the job needs an \"id\" string of 1..%d bytes\n", MAX_ID_LEN);
		return EXIT_DATAERR;
	}
	return 0;
}

/* Renders in steps, reporting progress and pacing the work over duration_ms. */
static int render(unsigned char *pixels, int size, uint64_t hash, long duration_ms)
{
	struct palette pal = palette_from_hash(hash);
	progress_report(0.0, "starting");
	for (int step = 0; step < RENDER_STEPS; step++) {
		render_rows(pixels, size, size * step / RENDER_STEPS, size * (step + 1) / RENDER_STEPS, &pal);
		sleep_ms(duration_ms / RENDER_STEPS);
		if (terminate_requested)
			return EXIT_TERMINATED;
		progress_report((double)(step + 1) / (RENDER_STEPS + 1), "rendering");
	}
	return 0;
}

static int print_result(const char *path, int size)
{
	char out[PATH_MAX + 128];
	size_t pos = 0;
	memcpy(out, "{\"image\": ", 10);
	pos = 10;
	if (!json_quote(out, sizeof out, &pos, path))
		return EXIT_IOERR;
	int n = snprintf(out + pos, sizeof out - pos, ", \"width\": %d, \"height\": %d}\n", size, size);
	if (n < 0 || (size_t)n >= sizeof out - pos)
		return EXIT_IOERR;
	if (write_all(STDOUT_FILENO, out, pos + (size_t)n) < 0) {
		fprintf(stderr, "demo: writing the result: %s\n", strerror(errno));
		return EXIT_IOERR;
	}
	return 0;
}

static int install_signals(void)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sigemptyset(&sa.sa_mask);
	sa.sa_handler = SIG_IGN; /* a closed progress or result pipe is an error code, not a death */
	if (sigaction(SIGPIPE, &sa, NULL) < 0)
		return -1;
	sa.sa_handler = on_sigterm;
	return sigaction(SIGTERM, &sa, NULL);
}

struct image_paths {
	char dir[PATH_MAX];   /* the output directory, absolute */
	char final[PATH_MAX]; /* DIR/<stem>.ppm */
	char tmp[PATH_MAX];   /* DIR/.<stem>.ppm.<pid>.tmp */
};

/* Creates the output directory if needed and names the files; false with errno. */
static bool image_paths(const char *out_dir, const char *id, struct image_paths *paths)
{
	char stem[MAX_ID_LEN + 2 + 17];
	if (mkdir_p(out_dir) < 0 || !realpath(out_dir, paths->dir))
		return false;
	if (!id_to_file_stem(id, stem, sizeof stem)) {
		errno = EINVAL;
		return false;
	}
	int a = snprintf(paths->final, sizeof paths->final, "%s/%s.ppm", paths->dir, stem);
	int b = snprintf(paths->tmp, sizeof paths->tmp, "%s/.%s.ppm.%ld.tmp", paths->dir, stem, (long)getpid());
	if (a < 0 || (size_t)a >= sizeof paths->final || b < 0 || (size_t)b >= sizeof paths->tmp) {
		errno = ENAMETOOLONG;
		return false;
	}
	return true;
}

static int run(const struct options *opt, const struct job_fields *job)
{
	struct image_paths paths;
	if (!image_paths(opt->out_dir, job->id, &paths)) {
		fprintf(stderr, "demo: output directory %s: %s\n", opt->out_dir, strerror(errno));
		return EXIT_CANTCREAT;
	}
	uint64_t hash = hash_text(job->prompt);
	long duration = opt->duration_ms >= 0 ? opt->duration_ms : 1000 + (long)(hash % 2001);
	unsigned char *pixels = malloc((size_t)opt->size * (size_t)opt->size * 3);
	if (!pixels) {
		fputs("demo: out of memory\n", stderr);
		return EXIT_IOERR;
	}
	int rc = render(pixels, opt->size, hash, duration);
	if (rc == EXIT_TERMINATED) {
		fputs("demo: stopped by SIGTERM before the image was written\n", stderr);
	} else {
		progress_report((double)RENDER_STEPS / (RENDER_STEPS + 1), "writing");
		rc = write_ppm(paths.tmp, paths.final, pixels, opt->size);
		if (rc != 0)
			fprintf(stderr, "demo: writing %s: %s\n", paths.final, strerror(errno));
		else if (fsync_dir(paths.dir) < 0) {
			fprintf(stderr, "demo: fsync of %s: %s\n", paths.dir, strerror(errno));
			rc = EXIT_IOERR;
		}
	}
	free(pixels);
	if (rc == 0) {
		progress_report(1.0, "done");
		rc = print_result(paths.final, opt->size);
	}
	return rc;
}

/* ---- persistent mode: one process, many jobs (drover's protocol 1) --------
 *
 * With --persistent (or DROVER_HANDLER_MODE=persistent) the demo says ready,
 * then reads job and cancel frames from stdin, one JSON object per line, and
 * answers with progress, result, error and cancelled frames on stdout. Jobs
 * held at once are rendered in turns by one thread: each advances a slice of
 * rows when its pacing time comes, and ppoll() waits for the earliest of those
 * times or for the next frame. EOF on stdin: the jobs held finish, then exit 0.
 */

#define MAX_FRAME_BYTES (MAX_JOB_BYTES + 65536)
#define MAX_WARM_JOBS 64
#define READ_CHUNK 65536

/* A frame being written: grows as needed; failed sticks after an allocation failure. */
struct text {
	char *p;
	size_t len, cap;
	bool failed;
};

static void text_add(struct text *t, const char *s, size_t n)
{
	if (t->failed)
		return;
	if (t->len + n + 1 > t->cap) {
		size_t cap = t->cap ? t->cap : 256;
		while (cap < t->len + n + 1)
			cap *= 2;
		char *bigger = realloc(t->p, cap);
		if (!bigger) {
			t->failed = true;
			return;
		}
		t->p = bigger;
		t->cap = cap;
	}
	memcpy(t->p + t->len, s, n);
	t->len += n;
}

static void text_puts(struct text *t, const char *s)
{
	text_add(t, s, strlen(s));
}

/* s as a JSON string literal; control characters escaped, so a frame stays one line. */
static void text_quote(struct text *t, const char *s)
{
	text_puts(t, "\"");
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		char esc[8];
		if (c == '"' || c == '\\') {
			snprintf(esc, sizeof esc, "\\%c", c);
			text_puts(t, esc);
		} else if (c < 0x20) {
			snprintf(esc, sizeof esc, "\\u%04x", c);
			text_puts(t, esc);
		} else {
			text_add(t, (const char *)&c, 1);
		}
	}
	text_puts(t, "\"");
}

static void frame_begin(struct text *t, const char *type, const char *id)
{
	text_puts(t, "{\"type\":");
	text_quote(t, type);
	text_puts(t, ",\"id\":");
	text_quote(t, id);
}

/* Closes the frame and writes it whole; false when drover cannot be written to. */
static bool frame_send(struct text *t)
{
	text_puts(t, "}\n");
	bool ok = !t->failed && write_all(STDOUT_FILENO, t->p, t->len) == 0;
	if (!ok)
		fprintf(stderr, "demo: writing a frame: %s\n", t->failed ? "out of memory" : strerror(errno));
	free(t->p);
	return ok;
}

struct warm_job {
	char *frame_id; /* drover's id of the job: every frame names it */
	struct job_fields job;
	struct image_paths paths;
	unsigned char *pixels;
	struct palette pal;
	int step; /* slices of rows rendered; at RENDER_STEPS the image is written */
	long long started_ms;
	long step_ms;
};

struct warm {
	const struct options *opt;
	struct warm_job *jobs[MAX_WARM_JOBS];
	int count;
	char *in; /* bytes read that do not yet end a line */
	size_t in_len, in_cap;
	bool skipping; /* inside a line longer than MAX_FRAME_BYTES: dropped */
	bool closing;  /* stdin at EOF: finish the jobs held, then exit */
	bool broken;   /* stdout failed: drover is gone */
};

static long long monotonic_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void warm_progress(struct warm *w, const struct warm_job *job, double fraction, const char *message)
{
	struct text t = { 0 };
	char num[32];
	frame_begin(&t, "progress", job->frame_id);
	snprintf(num, sizeof num, ",\"progress\":%.2f,\"message\":", fraction);
	text_puts(&t, num);
	text_quote(&t, message);
	w->broken |= !frame_send(&t);
}

static void warm_error(struct warm *w, const char *id, const char *error, bool retry)
{
	struct text t = { 0 };
	frame_begin(&t, "error", id);
	text_puts(&t, ",\"error\":");
	text_quote(&t, error);
	text_puts(&t, retry ? ",\"retry\":true" : ",\"retry\":false");
	w->broken |= !frame_send(&t);
}

static void warm_result(struct warm *w, const struct warm_job *job)
{
	struct text t = { 0 };
	char dims[64];
	frame_begin(&t, "result", job->frame_id);
	text_puts(&t, ",\"result\":{\"image\":");
	text_quote(&t, job->paths.final);
	snprintf(dims, sizeof dims, ",\"width\":%d,\"height\":%d}", w->opt->size, w->opt->size);
	text_puts(&t, dims);
	w->broken |= !frame_send(&t);
}

static void warm_free(struct warm_job *job)
{
	free(job->frame_id);
	free(job->job.id);
	free(job->job.prompt);
	free(job->pixels);
	free(job);
}

/* Removes jobs[i] (order does not matter: each job keeps its own pacing). */
static void warm_drop(struct warm *w, int i)
{
	warm_free(w->jobs[i]);
	w->jobs[i] = w->jobs[--w->count];
}

/* A job frame's job made ready to render; NULL after answering with an error frame. */
static struct warm_job *warm_prepare(struct warm *w, struct warm_job *job)
{
	char reason[PATH_MAX + 128];
	if (!job->job.prompt || !*job->job.prompt) {
		warm_error(w, job->frame_id, "the job has no \"prompt\" string", false);
		return NULL;
	}
	if (!job->job.id)
		job->job.id = strdup(job->frame_id); /* as DROVER_JOB_ID in exec mode */
	if (!job->job.id || !*job->job.id || strlen(job->job.id) > MAX_ID_LEN) {
		snprintf(reason, sizeof reason, "the job needs an \"id\" string of 1..%d bytes", MAX_ID_LEN);
		warm_error(w, job->frame_id, reason, false);
		return NULL;
	}
	if (!image_paths(w->opt->out_dir, job->job.id, &job->paths)) {
		snprintf(reason, sizeof reason, "output directory %s: %s", w->opt->out_dir, strerror(errno));
		warm_error(w, job->frame_id, reason, true);
		return NULL;
	}
	job->pixels = malloc((size_t)w->opt->size * (size_t)w->opt->size * 3);
	if (!job->pixels) {
		warm_error(w, job->frame_id, "out of memory", true);
		return NULL;
	}
	uint64_t hash = hash_text(job->job.prompt);
	long duration = w->opt->duration_ms >= 0 ? w->opt->duration_ms : 1000 + (long)(hash % 2001);
	job->pal = palette_from_hash(hash);
	job->step_ms = duration / RENDER_STEPS;
	job->started_ms = monotonic_ms();
	return job;
}

/* Takes the job of a job frame (its fields move into the job). */
static void warm_accept(struct warm *w, char **frame_id, struct job_fields *fields)
{
	for (int i = 0; i < w->count; i++) {
		if (strcmp(w->jobs[i]->frame_id, *frame_id) == 0) {
			fprintf(stderr, "demo: ignoring job %s: it is already running here\n", *frame_id);
			return;
		}
	}
	if (w->count == MAX_WARM_JOBS) {
		warm_error(w, *frame_id, "this demo process already holds its maximum of jobs", true);
		return;
	}
	struct warm_job *job = calloc(1, sizeof *job);
	if (!job) {
		warm_error(w, *frame_id, "out of memory", true);
		return;
	}
	job->frame_id = *frame_id;
	job->job = *fields;
	*frame_id = NULL;
	*fields = (struct job_fields){ 0 };
	if (!warm_prepare(w, job)) {
		warm_free(job);
		return;
	}
	w->jobs[w->count++] = job;
	warm_progress(w, job, 0.0, "starting");
}

static void warm_cancel(struct warm *w, const char *id)
{
	for (int i = 0; i < w->count; i++) {
		if (strcmp(w->jobs[i]->frame_id, id) == 0) {
			struct text t = { 0 };
			frame_begin(&t, "cancelled", id);
			w->broken |= !frame_send(&t);
			warm_drop(w, i); /* nothing on disk yet: the image is written in one step */
			return;
		}
	}
	/* A job that has just ended: its result already answers the cancel. */
}

/* The last step: the image written as in exec mode, then the result frame. */
static void warm_finish(struct warm *w, struct warm_job *job)
{
	char reason[PATH_MAX + 128];
	warm_progress(w, job, (double)RENDER_STEPS / (RENDER_STEPS + 1), "writing");
	int rc = write_ppm(job->paths.tmp, job->paths.final, job->pixels, w->opt->size);
	if (rc == 0 && fsync_dir(job->paths.dir) < 0)
		rc = EXIT_IOERR;
	if (rc != 0) {
		snprintf(reason, sizeof reason, "writing %s: %s", job->paths.final, strerror(errno));
		fprintf(stderr, "demo: %s\n", reason);
		warm_error(w, job->frame_id, reason, true);
		return;
	}
	warm_progress(w, job, 1.0, "done");
	warm_result(w, job);
}

/* Runs every step whose time has come; true when jobs[i] ended and was dropped. */
static bool warm_advance(struct warm *w, int i, long long now)
{
	struct warm_job *job = w->jobs[i];
	int size = w->opt->size;
	while (!w->broken && job->step <= RENDER_STEPS && job->started_ms + (long long)job->step * job->step_ms <= now) {
		if (job->step == RENDER_STEPS) {
			warm_finish(w, job);
			warm_drop(w, i);
			return true;
		}
		render_rows(job->pixels, size, size * job->step / RENDER_STEPS, size * (job->step + 1) / RENDER_STEPS,
		            &job->pal);
		job->step++;
		warm_progress(w, job, (double)job->step / (RENDER_STEPS + 1), "rendering");
	}
	return false;
}

/* ---- persistent mode: frames in -------------------------------------------- */

struct frame_fields {
	char *type;
	char *id;
	struct job_fields job;
};

static void frame_fields_free(struct frame_fields *f)
{
	free(f->type);
	free(f->id);
	free(f->job.id);
	free(f->job.prompt);
}

static bool parse_frame(const char *text, size_t len, struct frame_fields *f)
{
	const struct json_field job_fields[] = { { "id", &f->job.id, NULL }, { "prompt", &f->job.prompt, NULL } };
	const struct json_fields job_spec = { job_fields, sizeof job_fields / sizeof job_fields[0] };
	const struct json_field fields[] = {
		{ "type", &f->type, NULL }, { "id", &f->id, NULL }, { "job", NULL, &job_spec } };
	const struct json_fields spec = { fields, sizeof fields / sizeof fields[0] };
	return json_parse_document(text, len, &spec);
}

static void warm_line(struct warm *w, const char *line, size_t len)
{
	struct frame_fields f = { 0 };
	if (len == 0 || (len == 1 && line[0] == '\r')) {
		return;
	} else if (!parse_frame(line, len, &f) || !f.type) {
		fputs("demo: ignoring a line that is not a JSON object with a \"type\"\n", stderr);
	} else if (strcmp(f.type, "job") == 0 && f.id) {
		warm_accept(w, &f.id, &f.job);
	} else if (strcmp(f.type, "cancel") == 0 && f.id) {
		warm_cancel(w, f.id);
	} else {
		fprintf(stderr, "demo: ignoring a frame of type \"%s\"%s\n", f.type, f.id ? "" : " without an id");
	}
	frame_fields_free(&f);
}

/* Makes room for another read; a line that outgrows MAX_FRAME_BYTES is dropped whole. */
static bool warm_room(struct warm *w)
{
	if (w->in_len < w->in_cap)
		return true;
	if (w->in_cap >= MAX_FRAME_BYTES) {
		fprintf(stderr, "demo: dropping a frame longer than %d bytes\n", MAX_FRAME_BYTES);
		w->skipping = true;
		w->in_len = 0;
		return true;
	}
	size_t cap = w->in_cap ? w->in_cap * 2 : READ_CHUNK;
	if (cap > MAX_FRAME_BYTES)
		cap = MAX_FRAME_BYTES;
	char *bigger = realloc(w->in, cap);
	if (!bigger)
		return false;
	w->in = bigger;
	w->in_cap = cap;
	return true;
}

/* One read from stdin, then every whole line in the buffer. */
static void warm_read(struct warm *w)
{
	if (!warm_room(w)) {
		fputs("demo: out of memory reading frames\n", stderr);
		w->broken = true;
		return;
	}
	ssize_t n = read(STDIN_FILENO, w->in + w->in_len, w->in_cap - w->in_len);
	if (n < 0 && (errno == EINTR || errno == EAGAIN))
		return;
	if (n <= 0) {
		if (n < 0)
			fprintf(stderr, "demo: reading frames: %s\n", strerror(errno));
		if (w->in_len > 0 && !w->skipping)
			fputs("demo: ignoring an unfinished last line\n", stderr);
		w->closing = true;
		return;
	}
	size_t scanned = w->in_len, begin = 0;
	w->in_len += (size_t)n;
	for (char *nl; (nl = memchr(w->in + scanned, '\n', w->in_len - scanned)) != NULL; scanned = begin) {
		size_t end = (size_t)(nl - w->in);
		if (!w->skipping)
			warm_line(w, w->in + begin, end - begin);
		w->skipping = false;
		begin = end + 1;
	}
	memmove(w->in, w->in + begin, w->in_len - begin);
	w->in_len -= begin;
}

/* ---- persistent mode: the loop --------------------------------------------- */

/* Milliseconds until the earliest job's next step (0: now), or -1 with no job. */
static long long warm_wait_ms(const struct warm *w, long long now)
{
	long long wait = -1;
	for (int i = 0; i < w->count; i++) {
		const struct warm_job *job = w->jobs[i];
		long long due = job->started_ms + (long long)job->step * job->step_ms - now;
		if (due < 0)
			due = 0;
		if (wait < 0 || due < wait)
			wait = due;
	}
	return wait;
}

/* Waits for a frame or the next step; SIGTERM is let in only during the wait, so none is missed. */
static void warm_wait(struct warm *w, const sigset_t *wait_mask)
{
	struct pollfd in = { .fd = STDIN_FILENO, .events = POLLIN };
	long long wait = warm_wait_ms(w, monotonic_ms());
	struct timespec ts = { .tv_sec = wait / 1000, .tv_nsec = (wait % 1000) * 1000000L };
	int n = ppoll(&in, w->closing ? 0 : 1, wait < 0 ? NULL : &ts, wait_mask);
	if (n < 0 && errno != EINTR) {
		fprintf(stderr, "demo: ppoll: %s\n", strerror(errno));
		w->broken = true;
	} else if (n > 0 && (in.revents & (POLLIN | POLLHUP | POLLERR))) {
		warm_read(w);
	}
}

static int serve_persistent(const struct options *opt)
{
	struct warm w = { .opt = opt };
	sigset_t term, wait_mask;
	sigemptyset(&term);
	sigaddset(&term, SIGTERM);
	if (sigprocmask(SIG_BLOCK, &term, &wait_mask) < 0) {
		perror("demo: sigprocmask");
		return EXIT_IOERR;
	}
	sigdelset(&wait_mask, SIGTERM);
	struct text ready = { 0 };
	text_puts(&ready, "{\"type\":\"ready\"");
	w.broken = !frame_send(&ready);
	while (!w.broken && !terminate_requested && !(w.closing && w.count == 0)) {
		warm_wait(&w, &wait_mask);
		long long now = monotonic_ms();
		for (int i = w.count - 1; i >= 0 && !w.broken; i--)
			warm_advance(&w, i, now);
	}
	int rc = terminate_requested ? EXIT_TERMINATED : w.broken ? EXIT_IOERR : 0;
	if (w.count > 0)
		fprintf(stderr, "demo: %s with %d job(s) unfinished\n", terminate_requested ? "stopped by SIGTERM" : "ending", w.count);
	while (w.count > 0)
		warm_drop(&w, w.count - 1);
	free(w.in);
	return rc;
}

int main(int argc, char **argv)
{
	struct options opt;
	if (parse_options(argc, argv, &opt) < 0) {
		usage();
		return EXIT_USAGE;
	}
	if (install_signals() < 0) {
		perror("demo: sigaction");
		return EXIT_IOERR;
	}
	if (opt.persistent)
		return serve_persistent(&opt);
	progress_init();
	struct job_fields job = { 0 };
	int rc = read_job(&job);
	if (rc == 0)
		rc = run(&opt, &job);
	free(job.id);
	free(job.prompt);
	return rc;
}
