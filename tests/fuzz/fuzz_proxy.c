/*
 * libFuzzer target: pp_parse (PROXY protocol v1 and v2) on arbitrary
 * bytes, as a client tunnel with proxy_protocol = accept and the server's
 * preamble reader see them. Oracles: a header that parses is no longer
 * than the input and at most PP_MAX; every proper prefix of it is
 * PP_MORE, never PP_DONE nor PP_BAD (a header split across reads, byte by
 * byte, parses the same); the input and its parse do not depend on bytes
 * past the header; a parsed address rebuilt as v1 or v2 parses back to
 * the same address.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "proxyproto.h"

static void same_addrs(const struct pp_addrs *a, const struct pp_addrs *b)
{
	size_t n = a->family == PP_INET ? 4 : 16;
	if (a->family != b->family)
		abort();
	if (a->family != PP_INET && a->family != PP_INET6)
		return;
	if (memcmp(a->src, b->src, n) != 0 || memcmp(a->dst, b->dst, n) != 0 ||
	    a->src_port != b->src_port || a->dst_port != b->dst_port)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct pp_header h, p;
	char why[256];
	if (pp_parse(data, size, &h, why, sizeof why) != PP_DONE)
		return 0;
	if (h.len == 0 || h.len > size || h.len > PP_MAX)
		abort();
	/* The header alone parses the same. */
	if (pp_parse(data, h.len, &p, why, sizeof why) != PP_DONE ||
	    p.len != h.len)
		abort();
	same_addrs(&h.addrs, &p.addrs);
	for (size_t k = 0; k < h.len; k++)
		if (pp_parse(data, k, &p, why, sizeof why) != PP_MORE)
			abort();
	/* Rebuilt, it parses back to the same addresses. */
	if (h.addrs.family == PP_UNIX)
		return 0;	/* paths are not parsed */
	unsigned char out[PP_MAX];
	size_t n = pp_build_v1(&h.addrs, out);
	if (n == 0 || pp_parse(out, n, &p, why, sizeof why) != PP_DONE ||
	    p.len != n)
		abort();
	same_addrs(&h.addrs, &p.addrs);
	struct pp_v2 w;
	pp_v2_begin(&w, out, sizeof out, &h.addrs);
	if (h.tlv_len > 0 && h.len + 3 <= PP_MAX)
		pp_v2_tlv(&w, PP2_TYPE_NOOP, h.tlv, h.tlv_len);
	n = pp_v2_finish(&w);
	if (n == 0 || pp_parse(out, n, &p, why, sizeof why) != PP_DONE ||
	    p.len != n)
		abort();
	same_addrs(&h.addrs, &p.addrs);
	return 0;
}
