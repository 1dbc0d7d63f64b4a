/*
 * pool: pre-handshaken connections, both sides (see pool.h). The client
 * side keeps t->pool.target connections ready; the server side waits for
 * the preamble on connections that negotiated upseal/2 or upseal/1.
 *
 * A client's pool conn is a struct conn with c->pool set: in t->conns
 * (so tunnel_drop_all reaches it) but counted in t->pool.live, not in
 * t->live, so it neither counts against max_connections nor shows in
 * upseal_connections_open, and its end is logged here (debug, or one
 * warning per failure streak) instead of as a conn_end. pool_take turns
 * it into an ordinary accepted connection, which then logs its conn_end
 * like any other.
 */
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

/* Refill failures: wait 1 s, doubling up to 30 s, between attempts. */
#define POOL_BACKOFF_MIN_MS 1000
/* A handed-off connection's replacement dials this much later. */
#define POOL_REFILL_DELAY_MS 2
#define POOL_BACKOFF_MAX_MS (30 * 1000)

/* ---- the ready list ---- */

static void ready_push(struct conn *c)
{
	struct tunnel_pool *p = &c->tun->pool;
	c->ready_prev = NULL;
	c->ready_next = p->ready_list;
	if (p->ready_list != NULL)
		p->ready_list->ready_prev = c;
	p->ready_list = c;
	p->ready++;
	STAT_ADD(c->tun->stats->pool_ready, 1);
}

static void ready_unlink(struct conn *c)
{
	struct tunnel_pool *p = &c->tun->pool;
	struct conn *last;	/* the ready list keeps no tail */
	CONN_UNLINK(c, ready_prev, ready_next, p->ready_list, last);
	(void)last;
	p->ready--;
	atomic_fetch_sub_explicit(&c->tun->stats->pool_ready, 1, memory_order_relaxed);
}

/* ---- filling ---- */

/* One new pool conn: dial now, or after delay_ms (backoff). */
static int pool_open(struct tunnel *t, uint64_t delay_ms)
{
	struct conn *c = conn_new(t);
	if (c == NULL)
		return -1;	/* the next freed or readied conn tries again */
	c->pool = true;
	t->pool.live++;
	conn_start_pool(c, delay_ms);
	return 0;
}

/*
 * Open pool conns up to the target; each dials after min_delay ms at the
 * earliest (later in a failure streak).
 */
static void fill(struct tunnel *t, uint64_t min_delay)
{
	struct tunnel_pool *p = &t->pool;
	while (!t->stopping && p->live < p->target) {
		uint64_t delay = min_delay;
		if (p->failures > 0) {
			/* In a failure streak: one attempt at a time. */
			if (p->live > p->ready)
				return;
			uint64_t now = uv_now(t->loop);
			if (p->retry_at > now + delay)
				delay = p->retry_at - now;
		}
		if (pool_open(t, delay) != 0)
			return;
	}
}

void pool_fill(struct tunnel *t)
{
	fill(t, 0);
}

/*
 * A failure streak is this worker's; the warning and the recovery line are
 * the tunnel's: the first worker to enter a streak warns, the last to
 * leave one says it recovered.
 */
static bool streak_begin(struct tunnel *t)
{
	return atomic_fetch_add(&t->stats->pool_failing, 1) == 0;
}

static bool streak_end(struct tunnel *t)
{
	struct tunnel_pool *p = &t->pool;
	if (p->failures == 0)
		return false;
	p->failures = 0;
	return atomic_fetch_sub(&t->stats->pool_failing, 1) == 1;
}

void pool_configure(struct tunnel *t)
{
	struct tunnel_pool *p = &t->pool;
	streak_end(t);
	/* Each worker keeps its share of the tunnel's pool. */
	unsigned pool = t->role == CFG_CLIENT ? tunnel_cfg(t)->pool : 0;
	unsigned n = t->nworkers ? t->nworkers : 1;
	p->target = pool / n + (t->worker < pool % n ? 1 : 0);
	p->failures = 0;
	p->backoff_ms = 0;
	p->retry_at = 0;
	p->announce = p->target > 0;
	pool_fill(t);
}

int pool_close_notify(struct conn *c)
{
	if (c->io.ssl_init && c->tls_open && tlsio_close_notify(&c->io) == 0)
		return relay_flush_tls(c);
	return 0;
}

void pool_flush(struct tunnel *t, enum reason why)
{
	if (t->stopping)
		streak_end(t);	/* this worker is out of the tunnel's streak */
	conn_drop_unused(t, why);
}

/* ---- the client's pool conns ---- */

static void log_pool_line(struct conn *c, enum log_level level,
    const char *event, const char *reason)
{
	struct log_line l;
	char pin[PIN_TEXT_MAX];
	log_begin(&l, level, event);
	if (!l.on)
		return;
	log_str(&l, "tunnel", conn_cfg(c)->name);
	log_u64(&l, "id", c->id);
	if (reason != NULL)
		log_str(&l, "reason", reason);
	if (c->phase == PH_POOLED)
		log_u64(&l, "age_ms", uv_now(conn_loop(c)) - c->pooled_at);
	if (c->io.peer.verdict != TLS_PEER_OK && c->io.peer.has_pin) {
		pin_format(&c->io.peer.pin, pin);
		log_str(&l, "presented_pin", pin);
	}
	if (c->error[0])
		log_str(&l, "error", c->error);
	if (strcmp(event, "pool_failed") == 0) {
		uint64_t now = uv_now(conn_loop(c));
		uint64_t at = c->tun->pool.retry_at;
		log_u64(&l, "retry_ms", at > now ? at - now : 0);
		if (level == LOG_WARN)
			log_str(&l, "msg", "cannot open pool connections; "
			    "retrying with backoff (further failures of this "
			    "streak are logged at debug level)");
	}
	log_end(&l);
}

/* A pool conn failed before it was ready: back off, warn once a streak. */
static void pool_failed(struct conn *c, enum reason why)
{
	struct tunnel *t = c->tun;
	struct tunnel_pool *p = &t->pool;
	uint64_t now = uv_now(t->loop);
	STAT_ADD(t->stats->pool_failures, 1);
	bool first = ++p->failures == 1 && streak_begin(t);
	/* Failures of one round (all in flight at once) double it once. */
	if (now >= p->retry_at) {
		p->backoff_ms = p->backoff_ms == 0 ? POOL_BACKOFF_MIN_MS :
		    p->backoff_ms * 2 > POOL_BACKOFF_MAX_MS ? POOL_BACKOFF_MAX_MS :
		    p->backoff_ms * 2;
		p->retry_at = now + p->backoff_ms;
	}
	log_pool_line(c, first ? LOG_WARN : LOG_DEBUG, "pool_failed",
	    reason_name(why));
}

void pool_ended(struct conn *c, enum reason why)
{
	if (c->phase == PH_POOLED) {
		ready_unlink(c);
		log_pool_line(c, LOG_DEBUG, "pool_conn_end", reason_name(why));
		return;
	}
	if (reason_info(why)->pool_ours) {
		log_pool_line(c, LOG_DEBUG, "pool_conn_end", reason_name(why));
		return;
	}
	pool_failed(c, why);
}

int pool_handshaken(struct conn *c)
{
	struct tunnel *t = c->tun;
	struct tunnel_pool *p = &t->pool;
	if (preamble_version(&c->io.ssl) == 0) {
		/*
		 * Not an upseal-server that knows the pool (or an older one):
		 * it has dialed its backend already. Close; retry with backoff,
		 * so a server upgraded later is picked up.
		 */
		conn_errorf(c, "the server did not select ALPN " PREAMBLE_ALPN2
		    " or " PREAMBLE_ALPN1 " (not an upseal-server, or one "
		    "without the pool); pooled connections need it");
		int st = pool_close_notify(c);
		return st != 0 ? st : CONN_END(REASON_POOL_UNSUPPORTED);
	}
	if (p->failures > 0) {
		unsigned failures = p->failures;
		struct log_line l;
		log_begin(&l, streak_end(t) ? LOG_INFO : LOG_DEBUG,
		    "pool_recovered");
		log_str(&l, "tunnel", conn_cfg(c)->name);
		log_u64(&l, "failures", failures);
		log_end(&l);
		p->backoff_ms = 0;
		p->retry_at = 0;
		p->announce = true;
	}
	return 0;
}

uint64_t pool_idle_ms(const struct conn *c)
{
	/*
	 * Replaced after pool_idle, less up to a quarter spread by id, so
	 * that connections opened together are not all replaced together.
	 */
	uint64_t idle = c->conf->cfg->pool_idle_ms;
	return idle - (idle / 4) * ((c->id * 2654435761u) % 1024) / 1024;
}

void pool_ready(struct conn *c)
{
	struct tunnel_pool *p = &c->tun->pool;
	c->pooled_at = uv_now(conn_loop(c));
	ready_push(c);
	log_pool_line(c, LOG_DEBUG, "pool_conn_ready", NULL);
	if (p->announce && p->ready >= p->target) {
		struct log_line l;
		p->announce = false;
		log_begin(&l, LOG_INFO, "pool_filled");
		log_str(&l, "tunnel", conn_cfg(c)->name);
		log_u64(&l, "size", p->target);
		log_end(&l);
	}
}

struct conn *pool_take(struct tunnel *t)
{
	struct tunnel_pool *p = &t->pool;
	struct conn *c = p->ready_list;
	if (c == NULL) {
		/* A worker whose share is 0 misses too: the tunnel has a pool. */
		if (t->role == CFG_CLIENT && tunnel_cfg(t)->pool > 0)
			STAT_ADD(t->stats->pool_misses, 1);
		return NULL;
	}
	ready_unlink(c);
	c->pool = false;	/* an accepted connection from now on */
	p->live--;
	/*
	 * The replacement dials a little later: started now, its connect and
	 * handshake would run on both sidecars' loops ahead of this client's
	 * first bytes (measured: the ClientHello went out before the
	 * client's data was read), which is the latency the pool is for.
	 */
	fill(t, POOL_REFILL_DELAY_MS);
	return c;
}

int pool_handoff(struct conn *c)
{
	STAT_ADD(c->tun->stats->pool_handoffs, 1);
	log_pool_line(c, LOG_DEBUG, "pool_handoff", NULL);
	return origin_send_preamble(c);
}

/* Client, PH_POOLED: the server may only close (or send a TLS 1.3 ticket). */
static int pooled_input(struct conn *c)
{
	unsigned char buf[64];
	size_t len = 0;
	enum reason why = REASON_TLS_ERROR;
	enum tlsio_status st = tlsio_read(&c->io, buf, sizeof buf, &len, &why);
	if (st == TLSIO_FAIL && why != REASON_TRUNCATED) {
		int rc = relay_flush_tls(c);	/* the alert this end sends */
		return rc != 0 ? rc : CONN_END(why);
	} else if (len > 0) {
		conn_errorf(c, "the server sent data before the pool preamble");
		return CONN_END(REASON_TLS_ERROR);
	} else if (st == TLSIO_CLOSED || st == TLSIO_FAIL) {
		c->error[0] = 0;	/* a truncation is a close here */
		return CONN_END(REASON_POOL_CLOSED);	/* and refill */
	}
	return 0;
}

int pool_recycle(struct conn *c)
{
	STAT_ADD(c->tun->stats->pool_recycled, 1);
	int st = pool_close_notify(c);
	return st != 0 ? st : CONN_END(REASON_POOL_IDLE);	/* and refill */
}

/* ---- the server's side: waiting for the preamble ---- */

static int preamble_input(struct conn *c)
{
	enum reason why = REASON_TLS_ERROR;
	struct pp_addrs carried;
	if (c->hdr == NULL && (c->hdr = malloc(PREAMBLE_MAX)) == NULL)
		return CONN_END(REASON_NOMEM);
	enum preamble_result r = preamble_recv(&c->io,
	    preamble_version(&c->io.ssl), c->hdr, &c->hdr_len, &carried, &why);
	if (r != PREAMBLE_WAIT) {
		free(c->hdr);
		c->hdr = NULL;
		c->hdr_len = 0;
	}
	switch (r) {
	case PREAMBLE_GO:
		STAT_ADD(c->tun->stats->pool_handoffs, 1);
		if (carried.family != PP_NONE &&
		    conn_cfg(c)->trust_client_address) {
			c->carried = carried;
			STAT_ADD(c->tun->stats->carried, 1);
		}
		if (log_enabled(LOG_DEBUG)) {
			struct log_line l;
			log_begin(&l, LOG_DEBUG, "preamble");
			log_str(&l, "tunnel", conn_cfg(c)->name);
			log_u64(&l, "id", c->id);
			log_u64(&l, "waited_ms",
			    uv_now(conn_loop(c)) - c->pooled_at);
			log_str(&l, "msg", "dialing the backend");
			log_end(&l);
		}
		/* The rest of the record waits in mbedTLS for the relay. */
		return CONN_NEXT;
	case PREAMBLE_BAD:	/* the detail is in c->error */
		return CONN_END(REASON_BAD_PREAMBLE);
	case PREAMBLE_CLOSED:
		/* The client recycled or flushed an unused conn. */
		return CONN_END(REASON_POOL_CLOSED);
	case PREAMBLE_ERROR: {
		int rc = relay_flush_tls(c);	/* the alert this end sends */
		return rc != 0 ? rc : CONN_END(why);
	}
	case PREAMBLE_WAIT:
		break;
	}
	return 0;
}

int pool_tls_input(struct conn *c)
{
	if (c->phase == PH_PREAMBLE)
		return preamble_input(c);
	if (c->phase == PH_POOLED)
		return pooled_input(c);
	return 0;
}
