/*
 * listen_addr: the text form of a TCP listening address, "HOST:PORT", as
 * [supervisor] http_listen takes it. HOST is a numeric IPv4 address
 * ("127.0.0.1", "0.0.0.0") or a bracketed IPv6 one ("[::1]", "[::]"); names
 * are refused, so the address never depends on a resolver at start or at a
 * config check. PORT is 0..65535 (0: the kernel picks a free port; stats
 * tells which). Parsing is pure, so config validation and the listener agree.
 */
#ifndef DROVER_LISTEN_ADDR_H
#define DROVER_LISTEN_ADDR_H

#include <stddef.h>
#include <sys/socket.h>

struct listen_addr {
	struct sockaddr_storage addr;
	socklen_t len;
	int family; /* AF_INET or AF_INET6 */
};

/* 0 and *out, or -1 with what is wrong in why (a phrase without the key's name). */
int listen_addr_parse(const char *text, struct listen_addr *out, char *why, size_t whylen);

/* "127.0.0.1:9464" or "[::1]:9464" for addr (e.g. from getsockname). */
void listen_addr_format(const struct sockaddr *addr, char *buf, size_t len);

#endif
