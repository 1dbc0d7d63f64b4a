/*
 * conn_int.h: the connection's struct and the functions that conn.c (its
 * life: accept, dial, handshake, timers, teardown) and relay.c (its bytes)
 * share. Nothing outside those two files includes this.
 */
#ifndef UPSEAL_CONN_INT_H
#define UPSEAL_CONN_INT_H

#include <netdb.h>
#include <stdbool.h>
#include <stdint.h>

#include <mbedtls/ssl.h>
#include <uv.h>

#include "conn.h"
#include "tls.h"
#include "tlsio.h"
#include "tunnel.h"

/*
 * Each direction queues at most RELAY_HIGH bytes (plus one chunk) on its
 * writer before its reader stops; reading resumes below RELAY_LOW.
 */
#define RELAY_HIGH (256 * 1024)
#define RELAY_LOW (64 * 1024)

/*
 * PH_POOL_WAIT, PH_POOLED: a client's pool connection waiting out a
 * backoff before it dials, and one handshaken and waiting for a client
 * (pool.c). PH_PREAMBLE: the server, after a handshake that negotiated
 * upseal/1, waiting for the preamble byte before it dials the backend.
 */
enum phase { PH_DIAL, PH_HANDSHAKE, PH_RELAY, PH_POOL_WAIT, PH_POOLED,
    PH_PREAMBLE };

struct conn {
	struct tunnel *tun;
	struct tunnel_conf *conf;	/* the settings it was accepted with */
	struct conn *prev, *next;	/* in tun->conns */
	uint64_t id;
	enum phase phase;

	union stream plain;		/* the plaintext end */
	union stream tls;		/* the TLS end */
	bool plain_open, tls_open, timer_open;	/* initialised, not closing */
	uv_timer_t timer;		/* the current phase's deadline */
	unsigned refs;			/* handles + requests that point here */

	/* Dialing the second end. */
	uv_connect_t connect_req;
	uv_getaddrinfo_t gai;
	struct addrinfo *ai_list, *ai_next;
	bool resolving;
	int dial_err;			/* the last dial error (libuv code) */

	/* TLS: the mbedTLS context, its BIO and read/write loop. */
	struct tlsio io;

	/* Relay. */
	size_t plain_queued, tls_queued;	/* bytes in writes not yet done */
	bool plain_reading, tls_reading;
	bool p2t_eof, p2t_done;		/* plaintext EOF: close_notify sent, flushed */
	bool t2p_eof, t2p_done;		/* close_notify got: FIN sent, flushed */
	uv_shutdown_t plain_shut, tls_shut;
	uint64_t plain_in, plain_out;
	uint64_t started, last_active;	/* uv_now, ms */
	uint64_t hs_started;		/* uv_hrtime, ns */
	/* Server: counted in stats->handshaking, linked in tun's hs list. */
	bool hs_counted;
	struct conn *hs_prev, *hs_next;

	/* The pool (pool.c). */
	bool pool;			/* a client's pool conn, not yet handed off */
	struct conn *ready_prev, *ready_next;	/* in tun->pool.ready_list */
	uint64_t pooled_at;		/* uv_now: ready (client), waiting (server) */

	bool dropped;
	char peer_text[ADDR_TEXT_MAX];
	char error[160];		/* detail for the conn_end line */
};

/*
 * Take node n out of a doubly-linked list threaded through its fields P
 * and N, whose first element is head and last tail (an lvalue to update,
 * or a scratch variable for a list that keeps no tail). The one unlink of
 * the tunnel's lists: every connection, the handshaking ones, the ready
 * pool.
 */
#define CONN_UNLINK(n, P, N, head, tail) do {				\
	if ((n)->P != NULL)						\
		(n)->P->N = (n)->N;					\
	else								\
		(head) = (n)->N;					\
	if ((n)->N != NULL)						\
		(n)->N->P = (n)->P;					\
	else								\
		(tail) = (n)->P;					\
	(n)->P = (n)->N = NULL;						\
} while (0)

static inline uv_loop_t *conn_loop(struct conn *c)
{
	return c->tun->loop;
}

static inline const struct cfg_tunnel *conn_cfg(struct conn *c)
{
	return c->conf->cfg;
}

/* conn.c */

/* End c for why (the same as conn_drop). */
void conn_fail(struct conn *c, enum reason why);
/* Record the detail the conn_end line carries as error=. */
void conn_errorf(struct conn *c, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
void conn_error_uv(struct conn *c, const char *what, int err);
void conn_error_tls(struct conn *c, const char *what, int err);
/* End c after the mbedTLS error err in what: nomem or tls_error. */
void conn_fail_tls(struct conn *c, const char *what, int err);
/* Note activity for the idle timeout. */
void conn_touch(struct conn *c);
/* Arm the connection's one timer for ms from now (0: no deadline). */
void conn_phase_timer(struct conn *c, uint64_t ms);
/* Run the handshake as far as the input allows; on success move on. */
void conn_handshake_step(struct conn *c);
/*
 * A new connection of t with no ends yet: linked into t->conns, holding
 * t's current settings, its timer initialised. NULL when out of memory.
 * The caller counts it (t->live or t->pool.live) and starts it.
 */
struct conn *conn_new(struct tunnel *t);
/* Enter PH_DIAL: dial the end this role dials, under connect_timeout. */
void conn_dial(struct conn *c);

/* relay.c */

/* Enter PH_RELAY: both ends are up and the peer is pinned. */
void relay_start(struct conn *c);
/* Start or stop reading the TLS end as the phase and the queues allow. */
void relay_tls_reading(struct conn *c);
/* Hand the records mbedTLS produced to libuv as one write. */
void relay_flush_tls(struct conn *c);
/*
 * Send a fatal alert (desc: MBEDTLS_SSL_ALERT_MSG_*) before c is ended:
 * queued through mbedTLS and flushed at once. relay_flush_tls tries a
 * direct write first, so with nothing queued on the TLS end (the usual
 * case when refusing) the alert has left when conn_fail closes the
 * handle; if the socket did not take it, the close drops it (the
 * refusal itself stands). Safe on a dropped c (does nothing).
 */
void relay_send_alert(struct conn *c, unsigned char desc);
/* libuv read callback of the TLS end, in every phase. */
void relay_on_tls_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);

/* pool.c (the public part is in pool.h) */

/*
 * Client, accepting: the most recently readied pool conn, now counted as
 * an accepted connection (t->live) instead of a pool one; NULL if none is
 * ready (a miss, counted when the pool is on). Refills in the background.
 */
struct conn *pool_take(struct tunnel *t);
/* Client: c (from pool_take) has its plaintext end: send the preamble, relay. */
void pool_handoff(struct conn *c);
/* Client: a pool conn's handshake passed: check ALPN, make it ready. */
void pool_handshaken(struct conn *c);
/* Server: the handshake negotiated upseal/1: wait for the preamble. */
void pool_await_preamble(struct conn *c);
/* TLS input in PH_POOLED (client) or PH_PREAMBLE (server). */
void pool_tls_input(struct conn *c);
/* The timer fired in PH_POOL_WAIT, PH_POOLED or PH_PREAMBLE. */
void pool_timer(struct conn *c);
/* Called by conn_fail for a pool conn instead of the conn_end line. */
void pool_ended(struct conn *c, enum reason why);

#endif
