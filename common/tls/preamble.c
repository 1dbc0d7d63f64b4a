#include "preamble.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "compat.h"

static const char *alpn_list[] = { PREAMBLE_ALPN2, PREAMBLE_ALPN1, NULL };

const char **preamble_alpn_list(void)
{
	return alpn_list;
}

int preamble_version(const mbedtls_ssl_context *ssl)
{
	const char *p = mbedtls_ssl_get_alpn_protocol(ssl);
	if (p == NULL)
		return 0;
	if (strcmp(p, PREAMBLE_ALPN2) == 0)
		return 2;
	return strcmp(p, PREAMBLE_ALPN1) == 0 ? 1 : 0;
}

__attribute__((format(printf, 2, 3)))
static enum preamble_result bad(struct tlsio *io, const char *fmt, ...)
{
	va_list ap;
	if (io->error == NULL || io->errlen == 0)
		return PREAMBLE_BAD;
	va_start(ap, fmt);
	vsnprintf(io->error, io->errlen, fmt, ap);
	va_end(ap);
	return PREAMBLE_BAD;
}

/* How many more bytes the preamble in buf[0..have) needs (0: none). */
static size_t wanted(int version, const unsigned char *buf, size_t have)
{
	if (have == 0)
		return 1;
	if (version == 1 || buf[0] == PREAMBLE_DIAL)
		return 0;
	if (have < PP_V2_FIXED)
		return PP_V2_FIXED - have;
	size_t total = PP_V2_FIXED + ((size_t)buf[14] << 8 | buf[15]);
	return total > have ? total - have : 0;
}

/* Judge a complete (or refused early) preamble. */
static enum preamble_result judge(struct tlsio *io, int version,
    const unsigned char *buf, size_t have, bool complete,
    struct pp_addrs *carried)
{
	if (buf[0] == PREAMBLE_DIAL && complete)
		return PREAMBLE_GO;
	if (version == 1)
		return bad(io, "the first byte after the handshake was 0x%02x, "
		    "not the pool preamble 0x%02x (the peer negotiated ALPN "
		    PREAMBLE_ALPN1 ")", buf[0], PREAMBLE_DIAL);
	if (buf[0] != 0x0D)	/* where every v2 signature begins */
		return bad(io, "the first byte after the handshake was 0x%02x, "
		    "neither 0x%02x nor the start of a PROXY v2 header (the "
		    "peer negotiated ALPN " PREAMBLE_ALPN2 ")", buf[0],
		    PREAMBLE_DIAL);
	struct pp_header h;
	char why[256];
	switch (pp_parse(buf, have, &h, why, sizeof why)) {
	case PP_BAD:
		return bad(io, "the preamble is not a PROXY v2 header (the peer "
		    "negotiated ALPN " PREAMBLE_ALPN2 "): %s", why);
	case PP_MORE:
		if (have >= PP_V2_FIXED && have + wanted(version, buf, have) >
		    PREAMBLE_MAX)
			return bad(io, "a preamble of %zu bytes, over the limit "
			    "of %d", have + wanted(version, buf, have),
			    PREAMBLE_MAX);
		return complete ? bad(io, "the preamble ended early") :
		    PREAMBLE_WAIT;
	case PP_DONE:
		break;
	}
	*carried = h.addrs;
	if (h.local || (h.addrs.family != PP_INET &&
	    h.addrs.family != PP_INET6))
		carried->family = PP_NONE;
	return PREAMBLE_GO;
}

enum preamble_result preamble_recv(struct tlsio *io, int version,
    unsigned char *buf, size_t *have, struct pp_addrs *carried,
    enum reason *why)
{
	carried->family = PP_NONE;
	for (;;) {
		size_t want = wanted(version, buf, *have), len = 0;
		if (want == 0)
			return judge(io, version, buf, *have, true, carried);
		/* Refused as soon as it cannot be a preamble, or is too long. */
		if (*have > 0 && judge(io, version, buf, *have, false,
		    carried) == PREAMBLE_BAD)
			return PREAMBLE_BAD;
		if (*have + want > PREAMBLE_MAX)
			return bad(io, "a preamble over %d bytes", PREAMBLE_MAX);
		enum tlsio_status st = tlsio_read(io, buf + *have, want, &len,
		    why);
		*have += len;
		if (st == TLSIO_FAIL && *why != REASON_TRUNCATED)
			return PREAMBLE_ERROR;
		if (st == TLSIO_FAIL || st == TLSIO_CLOSED) {
			if (*have == 0) {
				if (io->error != NULL && io->errlen > 0)
					io->error[0] = 0;
				return PREAMBLE_CLOSED;
			}
			if (wanted(version, buf, *have) == 0)
				return judge(io, version, buf, *have, true,
				    carried);
			return bad(io, "the connection ended %zu bytes into "
			    "the preamble", *have);
		}
		if (len == 0)
			return PREAMBLE_WAIT;
	}
}

int preamble_send(mbedtls_ssl_context *ssl, int version,
    const struct pp_addrs *carried)
{
	unsigned char buf[PREAMBLE_MAX];
	size_t n = 1;
	buf[0] = PREAMBLE_DIAL;
	if (version == 2) {
		struct pp_v2 w;
		struct pp_addrs none = { .family = PP_NONE };
		pp_v2_begin(&w, buf, sizeof buf, carried ? carried : &none);
		n = pp_v2_finish(&w);
		if (n == 0)
			return MBEDTLS_ERR_SSL_INTERNAL_ERROR;
	}
	size_t off = 0;
	while (off < n) {
		int rc = mbedtls_ssl_write(ssl, buf + off, n - off);
		if (compat_is_new_ticket(rc))
			continue;	/* TLS 1.3: a ticket on the way; again */
		if (rc <= 0)
			return rc < 0 ? rc : MBEDTLS_ERR_SSL_INTERNAL_ERROR;
		off += (size_t)rc;
	}
	return 0;
}
