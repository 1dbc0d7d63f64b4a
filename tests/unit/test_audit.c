#include "test.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "audit.h"

#define HEADER4 "  sl  local_address rem_address   st tx_queue rx_queue tr " \
	"tm->when retrnsmt   uid  timeout inode\n"
#define HEADER6 "  sl  local_address                         remote_address" \
	"                        st tx_queue rx_queue tr tm->when retrnsmt   " \
	"uid  timeout inode\n"

/* A real /proc/net/tcp of a little-endian host: 8080 = 0x1F90. */
static const char sample_tcp[] =
    HEADER4
    "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 "
    "00000000  1000        0 12345 1 0000000000000000 100 0 0 10 0\n"
    "   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 "
    "00000000     0        0 222 1 0000000000000000 100 0 0 10 0\n"
    "   2: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 "
    "00000000  1000        0 333 1 0000000000000000 20 4 30 10 -1\n"
    "   3: 0100007F:C350 0100007F:1F90 01 00000000:00000000 00:00000000 "
    "00000000  1000        0 444 1 0000000000000000 20 4 30 10 -1\n";

/* The matching /proc/net/tcp6: [::]:8080 and [::1]:22. */
static const char sample_tcp6[] =
    HEADER6
    "   0: 00000000000000000000000000000000:1F90 "
    "00000000000000000000000000000000:0000 0A 00000000:00000000 "
    "00:00000000 00000000  1000        0 555 1 0000000000000000 100 0 0 10 0\n"
    "   1: 00000000000000000000000001000000:0016 "
    "00000000000000000000000000000000:0000 0A 00000000:00000000 "
    "00:00000000 00000000     0        0 666 1 0000000000000000 100 0 0 10 0\n";

static bool little_endian(void)
{
	uint32_t one = 1;
	return *(unsigned char *)&one == 1;
}

/* The kernel's hex for an IP literal: each 32-bit word in host order. */
static void kernel_hex(const char *ip, char *out)
{
	unsigned char raw[16];
	int family = strchr(ip, ':') ? AF_INET6 : AF_INET;
	size_t words = family == AF_INET ? 1 : 4;

	CHECK_INT(inet_pton(family, ip, raw), 1);
	out[0] = '\0';
	for (size_t i = 0; i < words; i++) {
		uint32_t w;
		memcpy(&w, raw + i * 4, 4);
		sprintf(out + i * 8, "%08X", w);
	}
}

/* One socket line as the kernel writes it. */
static void entry(char *buf, size_t len, int sl, const char *ip,
    unsigned port, unsigned state, unsigned long inode)
{
	char hex[33];
	bool v6 = strchr(ip, ':') != NULL;

	kernel_hex(ip, hex);
	snprintf(buf, len, "%4d: %s:%04X %s:0000 %02X 00000000:00000000 "
	    "00:00000000 00000000  1000        0 %lu 1 0000000000000000 100 "
	    "0 0 10 0\n", sl, hex, port,
	    v6 ? "00000000000000000000000000000000" : "00000000", state,
	    inode);
}

/* Parse text (a whole file) of family into r; returns audit_parse's. */
static int feed(struct audit_result *r, int family, const char *text)
{
	FILE *f = fmemopen((void *)text, strlen(text), "r");
	CHECK(f != NULL);
	if (f == NULL)
		return -1;
	int rc = audit_parse(f, family, r);
	fclose(f);
	return rc;
}

/* Parse one file made of the header and these listeners on port. */
static void feed_listeners(struct audit_result *r, const char *const *ips,
    size_t n, unsigned port)
{
	char text[8192];
	size_t used = 0;
	int family = strchr(ips[0], ':') ? AF_INET6 : AF_INET;

	used += (size_t)snprintf(text, sizeof text, "%s",
	    family == AF_INET ? HEADER4 : HEADER6);
	for (size_t i = 0; i < n; i++) {
		entry(text + used, sizeof text - used, (int)i, ips[i], port,
		    0x0A, 1000 + i);
		used += strlen(text + used);
	}
	CHECK_INT(feed(r, family, text), 0);
}

static struct addr backend(const char *text)
{
	struct addr a;
	char err[256] = "";

	CHECK_STR(addr_parse(text, &a, err, sizeof err) == 0 ? "ok" : err,
	    "ok");
	return a;
}

static char *report(const char *tunnel, const struct addr *b,
    const struct audit_result *r)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	CHECK(f != NULL);
	if (f == NULL)
		return strdup("");
	audit_report(f, tunnel, b, r);
	fclose(f);
	return buf;
}

TEST(audit_sample_files_wildcard_v6_exposes)
{
	struct audit_result r;
	struct addr b = backend("127.0.0.1:8080");

	if (!little_endian())
		return;		/* the literal samples are little-endian */
	audit_result_init(&r, 8080);
	CHECK_INT(feed(&r, AF_INET, sample_tcp), 0);
	CHECK_INT(r.nsockets, 1);	/* not :22, not the established ones */
	CHECK_INT(feed(&r, AF_INET6, sample_tcp6), 0);
	audit_decide(&b, &r);
	CHECK_INT(r.nsockets, 2);
	CHECK_INT(r.nlisteners, 2);
	CHECK_INT(r.nexposed, 1);
	CHECK_STR(r.listeners[0].ip, "127.0.0.1");
	CHECK(r.listeners[0].loopback);
	CHECK(!r.listeners[0].wildcard);
	CHECK_INT(r.listeners[0].inode, 12345);
	CHECK_INT(r.listeners[0].uid, 1000);
	CHECK_STR(r.listeners[1].ip, "::");
	CHECK_INT(r.listeners[1].family, AF_INET6);
	CHECK(!r.listeners[1].loopback);
	CHECK(r.listeners[1].wildcard);
	CHECK_INT(r.listeners[1].inode, 555);
	CHECK_INT(r.verdict, AUDIT_EXPOSED);
	CHECK(r.exposed);
	char list[128];
	audit_exposed_list(&r, list, sizeof list);
	CHECK_STR(list, "[::]:8080");
}

TEST(audit_sample_port_22_loopback_v6_only_in_tcp6)
{
	struct audit_result r;
	struct addr b = backend("[::1]:22");

	if (!little_endian())
		return;
	audit_result_init(&r, 22);
	CHECK_INT(feed(&r, AF_INET6, sample_tcp6), 0);
	audit_decide(&b, &r);
	CHECK_INT(r.nlisteners, 1);
	CHECK_STR(r.listeners[0].ip, "::1");
	CHECK_INT(r.verdict, AUDIT_LOOPBACK_ONLY);
	/* tcp has 0.0.0.0:22 too: that one exposes it. */
	CHECK_INT(feed(&r, AF_INET, sample_tcp), 0);
	audit_decide(&b, &r);
	CHECK_INT(r.verdict, AUDIT_EXPOSED);
	CHECK_STR(r.listeners[1].ip, "0.0.0.0");
	CHECK(r.listeners[1].wildcard);
}

TEST(audit_loopback_forms_are_loopback)
{
	static const char *const v4[] = { "127.0.0.1", "127.1.2.3" };
	static const char *const v6[] = { "::1", "::ffff:127.0.0.1" };
	struct audit_result r;
	struct addr b = backend("127.0.0.1:9000");

	audit_result_init(&r, 9000);
	feed_listeners(&r, v4, 2, 9000);
	feed_listeners(&r, v6, 2, 9000);
	audit_decide(&b, &r);
	CHECK_INT(r.nlisteners, 4);
	CHECK_INT(r.nexposed, 0);
	CHECK_STR(r.listeners[1].ip, "127.1.2.3");
	CHECK_STR(r.listeners[3].ip, "::ffff:127.0.0.1");
	for (size_t i = 0; i < r.nlisteners; i++)
		CHECK(r.listeners[i].loopback);
	CHECK_INT(r.verdict, AUDIT_LOOPBACK_ONLY);
	CHECK(!r.exposed);
	char list[64] = "x";
	audit_exposed_list(&r, list, sizeof list);
	CHECK_STR(list, "");
}

TEST(audit_network_forms_are_exposed)
{
	static const char *const v4[] = { "0.0.0.0", "10.1.2.3",
	    "192.168.0.7" };
	static const char *const v6[] = { "::", "fd00::5", "::ffff:10.0.0.9",
	    "fe80::1" };
	struct audit_result r;

	audit_result_init(&r, 8080);
	feed_listeners(&r, v4, 3, 8080);
	feed_listeners(&r, v6, 4, 8080);
	audit_decide(NULL, &r);
	CHECK_INT(r.nlisteners, 7);
	CHECK_INT(r.nexposed, 7);
	CHECK_INT(r.verdict, AUDIT_EXPOSED);
	CHECK(r.listeners[0].wildcard);
	CHECK(!r.listeners[1].wildcard);
	CHECK(r.listeners[3].wildcard);
	CHECK_STR(r.listeners[5].ip, "::ffff:10.0.0.9");
	for (size_t i = 0; i < r.nlisteners; i++)
		CHECK(!r.listeners[i].loopback);
	char list[512];
	audit_exposed_list(&r, list, sizeof list);
	CHECK_STR(list, "0.0.0.0:8080,10.1.2.3:8080,192.168.0.7:8080,"
	    "[::]:8080,[fd00::5]:8080,[::ffff:10.0.0.9]:8080,[fe80::1]:8080");
	/* Truncation drops whole entries. */
	char small[24];
	audit_exposed_list(&r, small, sizeof small);
	CHECK_STR(small, "0.0.0.0:8080");
}

TEST(audit_ignores_other_states_ports_and_junk)
{
	char text[4096];
	size_t used = 0;
	struct audit_result r;

	used += (size_t)snprintf(text, sizeof text, HEADER4);
	/* ESTABLISHED (01) and TIME_WAIT (06) on the port, on 0.0.0.0 even */
	entry(text + used, sizeof text - used, 0, "0.0.0.0", 8080, 0x01, 1);
	used += strlen(text + used);
	entry(text + used, sizeof text - used, 1, "10.0.0.1", 8080, 0x06, 2);
	used += strlen(text + used);
	/* LISTEN on 0.0.0.0 but another port */
	entry(text + used, sizeof text - used, 2, "0.0.0.0", 8081, 0x0A, 3);
	used += strlen(text + used);
	snprintf(text + used, sizeof text - used,
	    "garbage line\n\n   9: ZZZZ:1F90\n"
	    "   7: 0100007F0:1F90 00000000:0000 0A 0:0 0:0 0 0 0 7\n");
	audit_result_init(&r, 8080);
	CHECK_INT(feed(&r, AF_INET, text), 0);
	audit_decide(NULL, &r);
	CHECK_INT(r.nsockets, 0);
	CHECK_INT(r.nlisteners, 0);
	CHECK_INT(r.verdict, AUDIT_NOT_LISTENING);
	CHECK(!r.exposed);
	/* An empty file and a header-only file are fine too. */
	CHECK_INT(feed(&r, AF_INET6, ""), 0);
	CHECK_INT(feed(&r, AF_INET6, HEADER6), 0);
	CHECK_INT(r.nsockets, 0);
}

TEST(audit_reuseport_group_is_one_entry)
{
	static const char *const v4[] = { "0.0.0.0", "0.0.0.0", "0.0.0.0",
	    "127.0.0.1", "127.0.0.1" };
	struct audit_result r;

	audit_result_init(&r, 443);
	feed_listeners(&r, v4, 5, 443);
	audit_decide(NULL, &r);
	CHECK_INT(r.nsockets, 5);
	CHECK_INT(r.nexposed, 3);
	CHECK_INT(r.nlisteners, 2);
	CHECK_INT(r.listeners[0].inode, 1000);	/* the first one is kept */
	CHECK_INT(r.verdict, AUDIT_EXPOSED);
}

TEST(audit_many_listeners_are_counted_beyond_the_table)
{
	char ips[40][24];
	const char *p[40];
	struct audit_result r;

	for (int i = 0; i < 40; i++) {
		snprintf(ips[i], sizeof ips[i], "127.0.0.%d", i + 1);
		p[i] = ips[i];
	}
	snprintf(ips[39], sizeof ips[39], "10.0.0.1");	/* the last only */
	audit_result_init(&r, 80);
	feed_listeners(&r, p, 40, 80);
	audit_decide(NULL, &r);
	CHECK_INT(r.nlisteners, AUDIT_LISTENERS_MAX);
	CHECK_INT(r.nsockets, 40);
	CHECK_INT(r.nexposed, 1);
	/* Exposed even though the exposed one did not fit in the table. */
	CHECK_INT(r.verdict, AUDIT_EXPOSED);
	char *text = report("many", &(struct addr){ .kind = ADDR_TCP,
	    .host = "127.0.0.1", .port = 80 }, &r);
	CHECK_CONTAINS(text, "EXPOSED");
	CHECK_CONTAINS(text, "40 listening sockets");
	free(text);
}

TEST(audit_remote_backend)
{
	static const char *const here[] = { "10.9.8.7" };
	static const char *const wild[] = { "0.0.0.0" };
	struct addr b = backend("10.9.8.7:8080");
	struct audit_result r;

	/* Nothing listens here: the backend is another host. */
	audit_result_init(&r, 8080);
	audit_decide(&b, &r);
	CHECK_INT(r.verdict, AUDIT_REMOTE);
	CHECK(!r.exposed);
	/* A listener on exactly its address: it is this host, exposed. */
	audit_result_init(&r, 8080);
	feed_listeners(&r, here, 1, 8080);
	audit_decide(&b, &r);
	CHECK_INT(r.verdict, AUDIT_EXPOSED);
	/* A wildcard listener counts only if the IP is one of ours. */
	audit_result_init(&r, 8080);
	feed_listeners(&r, wild, 1, 8080);
	audit_decide(&b, &r);
	CHECK_INT(r.verdict, AUDIT_REMOTE);
	char *text = report("far", &b, &r);
	CHECK_CONTAINS(text, "not on this host");
	CHECK_CONTAINS(text, "0.0.0.0:8080");
	free(text);
	r.backend_is_local = true;
	audit_decide(&b, &r);
	CHECK_INT(r.verdict, AUDIT_EXPOSED);
	/* A v4 backend matches a v4-mapped v6 listener. */
	static const char *const mapped[] = { "::ffff:10.9.8.7" };
	audit_result_init(&r, 8080);
	feed_listeners(&r, mapped, 1, 8080);
	audit_decide(&b, &r);
	CHECK_INT(r.verdict, AUDIT_EXPOSED);
}

TEST(audit_unix_backend_has_nothing_to_audit)
{
	struct addr b = backend("unix:/run/app.sock");
	struct audit_result r;

	CHECK_INT(audit_backend(&b, &r), 0);
	CHECK_INT(r.verdict, AUDIT_UNIX);
	CHECK(!r.exposed);
	char *text = report("app", &b, &r);
	CHECK_CONTAINS(text, "[app] backend unix:/run/app.sock");
	CHECK_CONTAINS(text, "nothing to audit");
	free(text);
	CHECK_STR(audit_verdict_name(r.verdict), "unix");
}

TEST(audit_report_texts)
{
	static const char *const lo[] = { "127.0.0.1" };
	static const char *const any[] = { "0.0.0.0" };
	struct addr b = backend("127.0.0.1:8080");
	struct audit_result r;
	char *text;

	audit_result_init(&r, 8080);
	feed_listeners(&r, lo, 1, 8080);
	audit_decide(&b, &r);
	text = report("app", &b, &r);
	CHECK_CONTAINS(text, "[app] backend 127.0.0.1:8080: ok");
	CHECK_CONTAINS(text, "loopback only");
	CHECK_CONTAINS(text, "127.0.0.1:8080");
	CHECK(strstr(text, "EXPOSED") == NULL);
	free(text);

	feed_listeners(&r, any, 1, 8080);
	audit_decide(&b, &r);
	text = report("app", &b, &r);
	CHECK_CONTAINS(text, "EXPOSED");
	CHECK_CONTAINS(text, "0.0.0.0 (every address of this host)");
	CHECK_CONTAINS(text, "0.0.0.0:8080");
	CHECK_CONTAINS(text, "bind the backend to 127.0.0.1 only");
	CHECK_CONTAINS(text, "uid 1000");
	free(text);

	audit_result_init(&r, 8080);
	audit_decide(&b, &r);
	text = report("app", &b, &r);
	CHECK_CONTAINS(text, "nothing listens on TCP port 8080");
	free(text);

	r.verdict = AUDIT_ERROR;
	r.error = ENOENT;
	r.error_path = "/proc/net/tcp";
	text = report("app", &b, &r);
	CHECK_CONTAINS(text, "cannot audit: /proc/net/tcp: No such file");
	free(text);
	CHECK_STR(audit_verdict_name(AUDIT_LOOPBACK_ONLY), "loopback_only");
	CHECK_STR(audit_verdict_name(AUDIT_EXPOSED), "exposed");
}

/* Listen on host:0 in this process; returns the fd, port in *port. */
static int listen_on(int family, const char *host, unsigned *port)
{
	struct sockaddr_storage ss;
	socklen_t len;
	int fd = socket(family, SOCK_STREAM, 0);

	CHECK(fd >= 0);
	memset(&ss, 0, sizeof ss);
	if (family == AF_INET) {
		struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
		sin->sin_family = AF_INET;
		inet_pton(AF_INET, host, &sin->sin_addr);
		len = sizeof *sin;
	} else {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
		sin6->sin6_family = AF_INET6;
		inet_pton(AF_INET6, host, &sin6->sin6_addr);
		len = sizeof *sin6;
	}
	CHECK_INT(bind(fd, (struct sockaddr *)&ss, len), 0);
	CHECK_INT(listen(fd, 4), 0);
	CHECK_INT(getsockname(fd, (struct sockaddr *)&ss, &len), 0);
	*port = ntohs(family == AF_INET ?
	    ((struct sockaddr_in *)&ss)->sin_port :
	    ((struct sockaddr_in6 *)&ss)->sin6_port);
	return fd;
}

TEST(audit_live_proc_of_this_process)
{
	unsigned port;
	char text[64];
	struct audit_result r;
	int fd = listen_on(AF_INET, "127.0.0.1", &port);
	if (fd < 0)
		return;

	snprintf(text, sizeof text, "127.0.0.1:%u", port);
	struct addr b = backend(text);
	CHECK_INT(audit_backend(&b, &r), 0);
	CHECK_INT(r.verdict, AUDIT_LOOPBACK_ONLY);
	CHECK_INT(r.nlisteners, 1);
	CHECK_STR(r.listeners[0].ip, "127.0.0.1");
	CHECK(r.listeners[0].inode != 0);
	CHECK_INT(r.listeners[0].pid, getpid());
	CHECK_INT(r.listeners[0].uid, getuid());
	close(fd);

	/* The same port number, now on every address. */
	fd = listen_on(AF_INET, "0.0.0.0", &port);
	if (fd < 0)
		return;
	snprintf(text, sizeof text, "127.0.0.1:%u", port);
	b = backend(text);
	CHECK_INT(audit_backend(&b, &r), 0);
	CHECK_INT(r.verdict, AUDIT_EXPOSED);
	CHECK(r.exposed);
	CHECK_STR(r.listeners[0].ip, "0.0.0.0");
	CHECK_INT(r.listeners[0].pid, getpid());
	close(fd);

	/* And nothing at all once it is closed. */
	CHECK_INT(audit_backend(&b, &r), 0);
	CHECK_INT(r.verdict, AUDIT_NOT_LISTENING);
}
