#include "test.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>

#include "proxyproto.h"

static const unsigned char sig[12] = {
	0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A };

static char why[256];

/* The first TLV of type in a parsed header: its value and length, or NULL. */
static const unsigned char *tlv_find(const struct pp_header *h, uint8_t type,
    size_t *len)
{
	size_t at = 0;
	while (h->tlv != NULL && at + 3 <= h->tlv_len) {
		size_t l = (size_t)h->tlv[at + 1] << 8 | h->tlv[at + 2];
		if (h->tlv[at] == type) {
			*len = l;
			return h->tlv + at + 3;
		}
		at += 3 + l;
	}
	return NULL;
}

/* Parse all of text (n bytes); also feed it byte by byte: every proper
 * prefix must be PP_MORE (or the same PP_BAD early), never PP_DONE. */
static enum pp_result parse_all(const unsigned char *text, size_t n,
    struct pp_header *h)
{
	enum pp_result whole = pp_parse(text, n, h, why, sizeof why);
	for (size_t k = 0; k < n; k++) {
		struct pp_header part;
		char w2[256];
		enum pp_result r = pp_parse(text, k, &part, w2, sizeof w2);
		if (r == PP_DONE && whole == PP_DONE && part.len <= k)
			continue;	/* a header shorter than the input */
		if (r == PP_DONE)
			test_fail(__FILE__, __LINE__, "prefix of %zu/%zu bytes "
			    "parsed as done", k, n);
		if (r == PP_BAD && whole != PP_BAD)
			test_fail(__FILE__, __LINE__, "prefix of %zu/%zu bytes "
			    "refused (%s) but the whole is not", k, n, w2);
		if (r == PP_BAD)
			break;
	}
	if (whole == PP_DONE) {
		CHECK(h->len <= n);
	}
	return whole;
}

static enum pp_result v1(const char *line, struct pp_header *h)
{
	return parse_all((const unsigned char *)line, strlen(line), h);
}

TEST(proxyproto_v1_tcp4)
{
	struct pp_header h;
	const char *l = "PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\nGET /";
	CHECK_INT(v1(l, &h), PP_DONE);
	CHECK_INT(h.version, 1);
	CHECK_INT(h.len, strlen(l) - 5);
	CHECK_INT(h.addrs.family, PP_INET);
	CHECK_INT(h.addrs.src_port, 56324);
	CHECK_INT(h.addrs.dst_port, 443);
	unsigned char a[4] = { 192, 0, 2, 1 };
	CHECK(memcmp(h.addrs.src, a, 4) == 0);
	char t[64];
	pp_addrs_format_src(&h.addrs, t, sizeof t);
	CHECK_STR(t, "192.0.2.1:56324");
}

TEST(proxyproto_v1_tcp6_and_unknown)
{
	struct pp_header h;
	CHECK_INT(v1("PROXY TCP6 2001:db8::1 ::1 1 65535\r\n", &h), PP_DONE);
	CHECK_INT(h.addrs.family, PP_INET6);
	char t[64];
	pp_addrs_format_src(&h.addrs, t, sizeof t);
	CHECK_STR(t, "[2001:db8::1]:1");
	CHECK_INT(v1("PROXY UNKNOWN\r\n", &h), PP_DONE);
	CHECK_INT(h.addrs.family, PP_NONE);
	CHECK_INT(v1("PROXY UNKNOWN ffff::1 ::1 1 2\r\n", &h), PP_DONE);
	CHECK_INT(h.addrs.family, PP_NONE);
}

/* The v1 line of the longest form is 104 bytes and parses. */
TEST(proxyproto_v1_longest)
{
	struct pp_header h;
	const char *l = "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
	    "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
	CHECK_INT(strlen(l), 104);
	CHECK_INT(v1(l, &h), PP_DONE);
	struct pp_addrs a = h.addrs;
	unsigned char out[PP_V1_MAX];
	size_t n = pp_build_v1(&a, out);
	CHECK_INT(n, 104);
	CHECK(memcmp(out, l, n) == 0);
}

TEST(proxyproto_v1_bad)
{
	static const struct { const char *in, *why; } cases[] = {
		{ "GET / HTTP/1.1\r\n", "not a PROXY protocol header" },
		{ "PROXY TCP5 1.2.3.4 1.2.3.4 1 2\r\n", "unknown protocol" },
		{ "PROXY TCP4 1.2.3.4 1.2.3.4 1\r\n", "fewer fields" },
		{ "PROXY TCP4 1.2.3.4 1.2.3.4 1 2 3\r\n", "more fields" },
		{ "PROXY TCP4 1.2.3 1.2.3.4 1 2\r\n", "not an IPv4" },
		{ "PROXY TCP4 ::1 1.2.3.4 1 2\r\n", "not an IPv4" },
		{ "PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "not an IPv6" },
		{ "PROXY TCP4 1.2.3.4 1.2.3.4 01 2\r\n", "leading zeros" },
		{ "PROXY TCP4 1.2.3.4 1.2.3.4 65536 2\r\n", "0 to 65535" },
		{ "PROXY TCP4 1.2.3.4  1.2.3.4 1 2\r\n", "more fields" },
		{ "PROXY TCP4 1.2.3.4 1.2.3.4 1 2\n", "LF without CR" },
		{ "PROXY TCP4 1.2.3.4 1.2.3.4 1 2\rX", "CR not followed" },
		{ "PROXY TCP4 1.2.3.4\t1.2.3.4 1 2\r\n", "not printable" },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		struct pp_header h;
		why[0] = 0;
		if (v1(cases[i].in, &h) != PP_BAD)
			test_fail(__FILE__, __LINE__, "accepted: %s",
			    cases[i].in);
		CHECK_CONTAINS(why, cases[i].why);
	}
}

/* 107 bytes without CRLF: refused, not waited for. */
TEST(proxyproto_v1_over_107)
{
	char l[200];
	memset(l, 'A', sizeof l);
	memcpy(l, "PROXY UNKNOWN ", 14);
	struct pp_header h;
	CHECK_INT(pp_parse((unsigned char *)l, 106, &h, why, sizeof why),
	    PP_MORE);
	CHECK_INT(pp_parse((unsigned char *)l, 107, &h, why, sizeof why),
	    PP_BAD);
	CHECK_CONTAINS(why, "no CRLF within 107");
	/* A CRLF at bytes 106..107 is fine; at 107..108 it is too late. */
	memcpy(l + 105, "\r\n", 2);
	CHECK_INT(pp_parse((unsigned char *)l, 107, &h, why, sizeof why),
	    PP_DONE);
	CHECK_INT(h.len, 107);
	memset(l, 'A', sizeof l);
	memcpy(l, "PROXY UNKNOWN ", 14);
	memcpy(l + 106, "\r\n", 2);
	CHECK_INT(pp_parse((unsigned char *)l, 108, &h, why, sizeof why),
	    PP_BAD);
}

/* Build a v2 header: command byte, family byte, body. */
static size_t v2(unsigned char *out, unsigned cmd, unsigned fam,
    const unsigned char *body, size_t n)
{
	memcpy(out, sig, 12);
	out[12] = (unsigned char)cmd;
	out[13] = (unsigned char)fam;
	out[14] = (unsigned char)(n >> 8);
	out[15] = (unsigned char)n;
	if (n > 0)
		memcpy(out + 16, body, n);
	return 16 + n;
}

static const unsigned char inet_body[12] = { 10, 0, 0, 1, 10, 0, 0, 2,
	0x1f, 0x90, 0x01, 0xbb };

TEST(proxyproto_v2_tcp4)
{
	unsigned char b[64];
	size_t n = v2(b, 0x21, 0x11, inet_body, 12);
	b[n] = 'x';	/* the connection's first byte */
	struct pp_header h;
	CHECK_INT(parse_all(b, n + 1, &h), PP_DONE);
	CHECK_INT(h.version, 2);
	CHECK_INT(h.len, 28);
	CHECK_INT(h.addrs.family, PP_INET);
	CHECK_INT(h.addrs.src_port, 8080);
	CHECK_INT(h.addrs.dst_port, 443);
	CHECK_INT(h.tlv_len, 0);
}

TEST(proxyproto_v2_local_and_unspec)
{
	unsigned char b[64];
	struct pp_header h;
	size_t n = v2(b, 0x20, 0x00, NULL, 0);
	CHECK_INT(parse_all(b, n, &h), PP_DONE);
	CHECK(h.local);
	CHECK_INT(h.addrs.family, PP_NONE);
	/* LOCAL skips whatever block follows, family ignored. */
	n = v2(b, 0x20, 0x11, inet_body, 12);
	CHECK_INT(parse_all(b, n, &h), PP_DONE);
	CHECK_INT(h.addrs.family, PP_NONE);
	n = v2(b, 0x21, 0x00, (const unsigned char *)"junk", 4);
	CHECK_INT(parse_all(b, n, &h), PP_DONE);
	CHECK_INT(h.addrs.family, PP_NONE);
}

TEST(proxyproto_v2_bad)
{
	unsigned char b[PP_MAX + 64], body[64];
	struct pp_header h;
	size_t n;
	memcpy(body, inet_body, 12);

	/* A wrong signature byte. */
	n = v2(b, 0x21, 0x11, body, 12);
	b[7] ^= 1;
	CHECK_INT(parse_all(b, n, &h), PP_BAD);
	CHECK_CONTAINS(why, "not a PROXY protocol header");
	/* Version 1 in the binary form, version 3. */
	n = v2(b, 0x11, 0x11, body, 12);
	CHECK_INT(parse_all(b, n, &h), PP_BAD);
	CHECK_CONTAINS(why, "unknown version 1");
	n = v2(b, 0x31, 0x11, body, 12);
	CHECK_INT(parse_all(b, n, &h), PP_BAD);
	/* Command 2. */
	n = v2(b, 0x22, 0x11, body, 12);
	CHECK_INT(parse_all(b, n, &h), PP_BAD);
	CHECK_CONTAINS(why, "unknown command");
	/* Families: unknown 0x4_, UDP, UNSPEC with a protocol. */
	n = v2(b, 0x21, 0x41, body, 12);
	CHECK_INT(parse_all(b, n, &h), PP_BAD);
	CHECK_CONTAINS(why, "unknown address family");
	n = v2(b, 0x21, 0x12, body, 12);
	CHECK_INT(parse_all(b, n, &h), PP_BAD);
	CHECK_CONTAINS(why, "datagram");
	n = v2(b, 0x21, 0x01, body, 12);
	CHECK_INT(parse_all(b, n, &h), PP_BAD);
	/* An address block too short for its family. */
	n = v2(b, 0x21, 0x21, body, 12);
	CHECK_INT(parse_all(b, n, &h), PP_BAD);
	CHECK_CONTAINS(why, "shorter than the 36");
	/* A length past the limit: refused at once, nothing waited for. */
	n = v2(b, 0x21, 0x11, body, 12);
	b[14] = 0x08;
	b[15] = 0x00;
	CHECK_INT(pp_parse(b, 16, &h, why, sizeof why), PP_BAD);
	CHECK_CONTAINS(why, "over the limit");
	/* A length past the end of what came: more is needed. */
	n = v2(b, 0x21, 0x11, body, 12);
	b[15] = 20;
	CHECK_INT(pp_parse(b, n, &h, why, sizeof why), PP_MORE);
	/* TLVs that overrun the header. */
	memcpy(body + 12, "\x04\x00\x09" "abc", 6);
	n = v2(b, 0x21, 0x11, body, 18);
	CHECK_INT(parse_all(b, n, &h), PP_BAD);
	CHECK_CONTAINS(why, "TLVs overrun");
	memcpy(body + 12, "\x04\x00", 2);
	n = v2(b, 0x21, 0x11, body, 14);
	CHECK_INT(parse_all(b, n, &h), PP_BAD);
	CHECK_CONTAINS(why, "stray bytes");
	/* An SSL TLV whose sub-TLV overruns it. */
	memcpy(body + 12, "\x20\x00\x08" "\x01\0\0\0\0" "\x21\x00\x05", 11);
	n = v2(b, 0x21, 0x11, body, 23);
	CHECK_INT(parse_all(b, n, &h), PP_BAD);
	CHECK_CONTAINS(why, "inside the SSL TLV");
}

TEST(proxyproto_v2_crc32c)
{
	/* The check value of CRC-32C (RFC 3720, B.4): "123456789". */
	CHECK_INT(pp_crc32c((const unsigned char *)"123456789", 9),
	    0xE3069283u);
	unsigned char b[64], body[32];
	memcpy(body, inet_body, 12);
	memcpy(body + 12, "\x03\x00\x04\0\0\0\0", 7);
	size_t n = v2(b, 0x21, 0x11, body, 19);
	uint32_t crc = pp_crc32c(b, n);
	b[n - 4] = (unsigned char)(crc >> 24);
	b[n - 3] = (unsigned char)(crc >> 16);
	b[n - 2] = (unsigned char)(crc >> 8);
	b[n - 1] = (unsigned char)crc;
	struct pp_header h;
	CHECK_INT(parse_all(b, n, &h), PP_DONE);
	b[18] ^= 1;	/* an address bit */
	CHECK_INT(parse_all(b, n, &h), PP_BAD);
	CHECK_CONTAINS(why, "CRC32C");
}

/* What the builder writes, the parser reads back, TLVs included. */
TEST(proxyproto_v2_build_roundtrip)
{
	struct sockaddr_in6 s = { .sin6_family = AF_INET6,
		.sin6_port = htons(40000) };
	struct sockaddr_in d = { .sin_family = AF_INET,
		.sin_port = htons(8443) };
	inet_pton(AF_INET6, "::ffff:192.0.2.9", &s.sin6_addr);
	inet_pton(AF_INET, "192.0.2.10", &d.sin_addr);
	struct pp_addrs a;
	CHECK_INT(pp_addrs_from_sockaddr(&a, (struct sockaddr *)&s,
	    (struct sockaddr *)&d), 0);
	CHECK_INT(a.family, PP_INET);

	unsigned char buf[512];
	struct pp_v2 w;
	pp_v2_begin(&w, buf, sizeof buf, &a);
	pp_v2_tlv(&w, PP2_TYPE_AUTHORITY, "backend.internal", 16);
	pp_v2_ssl_begin(&w, PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN, 0);
	pp_v2_tlv(&w, PP2_SUBTYPE_SSL_VERSION, "TLSv1.2", 7);
	pp_v2_tlv(&w, PP2_SUBTYPE_SSL_CN, "client", 6);
	pp_v2_ssl_end(&w);
	size_t n = pp_v2_finish(&w);
	CHECK(n > 0);
	struct pp_header h;
	CHECK_INT(parse_all(buf, n, &h), PP_DONE);
	CHECK_INT(h.len, n);
	CHECK_INT(h.addrs.src_port, 40000);
	size_t l = 0;
	const unsigned char *v = tlv_find(&h, PP2_TYPE_AUTHORITY, &l);
	CHECK(v != NULL && l == 16 && memcmp(v, "backend.internal", 16) == 0);
	v = tlv_find(&h, PP2_TYPE_SSL, &l);
	CHECK(v != NULL && l == 5 + 10 + 9);
	CHECK(v != NULL && v[0] == 3);

	/* Too small a buffer: finish says 0. */
	pp_v2_begin(&w, buf, 20, &a);
	CHECK_INT(pp_v2_finish(&w), 0);
	/* No address: LOCAL, and v1 UNKNOWN. */
	struct pp_addrs none = { .family = PP_NONE };
	pp_v2_begin(&w, buf, sizeof buf, &none);
	CHECK_INT(pp_v2_finish(&w), 16);
	CHECK_INT(buf[12], 0x20);
	unsigned char line[PP_V1_MAX];
	n = pp_build_v1(&none, line);
	CHECK_INT(n, 15);
	CHECK(memcmp(line, "PROXY UNKNOWN\r\n", 15) == 0);
}
