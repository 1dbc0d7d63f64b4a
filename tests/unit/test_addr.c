#include "test.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include "addr.h"

static char err[256];

/* Parse text expecting success; on failure the check shows the error. */
static struct addr parse_ok(const char *text)
{
	struct addr a;

	err[0] = '\0';
	CHECK_STR(addr_parse(text, &a, err, sizeof err) == 0 ? "ok" : err, "ok");
	return a;
}

/* Parse text expecting failure; returns the error text. */
static const char *parse_err(const char *text)
{
	struct addr a;

	err[0] = '\0';
	CHECK_INT(addr_parse(text, &a, err, sizeof err), -1);
	return err;
}

static const char *fmt(const struct addr *a)
{
	static char buf[ADDR_TEXT_MAX];

	addr_format(a, buf, sizeof buf);
	return buf;
}

static const char *fmt_sa(const struct addr *a)
{
	static char buf[ADDR_TEXT_MAX];

	addr_format_sockaddr((const struct sockaddr *)&a->sa, buf, sizeof buf);
	return buf;
}

TEST(addr_ipv4)
{
	struct addr a = parse_ok("127.0.0.1:7001");
	const struct sockaddr_in *sin = (const struct sockaddr_in *)&a.sa;

	CHECK_INT(a.kind, ADDR_TCP);
	CHECK_STR(a.host, "127.0.0.1");
	CHECK_INT(a.port, 7001);
	CHECK(a.numeric);
	CHECK_INT(sin->sin_family, AF_INET);
	CHECK_INT(ntohs(sin->sin_port), 7001);
	CHECK_INT(ntohl(sin->sin_addr.s_addr), 0x7f000001);
	CHECK_STR(fmt(&a), "127.0.0.1:7001");
	CHECK_STR(fmt_sa(&a), "127.0.0.1:7001");
}

TEST(addr_ipv6)
{
	struct addr a = parse_ok("[::1]:7443");
	const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&a.sa;

	CHECK_INT(a.kind, ADDR_TCP);
	CHECK_STR(a.host, "::1");
	CHECK_INT(a.port, 7443);
	CHECK(a.numeric);
	CHECK_INT(sin6->sin6_family, AF_INET6);
	CHECK_INT(ntohs(sin6->sin6_port), 7443);
	CHECK(IN6_IS_ADDR_LOOPBACK(&sin6->sin6_addr));
	CHECK_STR(fmt(&a), "[::1]:7443");
	CHECK_STR(fmt_sa(&a), "[::1]:7443");

	a = parse_ok("[2001:db8:0:0::7]:80");
	CHECK_STR(a.host, "2001:db8:0:0::7");
	CHECK_STR(fmt(&a), "[2001:db8:0:0::7]:80");
	CHECK_STR(fmt_sa(&a), "[2001:db8::7]:80");
}

TEST(addr_name)
{
	struct addr a = parse_ok("backend.internal:7443");

	CHECK_INT(a.kind, ADDR_TCP);
	CHECK_STR(a.host, "backend.internal");
	CHECK_INT(a.port, 7443);
	CHECK(!a.numeric);
	CHECK_INT(a.sa.ss_family, AF_UNSPEC);
	CHECK_STR(fmt(&a), "backend.internal:7443");

	a = parse_ok("localhost:0");
	CHECK_STR(a.host, "localhost");
	CHECK_INT(a.port, 0);
	a = parse_ok("a-1.B2.c:65535");
	CHECK_STR(a.host, "a-1.B2.c");
	CHECK_INT(a.port, 65535);
}

TEST(addr_unix)
{
	struct addr a = parse_ok("unix:/run/upseal/app.sock");

	CHECK_INT(a.kind, ADDR_UNIX);
	CHECK_STR(a.path, "/run/upseal/app.sock");
	CHECK_STR(fmt(&a), "unix:/run/upseal/app.sock");

	a = parse_ok("unix:rel/app.sock");
	CHECK_STR(a.path, "rel/app.sock");

	char text[8 + ADDR_PATH_MAX];
	snprintf(text, sizeof text, "unix:/%0*d", (int)ADDR_PATH_MAX - 2, 0);
	a = parse_ok(text);	/* 107 bytes and the NUL fit sun_path */
	CHECK_INT(strlen(a.path), ADDR_PATH_MAX - 1);
}

TEST(addr_errors)
{
	const char *forms = "expected HOST:PORT, [V6]:PORT or unix:/path";

	CHECK_STR(parse_err("127.0.0.1"), "missing port: expected HOST:PORT, "
	    "[V6]:PORT or unix:/path");
	CHECK_CONTAINS(parse_err("backend:"), "missing port");
	CHECK_CONTAINS(parse_err("[::1]"), "missing port");
	CHECK_CONTAINS(parse_err("[::1]7443"), "missing port");
	CHECK_CONTAINS(parse_err(""), forms);
	CHECK_STR(parse_err("host:99999"), "port \"99999\" is out of range 0..65535");
	CHECK_STR(parse_err("host:65536"), "port \"65536\" is out of range 0..65535");
	CHECK_CONTAINS(parse_err("host:1000000"), "out of range 0..65535");
	CHECK_CONTAINS(parse_err("host:80a"), "port \"80a\" is not a number");
	CHECK_CONTAINS(parse_err("host:-1"), "port \"-1\" is not a number");
	CHECK_CONTAINS(parse_err("host: 80"), "is not a number");
	CHECK_STR(parse_err("::1:7443"), "IPv6 address must be in brackets: [::1]:7443");
	CHECK_CONTAINS(parse_err("fe80::1"), "must be in brackets");
	CHECK_CONTAINS(parse_err("[::1:7443"), "missing ']'");
	CHECK_CONTAINS(parse_err("[1.2.3.4]:80"), "\"1.2.3.4\" is not an IPv6 address");
	CHECK_CONTAINS(parse_err("[]:80"), "is not an IPv6 address");
	CHECK_CONTAINS(parse_err(":80"), "missing host");
	CHECK_CONTAINS(parse_err("1.2.3:80"), "\"1.2.3\" is not an IPv4 address");
	CHECK_CONTAINS(parse_err("256.1.1.1:80"), "is not an IPv4 address");
	CHECK_CONTAINS(parse_err("bad_host:80"), "\"bad_host\" is not a valid host name");
	CHECK_CONTAINS(parse_err("a..b:80"), "is not a valid host name");
	CHECK_CONTAINS(parse_err("-a.b:80"), "is not a valid host name");
	CHECK_CONTAINS(parse_err("a.b-:80"), "is not a valid host name");
	CHECK_CONTAINS(parse_err("a b:80"), "is not a valid host name");
	CHECK_STR(parse_err("unix:"),
	    "unix socket path is empty: expected unix:/path/to.sock");

	char text[16 + ADDR_PATH_MAX];
	snprintf(text, sizeof text, "unix:/%0*d", (int)ADDR_PATH_MAX - 1, 0);
	CHECK_STR(parse_err(text), "unix socket path is too long (max 107 bytes)");

	char host[300];
	memset(host, 'a', 254);
	strcpy(host + 254, ":80");
	CHECK_CONTAINS(parse_err(host), "longer than 253 bytes");
}

TEST(addr_dns_name)
{
	char label[80], name[300];

	CHECK(addr_is_dns_name("backend"));
	CHECK(addr_is_dns_name("backend.internal"));
	CHECK(addr_is_dns_name("x-1.Y2.z"));
	CHECK(!addr_is_dns_name(""));
	CHECK(!addr_is_dns_name("a..b"));
	CHECK(!addr_is_dns_name(".a"));
	CHECK(!addr_is_dns_name("a."));
	CHECK(!addr_is_dns_name("-a"));
	CHECK(!addr_is_dns_name("a-"));
	CHECK(!addr_is_dns_name("a_b"));
	CHECK(!addr_is_dns_name("a:b"));
	memset(label, 'a', 63);
	label[63] = '\0';
	CHECK(addr_is_dns_name(label));
	strcat(label, "a");
	CHECK(!addr_is_dns_name(label));
	/* 3 labels of 63 and one of 61: 253 bytes in all. */
	snprintf(name, sizeof name, "%.63s.%.63s.%.63s.%.61s", label, label,
	    label, label);
	CHECK_INT(strlen(name), 253);
	CHECK(addr_is_dns_name(name));
	strcat(name, "b");
	CHECK(!addr_is_dns_name(name));
}

static bool loopback(const char *text)
{
	struct addr a = parse_ok(text);

	return addr_is_loopback(&a);
}

TEST(addr_loopback)
{
	CHECK(loopback("127.0.0.1:1"));
	CHECK(loopback("127.255.3.4:1"));
	CHECK(loopback("[::1]:1"));
	CHECK(loopback("[::ffff:127.0.0.1]:1"));
	CHECK(loopback("[::ffff:127.9.9.9]:1"));
	CHECK(loopback("localhost:1"));
	CHECK(loopback("LocalHost:1"));
	CHECK(loopback("unix:/run/x.sock"));
	CHECK(loopback("unix:x.sock"));

	CHECK(!loopback("0.0.0.0:1"));
	CHECK(!loopback("10.0.0.1:1"));
	CHECK(!loopback("128.0.0.1:1"));
	CHECK(!loopback("126.255.255.255:1"));
	CHECK(!loopback("[::]:1"));
	CHECK(!loopback("[::2]:1"));
	CHECK(!loopback("[::ffff:10.0.0.1]:1"));
	CHECK(!loopback("[::127.0.0.1]:1"));
	CHECK(!loopback("backend.internal:1"));
	CHECK(!loopback("localhost.example:1"));
	CHECK(!loopback("127-0-0-1.example:1"));
}

TEST(addr_format_other)
{
	struct sockaddr_un un = { .sun_family = AF_UNIX };
	struct sockaddr sa = { .sa_family = AF_APPLETALK };
	char buf[ADDR_TEXT_MAX];

	strcpy(un.sun_path, "/run/x.sock");
	addr_format_sockaddr((const struct sockaddr *)&un, buf, sizeof buf);
	CHECK_STR(buf, "unix:/run/x.sock");
	addr_format_sockaddr(&sa, buf, sizeof buf);
	CHECK_CONTAINS(buf, "family");

	struct addr a = parse_ok("backend.internal:7443");
	addr_format(&a, buf, 8);	/* cut, but NUL-terminated */
	CHECK_STR(buf, "backend");
}

/* What a name resolved to, as getaddrinfo hands it over. */
static int resolved(const char *ip, char *why, size_t len)
{
	struct sockaddr_storage ss = { 0 };
	struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;

	if (inet_pton(AF_INET, ip, &sin->sin_addr) == 1)
		sin->sin_family = AF_INET;
	else if (inet_pton(AF_INET6, ip, &sin6->sin6_addr) == 1)
		sin6->sin6_family = AF_INET6;
	why[0] = '\0';
	return addr_check_resolved("localhost", (struct sockaddr *)&ss, why, len);
}

TEST(addr_resolved_loopback)
{
	char why[128];

	CHECK_INT(resolved("127.0.0.1", why, sizeof why), 0);
	CHECK_INT(resolved("127.255.0.9", why, sizeof why), 0);
	CHECK_INT(resolved("::1", why, sizeof why), 0);
	CHECK_INT(resolved("::ffff:127.0.0.2", why, sizeof why), 0);
	CHECK_STR(why, "");
	CHECK_INT(resolved("10.1.2.3", why, sizeof why), -1);
	CHECK_STR(why, "localhost resolved to 10.1.2.3, which is not loopback "
	    "(allow_remote = no)");
	CHECK_INT(resolved("128.0.0.1", why, sizeof why), -1);
	CHECK_INT(resolved("0.0.0.0", why, sizeof why), -1);
	CHECK_INT(resolved("::", why, sizeof why), -1);
	CHECK_INT(resolved("::ffff:10.0.0.1", why, sizeof why), -1);
	CHECK_INT(resolved("fe80::1", why, sizeof why), -1);
	CHECK_STR(why, "localhost resolved to fe80::1, which is not loopback "
	    "(allow_remote = no)");
}
