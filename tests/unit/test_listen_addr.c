/*
 * Unit tests of listen_addr: the HOST:PORT text of [supervisor] http_listen,
 * what it accepts (numeric IPv4, bracketed IPv6, port 0..65535) and the
 * phrase it gives for each thing it refuses.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <string.h>

#include "shared/listen_addr.h"

static void expect_v4(const char *text, const char *host, unsigned port)
{
	struct listen_addr a;
	char why[128] = "";
	cr_assert_eq(listen_addr_parse(text, &a, why, sizeof(why)), 0, "%s: %s", text, why);
	cr_assert_eq(a.family, AF_INET);
	cr_assert_eq(a.len, sizeof(struct sockaddr_in));
	const struct sockaddr_in *sin = (const struct sockaddr_in *)&a.addr;
	char shown[INET_ADDRSTRLEN];
	cr_assert_str_eq(inet_ntop(AF_INET, &sin->sin_addr, shown, sizeof(shown)), host);
	cr_assert_eq(ntohs(sin->sin_port), port);
}

static void expect_v6(const char *text, const char *host, unsigned port)
{
	struct listen_addr a;
	char why[128] = "";
	cr_assert_eq(listen_addr_parse(text, &a, why, sizeof(why)), 0, "%s: %s", text, why);
	cr_assert_eq(a.family, AF_INET6);
	cr_assert_eq(a.len, sizeof(struct sockaddr_in6));
	const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&a.addr;
	char shown[INET6_ADDRSTRLEN];
	cr_assert_str_eq(inet_ntop(AF_INET6, &sin6->sin6_addr, shown, sizeof(shown)), host);
	cr_assert_eq(ntohs(sin6->sin6_port), port);
}

static void expect_refused(const char *text, const char *why_expected)
{
	struct listen_addr a;
	char why[128] = "";
	cr_assert_eq(listen_addr_parse(text, &a, why, sizeof(why)), -1, "%s was accepted", text);
	cr_assert_str_eq(why, why_expected, "%s", text);
}

Test(listen_addr, ipv4)
{
	expect_v4("127.0.0.1:9464", "127.0.0.1", 9464);
	expect_v4("0.0.0.0:80", "0.0.0.0", 80);
	expect_v4("10.1.2.3:65535", "10.1.2.3", 65535);
	expect_v4("127.0.0.1:0", "127.0.0.1", 0);
}

Test(listen_addr, ipv6)
{
	expect_v6("[::1]:9464", "::1", 9464);
	expect_v6("[::]:9464", "::", 9464);
	expect_v6("[fe80::1:2]:1", "fe80::1:2", 1);
}

Test(listen_addr, refusals)
{
	expect_refused("", "empty");
	expect_refused("127.0.0.1", "not HOST:PORT");
	expect_refused(":9464", "not HOST:PORT");
	expect_refused("[::1]9464", "not HOST:PORT");
	expect_refused("[::1", "not HOST:PORT");
	expect_refused("127.0.0.1:", "the port is not a number in 0..65535");
	expect_refused("127.0.0.1:65536", "the port is not a number in 0..65535");
	expect_refused("127.0.0.1:-1", "the port is not a number in 0..65535");
	expect_refused("127.0.0.1:94x", "the port is not a number in 0..65535");
	expect_refused("127.0.0.1:123456", "the port is not a number in 0..65535");
	expect_refused("localhost:9464", "not a numeric IPv4 address (host names are not resolved)");
	expect_refused("256.0.0.1:9464", "not a numeric IPv4 address (host names are not resolved)");
	expect_refused("::1:9464", "an IPv6 address needs brackets, as in [::1]:9464");
	expect_refused("[127.0.0.1]:9464", "not a numeric IPv6 address in brackets");
	expect_refused("[localhost]:9464", "not a numeric IPv6 address in brackets");
}

Test(listen_addr, format_round_trip)
{
	static const char *const texts[] = { "127.0.0.1:9464", "[::1]:9464", "0.0.0.0:0", "[::]:65535" };
	for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
		struct listen_addr a;
		char why[128], shown[64];
		cr_assert_eq(listen_addr_parse(texts[i], &a, why, sizeof(why)), 0);
		listen_addr_format((const struct sockaddr *)&a.addr, shown, sizeof(shown));
		cr_assert_str_eq(shown, texts[i]);
	}
}
