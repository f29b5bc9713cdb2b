/*
 * listen_addr: parses and prints "HOST:PORT" for the HTTP listener (see the
 * header). inet_pton does the address; this file only splits the text and
 * says precisely what is wrong, for the config's FILE:LINE errors.
 */
#include "shared/listen_addr.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HOST_TEXT_MAX 64 /* longer than any numeric IPv6 address */

static int fail(char *why, size_t whylen, const char *text)
{
	snprintf(why, whylen, "%s", text);
	return -1;
}

/* PORT: 1..5 decimal digits, 0..65535. */
static int parse_port(const char *text, unsigned short *port)
{
	size_t len = strlen(text);
	if (len == 0 || len > 5 || strspn(text, "0123456789") != len)
		return -1;
	long value = strtol(text, NULL, 10);
	if (value > 65535)
		return -1;
	*port = (unsigned short)value;
	return 0;
}

/* Splits "[v6]:port" or "v4:port" into host and port text; 0 or -1. */
static int split_host_port(const char *text, char *host, size_t hostlen, const char **port, int *family)
{
	const char *end;
	if (text[0] == '[') {
		end = strchr(text, ']');
		if (end == NULL || end[1] != ':')
			return -1;
		text++;
		*family = AF_INET6;
		*port = end + 2;
	} else {
		end = strrchr(text, ':');
		if (end == NULL)
			return -1;
		*family = AF_INET;
		*port = end + 1;
	}
	size_t len = (size_t)(end - text);
	if (len == 0 || len >= hostlen)
		return -1;
	memcpy(host, text, len);
	host[len] = '\0';
	return 0;
}

int listen_addr_parse(const char *text, struct listen_addr *out, char *why, size_t whylen)
{
	char host[HOST_TEXT_MAX];
	const char *port_text;
	unsigned short port;

	memset(out, 0, sizeof(*out));
	if (text == NULL || text[0] == '\0')
		return fail(why, whylen, "empty");
	if (split_host_port(text, host, sizeof(host), &port_text, &out->family) < 0)
		return fail(why, whylen, "not HOST:PORT");
	if (parse_port(port_text, &port) < 0)
		return fail(why, whylen, "the port is not a number in 0..65535");
	if (out->family == AF_INET6) {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&out->addr;
		if (inet_pton(AF_INET6, host, &sin6->sin6_addr) != 1)
			return fail(why, whylen, "not a numeric IPv6 address in brackets");
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons(port);
		out->len = sizeof(*sin6);
		return 0;
	}
	if (strchr(host, ':') != NULL)
		return fail(why, whylen, "an IPv6 address needs brackets, as in [::1]:9464");
	struct sockaddr_in *sin = (struct sockaddr_in *)&out->addr;
	if (inet_pton(AF_INET, host, &sin->sin_addr) != 1)
		return fail(why, whylen, "not a numeric IPv4 address (host names are not resolved)");
	sin->sin_family = AF_INET;
	sin->sin_port = htons(port);
	out->len = sizeof(*sin);
	return 0;
}

void listen_addr_format(const struct sockaddr *addr, char *buf, size_t len)
{
	char host[INET6_ADDRSTRLEN] = "?";
	if (addr->sa_family == AF_INET6) {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)(const void *)addr;
		inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof(host));
		snprintf(buf, len, "[%s]:%u", host, (unsigned)ntohs(sin6->sin6_port));
	} else if (addr->sa_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)(const void *)addr;
		inet_ntop(AF_INET, &sin->sin_addr, host, sizeof(host));
		snprintf(buf, len, "%s:%u", host, (unsigned)ntohs(sin->sin_port));
	} else {
		snprintf(buf, len, "?");
	}
}
