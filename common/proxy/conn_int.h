/*
 * conn_int.h: the connection's struct and the functions the files of the
 * conn module share: conn.c (its life: accept, dial, handshake, the phase
 * and its timer, every callback, teardown), relay.c (its bytes, over two
 * pipes), pool.c (pre-handshaken connections) and verdict.c (the words of
 * an end). Nothing outside those files includes this.
 */
#ifndef UPSEAL_CONN_INT_H
#define UPSEAL_CONN_INT_H

#include <netdb.h>
#include <stdbool.h>
#include <stdint.h>

#include <mbedtls/ssl.h>
#include <uv.h>

#include "conn.h"
#include "pipe.h"
#include "proxyproto.h"
#include "tls.h"
#include "tlsio.h"
#include "tunnel.h"

/*
 * PH_POOL_WAIT, PH_POOLED: a client's pool connection waiting out a
 * backoff before it dials, and one handshaken and waiting for a client
 * (pool.c). PH_PREAMBLE: the server, after a handshake that negotiated
 * upseal/1 or upseal/2, waiting for the preamble before it dials the
 * backend. PH_PROXY_HEADER: a client tunnel with proxy_protocol = accept,
 * reading the PROXY header its plaintext peer sends first (origin.c).
 */
enum phase { PH_DIAL, PH_HANDSHAKE, PH_RELAY, PH_POOL_WAIT, PH_POOLED,
    PH_PREAMBLE, PH_PROXY_HEADER };

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

	/*
	 * The two directions (pipe.h). p2t reads the plaintext end and
	 * writes the TLS end (every record: the handshake's and alerts too);
	 * its EOF is the plaintext FIN, passed on as close_notify and our
	 * FIN; its bytes are plain_in. t2p reads the TLS end (in every
	 * phase) and writes the plaintext end; its EOF is close_notify,
	 * passed on as a FIN; its bytes are plain_out.
	 */
	struct pipe p2t, t2p;
	uint64_t started, last_active;	/* uv_now, ms */
	uint64_t hs_started;		/* uv_hrtime, ns */
	/* Server: counted in stats->handshaking, linked in tun's hs list. */
	bool hs_counted;
	struct conn *hs_prev, *hs_next;

	/* The pool (pool.c). */
	bool pool;			/* a client's pool conn, not yet handed off */
	struct conn *ready_prev, *ready_next;	/* in tun->pool.ready_list */
	uint64_t pooled_at;		/* uv_now: ready (client), waiting (server) */

	/*
	 * Where the connection came from (origin.c). carried: the client's
	 * address that crosses the tunnel (client: to send, from a PROXY
	 * header or a remote plaintext peer; server: as received and
	 * trusted), PP_NONE if none. hdr: a header being read (client:
	 * the PROXY header, PP_MAX bytes; server: the preamble,
	 * PREAMBLE_MAX), then (client) the bytes that came after it, which
	 * relay_begin sends first; freed when done.
	 */
	struct pp_addrs carried;
	unsigned char *hdr;
	size_t hdr_len;
	/*
	 * Server, proxy_protocol = v1 | v2: the PROXY header for the backend,
	 * in a standard chunk that the relay's first decrypted bytes fill up
	 * behind it, so that header and data leave in one write.
	 */
	struct chunk *pp_out;
	bool resumed;			/* the handshake was a resumption */
	/* kTLS (relay_ktls.c): NULL while mbedTLS carries both directions. */
	struct relay_ktls *kt;

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
	return tunnel_loop(c->tun);
}

static inline const struct cfg_tunnel *conn_cfg(struct conn *c)
{
	return c->conf->cfg;
}

/*
 * The rule of this module: only conn.c changes a connection's phase or
 * ends it. A function of relay.c or pool.c that may end the connection
 * returns a status instead: 0 to go on, or CONN_END(why), negative, when
 * the connection must end for why (the detail is already in c->error).
 * The caller stops on non-zero and hands the status up; conn.c acts on it
 * at the top of the callback that started it all. So a connection is
 * never dropped under a function that is still using it, and the only
 * c->dropped checks are where a callback arrives for a dropped one.
 * CONN_NEXT (pool.c): the phase's work is done, move to the next phase.
 */
#define CONN_END(why) (-1 - (int)(why))
#define CONN_NEXT 1

static inline enum reason conn_status_reason(int st)
{
	return (enum reason)(-1 - st);
}

/* conn.c (the detail's recorders are in verdict.c) */

/* Act on a status from relay.c or pool.c: end c on CONN_END (if live). */
void conn_event(struct conn *c, int st);
/* Record the detail the conn_end line carries as error=. */
void conn_errorf(struct conn *c, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
void conn_error_uv(struct conn *c, const char *what, int err);
void conn_error_tls(struct conn *c, const char *what, int err);
/* Record the mbedTLS error err in what; CONN_END(nomem or tls_error). */
int conn_end_tls(struct conn *c, const char *what, int err);
/* Note activity for the idle timeout (read lazily when the timer fires). */
static inline void conn_touch(struct conn *c)
{
	c->last_active = uv_now(conn_loop(c));
}
/*
 * A new connection of t with no ends yet: linked into t->conns, holding
 * t's current settings, its timer initialised. NULL when out of memory.
 * The caller counts it (t->live or t->pool.live) and starts it.
 */
struct conn *conn_new(struct tunnel *t);
/*
 * Client: start c (from conn_new, counted in the pool): it dials now, or
 * waits delay_ms first in PH_POOL_WAIT (a backoff).
 */
void conn_start_pool(struct conn *c, uint64_t delay_ms);
/*
 * Drop every connection of t that no client byte depends on yet, for why:
 * a client's pool conns (a ready one says close_notify first), a server's
 * waiting in PH_PREAMBLE. Nothing is freed before the loop runs.
 */
void conn_drop_unused(struct tunnel *t, enum reason why);

/* budget.c */

/* Server: c starts its handshake; counted until budget_leave. */
void budget_enter(struct conn *c);
/* c's handshake is over (done, failed or dropped); safe to call twice. */
void budget_leave(struct conn *c);
/*
 * A place is needed: 1 if no handshake is in progress; 0 with *victim,
 * the handshake to shed; -1 if none may be shed yet (retry after
 * *retry_ms).
 */
int budget_pick(struct tunnel *t, struct conn **victim, uint64_t *retry_ms);

/* verdict.c */

/*
 * The reason a handshake that returned the mbedTLS error rc ends on,
 * its detail written to c->error (the peer check's verdict first, then
 * ALPN, not-TLS, EOF, version, alert).
 */
enum reason verdict_handshake(struct conn *c, int rc);
/*
 * The fatal alert that tells a peer we refuse why, for the refusals
 * mbedTLS makes without sending one, and for our own after the
 * handshake (rc 0, v the peer check's verdict). 0: send nothing.
 */
unsigned char verdict_alert(int rc, enum tls_verdict v);
/* Log c's one conn_end line; refused: with the full presented_pin. */
void verdict_log_end(struct conn *c, enum reason why, bool refused);
/* Fill c->peer_text with the address of s's peer ("unix" for a unix socket). */
void verdict_describe_peer(struct conn *c, union stream *s);

/* relay.c */

/* PH_RELAY has begun: read the plaintext end, relay what mbedTLS holds. */
int relay_begin(struct conn *c);
/* Start or stop reading the TLS end as the phase and the queues allow. */
int relay_tls_reading(struct conn *c);
/* Hand the records mbedTLS produced to libuv as one write. */
int relay_flush_tls(struct conn *c);
/*
 * Send a fatal alert (desc: MBEDTLS_SSL_ALERT_MSG_*) before c is ended:
 * queued through mbedTLS and flushed at once. relay_flush_tls tries a
 * direct write first, so with nothing queued on the TLS end (the usual
 * case when refusing) the alert has left when conn.c closes the handle;
 * if the socket did not take it, the close drops it (the refusal itself
 * stands).
 */
int relay_send_alert(struct conn *c, unsigned char desc);
/* PH_RELAY, TLS input came: decrypt it onto the plaintext end. */
int relay_tls_input(struct conn *c);
/* The plaintext end's read callback's work (n: libuv's nread). */
int relay_plain_read(struct conn *c, ssize_t n, const uv_buf_t *buf);
/* After processing TLS input: keep what mbedTLS did not take. */
int relay_settle(struct conn *c);
/* A write of pipe p (c->p2t or c->t2p) completed with status. */
int relay_written(struct conn *c, struct pipe *p, int status);
/* The shutdown of pipe p's write side completed with status. */
int relay_shutdown_done(struct conn *c, struct pipe *p, int status);

/* origin.c */

/* Client: the plaintext peer is a remote TCP address: carry it. */
void origin_from_peer(struct conn *c);
/* Client, PH_PROXY_HEADER begins: its buffer, reading the plaintext end. */
int origin_header_begin(struct conn *c);
/*
 * Client, PH_PROXY_HEADER: a read of the plaintext end (n: libuv's
 * nread). 0: more is needed; CONN_NEXT: the header is complete (the
 * address in c->carried, the bytes after it in c->hdr; reading stopped
 * until the relay); or CONN_END.
 */
int origin_header_input(struct conn *c, ssize_t n, const uv_buf_t *buf);
/* Client, PH_PROXY_HEADER's deadline: the end's detail; CONN_END. */
int origin_header_timeout(struct conn *c);
/*
 * Client, at the start of the relay: the bytes that came after the PROXY
 * header go first, and the records queued so far (the preamble) leave
 * with them, in one write.
 */
int origin_send_early(struct conn *c);
/*
 * Client: queue the preamble (handoff of a pool conn, or a handshake done
 * with an address to carry); relay_begin sends it. Must be followed by
 * relay_enter.
 */
int origin_send_preamble(struct conn *c);
/*
 * Server, proxy_protocol = v1 | v2: the backend is connected: build the
 * PROXY header into c->pp_out, which relay_begin's first write carries,
 * with whatever the client sent already.
 */
int origin_send_header(struct conn *c);
/* Hand one chunk of decrypted bytes (taken) to the plaintext end. */
int relay_to_plain(struct conn *c, struct chunk *ch);
/* close_notify arrived: pass the FIN on, after what is queued. */
int relay_t2p_end(struct conn *c);

/* relay_ktls.c: the kernel's record layer (kTLS) under PH_RELAY */

/* Before the handshake: keep its secrets if c may use kTLS. */
void relay_ktls_prepare(struct conn *c);
/*
 * PH_RELAY began and mbedTLS relayed what it held: switch each
 * direction to kTLS at its next record boundary, or leave it to mbedTLS
 * (silently; the tunnel's one ktls line says why).
 */
int relay_ktls_begin(struct conn *c);
/* Whether the kernel seals what we send (TX switched). */
bool relay_ktls_tx(const struct conn *c);
/* Whether relay_ktls, not libuv, reads the TLS end (RX switching or on). */
bool relay_ktls_owns_rx(const struct conn *c);
/* Whether relay_ktls, not libuv, reads the plaintext end (TX spliced). */
bool relay_ktls_owns_plain(const struct conn *c);
/* Start or stop reading the TLS end as the t2p pipe allows. */
int relay_ktls_reading(struct conn *c);
/* TX on: send len plaintext bytes (copied) for the kernel to seal. */
int relay_ktls_send(struct conn *c, const unsigned char *buf, size_t len);
/* TX on, the plaintext end's FIN: close_notify after the queue, then FIN. */
int relay_ktls_close_notify(struct conn *c);
/* A write of p2t / t2p completed (c->kt set): switch, flush, read on. */
int relay_ktls_p2t_written(struct conn *c);
int relay_ktls_t2p_written(struct conn *c);
/* Teardown: close the poll handle (cb: conn.c's close callback). */
void relay_ktls_close(struct conn *c, uv_close_cb cb);
/* conn_free: free what is left. */
void relay_ktls_free(struct conn *c);

/* pool.c (the public part is in pool.h) */

/*
 * Client, accepting: the most recently readied pool conn, now counted as
 * an accepted connection (t->live) instead of a pool one; NULL if none is
 * ready (a miss, counted when the pool is on). Refills in the background.
 */
struct conn *pool_take(struct tunnel *t);
/* Client: c (from pool_take) has its plaintext end: send the preamble. */
int pool_handoff(struct conn *c);
/* Client: a pool conn's handshake passed: check ALPN, end a failure streak. */
int pool_handshaken(struct conn *c);
/* Client: c entered PH_POOLED: the ready list, its replacement deadline. */
void pool_ready(struct conn *c);
/* How long a ready pool conn waits before it is replaced. */
uint64_t pool_idle_ms(const struct conn *c);
/*
 * TLS input in PH_POOLED (client) or PH_PREAMBLE (server). CONN_NEXT:
 * the preamble came, dial the backend.
 */
int pool_tls_input(struct conn *c);
/* The timer fired in PH_POOLED: close_notify, CONN_END(pool_idle). */
int pool_recycle(struct conn *c);
/* Say goodbye properly to a server that waits for our preamble. */
int pool_close_notify(struct conn *c);
/* Called by conn.c's end for a pool conn instead of the conn_end line. */
void pool_ended(struct conn *c, enum reason why);

#endif
