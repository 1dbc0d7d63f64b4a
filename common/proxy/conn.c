/*
 * conn: the life of one proxied connection, as a state machine (conn.h
 * says what it owns, conn_int.h the rule that keeps it in this file).
 *
 * Why a machine with one owner: a connection is driven by up to six
 * kinds of event (two read streams, their writes and shutdowns, a
 * resolver, a dial, one timer) and each may end it. When every module
 * could end it, each had to re-check, after every call, whether the
 * connection it was holding still existed; now relay.c and pool.c
 * report, conn.c decides, and a drop never lands under a caller's feet.
 *
 * The phases, and who moves a connection on (all through conn_enter):
 *   accept (client)   -> DIAL, or RELAY at once with a ready pool conn
 *   accept (server)   -> HANDSHAKE
 *   pool_fill         -> DIAL, or POOL_WAIT while backing off
 *   POOL_WAIT  timer  -> DIAL
 *   DIAL       dialed -> HANDSHAKE (client: the TLS end), RELAY (server)
 *   HANDSHAKE  done   -> RELAY (client), POOLED (client pool conn),
 *                        PREAMBLE (server, upseal/2 or /1), DIAL (server)
 *   PREAMBLE   came   -> DIAL
 *   POOLED     taken  -> RELAY (conn_accept hands it a plaintext end),
 *                        or PROXY_HEADER first (proxy_protocol = accept)
 *   PROXY_HEADER read -> DIAL, or RELAY with a ready pool conn
 * Every phase ends early on its timer (connect, handshake, idle,
 * pool_idle) or on an error, and RELAY ends when both pipes have passed
 * their EOF on: all through conn_drop, which is not a phase but a flag
 * (dropped) that the callbacks still in flight check on arrival.
 *
 * The timer is per phase for a reason: each phase has one thing it
 * waits for, and a peer that never sends it must cost a slot only that
 * long (a silent TLS client, a backend that never answers, a pool conn
 * nobody takes).
 */
#include "conn.h"

#include <netdb.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mbedtls/error.h>

#include "compat.h"
#include "conn_int.h"
#include "log.h"
#include "pool.h"
#include "preamble.h"
#include "tunnel_int.h"

uint64_t conn_open_count(struct conn_counters *cc)
{
	return atomic_load_explicit(&cc->open, memory_order_relaxed);
}

static void dial_next(struct conn *c);

/* ---- small helpers ---- */

/* The end this role dials: TLS for the client, plaintext for the server. */
static union stream *dialed(struct conn *c)
{
	return c->tun->role == CFG_CLIENT ? &c->tls : &c->plain;
}

static bool *dialed_open(struct conn *c)
{
	return c->tun->role == CFG_CLIENT ? &c->tls_open : &c->plain_open;
}

/* ---- the handshake budget (max_handshakes: budget.c picks) ---- */

int conn_shed_oldest(struct tunnel *t, uint64_t *retry_ms)
{
	struct conn *victim;
	int rc = budget_pick(t, &victim, retry_ms);
	if (rc != 0)
		return rc;
	conn_errorf(victim, "shed at max_handshakes = %u for a newer "
	    "connection (%s)", conn_cfg(victim)->max_handshakes,
	    victim->io.saw_bytes ? "handshake unfinished after 1s" :
	    "no byte received");
	STAT_ADD(t->stats->hs_shed, 1);
	conn_drop(victim, REASON_HANDSHAKE_SHED);
	return 0;
}

/* ---- teardown ---- */

static void conn_free(struct conn *c)
{
	struct tunnel *t = c->tun;
	bool pooled = c->pool;
	relay_ktls_free(c);
	tlsio_free(&c->io);
	free(c->hdr);
	chunk_free(c->pp_out);
	tunnel_conf_release(c->conf);	/* after the ssl that used it */
	if (c->ai_list != NULL)
		uv_freeaddrinfo(c->ai_list);
	struct conn *last;	/* t->conns keeps no tail */
	CONN_UNLINK(c, prev, next, t->conns, last);
	(void)last;
	free(c);
	if (pooled) {
		tunnel_pool_conn_freed(t);
	} else {
		atomic_fetch_sub_explicit(&t->counters->open, 1,
		    memory_order_relaxed);
		tunnel_conn_freed(t);
	}
}

static void on_closed(uv_handle_t *h)
{
	struct conn *c = h->data;
	c->refs--;
	if (c->dropped) {
		if (c->refs == 0)
			conn_free(c);
		return;
	}
	/* Only a failed dial attempt closes a handle of a live connection. */
	dial_next(c);
}

static void close_handle(uv_handle_t *h, bool *open)
{
	if (!*open)
		return;
	*open = false;
	uv_close(h, on_closed);
}

static void end(struct conn *c, enum reason why, bool refused)
{
	if (c->dropped)
		return;
	c->dropped = true;
	budget_leave(c);
	struct tunnel_stats *st = c->tun->stats;
	if (c->pool) {
		/* Not a client's connection (yet): the pool logs and counts it. */
		pool_ended(c, why);
	} else {
		verdict_log_end(c, why, refused);
		STAT_ADD(st->closed[reason_metric(why)], 1);
	}
	if (c->phase == PH_DIAL && reason_info(why)->connect_failure)
		STAT_ADD(st->connect_failures, 1);

	if (c->resolving)
		uv_cancel((uv_req_t *)&c->gai);	/* its callback still runs */
	if (c->timer_open)
		uv_timer_stop(&c->timer);
	close_handle((uv_handle_t *)&c->timer, &c->timer_open);
	if (c->plain_open && reason_info(why)->reset_plain &&
	    c->plain.h.type == UV_TCP) {
		c->plain_open = false;
		/* RST instead of FIN; refused while a shutdown is pending. */
		if (uv_tcp_close_reset(&c->plain.tcp, on_closed) != 0)
			uv_close(&c->plain.h, on_closed);
	}
	close_handle(&c->plain.h, &c->plain_open);
	close_handle(&c->tls.h, &c->tls_open);
	relay_ktls_close(c, on_closed);
}

void conn_drop(struct conn *c, enum reason why)
{
	end(c, why, false);
}

void conn_event(struct conn *c, int st)
{
	if (st < 0)
		conn_drop(c, conn_status_reason(st));
}

struct conn *conn_next(struct conn *c)
{
	return c->next;
}

/* ---- timers ---- */

static void dial(struct conn *c);
static void on_timer(uv_timer_t *timer);

/* Arm the one timer for ms from now (0: no deadline). */
static void phase_timer(struct conn *c, uint64_t ms)
{
	if (ms == 0)
		uv_timer_stop(&c->timer);
	else
		uv_timer_start(&c->timer, on_timer, ms, 0);
}

/* The one place a connection's phase changes; timeout_ms: its deadline. */
static void conn_enter(struct conn *c, enum phase ph, uint64_t timeout_ms)
{
	c->phase = ph;
	phase_timer(c, timeout_ms);
}

static void on_timer(uv_timer_t *timer)
{
	struct conn *c = timer->data;
	uint64_t idle = conn_cfg(c)->idle_timeout_ms;

	switch (c->phase) {
	case PH_DIAL:
		conn_drop(c, REASON_CONNECT_TIMEOUT);
		return;
	case PH_HANDSHAKE:
		conn_drop(c, REASON_HANDSHAKE_TIMEOUT);
		return;
	case PH_RELAY: {
		uint64_t quiet = uv_now(conn_loop(c)) - c->last_active;
		if (quiet >= idle)
			conn_drop(c, REASON_IDLE_TIMEOUT);
		else
			phase_timer(c, idle - quiet);
		return;
	}
	case PH_POOL_WAIT:
		dial(c);	/* the backoff is over */
		return;
	case PH_POOLED:
		conn_event(c, pool_recycle(c));
		return;
	case PH_PREAMBLE:
		conn_drop(c, REASON_IDLE_TIMEOUT);
		return;
	case PH_PROXY_HEADER:
		conn_event(c, origin_header_timeout(c));
		return;
	}
}

/* ---- handshake ---- */

/*
 * A refused peer or a failed handshake (rc: as verdict_alert's): the
 * alert that says why unless mbedTLS sent one in this handshake, then one
 * conn_end line, with the key.
 */
static void refuse(struct conn *c, int rc, enum reason why)
{
	unsigned char desc = verdict_alert(rc, c->io.peer.verdict);
	if (desc != 0 && !c->io.alert_out) {
		int st = relay_send_alert(c, desc);
		if (st != 0) {
			conn_event(c, st);
			return;
		}
	}
	STAT_ADD(c->tun->stats->hs_failed[reason_metric(why)], 1);
	if (c->io.peer.verdict == TLS_PEER_CHAIN_INVALID &&
	    c->io.peer.out_of_dates)
		STAT_ADD(c->tun->stats->peer_out_of_dates, 1);
	end(c, why, true);
}

static void relay_enter(struct conn *c);
static void handshaken(struct conn *c);

/* Run the handshake as far as the input allows; on success move on. */
static void handshake_step(struct conn *c)
{
	int rc = tlsio_handshake(&c->io);
	int st = relay_flush_tls(c);
	if (st != 0) {
		conn_event(c, st);
		return;
	}
	if (rc == MBEDTLS_ERR_SSL_WANT_READ || rc == MBEDTLS_ERR_SSL_WANT_WRITE)
		return;
	if (rc != 0) {
		enum reason why = verdict_handshake(c, rc);
		refuse(c, rc, why);
		return;
	}
	budget_leave(c);	/* the ~37 KB it holds are now a connection's */
	bool resumed = tls_resumed(&c->io.peer);	/* before the check fills it */
	c->resumed = resumed;
	/* Judged against the tunnel's settings now, not those of accept. */
	enum tls_verdict v = tls_check_peer(c->tun->conf->tls, &c->io.ssl,
	    &c->io.peer);
	if (v != TLS_PEER_OK) {
		refuse(c, 0, tls_verdict_reason(v));
		return;
	}
	metrics_handshake(c->tun->stats,
	    (double)(uv_hrtime() - c->hs_started) / 1e9, resumed);
	tls_session_save(c->conf->tls, &c->io.ssl);
	if (log_enabled(LOG_DEBUG)) {
		struct log_line l;
		char pin[PIN_TEXT_MAX];
		pin_format(&c->io.peer.pin, pin);
		log_begin(&l, LOG_DEBUG, "handshake_done");
		log_str(&l, "tunnel", conn_cfg(c)->name);
		log_u64(&l, "id", c->id);
		log_str(&l, "version", tls_version_name(&c->io.ssl));
		log_str(&l, "suite", tls_suite_name(&c->io.ssl));
		log_bool(&l, "resumed", resumed);
		log_str(&l, "peer_pin", pin);
		if (c->io.peer.names[0])
			log_str(&l, "peer_rule", c->io.peer.names);
		log_end(&l);
	}
	handshaken(c);
}

/* Client: a pool conn handshaken and checked: ready for a client. */
static void pooled_enter(struct conn *c)
{
	int st = pool_handshaken(c);
	if (st != 0) {
		conn_event(c, st);
		return;
	}
	conn_enter(c, PH_POOLED, pool_idle_ms(c));
	pool_ready(c);
	st = relay_tls_reading(c);
	if (st == 0)
		st = pool_tls_input(c);	/* what came with the handshake */
	conn_event(c, st);
	pool_fill(c->tun);
}

/* Server: the handshake negotiated upseal/2 or upseal/1: wait for the preamble. */
static void preamble_enter(struct conn *c)
{
	if (c->tun->stopping) {	/* no backend will be dialed any more */
		conn_drop(c, REASON_DRAIN);
		return;
	}
	/* No deadline with idle_timeout = 0, as for an open connection. */
	conn_enter(c, PH_PREAMBLE, conn_cfg(c)->idle_timeout_ms);
	c->pooled_at = uv_now(conn_loop(c));
	int st = relay_tls_reading(c);
	if (st == 0)
		st = pool_tls_input(c);	/* what came with the handshake */
	if (st == CONN_NEXT)
		dial(c);
	else
		conn_event(c, st);
}

/* The handshake passed and the peer is pinned: the next phase. */
static void handshaken(struct conn *c)
{
	if (c->tun->role == CFG_CLIENT) {
		if (c->pool) {
			pooled_enter(c);
			return;
		}
		int st = c->carried.family != PP_NONE ?
		    origin_send_preamble(c) : 0;
		if (st != 0)
			conn_event(c, st);
		else
			relay_enter(c);
	} else if (preamble_version(&c->io.ssl) != 0) {
		/* The backend is dialed when the preamble says so. */
		preamble_enter(c);
	} else {
		/* Only now, with a pinned peer, is the backend dialed. */
		dial(c);
	}
}

void conn_settings_changed(struct conn *c)
{
	if (c->dropped || c->tun->role != CFG_SERVER || c->phase != PH_PREAMBLE)
		return;
	enum tls_verdict v = tls_check_peer(c->tun->conf->tls, &c->io.ssl,
	    &c->io.peer);
	if (v == TLS_PEER_OK)
		return;
	conn_errorf(c, "refused after a reload: the peer no longer passes "
	    "the tunnel's pins or CA");
	conn_drop(c, tls_verdict_reason(v));
}

static void handshake_enter(struct conn *c)
{
	conn_enter(c, PH_HANDSHAKE, conn_cfg(c)->handshake_timeout_ms);
	c->hs_started = uv_hrtime();
	budget_enter(c);
	/* ALPN (and so a preamble) on pool conns and those that carry. */
	int rc = tlsio_init(&c->io, c->conf->tls,
	    c->pool || c->carried.family != PP_NONE, c->error,
	    sizeof c->error);
	if (rc == 0)
		relay_ktls_prepare(c);
	int st = rc != 0 ? conn_end_tls(c, "TLS set-up", rc) :
	    relay_tls_reading(c);
	if (st != 0)
		conn_event(c, st);
	else if (c->tun->role == CFG_CLIENT)
		handshake_step(c);	/* sends the ClientHello */
}

/* Both ends are up and the peer is pinned: relay, under idle_timeout. */
static void relay_enter(struct conn *c)
{
	conn_enter(c, PH_RELAY, conn_cfg(c)->idle_timeout_ms);
	conn_event(c, relay_begin(c));
}

/* ---- dialing ---- */

static void stream_tune(union stream *s, bool tls_end)
{
	if (s->h.type != UV_TCP)
		return;
	uv_tcp_nodelay(&s->tcp, 1);
	if (tls_end)
		uv_tcp_keepalive(&s->tcp, 1, 60);
}

static void on_connected(uv_connect_t *req, int status)
{
	struct conn *c = req->data;
	if (c->dropped || status == UV_ECANCELED)
		return;
	if (status < 0) {
		c->dial_err = status;
		/* Close this attempt; on_closed then tries the next address. */
		close_handle(&dialed(c)->h, dialed_open(c));
		return;
	}
	if (c->ai_list != NULL) {
		uv_freeaddrinfo(c->ai_list);
		c->ai_list = c->ai_next = NULL;
	}
	stream_tune(dialed(c), c->tun->role == CFG_CLIENT);
	if (c->tun->role == CFG_CLIENT) {
		handshake_enter(c);
		return;
	}
	/* The PROXY header, if any, is the backend's first byte. */
	int st = origin_send_header(c);
	if (st != 0)
		conn_event(c, st);
	else
		relay_enter(c);
}

/* Set up the handle of the end this role dials; NULL (c failed) on error. */
static union stream *dial_handle(struct conn *c, bool unix_socket)
{
	union stream *s = dialed(c);
	int rc = unix_socket ? uv_pipe_init(conn_loop(c), &s->pipe, 0) :
	    uv_tcp_init(conn_loop(c), &s->tcp);
	if (rc != 0) {
		conn_error_uv(c, "socket", rc);
		conn_drop(c, REASON_CONNECT_FAILED);
		return NULL;
	}
	s->h.data = c;
	*dialed_open(c) = true;
	c->refs++;
	c->connect_req.data = c;
	return s;
}

static void dial_addr(struct conn *c, const struct sockaddr *sa)
{
	union stream *s = dial_handle(c, false);
	if (s == NULL)
		return;
	int rc = uv_tcp_connect(&c->connect_req, &s->tcp, sa, on_connected);
	if (rc != 0) {
		c->dial_err = rc;
		close_handle(&s->h, dialed_open(c));
	}
}

/*
 * The server's backend is the plaintext end: unless allow_remote, an
 * address its name resolved to that is not loopback is never dialed
 * (a search domain or a missing hosts entry must not move it off the
 * host). True, with why, for such an address.
 */
static bool backend_refused(struct conn *c, const struct sockaddr *sa,
    char *why, size_t len)
{
	return c->tun->role == CFG_SERVER && !conn_cfg(c)->allow_remote &&
	    addr_check_resolved(conn_cfg(c)->connect.host, sa, why, len) != 0;
}

/* Try the next resolved address, or give up with the last error. */
static void dial_next(struct conn *c)
{
	char why[sizeof c->error];
	while (c->ai_next != NULL) {
		struct addrinfo *ai = c->ai_next;
		c->ai_next = ai->ai_next;
		if (!backend_refused(c, ai->ai_addr, why, sizeof why)) {
			dial_addr(c, ai->ai_addr);
			return;
		}
	}
	if (c->dial_err == 0 && c->ai_list != NULL &&
	    backend_refused(c, c->ai_list->ai_addr, why, sizeof why)) {
		/* None dialed: every address was refused; say so for the first. */
		conn_errorf(c, "%s", why);
		conn_drop(c, REASON_CONNECT_FAILED);
		return;
	}
	char where[ADDR_TEXT_MAX];
	addr_format(&conn_cfg(c)->connect, where, sizeof where);
	conn_errorf(c, "connect %s: %s", where,
	    c->dial_err ? log_uverr(c->dial_err) : "no address");
	conn_drop(c, REASON_CONNECT_FAILED);
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
	struct conn *c = req->data;
	c->resolving = false;
	c->refs--;
	if (c->dropped) {
		if (res != NULL)
			uv_freeaddrinfo(res);
		if (c->refs == 0)
			conn_free(c);
		return;
	}
	if (status < 0 || res == NULL) {
		conn_errorf(c, "resolve %s: %s",
		    conn_cfg(c)->connect.host, log_uverr(status));
		if (res != NULL)
			uv_freeaddrinfo(res);
		conn_drop(c, REASON_RESOLVE_FAILED);
		return;
	}
	c->ai_list = res;
	c->ai_next = res;
	dial_next(c);
}

static void dial_start(struct conn *c)
{
	const struct addr *a = &conn_cfg(c)->connect;
	if (a->kind == ADDR_UNIX) {
		union stream *s = dial_handle(c, true);
		if (s != NULL)
			uv_pipe_connect(&c->connect_req, &s->pipe, a->path,
			    on_connected);
		return;
	}
	if (a->numeric) {
		dial_addr(c, (const struct sockaddr *)&a->sa);
		return;
	}
	/* A name is resolved for each connection, so a moved peer is followed. */
	char port[8];
	struct addrinfo hints = { .ai_family = AF_UNSPEC,
		.ai_socktype = SOCK_STREAM, .ai_flags = AI_ADDRCONFIG };
	snprintf(port, sizeof port, "%u", a->port);
	c->gai.data = c;
	int rc = uv_getaddrinfo(conn_loop(c), &c->gai, on_resolved, a->host,
	    port, &hints);
	if (rc != 0) {
		conn_errorf(c, "resolve %s: %s", a->host,
		    log_uverr(rc));
		conn_drop(c, REASON_RESOLVE_FAILED);
		return;
	}
	c->resolving = true;
	c->refs++;
}

/* Enter PH_DIAL: dial the end this role dials, under connect_timeout. */
static void dial(struct conn *c)
{
	conn_enter(c, PH_DIAL, conn_cfg(c)->connect_timeout_ms);
	int st = relay_tls_reading(c);	/* off until the backend is up */
	if (st != 0)
		conn_event(c, st);
	else
		dial_start(c);
}

/* ---- accepting ---- */

static void on_plain_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);
static void on_tls_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);
static void on_written(struct pipe *p, int status);
static void on_shutdown(struct pipe *p, int status);

struct conn *conn_new(struct tunnel *t)
{
	struct conn *c = calloc(1, sizeof *c);
	if (c == NULL)
		return NULL;
	c->tun = t;
	c->conf = tunnel_conf_hold(t->conf);
	c->id = atomic_fetch_add(&t->counters->next_id, 1) + 1;
	c->started = uv_now(t->loop);
	snprintf(c->peer_text, sizeof c->peer_text, "-");
	c->next = t->conns;
	if (t->conns != NULL)
		t->conns->prev = c;
	t->conns = c;

	pipe_init(&c->p2t, &c->plain.s, &c->tls.s, on_plain_read, on_written,
	    on_shutdown, c);
	pipe_init(&c->t2p, &c->tls.s, &c->plain.s, on_tls_read, on_written,
	    on_shutdown, c);
	uv_timer_init(t->loop, &c->timer);
	c->timer.data = c;
	c->timer_open = true;
	c->refs = 1;
	return c;
}

/*
 * Client: the plaintext end is accepted (and its PROXY header read): hand
 * it a ready pool conn's TLS end, or dial one.
 */
static void client_go(struct conn *c)
{
	if (!c->tls_open) {
		dial(c);
		return;
	}
	int st = pool_handoff(c);
	if (st != 0)
		conn_event(c, st);
	else
		relay_enter(c);	/* the idle timeout starts now */
}

/* Client, proxy_protocol = accept: read the header, under its deadline. */
static void proxy_header_enter(struct conn *c)
{
	conn_enter(c, PH_PROXY_HEADER, conn_cfg(c)->proxy_header_timeout_ms);
	conn_event(c, origin_header_begin(c));
}

int conn_accept(struct tunnel *t)
{
	/* A client takes a ready pool conn if there is one. */
	struct conn *c = t->role == CFG_CLIENT ? pool_take(t) : NULL;
	if (c == NULL)
		c = conn_new(t);
	if (c == NULL) {
		log_msg(LOG_ERROR, "accept_failed", "tunnel %s: out of memory",
		    tunnel_cfg(t)->name);
		return -1;
	}
	c->started = uv_now(t->loop);
	t->live++;
	atomic_fetch_add_explicit(&t->counters->open, 1, memory_order_relaxed);
	STAT_ADD(t->stats->accepted, 1);

	union stream *s = t->role == CFG_CLIENT ? &c->plain : &c->tls;
	bool *open = t->role == CFG_CLIENT ? &c->plain_open : &c->tls_open;
	int rc = t->listener.h.type == UV_TCP ? uv_tcp_init(t->loop, &s->tcp) :
	    uv_pipe_init(t->loop, &s->pipe, 0);
	if (rc != 0) {
		conn_error_uv(c, "accept", rc);
		conn_drop(c, REASON_ACCEPT_FAILED);
		return 0;
	}
	s->h.data = c;
	*open = true;
	c->refs++;
	rc = uv_accept(&t->listener.s, &s->s);
	if (rc != 0) {
		conn_error_uv(c, "accept", rc);
		conn_drop(c, REASON_ACCEPT_FAILED);
		return 0;
	}
	verdict_describe_peer(c, s);
	stream_tune(s, t->role == CFG_SERVER);

	if (t->role == CFG_SERVER)
		handshake_enter(c);
	else if (tunnel_cfg(t)->proxy_protocol == CFG_PP_ACCEPT)
		proxy_header_enter(c);
	else {
		origin_from_peer(c);
		client_go(c);
	}
	return 0;
}

void conn_start_pool(struct conn *c, uint64_t delay_ms)
{
	if (delay_ms > 0)
		conn_enter(c, PH_POOL_WAIT, delay_ms);
	else
		dial(c);
}

void conn_drop_unused(struct tunnel *t, enum reason why)
{
	/* conn_drop frees nothing before the loop runs: the list holds. */
	for (struct conn *c = t->conns; c != NULL; c = c->next) {
		if (c->dropped || !(c->pool || c->phase == PH_PREAMBLE))
			continue;
		int st = c->phase == PH_POOLED ? pool_close_notify(c) : 0;
		conn_event(c, st);
		conn_drop(c, why);
	}
}

/* ---- the callbacks of the two directions ---- */

static void on_plain_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
	struct conn *c = s->data;
	if (n == 0 || c->dropped)
		return;
	if (c->phase != PH_PROXY_HEADER) {
		conn_event(c, relay_plain_read(c, n, buf));
		return;
	}
	int st = origin_header_input(c, n, buf);
	if (st == CONN_NEXT)
		client_go(c);
	else
		conn_event(c, st);
}

/* The TLS end's input, in every phase: to whoever the phase says. */
static void on_tls_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
	struct conn *c = s->data;
	int st = 0;
	if (n == 0 || c->dropped)
		return;
	if (n == UV_EOF) {
		tlsio_input(&c->io, NULL, 0);
		st = relay_tls_reading(c);
	} else if (n < 0) {
		conn_error_uv(c, "TLS read", (int)n);
		st = CONN_END(n == UV_ECONNRESET ? REASON_TLS_RESET :
		    REASON_TLS_ERROR);
	} else {
		conn_touch(c);
		tlsio_input(&c->io, (const unsigned char *)buf->base,
		    (size_t)n);
	}
	if (st != 0) {
		conn_event(c, st);
		return;
	}
	switch (c->phase) {
	case PH_HANDSHAKE:
		handshake_step(c);
		break;
	case PH_RELAY:
		conn_event(c, relay_tls_input(c));
		break;
	case PH_POOLED:
	case PH_PREAMBLE:
		st = pool_tls_input(c);
		if (st == CONN_NEXT)
			dial(c);
		else
			conn_event(c, st);
		break;
	default:
		break;
	}
	if (c->dropped)
		return;
	st = relay_settle(c);
	if (st == 0)
		st = relay_tls_reading(c);
	conn_event(c, st);
}

/* A write of either direction completed (UV_ECANCELED: c was dropped). */
static void on_written(struct pipe *p, int status)
{
	struct conn *c = p->data;
	if (!c->dropped)
		conn_event(c, relay_written(c, p, status));
}

static void on_shutdown(struct pipe *p, int status)
{
	struct conn *c = p->data;
	if (!c->dropped && status != UV_ECANCELED)
		conn_event(c, relay_shutdown_done(c, p, status));
}
