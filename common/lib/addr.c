#include "addr.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define UNIX_PREFIX "unix:"
#define DNS_NAME_MAX 253
#define DNS_LABEL_MAX 63
#define FORMS "expected HOST:PORT, [V6]:PORT or unix:/path"

static int fail(char *err, size_t errlen, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (errlen > 0) {
		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	return -1;
}

static bool is_digits(const char *s)
{
	if (*s == '\0')
		return false;
	for (; *s != '\0'; s++) {
		if (*s < '0' || *s > '9')
			return false;
	}
	return true;
}

static bool is_label_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	    (c >= '0' && c <= '9') || c == '-';
}

bool addr_is_dns_name(const char *name)
{
	size_t len = strlen(name);
	size_t label = 0;

	if (len == 0 || len > DNS_NAME_MAX)
		return false;
	for (size_t i = 0; i <= len; i++) {
		char c = name[i];
		if (c == '.' || c == '\0') {
			/* A label: 1..63 characters, no '-' at either end. */
			if (label == 0 || label > DNS_LABEL_MAX ||
			    name[i - label] == '-' || name[i - 1] == '-')
				return false;
			label = 0;
		} else if (is_label_char(c)) {
			label++;
		} else {
			return false;
		}
	}
	return true;
}

/* Digits and dots only: meant as an IPv4 address, never a name. */
static bool looks_numeric(const char *host)
{
	return strspn(host, "0123456789.") == strlen(host);
}

static int parse_unix(const char *path, struct addr *out, char *err,
    size_t errlen)
{
	size_t len = strlen(path);

	if (len == 0)
		return fail(err, errlen,
		    "unix socket path is empty: expected unix:/path/to.sock");
	if (len >= sizeof out->path)
		return fail(err, errlen,
		    "unix socket path is too long (max %zu bytes)",
		    sizeof out->path - 1);
	out->kind = ADDR_UNIX;
	memcpy(out->path, path, len + 1);
	return 0;
}

static int parse_port(const char *text, unsigned *port, char *err,
    size_t errlen)
{
	if (*text == '\0')
		return fail(err, errlen, "missing port: " FORMS);
	if (!is_digits(text))
		return fail(err, errlen,
		    "port \"%s\" is not a number: expected 0..65535", text);
	if (strlen(text) > 5 || strtoul(text, NULL, 10) > 65535)
		return fail(err, errlen,
		    "port \"%s\" is out of range 0..65535", text);
	*port = (unsigned)strtoul(text, NULL, 10);
	return 0;
}

static void fill_v4(struct addr *out, const struct in_addr *ip)
{
	struct sockaddr_in *sin = (struct sockaddr_in *)&out->sa;

	sin->sin_family = AF_INET;
	sin->sin_port = htons((uint16_t)out->port);
	sin->sin_addr = *ip;
	out->numeric = true;
}

static void fill_v6(struct addr *out, const struct in6_addr *ip)
{
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&out->sa;

	sin6->sin6_family = AF_INET6;
	sin6->sin6_port = htons((uint16_t)out->port);
	sin6->sin6_addr = *ip;
	out->numeric = true;
}

/* "[V6]:PORT"; text points at the '['. */
static int parse_bracketed(const char *text, struct addr *out, char *err,
    size_t errlen)
{
	const char *close = strchr(text, ']');
	size_t hostlen;
	struct in6_addr ip;

	if (close == NULL)
		return fail(err, errlen,
		    "missing ']' after the IPv6 address: "
		    "expected [V6]:PORT such as [::1]:7443");
	hostlen = (size_t)(close - text - 1);
	if (hostlen >= sizeof out->host)
		return fail(err, errlen, "IPv6 address is too long");
	memcpy(out->host, text + 1, hostlen);
	out->host[hostlen] = '\0';
	if (inet_pton(AF_INET6, out->host, &ip) != 1)
		return fail(err, errlen,
		    "\"%s\" is not an IPv6 address: "
		    "expected [V6]:PORT such as [::1]:7443", out->host);
	if (close[1] != ':')
		return fail(err, errlen, "missing port: " FORMS);
	if (parse_port(close + 2, &out->port, err, errlen) != 0)
		return -1;
	fill_v6(out, &ip);
	return 0;
}

/* "HOST:PORT" where HOST is an IPv4 literal or a DNS name. */
static int parse_host_port(const char *text, struct addr *out, char *err,
    size_t errlen)
{
	const char *colon = strrchr(text, ':');
	size_t hostlen;
	struct in_addr ip;

	if (colon == NULL)
		return fail(err, errlen, "missing port: " FORMS);
	if (colon != strchr(text, ':'))
		return fail(err, errlen,
		    "IPv6 address must be in brackets: [::1]:7443");
	hostlen = (size_t)(colon - text);
	if (hostlen == 0)
		return fail(err, errlen,
		    "missing host: expected HOST:PORT such as 127.0.0.1:7443");
	if (hostlen > DNS_NAME_MAX)
		return fail(err, errlen, "host name is longer than %d bytes",
		    DNS_NAME_MAX);
	memcpy(out->host, text, hostlen);
	out->host[hostlen] = '\0';
	if (parse_port(colon + 1, &out->port, err, errlen) != 0)
		return -1;
	if (inet_pton(AF_INET, out->host, &ip) == 1) {
		fill_v4(out, &ip);
		return 0;
	}
	if (looks_numeric(out->host))
		return fail(err, errlen,
		    "\"%s\" is not an IPv4 address: "
		    "expected four numbers 0..255 such as 127.0.0.1", out->host);
	if (!addr_is_dns_name(out->host))
		return fail(err, errlen,
		    "\"%s\" is not a valid host name: expected an IP address "
		    "or a DNS name (letters, digits, '-' and '.')", out->host);
	return 0;
}

int addr_parse(const char *text, struct addr *out, char *err, size_t errlen)
{
	memset(out, 0, sizeof *out);
	out->kind = ADDR_TCP;
	if (strncmp(text, UNIX_PREFIX, strlen(UNIX_PREFIX)) == 0)
		return parse_unix(text + strlen(UNIX_PREFIX), out, err, errlen);
	if (*text == '\0')
		return fail(err, errlen, "address is empty: " FORMS);
	if (*text == '[')
		return parse_bracketed(text, out, err, errlen);
	return parse_host_port(text, out, err, errlen);
}

bool addr_sockaddr_is_loopback(const struct sockaddr *sa)
{
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;
		return (ntohl(sin->sin_addr.s_addr) >> 24) == 127;
	}
	if (sa->sa_family != AF_INET6)
		return false;
	const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)sa;
	if (IN6_IS_ADDR_LOOPBACK(&sin6->sin6_addr))
		return true;
	return IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr) &&
	    sin6->sin6_addr.s6_addr[12] == 127;
}

bool addr_is_loopback(const struct addr *a)
{
	if (a->kind == ADDR_UNIX)
		return true;
	if (!a->numeric)
		return strcasecmp(a->host, "localhost") == 0;
	return addr_sockaddr_is_loopback((const struct sockaddr *)&a->sa);
}

int addr_check_resolved(const char *host, const struct sockaddr *sa,
    char *err, size_t errlen)
{
	char ip[INET6_ADDRSTRLEN] = "?";

	if (addr_sockaddr_is_loopback(sa))
		return 0;
	if (sa->sa_family == AF_INET)
		inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr,
		    ip, sizeof ip);
	else if (sa->sa_family == AF_INET6)
		inet_ntop(AF_INET6,
		    &((const struct sockaddr_in6 *)sa)->sin6_addr, ip, sizeof ip);
	return fail(err, errlen, "%s resolved to %s, which is not loopback "
	    "(allow_remote = no)", host, ip);
}

int addr_unix_path_free(const char *path, char *err, size_t errlen)
{
	struct stat st;
	if (lstat(path, &st) != 0)
		return 0;
	if (!S_ISSOCK(st.st_mode))
		return fail(err, errlen, "the path exists and is not a socket");
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return 0;
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	snprintf(sun.sun_path, sizeof sun.sun_path, "%s", path);
	int rc = connect(fd, (struct sockaddr *)&sun, sizeof sun);
	close(fd);
	if (rc == 0)
		return fail(err, errlen, "another process is listening there");
	unlink(path);
	return 0;
}

void addr_format(const struct addr *a, char *buf, size_t len)
{
	if (a->kind == ADDR_UNIX)
		snprintf(buf, len, UNIX_PREFIX "%s", a->path);
	else if (strchr(a->host, ':') != NULL)
		snprintf(buf, len, "[%s]:%u", a->host, a->port);
	else
		snprintf(buf, len, "%s:%u", a->host, a->port);
}

void addr_format_sockaddr(const struct sockaddr *sa, char *buf, size_t len)
{
	char ip[INET6_ADDRSTRLEN];

	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;
		inet_ntop(AF_INET, &sin->sin_addr, ip, sizeof ip);
		snprintf(buf, len, "%s:%u", ip, ntohs(sin->sin_port));
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *sin6 =
		    (const struct sockaddr_in6 *)sa;
		inet_ntop(AF_INET6, &sin6->sin6_addr, ip, sizeof ip);
		snprintf(buf, len, "[%s]:%u", ip, ntohs(sin6->sin6_port));
	} else if (sa->sa_family == AF_UNIX) {
		const struct sockaddr_un *un = (const struct sockaddr_un *)sa;
		snprintf(buf, len, UNIX_PREFIX "%.*s", (int)sizeof un->sun_path,
		    un->sun_path);
	} else {
		snprintf(buf, len, "(address family %d)", sa->sa_family);
	}
}
