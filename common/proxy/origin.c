/*
 * origin: where a connection came from, and who is told. A client tunnel
 * with proxy_protocol = accept reads the PROXY header its plaintext peer
 * (nginx, haproxy) sends first; a client carries the original client's
 * address across the tunnel in the preamble (preamble.h); a server
 * tunnel with proxy_protocol = v1 | v2 sends its backend a PROXY header
 * with that address, or the TLS peer's, and (v2) who the peer is.
 *
 * Like relay.c and pool.c it ends nothing: it returns a status for conn.c.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conn_int.h"
#include "log.h"
#include "peerinfo.h"
#include "preamble.h"
#include "tunnel_int.h"

/* ---- the client: reading the PROXY header ---- */

void origin_from_peer(struct conn *c)
{
	struct sockaddr_storage peer, local;
	int pl = sizeof peer, ll = sizeof local;
	if (c->plain.h.type != UV_TCP ||
	    uv_tcp_getpeername(&c->plain.tcp, (struct sockaddr *)&peer,
	    &pl) != 0 ||
	    uv_tcp_getsockname(&c->plain.tcp, (struct sockaddr *)&local,
	    &ll) != 0)
		return;
	/*
	 * A loopback peer is the proxy on this host (nginx): its address
	 * says nothing the server's view of us does not say better.
	 */
	if (addr_sockaddr_is_loopback((struct sockaddr *)&peer))
		return;
	(void)pp_addrs_from_sockaddr(&c->carried, (struct sockaddr *)&peer,
	    (struct sockaddr *)&local);
}

static void log_header(struct conn *c, const struct pp_header *h)
{
	struct log_line l;
	char client[ADDR_TEXT_MAX];
	log_begin(&l, LOG_DEBUG, "proxy_header");
	if (!l.on)
		return;
	pp_addrs_format_src(&c->carried, client, sizeof client);
	log_str(&l, "tunnel", conn_cfg(c)->name);
	log_u64(&l, "id", c->id);
	log_u64(&l, "version", (uint64_t)h->version);
	log_str(&l, "command", h->local ? "LOCAL" : "PROXY");
	log_str(&l, "client", client);
	log_end(&l);
}

int origin_header_begin(struct conn *c)
{
	c->hdr = malloc(PP_MAX);
	if (c->hdr == NULL)
		return CONN_END(REASON_NOMEM);
	if (pipe_read(&c->p2t, true) != 0) {
		conn_errorf(c, "plaintext read: cannot start");
		return CONN_END(REASON_PLAIN_ERROR);
	}
	return 0;
}

int origin_header_input(struct conn *c, ssize_t n, const uv_buf_t *buf)
{
	if (n == UV_EOF && c->hdr_len == 0) {
		/*
		 * Nothing sent, then a clean close: a TCP health check, not a
		 * broken sender. Ended as closed (info), not as a warning.
		 */
		conn_errorf(c, "the peer closed before sending anything "
		    "(proxy_protocol = accept)");
		return CONN_END(REASON_CLOSED);
	}
	if (n == UV_EOF) {
		conn_errorf(c, "the peer closed %zu bytes into the PROXY header",
		    c->hdr_len);
		return CONN_END(REASON_PROXY_HEADER_TRUNCATED);
	}
	if (n < 0) {
		conn_error_uv(c, "plaintext read", (int)n);
		return CONN_END(n == UV_ECONNRESET ? REASON_PLAIN_RESET :
		    REASON_PLAIN_ERROR);
	}
	conn_touch(c);
	/* What does not fit is judged by what does: a header is <= PP_MAX. */
	size_t take = (size_t)n < PP_MAX - c->hdr_len ? (size_t)n :
	    PP_MAX - c->hdr_len;
	memcpy(c->hdr + c->hdr_len, buf->base, take);
	c->hdr_len += take;

	struct pp_header h;
	char why[256];
	switch (pp_parse(c->hdr, c->hdr_len, &h, why, sizeof why)) {
	case PP_MORE:
		return 0;
	case PP_BAD:
		conn_errorf(c, "PROXY header: %s", why);
		return CONN_END(REASON_PROXY_HEADER_INVALID);
	case PP_DONE:
		break;
	}
	/* LOCAL (a health check), UNKNOWN, UNIX: nothing to carry. */
	if (!h.local && (h.addrs.family == PP_INET ||
	    h.addrs.family == PP_INET6))
		c->carried = h.addrs;
	c->carried.src_path = c->carried.dst_path = NULL;
	log_header(c, &h);
	STAT_ADD(c->tun->stats->proxy_headers, 1);

	/* Keep the bytes after the header, the rest of this read too. */
	size_t after = c->hdr_len - h.len, rest = (size_t)n - take;
	unsigned char *early = malloc(after + rest + 1);
	if (early == NULL)
		return CONN_END(REASON_NOMEM);
	memcpy(early, c->hdr + h.len, after);
	memcpy(early + after, buf->base + take, rest);
	free(c->hdr);
	c->hdr = early;
	c->hdr_len = after + rest;
	/* The relay reads again once the TLS end is up. */
	if (pipe_read(&c->p2t, false) != 0) {
		conn_errorf(c, "plaintext read: cannot stop");
		return CONN_END(REASON_PLAIN_ERROR);
	}
	return CONN_NEXT;
}

int origin_header_timeout(struct conn *c)
{
	conn_errorf(c, "no complete PROXY header within %" PRIu64 " ms "
	    "(proxy_header_timeout; %zu bytes came)",
	    conn_cfg(c)->proxy_header_timeout_ms, c->hdr_len);
	return CONN_END(REASON_PROXY_HEADER_TIMEOUT);
}

int origin_send_early(struct conn *c)
{
	unsigned char *early = c->hdr;
	size_t n = c->hdr_len;
	c->hdr = NULL;
	c->hdr_len = 0;
	if (n > 0) {
		enum reason why;
		c->p2t.bytes += n;
		STAT_ADD(tunnel_stats(c->tun)->bytes_in, n);
		if (tlsio_write(&c->io, early, n, &why) == TLSIO_FAIL) {
			free(early);
			return CONN_END(why);
		}
	}
	free(early);
	/* The preamble (if one was queued) and these bytes: one write. */
	return relay_flush_tls(c);
}

int origin_send_preamble(struct conn *c)
{
	int v = preamble_version(&c->io.ssl);
	if (v == 0)
		return 0;	/* not an upseal-server: nothing to say */
	int rc = preamble_send(&c->io.ssl, v, &c->carried);
	if (rc != 0)
		return conn_end_tls(c, "TLS write (preamble)", rc);
	if (v == 2 && c->carried.family != PP_NONE)
		STAT_ADD(c->tun->stats->carried, 1);
	/* Queued: relay_begin (origin_send_early) flushes it, with the bytes. */
	return 0;
}

/* ---- the server: the PROXY header to the backend ---- */

/* The TLS end's two addresses: the client sidecar's and ours. */
static void tls_end_addrs(struct conn *c, struct pp_addrs *a)
{
	memset(a, 0, sizeof *a);
	if (c->tls.h.type == UV_NAMED_PIPE) {
		a->family = PP_UNIX;
		a->dst_path = tunnel_cfg(c->tun)->listen.path;
		return;
	}
	struct sockaddr_storage peer, local;
	int pl = sizeof peer, ll = sizeof local;
	if (uv_tcp_getpeername(&c->tls.tcp, (struct sockaddr *)&peer,
	    &pl) != 0 ||
	    uv_tcp_getsockname(&c->tls.tcp, (struct sockaddr *)&local,
	    &ll) != 0 ||
	    pp_addrs_from_sockaddr(a, (struct sockaddr *)&peer,
	    (struct sockaddr *)&local) != 0)
		a->family = PP_NONE;
}

static void tlv_text(struct pp_v2 *w, uint8_t type, const char *s)
{
	if (s != NULL && s[0] != 0)
		pp_v2_tlv(w, type, s, strlen(s));
}

/* The v2 header: addresses, then who the peer is (README's TLV table). */
static size_t build_v2(struct conn *c, const struct pp_addrs *a,
    unsigned char *buf, size_t cap)
{
	struct pp_v2 w;
	struct peerinfo info;
	char id[24];
	peerinfo_describe(&c->io.ssl, &c->io.peer, &info);
	pp_v2_begin(&w, buf, cap, a);
	tlv_text(&w, PP2_TYPE_AUTHORITY, info.sni);
	snprintf(id, sizeof id, "%" PRIu64, c->id);
	tlv_text(&w, PP2_TYPE_UNIQUE_ID, id);
	uint8_t client = PP2_CLIENT_SSL;
	if (info.has_cert)
		client |= PP2_CLIENT_CERT_SESS |
		    (c->resumed ? 0 : PP2_CLIENT_CERT_CONN);
	/* verify 0: the peer passed the tunnel's pins (and CA). */
	pp_v2_ssl_begin(&w, client, 0);
	tlv_text(&w, PP2_SUBTYPE_SSL_VERSION, info.version);
	tlv_text(&w, PP2_SUBTYPE_SSL_CN, info.cn);
	tlv_text(&w, PP2_SUBTYPE_SSL_CIPHER, info.cipher);
	tlv_text(&w, PP2_SUBTYPE_SSL_SIG_ALG, info.sig_alg);
	tlv_text(&w, PP2_SUBTYPE_SSL_KEY_ALG, info.key_alg);
	pp_v2_ssl_end(&w);
	if (c->io.peer.has_pin)
		pp_v2_tlv(&w, PP2_TYPE_UPSEAL_PIN, c->io.peer.pin.hash,
		    PIN_HASH_LEN);
	return pp_v2_finish(&w);
}

int origin_send_header(struct conn *c)
{
	enum cfg_proxy pp = conn_cfg(c)->proxy_protocol;
	if (pp != CFG_PP_V1 && pp != CFG_PP_V2)
		return 0;
	struct pp_addrs a;
	if (c->carried.family != PP_NONE)
		a = c->carried;
	else
		tls_end_addrs(c, &a);
	/* A standard chunk: the header (at most ~1 KiB), then data. */
	struct chunk *ch = chunk_new(CHUNK_CAP);
	if (ch == NULL)
		return CONN_END(REASON_NOMEM);
	ch->len = pp == CFG_PP_V1 ? pp_build_v1(&a, ch->data) :
	    build_v2(c, &a, ch->data, PP_MAX);
	if (ch->len == 0) {
		chunk_free(ch);
		conn_errorf(c, "the PROXY header did not fit its buffer");
		return CONN_END(REASON_OTHER);
	}
	c->pp_out = ch;	/* relay_begin's first write takes it */
	STAT_ADD(c->tun->stats->proxy_headers, 1);
	return 0;
}
