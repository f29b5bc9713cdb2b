/*
 * http: GET /metrics, /healthz and /stats over HTTP (see http.h).
 *
 * libmicrohttpd does the HTTP (request parsing, keep-alive, HEAD, limits):
 * a small, well-kept library from Debian rather than a parser of our own on
 * a port that may face a network. It runs in its epoll mode without any
 * thread: its epoll descriptor is one ev_io on the supervisor's loop and its
 * next deadline one ev_timer, and both call MHD_run, which never blocks. So
 * a silent or slow client costs one connection slot until the connection
 * timeout and can never hold up the loop, the control socket or the pool.
 *
 * The listening socket is ours (bound before the privilege drop) and handed
 * to the daemon; everything served is read-only and secret-free (stats.c).
 *
 * The library is loaded (dlopen) when the endpoint is configured, not linked:
 * its constructor initialises GnuTLS, which maps p11-kit, nettle, gmp and
 * more, about 2 MiB of RSS in the supervisor and a few hundred KiB in every
 * worker that a pool without the endpoint should not pay. systemd loads its
 * optional libraries the same way.
 */
#include "supervisor/http.h"
#include "shared/listen_addr.h"
#include "shared/log.h"
#include "supervisor/stats.h"
#include "supervisor/supervisor.h"
#include "shared/util.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define HTTP_BACKLOG 64
#define TEXT_PLAIN "text/plain; charset=utf-8"
#define PROMETHEUS_TEXT "text/plain; version=0.0.4; charset=utf-8"
#define JSON "application/json"

struct http {
	struct supervisor *sup;
	struct MHD_Daemon *daemon;
	int fd;          /* the listening socket, until the daemon is stopped */
	ev_io io;        /* the daemon's epoll descriptor */
	ev_timer timer;  /* the daemon's next deadline (connection timeouts) */
	char address[64];
};

#ifndef HTTP_LIBRARY
#define HTTP_LIBRARY "libmicrohttpd.so.12" /* the Makefile passes the soname of the library built against */
#endif

/* The functions used, resolved once from the loaded library (typed by its header). */
static struct {
	void *handle;
	__typeof__(MHD_create_response_from_buffer) *create_response_from_buffer;
	__typeof__(MHD_add_response_header) *add_response_header;
	__typeof__(MHD_queue_response) *queue_response;
	__typeof__(MHD_destroy_response) *destroy_response;
	__typeof__(MHD_get_timeout) *get_timeout;
	__typeof__(MHD_run) *run;
	__typeof__(MHD_start_daemon) *start_daemon;
	__typeof__(MHD_get_daemon_info) *get_daemon_info;
	__typeof__(MHD_stop_daemon) *stop_daemon;
	__typeof__(MHD_quiesce_daemon) *quiesce_daemon;
} mhd;

/* Loads libmicrohttpd on first use; -1 with err set when it is missing or lacks a function. */
static int load_library(char *err, size_t errlen)
{
	if (mhd.handle != NULL)
		return 0;
	void *handle = dlopen(HTTP_LIBRARY, RTLD_NOW | RTLD_LOCAL);
	if (handle == NULL) {
		snprintf(err, errlen, "cannot load %s (Debian package libmicrohttpd12): %s", HTTP_LIBRARY, dlerror());
		return -1;
	}
#define RESOLVE(name)                                                                        \
	if ((mhd.name = (__typeof__(mhd.name))dlsym(handle, "MHD_" #name)) == NULL) {        \
		snprintf(err, errlen, "%s has no MHD_%s: %s", HTTP_LIBRARY, #name, dlerror()); \
		dlclose(handle);                                                                 \
		return -1;                                                                       \
	}
	RESOLVE(create_response_from_buffer)
	RESOLVE(add_response_header)
	RESOLVE(queue_response)
	RESOLVE(destroy_response)
	RESOLVE(get_timeout)
	RESOLVE(run)
	RESOLVE(start_daemon)
	RESOLVE(get_daemon_info)
	RESOLVE(stop_daemon)
	RESOLVE(quiesce_daemon)
#undef RESOLVE
	mhd.handle = handle;
	return 0;
}

/* ---- the listening socket -------------------------------------------------- */

static int bind_listener(const struct listen_addr *addr, char *err, size_t errlen)
{
	int fd = socket(addr->family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		snprintf(err, errlen, "socket: %s", strerror(errno));
		return -1;
	}
	int on = 1;
	/* A restart must not wait out TIME_WAIT; a v6 address means v6 only, as written. */
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on)) < 0 ||
	    (addr->family == AF_INET6 && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof(on)) < 0)) {
		snprintf(err, errlen, "setsockopt: %s", strerror(errno));
		close(fd);
		return -1;
	}
	if (bind(fd, (const struct sockaddr *)&addr->addr, addr->len) < 0 || listen(fd, HTTP_BACKLOG) < 0) {
		snprintf(err, errlen, "%s", strerror(errno));
		close(fd);
		return -1;
	}
	return fd;
}

static void remember_address(struct http *http)
{
	struct sockaddr_storage bound;
	socklen_t len = sizeof(bound);
	if (getsockname(http->fd, (struct sockaddr *)&bound, &len) < 0)
		snprintf(http->address, sizeof(http->address), "?");
	else
		listen_addr_format((const struct sockaddr *)&bound, http->address, sizeof(http->address));
}

/* ---- answers --------------------------------------------------------------- */

/* Takes ownership of a malloc'd body (free_body) or uses a static one. */
static enum MHD_Result respond(struct MHD_Connection *conn, unsigned status, const char *type, char *body,
			       bool free_body)
{
	struct MHD_Response *response = mhd.create_response_from_buffer(
		strlen(body), body, free_body ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
	if (response == NULL) {
		if (free_body)
			free(body);
		return MHD_NO; /* out of memory: MHD closes the connection */
	}
	enum MHD_Result rc = MHD_YES;
	if (mhd.add_response_header(response, MHD_HTTP_HEADER_CONTENT_TYPE, type) != MHD_YES ||
	    mhd.add_response_header(response, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store") != MHD_YES ||
	    (status == MHD_HTTP_METHOD_NOT_ALLOWED &&
	     mhd.add_response_header(response, MHD_HTTP_HEADER_ALLOW, "GET, HEAD") != MHD_YES))
		rc = MHD_NO;
	if (rc == MHD_YES)
		rc = mhd.queue_response(conn, status, response);
	mhd.destroy_response(response);
	return rc;
}

/* stats.c's texts are malloc'd, NULL when memory ran out. */
static enum MHD_Result respond_text(struct MHD_Connection *conn, const char *type, char *text)
{
	static char oom[] = "out of memory\n";
	if (text == NULL)
		return respond(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, TEXT_PLAIN, oom, false);
	return respond(conn, MHD_HTTP_OK, type, text, true);
}

/* 200 "ok" when the pool can take and finish jobs, else 503 with the reason (the socket's health). */
static enum MHD_Result respond_health(struct http *http, struct MHD_Connection *conn)
{
	static char ok[] = "ok\n";
	char why[512];
	if (stats_health(http->sup, true, why, sizeof(why)))
		return respond(conn, MHD_HTTP_OK, TEXT_PLAIN, ok, false);
	char *body = NULL;
	if (asprintf(&body, "%s\n", why) < 0)
		return MHD_NO;
	return respond(conn, MHD_HTTP_SERVICE_UNAVAILABLE, TEXT_PLAIN, body, true);
}

static enum MHD_Result on_request(void *arg, struct MHD_Connection *conn, const char *url, const char *method,
				  const char *version, const char *upload, size_t *upload_size, void **state)
{
	static char not_allowed[] = "method not allowed (GET or HEAD)\n";
	static char not_found[] = "not found (try /metrics, /healthz, /stats)\n";
	struct http *http = arg;
	/* Answered at the headers: a body, never expected, is not read (MHD closes after the answer). */
	if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
		return respond(conn, MHD_HTTP_METHOD_NOT_ALLOWED, TEXT_PLAIN, not_allowed, false);
	if (strcmp(url, "/metrics") == 0)
		return respond_text(conn, PROMETHEUS_TEXT, stats_metrics(http->sup));
	if (strcmp(url, "/stats") == 0)
		return respond_text(conn, JSON, stats_json(http->sup));
	if (strcmp(url, "/healthz") == 0)
		return respond_health(http, conn);
	return respond(conn, MHD_HTTP_NOT_FOUND, TEXT_PLAIN, not_found, false);
}

/* MHD's own complaints (a malformed request, a refused connection): debug, they are the clients' doing. */
static void on_mhd_log(void *arg, const char *fmt, va_list ap)
{
	char line[256];
	vsnprintf(line, sizeof(line), fmt, ap);
	line[strcspn(line, "\n")] = '\0';
	log_debug("http: %s", line);
}

/* ---- the loop ---------------------------------------------------------------- */

/* After every MHD_run: wake again at the daemon's next deadline (0: it has work left now). */
static void rearm(struct http *http)
{
	MHD_UNSIGNED_LONG_LONG ms = 0;
	ev_timer_stop(http->sup->loop, &http->timer);
	if (mhd.get_timeout(http->daemon, &ms) != MHD_YES)
		return;
	ev_timer_set(&http->timer, (double)ms / 1000.0, 0);
	ev_timer_start(http->sup->loop, &http->timer);
}

static void run_daemon(struct http *http)
{
	if (mhd.run(http->daemon) != MHD_YES)
		log_debug("http: MHD_run reported an error");
	rearm(http);
}

static void on_io(struct ev_loop *loop, ev_io *w, int revents)
{
	run_daemon(w->data);
}

static void on_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
	run_daemon(w->data);
}

/* ---- lifecycle --------------------------------------------------------------- */

static struct MHD_Daemon *start_daemon(struct http *http, int family)
{
	unsigned flags = MHD_USE_EPOLL | MHD_USE_ERROR_LOG | (family == AF_INET6 ? MHD_USE_IPv6 : 0);
	return mhd.start_daemon(flags, 0, NULL, NULL, on_request, http,
				MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, http,
				MHD_OPTION_LISTEN_SOCKET, http->fd,
				MHD_OPTION_CONNECTION_LIMIT, (unsigned)HTTP_CONNECTIONS_MAX,
				MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)HTTP_PER_IP_MAX,
				MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)HTTP_TIMEOUT_S,
				MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)HTTP_MEMORY_MAX,
				MHD_OPTION_END);
}

/* The daemon on a listening socket we own (http->fd); NULL with err set on failure (fd closed). */
static struct http *http_serve_fd(struct supervisor *sup, int fd, int family, char *err, size_t errlen)
{
	if (load_library(err, errlen) < 0) {
		close(fd);
		return NULL;
	}
	struct http *http = calloc(1, sizeof(*http));
	if (http == NULL) {
		snprintf(err, errlen, "out of memory");
		close(fd);
		return NULL;
	}
	http->sup = sup;
	http->fd = fd;
	remember_address(http);
	http->daemon = start_daemon(http, family);
	const union MHD_DaemonInfo *info =
		http->daemon != NULL ? mhd.get_daemon_info(http->daemon, MHD_DAEMON_INFO_EPOLL_FD) : NULL;
	if (info == NULL) {
		snprintf(err, errlen, "cannot start the HTTP daemon (libmicrohttpd)");
		if (http->daemon != NULL)
			mhd.stop_daemon(http->daemon);
		close(http->fd);
		free(http);
		return NULL;
	}
	ev_io_init(&http->io, on_io, info->epoll_fd, EV_READ);
	http->io.data = http;
	ev_init(&http->timer, on_timer);
	http->timer.data = http;
	return http;
}

struct http *http_open(struct supervisor *sup, const char *listen_text, char *err, size_t errlen)
{
	struct listen_addr addr;
	char why[128];
	if (listen_addr_parse(listen_text, &addr, why, sizeof(why)) < 0) {
		snprintf(err, errlen, "%s", why);
		return NULL;
	}
	int fd = bind_listener(&addr, err, errlen);
	return fd < 0 ? NULL : http_serve_fd(sup, fd, addr.family, err, errlen);
}

struct http *http_adopt(struct supervisor *sup, int fd, char *err, size_t errlen)
{
	struct sockaddr_storage ss = { 0 }; /* getsockname fills it; the analyzer cannot tell */
	socklen_t len = sizeof(ss);
	int flags = fcntl(fd, F_GETFL);
	if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0 || fd_set_cloexec(fd) < 0 || flags < 0 ||
	    fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
		snprintf(err, errlen, "the handed-over HTTP socket %d: %s", fd, strerror(errno));
		close(fd);
		return NULL;
	}
	return http_serve_fd(sup, fd, ss.ss_family, err, errlen);
}

int http_listen_fd(const struct http *http)
{
	return http != NULL ? http->fd : -1;
}

void http_start(struct http *http)
{
	if (http == NULL)
		return;
	ev_io_start(http->sup->loop, &http->io);
	rearm(http);
	log_info("http: serving /metrics, /healthz and /stats on %s", http->address);
}

void http_close(struct http *http)
{
	if (http == NULL)
		return;
	ev_io_stop(http->sup->loop, &http->io);
	ev_timer_stop(http->sup->loop, &http->timer);
	/* Quiesce first: it hands the listening socket back, which is ours to close. */
	MHD_socket fd = mhd.quiesce_daemon(http->daemon);
	mhd.stop_daemon(http->daemon);
	if (fd != MHD_INVALID_SOCKET)
		close(fd);
	free(http);
}

const char *http_address(const struct http *http)
{
	return http != NULL ? http->address : "";
}
