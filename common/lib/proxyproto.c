#include "proxyproto.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static const unsigned char v2_sig[12] = {
	0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A };
static const char v1_prefix[] = "PROXY ";

__attribute__((format(printf, 3, 4)))
static enum pp_result bad(char *why, size_t whylen, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(why, whylen, fmt, ap);
	va_end(ap);
	return PP_BAD;
}

/* ---- CRC-32C ---- */

static uint32_t crc32c_update(uint32_t crc, const unsigned char *p, size_t n)
{
	while (n-- > 0) {
		crc ^= *p++;
		for (int k = 0; k < 8; k++)
			crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1)));
	}
	return crc;
}

uint32_t pp_crc32c(const unsigned char *buf, size_t len)
{
	return ~crc32c_update(~0u, buf, len);
}

static uint32_t get_u32(const unsigned char *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
	    (uint32_t)p[2] << 8 | p[3];
}

static void put_u16(unsigned char *p, size_t v)
{
	p[0] = (unsigned char)(v >> 8);
	p[1] = (unsigned char)v;
}

/* ---- version 1 ---- */

/* A v1 port: decimal, 0..65535, no leading zero. */
static int v1_port(const char *s, size_t n, uint16_t *port)
{
	unsigned v = 0;
	if (n == 0 || n > 5 || (n > 1 && s[0] == '0'))
		return -1;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (unsigned)(s[i] - '0');
	}
	if (v > 65535)
		return -1;
	*port = (uint16_t)v;
	return 0;
}

/* Split line (NUL-free, n bytes) at single spaces into at most max fields. */
static size_t v1_fields(const char *line, size_t n, const char **f,
    size_t *flen, size_t max)
{
	size_t count = 0, start = 0;
	for (size_t i = 0; i <= n; i++) {
		if (i < n && line[i] != ' ')
			continue;
		if (count == max)
			return max + 1;
		f[count] = line + start;
		flen[count] = i - start;
		count++;
		start = i + 1;
	}
	return count;
}

static enum pp_result parse_v1(const unsigned char *buf, size_t len,
    struct pp_header *out, char *why, size_t whylen)
{
	size_t n = len < PP_V1_MAX ? len : PP_V1_MAX, end = 0;
	bool found = false;
	for (size_t i = 0; i < n && !found; i++) {
		if (buf[i] == '\r') {
			if (i + 1 < n && buf[i + 1] != '\n')
				return bad(why, whylen, "v1: a CR not followed "
				    "by LF at byte %zu", i + 1);
			if (i + 1 < n) {
				end = i;
				found = true;
			}
		} else if (buf[i] == '\n') {
			return bad(why, whylen, "v1: a LF without CR at byte "
			    "%zu", i + 1);
		} else if (buf[i] < 0x20 || buf[i] > 0x7e) {
			return bad(why, whylen, "v1: byte 0x%02x at %zu is not "
			    "printable ASCII", buf[i], i + 1);
		}
	}
	if (!found) {
		if (len >= PP_V1_MAX)
			return bad(why, whylen, "v1: no CRLF within %d bytes "
			    "(the longest line the protocol allows)",
			    PP_V1_MAX);
		return PP_MORE;
	}
	const char *f[6];
	size_t fl[6];
	size_t nf = v1_fields((const char *)buf, end, f, fl, 6);
	out->version = 1;
	out->len = end + 2;
	if (nf >= 2 && fl[1] == 7 && memcmp(f[1], "UNKNOWN", 7) == 0) {
		/* The rest of the line is ignored (the specification). */
		out->addrs.family = PP_NONE;
		return PP_DONE;
	}
	if (nf < 2 || fl[1] != 4 || (memcmp(f[1], "TCP4", 4) != 0 &&
	    memcmp(f[1], "TCP6", 4) != 0))
		return bad(why, whylen, "v1: unknown protocol \"%.*s\" "
		    "(TCP4, TCP6 or UNKNOWN)", nf < 2 ? 0 : (int)fl[1],
		    nf < 2 ? "" : f[1]);
	if (nf != 6)
		return bad(why, whylen, "v1: %s fields where 6 belong "
		    "(PROXY TCP4 SRC DST SPORT DPORT)", nf > 6 ? "more" :
		    "fewer");
	bool v6 = f[1][3] == '6';
	int af = v6 ? AF_INET6 : AF_INET;
	struct pp_addrs *a = &out->addrs;
	a->family = v6 ? PP_INET6 : PP_INET;
	for (int k = 0; k < 2; k++) {
		char text[INET6_ADDRSTRLEN];
		if (fl[2 + k] == 0 || fl[2 + k] >= sizeof text)
			return bad(why, whylen, "v1: the %s address is not "
			    "an %s address", k ? "destination" : "source",
			    v6 ? "IPv6" : "IPv4");
		memcpy(text, f[2 + k], fl[2 + k]);
		text[fl[2 + k]] = 0;
		if (inet_pton(af, text, k ? a->dst : a->src) != 1)
			return bad(why, whylen, "v1: the %s address \"%s\" is "
			    "not an %s address", k ? "destination" : "source",
			    text, v6 ? "IPv6" : "IPv4");
	}
	if (v1_port(f[4], fl[4], &a->src_port) != 0 ||
	    v1_port(f[5], fl[5], &a->dst_port) != 0)
		return bad(why, whylen, "v1: a port is not a number from 0 to "
		    "65535 without leading zeros");
	return PP_DONE;
}

/* ---- version 2 ---- */

static size_t v2_addr_len(enum pp_family f)
{
	return f == PP_INET ? 12 : f == PP_INET6 ? 36 :
	    f == PP_UNIX ? 2 * PP_UNIX_PATH : 0;
}

/* Walk the TLVs (and the SSL TLV's sub-TLVs); check a CRC32C. */
static enum pp_result v2_tlvs(const unsigned char *hdr, size_t total,
    size_t at, char *why, size_t whylen)
{
	while (at < total) {
		if (total - at < 3)
			return bad(why, whylen, "v2: the TLVs overrun the "
			    "header (%zu stray bytes at offset %zu of %zu)",
			    total - at, at, total);
		size_t l = (size_t)hdr[at + 1] << 8 | hdr[at + 2];
		if (l > total - at - 3)
			return bad(why, whylen, "v2: the TLVs overrun the "
			    "header (a TLV of %zu bytes at offset %zu of %zu)",
			    l, at, total);
		uint8_t type = hdr[at];
		if (type == PP2_TYPE_CRC32C) {
			if (l != 4)
				return bad(why, whylen, "v2: a CRC32C TLV of "
				    "%zu bytes, not 4", l);
			static const unsigned char zero[4];
			uint32_t crc = crc32c_update(~0u, hdr, at + 3);
			crc = crc32c_update(crc, zero, 4);
			crc = ~crc32c_update(crc, hdr + at + 7,
			    total - at - 7);
			if (crc != get_u32(hdr + at + 3))
				return bad(why, whylen, "v2: the CRC32C "
				    "checksum does not match the header");
		} else if (type == PP2_TYPE_SSL) {
			if (l < 5)
				return bad(why, whylen, "v2: an SSL TLV of %zu "
				    "bytes, shorter than its 5 fixed bytes", l);
			/* Its sub-TLVs must fit it exactly, too. */
			char sub[200];
			if (v2_tlvs(hdr + at + 3 + 5, l - 5, 0, sub,
			    sizeof sub) != PP_DONE)
				return bad(why, whylen, "%s (inside the SSL "
				    "TLV)", sub);
		}
		at += 3 + l;
	}
	return PP_DONE;
}

static enum pp_result parse_v2(const unsigned char *buf, size_t len,
    struct pp_header *out, char *why, size_t whylen)
{
	size_t sig = len < sizeof v2_sig ? len : sizeof v2_sig;
	if (memcmp(buf, v2_sig, sig) != 0)
		return bad(why, whylen, "not a PROXY protocol header (the "
		    "connection began with 0x%02x 0x%02x)", buf[0],
		    len > 1 ? buf[1] : 0);
	if (len > 12 && buf[12] >> 4 != 2)
		return bad(why, whylen, "v2: unknown version %u", buf[12] >> 4);
	if (len > 12 && (buf[12] & 0xF) > 1)
		return bad(why, whylen, "v2: unknown command %u (LOCAL 0 or "
		    "PROXY 1)", buf[12] & 0xF);
	bool local = len > 12 && (buf[12] & 0xF) == 0;
	enum pp_family fam = PP_NONE;
	if (len > 13 && !local) {
		unsigned af = buf[13] >> 4, proto = buf[13] & 0xF;
		if (af > 3 || proto > 2 || (af == 0) != (proto == 0))
			return bad(why, whylen, "v2: unknown address family "
			    "and protocol 0x%02x", buf[13]);
		if (proto == 2)
			return bad(why, whylen, "v2: a datagram family (0x%02x);"
			    " a stream connection was expected", buf[13]);
		fam = af == 1 ? PP_INET : af == 2 ? PP_INET6 :
		    af == 3 ? PP_UNIX : PP_NONE;
	}
	if (len < PP_V2_FIXED)
		return PP_MORE;
	size_t total = PP_V2_FIXED + ((size_t)buf[14] << 8 | buf[15]);
	if (total > PP_MAX)
		return bad(why, whylen, "v2: a header of %zu bytes, over the "
		    "limit of %d", total, PP_MAX);
	size_t need = v2_addr_len(fam);
	if (total - PP_V2_FIXED < need)
		return bad(why, whylen, "v2: an address block of %zu bytes, "
		    "shorter than the %zu its family needs", total -
		    PP_V2_FIXED, need);
	if (len < total)
		return PP_MORE;

	out->version = 2;
	out->local = local;
	out->len = total;
	struct pp_addrs *a = &out->addrs;
	a->family = fam;
	const unsigned char *p = buf + PP_V2_FIXED;
	if (fam == PP_INET || fam == PP_INET6) {
		size_t n = fam == PP_INET ? 4 : 16;
		memcpy(a->src, p, n);
		memcpy(a->dst, p + n, n);
		a->src_port = (uint16_t)(p[2 * n] << 8 | p[2 * n + 1]);
		a->dst_port = (uint16_t)(p[2 * n + 2] << 8 | p[2 * n + 3]);
	}
	if (local || fam == PP_NONE)
		return PP_DONE;	/* the block is skipped, TLVs and all */
	enum pp_result r = v2_tlvs(buf, total, PP_V2_FIXED + need, why,
	    whylen);
	if (r != PP_DONE)
		return r;
	out->tlv = buf + PP_V2_FIXED + need;
	out->tlv_len = total - PP_V2_FIXED - need;
	return PP_DONE;
}

enum pp_result pp_parse(const unsigned char *buf, size_t len,
    struct pp_header *out, char *why, size_t whylen)
{
	memset(out, 0, sizeof *out);
	if (len == 0)
		return PP_MORE;
	if (buf[0] == v2_sig[0])
		return parse_v2(buf, len, out, why, whylen);
	size_t pre = len < 6 ? len : 6;
	if (memcmp(buf, v1_prefix, pre) != 0)
		return bad(why, whylen, "not a PROXY protocol header (the "
		    "connection began with 0x%02x 0x%02x)", buf[0],
		    len > 1 ? buf[1] : 0);
	if (len <= 6)
		return PP_MORE;
	return parse_v1(buf, len, out, why, whylen);
}

/* ---- addresses ---- */

static bool mapped_v4(const struct sockaddr_in6 *s)
{
	return IN6_IS_ADDR_V4MAPPED(&s->sin6_addr);
}

static int one_addr(const struct sockaddr *sa, bool as_v4, unsigned char *ip,
    uint16_t *port)
{
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *s = (const void *)sa;
		if (as_v4) {
			memcpy(ip, &s->sin_addr, 4);
		} else {	/* the other end is IPv6: ::ffff:a.b.c.d */
			memset(ip, 0, 10);
			ip[10] = ip[11] = 0xff;
			memcpy(ip + 12, &s->sin_addr, 4);
		}
		*port = ntohs(s->sin_port);
		return 0;
	}
	if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *s = (const void *)sa;
		if (as_v4)
			memcpy(ip, s->sin6_addr.s6_addr + 12, 4);
		else
			memcpy(ip, &s->sin6_addr, 16);
		*port = ntohs(s->sin6_port);
		return 0;
	}
	return -1;
}

static bool is_v4ish(const struct sockaddr *sa)
{
	return sa->sa_family == AF_INET || (sa->sa_family == AF_INET6 &&
	    mapped_v4((const struct sockaddr_in6 *)(const void *)sa));
}

int pp_addrs_from_sockaddr(struct pp_addrs *a, const struct sockaddr *src,
    const struct sockaddr *dst)
{
	memset(a, 0, sizeof *a);
	bool ip = (src->sa_family == AF_INET || src->sa_family == AF_INET6) &&
	    (dst->sa_family == AF_INET || dst->sa_family == AF_INET6);
	if (!ip)
		return -1;
	bool v4 = is_v4ish(src) && is_v4ish(dst);
	if (one_addr(src, v4, a->src, &a->src_port) != 0 ||
	    one_addr(dst, v4, a->dst, &a->dst_port) != 0)
		return -1;
	a->family = v4 ? PP_INET : PP_INET6;
	return 0;
}

void pp_addrs_format_src(const struct pp_addrs *a, char *out, size_t outlen)
{
	char ip[INET6_ADDRSTRLEN];
	if (a->family == PP_INET) {
		inet_ntop(AF_INET, a->src, ip, sizeof ip);
		snprintf(out, outlen, "%s:%u", ip, a->src_port);
	} else if (a->family == PP_INET6) {
		inet_ntop(AF_INET6, a->src, ip, sizeof ip);
		snprintf(out, outlen, "[%s]:%u", ip, a->src_port);
	} else {
		snprintf(out, outlen, "-");
	}
}

/* ---- building ---- */

size_t pp_build_v1(const struct pp_addrs *a, unsigned char *out)
{
	char s[INET6_ADDRSTRLEN], d[INET6_ADDRSTRLEN];
	int n;
	if (a->family == PP_INET || a->family == PP_INET6) {
		int af = a->family == PP_INET ? AF_INET : AF_INET6;
		inet_ntop(af, a->src, s, sizeof s);
		inet_ntop(af, a->dst, d, sizeof d);
		/* At most 104 bytes: TCP6, two 39-byte addresses, two ports. */
		n = snprintf((char *)out, PP_V1_MAX, "PROXY TCP%c %s %s %u %u"
		    "\r\n", af == AF_INET ? '4' : '6', s, d, a->src_port,
		    a->dst_port);
	} else {
		n = snprintf((char *)out, PP_V1_MAX, "PROXY UNKNOWN\r\n");
	}
	return n > 0 && n < PP_V1_MAX ? (size_t)n : 0;
}

static void put(struct pp_v2 *w, const void *p, size_t n)
{
	if (w->overflow || n > w->cap - w->len) {
		w->overflow = true;
		return;
	}
	if (n > 0)
		memcpy(w->buf + w->len, p, n);
	w->len += n;
}

static void put_path(struct pp_v2 *w, const char *path)
{
	unsigned char b[PP_UNIX_PATH] = { 0 };
	if (path != NULL)
		strncpy((char *)b, path, sizeof b - 1);
	put(w, b, sizeof b);
}

void pp_v2_begin(struct pp_v2 *w, unsigned char *buf, size_t cap,
    const struct pp_addrs *a)
{
	static const unsigned char fam[] = {
		[PP_NONE] = 0x00, [PP_INET] = 0x11, [PP_INET6] = 0x21,
		[PP_UNIX] = 0x31 };
	*w = (struct pp_v2){ .buf = buf, .cap = cap };
	unsigned char fixed[4] = { a->family == PP_NONE ? 0x20 : 0x21,
		fam[a->family], 0, 0 };
	put(w, v2_sig, sizeof v2_sig);
	put(w, fixed, sizeof fixed);
	if (a->family == PP_INET || a->family == PP_INET6) {
		size_t n = a->family == PP_INET ? 4 : 16;
		unsigned char ports[4];
		put_u16(ports, a->src_port);
		put_u16(ports + 2, a->dst_port);
		put(w, a->src, n);
		put(w, a->dst, n);
		put(w, ports, sizeof ports);
	} else if (a->family == PP_UNIX) {
		put_path(w, a->src_path);
		put_path(w, a->dst_path);
	}
}

void pp_v2_tlv(struct pp_v2 *w, uint8_t type, const void *value, size_t len)
{
	unsigned char h[3] = { type, (unsigned char)(len >> 8),
		(unsigned char)len };
	if (len > 0xFFFF) {
		w->overflow = true;
		return;
	}
	put(w, h, sizeof h);
	put(w, value, len);
}

void pp_v2_ssl_begin(struct pp_v2 *w, uint8_t client, uint32_t verify)
{
	unsigned char h[8] = { PP2_TYPE_SSL, 0, 0, client,
		(unsigned char)(verify >> 24), (unsigned char)(verify >> 16),
		(unsigned char)(verify >> 8), (unsigned char)verify };
	w->ssl_at = w->len;
	put(w, h, sizeof h);
}

void pp_v2_ssl_end(struct pp_v2 *w)
{
	if (!w->overflow && w->ssl_at > 0) {
		size_t l = w->len - w->ssl_at - 3;
		if (l > 0xFFFF)
			w->overflow = true;
		else
			put_u16(w->buf + w->ssl_at + 1, l);
	}
	w->ssl_at = 0;
}

size_t pp_v2_finish(struct pp_v2 *w)
{
	if (w->overflow || w->len - PP_V2_FIXED > 0xFFFF)
		return 0;
	put_u16(w->buf + 14, w->len - PP_V2_FIXED);
	return w->len;
}
