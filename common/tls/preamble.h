/*
 * preamble: what one upseal sidecar says to the other before the first
 * byte of a client's data. It is negotiated with ALPN, so that only two
 * upseal sidecars ever speak it, and only after the pinned handshake:
 *
 *   upseal/1  one byte, PREAMBLE_DIAL (0x01): "a real client is here:
 *             dial your backend now" (the pool's preamble).
 *   upseal/2  a PROXY protocol v2 header (proxyproto.h): the same
 *             message, plus the address of the client the client sidecar
 *             serves (command PROXY, TCP over IPv4 or IPv6), or none
 *             (LOCAL). The server may pass it on to its backend
 *             (proxy_protocol, trust_client_address).
 *
 * A server lists both, upseal/2 first, and mbedTLS selects by the
 * server's order: an older client (upseal/1 only) gets upseal/1, an older
 * server makes a newer client fall back to upseal/1 (no address
 * carried). A client offers them on the connections that send a preamble:
 * pool connections (sent at handoff) and connections that carry an
 * address (sent right after the handshake). Until the preamble comes the
 * server dials nothing, so a pooled connection costs the backend nothing.
 * A peer that negotiates no ALPN (openssl s_client, stunnel, nginx's
 * proxy_ssl, an upseal-client with nothing to carry) gets the plain
 * behaviour: the backend is dialed right after the handshake.
 *
 * No libuv here: the libFuzzer target tests/fuzz/fuzz_pool.c drives
 * preamble_recv, over the same tlsio, as the server does.
 */
#ifndef UPSEAL_PREAMBLE_H
#define UPSEAL_PREAMBLE_H

#include <stdbool.h>
#include <stddef.h>

#include <mbedtls/ssl.h>

#include "proxyproto.h"
#include "reason.h"
#include "tlsio.h"

#define PREAMBLE_ALPN1 "upseal/1"
#define PREAMBLE_ALPN2 "upseal/2"
#define PREAMBLE_DIAL 0x01
/*
 * The longest upseal/2 preamble a server reads: a v2 header with UNIX
 * paths (232 bytes) and room for TLVs a later version may add.
 */
#define PREAMBLE_MAX 512

/*
 * The ALPN list { "upseal/2", "upseal/1", NULL } for
 * mbedtls_ssl_conf_alpn_protocols: static storage, so it outlives every
 * configuration that points at it.
 */
const char **preamble_alpn_list(void);

/* After a completed handshake: 2 (upseal/2), 1 (upseal/1) or 0 (none). */
int preamble_version(const mbedtls_ssl_context *ssl);

enum preamble_result {
	PREAMBLE_WAIT,		/* not complete yet: read more input */
	PREAMBLE_GO,		/* complete: dial the backend */
	PREAMBLE_BAD,		/* not a preamble (the detail in io's error) */
	PREAMBLE_CLOSED,	/* close_notify or EOF before any byte */
	PREAMBLE_ERROR,		/* the connection must end (*why) */
};

/*
 * Server side, after a handshake that negotiated preamble version
 * version: read the preamble from io, never a byte past it (the rest of
 * its record stays buffered in mbedTLS, for the relay). buf (PREAMBLE_MAX
 * bytes) and *have (0 at first) keep what came across calls. On
 * PREAMBLE_GO, *carried is the address the client sidecar sent, or
 * PP_NONE. PREAMBLE_ERROR: tlsio_read's end (*why; an alert to send may
 * be in io's output), which also wins over a byte read with it. A
 * truncation before any byte is PREAMBLE_CLOSED, like close_notify (its
 * detail is cleared); after some, PREAMBLE_BAD.
 */
enum preamble_result preamble_recv(struct tlsio *io, int version,
    unsigned char *buf, size_t *have, struct pp_addrs *carried,
    enum reason *why);

/*
 * Client side, at handoff or right after the handshake: queue the
 * preamble of version (1 or 2) as the first application data of ssl
 * (through its BIO); version 2 carries *carried (PP_NONE: no address).
 * 0 or an mbedTLS error code.
 */
int preamble_send(mbedtls_ssl_context *ssl, int version,
    const struct pp_addrs *carried);

#endif
