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
 * Self-contained on purpose (libc and libm only): it shows what a handler
 * needs and nothing more.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
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

/* A top-level member: keeps "id" and "prompt" when they are strings, skips the rest. */
static bool json_read_member(struct json_reader *r, struct job_fields *job)
{
	char *key = NULL;
	json_skip_space(r);
	if (!json_read_string(r, &key))
		return false;
	json_skip_space(r);
	bool ok = r->p < r->end && *r->p++ == ':';
	if (ok) {
		json_skip_space(r);
		char **slot = NULL;
		if (strcmp(key, "id") == 0)
			slot = &job->id;
		else if (strcmp(key, "prompt") == 0)
			slot = &job->prompt;
		if (slot && r->p < r->end && *r->p == '"') {
			free(*slot); /* a repeated key: the last one wins, as in most parsers */
			*slot = NULL;
			ok = json_read_string(r, slot);
		} else {
			ok = json_skip_value(r);
		}
	}
	free(key);
	return ok;
}

/* Parses a whole document that must be one JSON object. */
static bool parse_job(const char *text, size_t len, struct job_fields *job)
{
	struct json_reader r = { .p = text, .end = text + len, .depth = 1 };
	json_skip_space(&r);
	if (r.p >= r.end || *r.p++ != '{')
		return false;
	json_skip_space(&r);
	if (r.p < r.end && *r.p == '}') {
		r.p++;
	} else {
		for (;;) {
			if (!json_read_member(&r, job))
				return false;
			json_skip_space(&r);
			if (r.p >= r.end)
				return false;
			char c = *r.p++;
			if (c == '}')
				break;
			if (c != ',')
				return false;
		}
	}
	json_skip_space(&r);
	return r.p == r.end;
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
	fputs("usage: demo [--size N] [--out DIR] [--duration-ms N]  (job JSON on stdin)\n", stderr);
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
	opt->size = DEFAULT_SIZE;
	opt->out_dir = env_out && *env_out ? env_out : DEFAULT_OUT;
	opt->duration_ms = -1;
	for (int i = 1; i < argc; i++) {
		long v;
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
	progress_init();
	struct job_fields job = { 0 };
	int rc = read_job(&job);
	if (rc == 0)
		rc = run(&opt, &job);
	free(job.id);
	free(job.prompt);
	return rc;
}
