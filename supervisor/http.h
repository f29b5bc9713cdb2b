/*
 * http: the read-only HTTP endpoint ([supervisor] http_listen) for scrapers
 * and probes: GET /metrics, /healthz and /stats, the same texts as the
 * control socket's metrics, health and stats. libmicrohttpd parses HTTP; it
 * runs without threads of its own, on the supervisor's libev loop.
 */
#ifndef DROVER_HTTP_H
#define DROVER_HTTP_H

#include <stddef.h>

struct supervisor;
struct http;

/* Bounds, like the control socket's: a scraper needs one connection, a probe another. */
#define HTTP_CONNECTIONS_MAX 64
#define HTTP_PER_IP_MAX 8
#define HTTP_TIMEOUT_S 10          /* an idle or silent connection is closed after this */
#define HTTP_MEMORY_MAX (32 * 1024) /* per connection: request line and headers must fit */

/*
 * Binds and listens on listen_text (listen_addr.h) and sets up the HTTP
 * daemon; called before the privilege drop, so a port below 1024 works.
 * NULL with err set on failure.
 */
struct http *http_open(struct supervisor *sup, const char *listen_text, char *err, size_t errlen);
/* Starts serving on sup->loop. */
void http_start(struct http *http);
/* Stops serving, closes every connection and the listening socket. NULL is fine. */
void http_close(struct http *http);
/* The bound address, e.g. "127.0.0.1:9464" (the kernel's port when 0 was asked for). */
const char *http_address(const struct http *http);

#endif
