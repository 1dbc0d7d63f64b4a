/*
 * preamble: the pool's wire agreement between two upseal sidecars. A
 * connection on which both offered and selected the ALPN protocol
 * `upseal/1` carries, as its first application byte from the client, one
 * preamble byte: PREAMBLE_DIAL (0x01), "a real client is here: dial your
 * backend now". Until it comes the server dials nothing, so a pooled
 * connection costs the backend nothing. A peer that negotiates no ALPN
 * (openssl s_client, stunnel, nginx's proxy_ssl) gets the plain
 * behaviour: the backend is dialed right after the handshake.
 *
 * No libuv here: the libFuzzer target tests/fuzz/fuzz_pool.c drives
 * preamble_recv, over the same tlsio, as the server does.
 */
#ifndef UPSEAL_PREAMBLE_H
#define UPSEAL_PREAMBLE_H

#include <stdbool.h>

#include <mbedtls/ssl.h>

#include "reason.h"
#include "tlsio.h"

#define PREAMBLE_ALPN "upseal/1"
#define PREAMBLE_DIAL 0x01

/*
 * The ALPN list { "upseal/1", NULL } for mbedtls_ssl_conf_alpn_protocols:
 * static storage, so it outlives every configuration that points at it.
 */
const char **preamble_alpn_list(void);

/* After a completed handshake: was `upseal/1` negotiated? */
bool preamble_negotiated(const mbedtls_ssl_context *ssl);

enum preamble_result {
	PREAMBLE_WAIT,		/* no application byte yet: read more input */
	PREAMBLE_GO,		/* the byte was PREAMBLE_DIAL: dial the backend */
	PREAMBLE_BAD,		/* another byte came (in *byte) */
	PREAMBLE_CLOSED,	/* close_notify or EOF before any byte */
	PREAMBLE_ERROR,		/* the connection must end (*why) */
};

/*
 * Server side, after a handshake that negotiated `upseal/1`: read at most
 * one application byte from io (the rest of its record stays buffered in
 * mbedTLS, for the relay to read once the backend is up) and judge it.
 * *byte gets the byte read (PREAMBLE_GO, PREAMBLE_BAD). PREAMBLE_ERROR:
 * tlsio_read's end (*why; an alert to send may be in io's output), which
 * also wins over a byte read with it. A truncation before any byte is
 * PREAMBLE_CLOSED, like close_notify (its detail is cleared).
 */
enum preamble_result preamble_recv(struct tlsio *io, unsigned char *byte,
    enum reason *why);

/*
 * Client side, at handoff: queue the preamble byte as the first
 * application data of ssl (through its BIO). 0 or an mbedTLS error code.
 */
int preamble_send(mbedtls_ssl_context *ssl);

#endif
