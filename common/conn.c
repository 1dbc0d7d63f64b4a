#include "conn.h"

#include <netdb.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mbedtls/error.h>

#include "compat.h"
#include "log.h"

/*
 * Each direction queues at most RELAY_HIGH bytes (plus one chunk) on its
 * writer before its reader stops; reading resumes below RELAY_LOW.
 */
#define RELAY_HIGH (256 * 1024)
#define RELAY_LOW (64 * 1024)
#define CHUNK (64 * 1024)
/* A chunk of plaintext becomes at most four records of 16 KiB. */
#define TLS_OUT_CAP (CHUNK + 4 * 64)
/* The standard write buffer fits either. */
#define WBUF_CAP TLS_OUT_CAP

enum phase { PH_DIAL, PH_HANDSHAKE, PH_RELAY };

/* One queued write: the request and the bytes it owns. */
struct wbuf {
	uv_write_t req;
	struct conn *c;
	size_t len;
	size_t cap;
	unsigned char data[];
};

struct conn {
	struct tunnel *tun;
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

	/* TLS. */
	mbedtls_ssl_context ssl;
	bool ssl_init;
	struct tls_peer peer;
	struct wbuf *tls_out;		/* records not yet handed to libuv */
	const unsigned char *in;	/* ciphertext not yet taken by mbedTLS */
	size_t in_len;
	unsigned char *in_saved;	/* in's own copy when kept for later */
	bool tls_eof;			/* TCP EOF on the TLS end */
	bool saw_tls_bytes;
	unsigned char first_byte;	/* first byte the TLS end received */

	/* Relay. */
	size_t plain_queued, tls_queued;	/* bytes in writes not yet done */
	bool plain_reading, tls_reading;
	bool p2t_eof, p2t_done;		/* plaintext EOF: close_notify sent, flushed */
	bool t2p_eof, t2p_done;		/* close_notify got: FIN sent, flushed */
	uv_shutdown_t plain_shut, tls_shut;
	uint64_t plain_in, plain_out;
	uint64_t started, last_active;

	bool dropped;
	char peer_text[ADDR_TEXT_MAX];
	char error[160];		/* detail for the conn_end line */
};

static _Atomic uint64_t next_conn_id;

/*
 * Reads are consumed before the read callback returns (plaintext is
 * encrypted into tls_out at once; leftover ciphertext is copied into
 * in_saved), so one buffer per thread serves every connection.
 */
static _Thread_local unsigned char read_buf[CHUNK];

static void drop(struct conn *c, const char *reason, bool reset_plain);
static void tls_drain(struct conn *c);
static void dial_next(struct conn *c);

/* ---- small helpers ---- */

static uv_loop_t *loop_of(struct conn *c)
{
	return c->tun->loop;
}

static void touch(struct conn *c)
{
	c->last_active = uv_now(loop_of(c));
}

/* Record the detail that the conn_end line will carry as error=. */
static void errorf(struct conn *c, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void errorf(struct conn *c, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(c->error, sizeof c->error, fmt, ap);
	va_end(ap);
}

static void set_error_uv(struct conn *c, const char *what, int err)
{
	errorf(c, "%s: %s", what, log_uverr(err));
}

static void set_error_tls(struct conn *c, const char *what, int err)
{
	char msg[160];
	errorf(c, "%s: %s", what,
	    log_tlserr(err, msg, sizeof msg));
}

static const struct cfg_tunnel *cfg_of(struct conn *c)
{
	return c->tun->cfg;
}

/* The end this role dials: TLS for the client, plaintext for the server. */
static union stream *dialed(struct conn *c)
{
	return c->tun->role == CFG_CLIENT ? &c->tls : &c->plain;
}

static bool *dialed_open(struct conn *c)
{
	return c->tun->role == CFG_CLIENT ? &c->tls_open : &c->plain_open;
}

static void phase_timer(struct conn *c, uint64_t ms);

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	(void)h;
	(void)suggested;
	buf->base = (char *)read_buf;
	buf->len = sizeof read_buf;
}

/*
 * Write buffers of the standard size are recycled through a small
 * per-thread free list: a 64 KiB malloc/free per chunk makes glibc grow
 * and trim the heap with brk(2) on every chunk, which measured as most of
 * the relay's system time.
 */
#define WBUF_POOL_MAX 32
static _Thread_local struct wbuf *wbuf_pool[WBUF_POOL_MAX];
static _Thread_local unsigned wbuf_pooled;

static struct wbuf *wbuf_new(struct conn *c, size_t cap)
{
	struct wbuf *w;
	if (cap <= WBUF_CAP && wbuf_pooled > 0) {
		w = wbuf_pool[--wbuf_pooled];
	} else {
		if (cap < WBUF_CAP)
			cap = WBUF_CAP;
		w = malloc(sizeof *w + cap);
		if (w == NULL)
			return NULL;
		w->cap = cap;
	}
	w->c = c;
	w->len = 0;
	w->req.data = w;
	return w;
}

static void wbuf_free(struct wbuf *w)
{
	if (w == NULL)
		return;
	if (w->cap == WBUF_CAP && wbuf_pooled < WBUF_POOL_MAX)
		wbuf_pool[wbuf_pooled++] = w;
	else
		free(w);
}

void conn_release_buffers(void)
{
	while (wbuf_pooled > 0)
		free(wbuf_pool[--wbuf_pooled]);
}

/* ---- teardown ---- */

static void conn_free(struct conn *c)
{
	struct tunnel *t = c->tun;
	if (c->ssl_init)
		mbedtls_ssl_free(&c->ssl);	/* zeroizes keys and buffers */
	if (c->ai_list != NULL)
		uv_freeaddrinfo(c->ai_list);
	free(c->in_saved);
	wbuf_free(c->tls_out);
	if (c->prev != NULL)
		c->prev->next = c->next;
	else
		t->conns = c->next;
	if (c->next != NULL)
		c->next->prev = c->prev;
	free(c);
	tunnel_conn_freed(t);
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

static void close_handle(struct conn *c, uv_handle_t *h, bool *open)
{
	if (!*open)
		return;
	*open = false;
	uv_close(h, on_closed);
	(void)c;
}

static bool reason_is_quiet(const char *reason)
{
	return strcmp(reason, "closed") == 0 || strcmp(reason, "drain") == 0 ||
	    strcmp(reason, "idle_timeout") == 0;
}

static void log_conn_end(struct conn *c, const char *reason)
{
	struct log_line l;
	char pin[PIN_TEXT_MAX] = "";
	log_begin(&l, reason_is_quiet(reason) ? LOG_INFO : LOG_WARN, "conn_end");
	if (!l.on)
		return;
	if (c->peer.has_pin)
		pin_format_short(&c->peer.pin, pin);
	log_str(&l, "tunnel", cfg_of(c)->name);
	log_u64(&l, "id", c->id);
	log_str(&l, "peer", c->peer_text);
	log_str(&l, "peer_pin", pin[0] ? pin : "-");
	log_u64(&l, "plain_in", c->plain_in);
	log_u64(&l, "plain_out", c->plain_out);
	log_u64(&l, "duration_ms", uv_now(loop_of(c)) - c->started);
	log_str(&l, "reason", reason);
	if (c->error[0])
		log_str(&l, "error", c->error);
	log_end(&l);
}

static void drop(struct conn *c, const char *reason, bool reset_plain)
{
	if (c->dropped)
		return;
	c->dropped = true;
	log_conn_end(c, reason);

	if (c->resolving)
		uv_cancel((uv_req_t *)&c->gai);	/* its callback still runs */
	if (c->timer_open)
		uv_timer_stop(&c->timer);
	close_handle(c, (uv_handle_t *)&c->timer, &c->timer_open);
	if (c->plain_open && reset_plain &&
	    c->plain.h.type == UV_TCP) {
		c->plain_open = false;
		/* RST instead of FIN; refused while a shutdown is pending. */
		if (uv_tcp_close_reset(&c->plain.tcp, on_closed) != 0)
			uv_close(&c->plain.h, on_closed);
	}
	close_handle(c, &c->plain.h, &c->plain_open);
	close_handle(c, &c->tls.h, &c->tls_open);
}

void conn_drop(struct conn *c, const char *reason)
{
	drop(c, reason, false);
}

struct conn *conn_next(struct conn *c)
{
	return c->next;
}

/* ---- timers ---- */

static void on_timer(uv_timer_t *timer)
{
	struct conn *c = timer->data;
	uint64_t idle = cfg_of(c)->idle_timeout_ms;

	switch (c->phase) {
	case PH_DIAL:
		drop(c, "connect_timeout", false);
		return;
	case PH_HANDSHAKE:
		drop(c, "handshake_timeout", false);
		return;
	case PH_RELAY: {
		uint64_t quiet = uv_now(loop_of(c)) - c->last_active;
		if (quiet >= idle)
			drop(c, "idle_timeout", false);
		else
			phase_timer(c, idle - quiet);
		return;
	}
	}
}

/* Arm the one timer for ms from now (0: no deadline). */
static void phase_timer(struct conn *c, uint64_t ms)
{
	if (ms == 0)
		uv_timer_stop(&c->timer);
	else
		uv_timer_start(&c->timer, on_timer, ms, 0);
}

/* ---- reading on and off ---- */

static void on_plain_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);
static void on_tls_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);

static void plain_reading(struct conn *c, bool on)
{
	if (on == c->plain_reading || !c->plain_open)
		return;
	int rc = on ? uv_read_start(&c->plain.s, on_alloc, on_plain_read) :
	    uv_read_stop(&c->plain.s);
	if (rc != 0) {
		set_error_uv(c, "plaintext read", rc);
		drop(c, "plain_error", false);
		return;
	}
	c->plain_reading = on;
}

/* Read the TLS end exactly when there is somewhere for the bytes to go. */
static void tls_read_update(struct conn *c)
{
	bool want;
	if (c->dropped || !c->tls_open)
		return;
	switch (c->phase) {
	case PH_HANDSHAKE:
		want = !c->tls_eof && c->in_len == 0;
		break;
	case PH_RELAY:
		want = !c->tls_eof && !c->t2p_eof && c->in_len == 0 &&
		    c->plain_queued < RELAY_HIGH;
		break;
	default:
		want = false;
	}
	if (want == c->tls_reading)
		return;
	int rc = want ? uv_read_start(&c->tls.s, on_alloc, on_tls_read) :
	    uv_read_stop(&c->tls.s);
	if (rc != 0) {
		set_error_uv(c, "TLS read", rc);
		drop(c, "tls_error", true);
		return;
	}
	c->tls_reading = want;
}

/* ---- the TLS end's byte streams (mbedTLS BIO) ---- */

static void on_tls_written(uv_write_t *req, int status)
{
	struct wbuf *w = req->data;
	struct conn *c = w->c;
	c->tls_queued -= w->len;
	wbuf_free(w);
	if (c->dropped)
		return;
	if (status < 0) {
		set_error_uv(c, "TLS write", status);
		drop(c, status == UV_ECONNRESET || status == UV_EPIPE ?
		    "tls_reset" : "tls_error", true);
		return;
	}
	if (c->phase == PH_RELAY && !c->p2t_eof && c->tls_queued < RELAY_LOW)
		plain_reading(c, true);
}

/* Hand the records mbedTLS produced to libuv as one write. */
static void flush_tls(struct conn *c)
{
	struct wbuf *w = c->tls_out;
	if (w == NULL || w->len == 0 || c->dropped)
		return;
	c->tls_out = NULL;
	uv_buf_t b = uv_buf_init((char *)w->data, (unsigned)w->len);
	int rc = uv_write(&w->req, &c->tls.s, &b, 1, on_tls_written);
	if (rc != 0) {
		wbuf_free(w);
		set_error_uv(c, "TLS write", rc);
		drop(c, "tls_error", true);
		return;
	}
	c->tls_queued += w->len;
}

static int bio_send(void *arg, const unsigned char *buf, size_t len)
{
	struct conn *c = arg;
	if (c->dropped)
		return MBEDTLS_ERR_SSL_INTERNAL_ERROR;
	if (c->tls_out != NULL && c->tls_out->cap - c->tls_out->len < len)
		flush_tls(c);
	if (c->tls_out == NULL) {
		c->tls_out = wbuf_new(c, len);
		if (c->tls_out == NULL)
			return MBEDTLS_ERR_SSL_ALLOC_FAILED;
	}
	memcpy(c->tls_out->data + c->tls_out->len, buf, len);
	c->tls_out->len += len;
	return (int)len;
}

static int bio_recv(void *arg, unsigned char *buf, size_t len)
{
	struct conn *c = arg;
	if (c->in_len == 0)
		return c->tls_eof ? 0 : MBEDTLS_ERR_SSL_WANT_READ;
	size_t n = len < c->in_len ? len : c->in_len;
	memcpy(buf, c->in, n);
	c->in += n;
	c->in_len -= n;
	return (int)n;
}

/* After processing a read: keep what mbedTLS did not take, in our own copy. */
static void in_settle(struct conn *c)
{
	if (c->in_len == 0) {
		free(c->in_saved);
		c->in_saved = NULL;
		c->in = NULL;
		return;
	}
	if (c->in_saved != NULL)
		return;	/* already ours; in points into it */
	c->in_saved = malloc(c->in_len);
	if (c->in_saved == NULL) {
		c->in_len = 0;
		drop(c, "nomem", true);
		return;
	}
	memcpy(c->in_saved, c->in, c->in_len);
	c->in = c->in_saved;
}

/* ---- relay ---- */

static void on_plain_written(uv_write_t *req, int status)
{
	struct wbuf *w = req->data;
	struct conn *c = w->c;
	c->plain_queued -= w->len;
	wbuf_free(w);
	if (c->dropped)
		return;
	if (status < 0) {
		set_error_uv(c, "plaintext write", status);
		drop(c, status == UV_ECONNRESET || status == UV_EPIPE ?
		    "plain_reset" : "plain_error", false);
		return;
	}
	if (c->plain_queued < RELAY_LOW && !c->t2p_eof) {
		tls_drain(c);
		if (!c->dropped)
			in_settle(c);
	}
}

static void maybe_finish(struct conn *c)
{
	if (c->p2t_done && c->t2p_done)
		drop(c, "closed", false);
}

static void on_plain_shutdown(uv_shutdown_t *req, int status)
{
	struct conn *c = req->data;
	if (c->dropped || status == UV_ECANCELED)
		return;
	if (status < 0) {
		set_error_uv(c, "plaintext shutdown", status);
		drop(c, "plain_error", false);
		return;
	}
	c->t2p_done = true;
	maybe_finish(c);
}

static void on_tls_shutdown(uv_shutdown_t *req, int status)
{
	struct conn *c = req->data;
	if (c->dropped || status == UV_ECANCELED)
		return;
	if (status < 0) {
		set_error_uv(c, "TLS shutdown", status);
		drop(c, "tls_error", true);
		return;
	}
	c->p2t_done = true;
	maybe_finish(c);
}

/* close_notify arrived: pass the FIN on, after what is queued. */
static void t2p_end(struct conn *c)
{
	c->t2p_eof = true;
	c->plain_shut.data = c;
	int rc = uv_shutdown(&c->plain_shut, &c->plain.s, on_plain_shutdown);
	if (rc != 0) {
		set_error_uv(c, "plaintext shutdown", rc);
		drop(c, "plain_error", false);
	}
}

/* The plaintext end sent its FIN: send close_notify, then our FIN. */
static void p2t_end(struct conn *c)
{
	c->p2t_eof = true;
	plain_reading(c, false);
	int rc = mbedtls_ssl_close_notify(&c->ssl);
	if (rc != 0 && rc != MBEDTLS_ERR_SSL_WANT_WRITE) {
		set_error_tls(c, "close_notify", rc);
		drop(c, "tls_error", true);
		return;
	}
	flush_tls(c);
	if (c->dropped)
		return;
	c->tls_shut.data = c;
	rc = uv_shutdown(&c->tls_shut, &c->tls.s, on_tls_shutdown);
	if (rc != 0) {
		set_error_uv(c, "TLS shutdown", rc);
		drop(c, "tls_error", true);
	}
}

/* Hand one chunk of decrypted bytes to the plaintext end. */
static void plain_write(struct conn *c, struct wbuf *w)
{
	uv_buf_t b = uv_buf_init((char *)w->data, (unsigned)w->len);
	int rc = uv_write(&w->req, &c->plain.s, &b, 1, on_plain_written);
	if (rc != 0) {
		wbuf_free(w);
		set_error_uv(c, "plaintext write", rc);
		drop(c, "plain_error", false);
		return;
	}
	c->plain_queued += w->len;
	c->plain_out += w->len;
}

/*
 * Decrypt everything mbedTLS can give (from its own buffer and from
 * c->in) into writes on the plaintext end, until it wants more input or
 * the plaintext end has RELAY_HIGH bytes queued.
 */
static void tls_drain(struct conn *c)
{
	while (!c->t2p_eof && c->plain_queued < RELAY_HIGH && !c->dropped) {
		struct wbuf *w = wbuf_new(c, WBUF_CAP);
		if (w == NULL) {
			drop(c, "nomem", true);
			return;
		}
		int rc = 0;
		while (w->len < w->cap) {
			rc = mbedtls_ssl_read(&c->ssl, w->data + w->len,
			    w->cap - w->len);
			if (rc <= 0)
				break;
			w->len += (size_t)rc;
		}
		if (w->len > 0)
			plain_write(c, w);
		else
			wbuf_free(w);
		if (c->dropped)
			return;
		if (rc > 0)
			continue;
		if (rc == MBEDTLS_ERR_SSL_WANT_READ)
			break;
#if defined(MBEDTLS_ERR_SSL_RECEIVED_NEW_SESSION_TICKET)
		if (rc == MBEDTLS_ERR_SSL_RECEIVED_NEW_SESSION_TICKET)
			continue;
#endif
		if (rc == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY) {
			t2p_end(c);
			break;
		}
		if (rc == 0 || rc == MBEDTLS_ERR_SSL_CONN_EOF) {
			errorf(c, "the TLS peer "
			    "closed the connection without close_notify");
			drop(c, "truncated", true);
			return;
		}
		set_error_tls(c, "TLS read", rc);
		drop(c, "tls_error", true);
		return;
	}
	tls_read_update(c);
}

static void on_plain_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
	struct conn *c = s->data;
	if (n == 0 || c->dropped)
		return;
	if (n == UV_EOF) {
		p2t_end(c);
		return;
	}
	if (n < 0) {
		set_error_uv(c, "plaintext read", (int)n);
		drop(c, n == UV_ECONNRESET ? "plain_reset" : "plain_error", false);
		return;
	}
	touch(c);
	c->plain_in += (uint64_t)n;
	const unsigned char *p = (const unsigned char *)buf->base;
	size_t left = (size_t)n;
	while (left > 0) {
		int rc = mbedtls_ssl_write(&c->ssl, p, left);
		if (rc < 0) {
			set_error_tls(c, "TLS write", rc);
			drop(c, rc == MBEDTLS_ERR_SSL_ALLOC_FAILED ? "nomem" :
			    "tls_error", true);
			return;
		}
		p += rc;
		left -= (size_t)rc;
	}
	flush_tls(c);
	if (!c->dropped && c->tls_queued >= RELAY_HIGH)
		plain_reading(c, false);
}

static void relay_start(struct conn *c)
{
	c->phase = PH_RELAY;
	touch(c);
	phase_timer(c, cfg_of(c)->idle_timeout_ms);
	plain_reading(c, true);
	if (c->dropped)
		return;
	/* Records may already wait in mbedTLS's buffer or in c->in. */
	tls_drain(c);
	if (!c->dropped)
		in_settle(c);
}

/* ---- handshake ---- */

static const char *handshake_reason(struct conn *c, int rc)
{
	if (c->peer.verdict != TLS_PEER_OK)
		return tls_verdict_reason(c->peer.verdict);
	if (c->saw_tls_bytes && c->first_byte != 0x16 &&
	    c->tun->role == CFG_SERVER) {
		snprintf(c->error, sizeof c->error,
		    "the peer did not speak TLS (first byte 0x%02x%s)",
		    c->first_byte, c->first_byte >= 'A' && c->first_byte <= 'Z' ?
		    ", looks like plaintext" : "");
		return "not_tls";
	}
	switch (rc) {
	case MBEDTLS_ERR_SSL_CONN_EOF:
		errorf(c, "the peer closed the "
		    "connection during the handshake");
		return "handshake_eof";
	case COMPAT_ERR_PROTOCOL_VERSION:
		set_error_tls(c, "handshake", rc);
		return "protocol_version";
	case MBEDTLS_ERR_SSL_FATAL_ALERT_MESSAGE:
		errorf(c, "the peer sent a fatal "
		    "alert (it may not pin our key)");
		return "peer_alert";
	default:
		set_error_tls(c, "handshake", rc);
		return "handshake_failed";
	}
}

static void handshake_failed(struct conn *c, const char *reason)
{
	struct log_line l;
	char pin[PIN_TEXT_MAX];
	c->tun->handshakes_failed++;
	log_begin(&l, LOG_WARN, "handshake_failed");
	log_str(&l, "tunnel", cfg_of(c)->name);
	log_u64(&l, "id", c->id);
	log_str(&l, "peer", c->peer_text);
	log_str(&l, "reason", reason);
	if (c->peer.has_pin) {
		pin_format(&c->peer.pin, pin);
		log_str(&l, "presented_pin", pin);
	}
	if (c->error[0])
		log_str(&l, "error", c->error);
	log_end(&l);
	drop(c, reason, true);
}

static void dial_start(struct conn *c);

static void handshake_step(struct conn *c)
{
	int rc = mbedtls_ssl_handshake(&c->ssl);
	flush_tls(c);
	if (c->dropped || rc == MBEDTLS_ERR_SSL_WANT_READ ||
	    rc == MBEDTLS_ERR_SSL_WANT_WRITE)
		return;
	if (rc != 0) {
		handshake_failed(c, handshake_reason(c, rc));
		return;
	}
	enum tls_verdict v = tls_check_peer(&c->ssl, &c->peer);
	if (v != TLS_PEER_OK) {
		handshake_failed(c, tls_verdict_reason(v));
		return;
	}
	if (log_enabled(LOG_DEBUG)) {
		struct log_line l;
		char pin[PIN_TEXT_MAX];
		pin_format(&c->peer.pin, pin);
		log_begin(&l, LOG_DEBUG, "handshake_done");
		log_str(&l, "tunnel", cfg_of(c)->name);
		log_u64(&l, "id", c->id);
		log_str(&l, "version", tls_version_name(&c->ssl));
		log_str(&l, "suite", tls_suite_name(&c->ssl));
		log_str(&l, "peer_pin", pin);
		log_end(&l);
	}
	if (c->tun->role == CFG_CLIENT) {
		relay_start(c);
	} else {
		/* Only now, with a pinned peer, is the backend dialed. */
		c->phase = PH_DIAL;
		tls_read_update(c);
		phase_timer(c, cfg_of(c)->connect_timeout_ms);
		dial_start(c);
	}
}

static void on_tls_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
	struct conn *c = s->data;
	if (n == 0 || c->dropped)
		return;
	if (n == UV_EOF) {
		c->tls_eof = true;
		tls_read_update(c);
	} else if (n < 0) {
		set_error_uv(c, "TLS read", (int)n);
		drop(c, n == UV_ECONNRESET ? "tls_reset" : "tls_error", true);
		return;
	} else {
		touch(c);
		if (!c->saw_tls_bytes) {
			c->saw_tls_bytes = true;
			c->first_byte = (unsigned char)buf->base[0];
		}
		c->in = (const unsigned char *)buf->base;
		c->in_len = (size_t)n;
	}
	if (c->phase == PH_HANDSHAKE)
		handshake_step(c);
	else if (c->phase == PH_RELAY)
		tls_drain(c);
	if (!c->dropped)
		in_settle(c);
	if (!c->dropped)
		tls_read_update(c);
}

static void tls_begin(struct conn *c)
{
	c->phase = PH_HANDSHAKE;
	phase_timer(c, cfg_of(c)->handshake_timeout_ms);
	mbedtls_ssl_init(&c->ssl);
	c->ssl_init = true;
	int rc = tls_session_setup(c->tun->tls, &c->ssl, &c->peer);
	if (rc != 0) {
		set_error_tls(c, "TLS set-up", rc);
		drop(c, rc == MBEDTLS_ERR_SSL_ALLOC_FAILED ? "nomem" :
		    "tls_error", true);
		return;
	}
	mbedtls_ssl_set_bio(&c->ssl, c, bio_send, bio_recv, NULL);
	tls_read_update(c);
	if (!c->dropped && c->tun->role == CFG_CLIENT)
		handshake_step(c);	/* sends the ClientHello */
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
		close_handle(c, &dialed(c)->h, dialed_open(c));
		return;
	}
	if (c->ai_list != NULL) {
		uv_freeaddrinfo(c->ai_list);
		c->ai_list = c->ai_next = NULL;
	}
	stream_tune(dialed(c), c->tun->role == CFG_CLIENT);
	if (c->tun->role == CFG_CLIENT)
		tls_begin(c);
	else
		relay_start(c);
}

static void dial_addr(struct conn *c, const struct sockaddr *sa)
{
	union stream *s = dialed(c);
	int rc = uv_tcp_init(loop_of(c), &s->tcp);
	if (rc != 0) {
		set_error_uv(c, "socket", rc);
		drop(c, "connect_failed", true);
		return;
	}
	s->h.data = c;
	*dialed_open(c) = true;
	c->refs++;
	c->connect_req.data = c;
	rc = uv_tcp_connect(&c->connect_req, &s->tcp, sa, on_connected);
	if (rc != 0) {
		c->dial_err = rc;
		close_handle(c, &s->h, dialed_open(c));
	}
}

/* Try the next resolved address, or give up with the last error. */
static void dial_next(struct conn *c)
{
	if (c->ai_next != NULL) {
		struct addrinfo *ai = c->ai_next;
		c->ai_next = ai->ai_next;
		dial_addr(c, ai->ai_addr);
		return;
	}
	char where[ADDR_TEXT_MAX];
	addr_format(&cfg_of(c)->connect, where, sizeof where);
	errorf(c, "connect %s: %s", where,
	    c->dial_err ? log_uverr(c->dial_err) : "no address");
	drop(c, "connect_failed", true);
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
		errorf(c, "resolve %s: %s",
		    cfg_of(c)->connect.host, log_uverr(status));
		if (res != NULL)
			uv_freeaddrinfo(res);
		drop(c, "resolve_failed", true);
		return;
	}
	c->ai_list = res;
	c->ai_next = res;
	dial_next(c);
}

static void dial_start(struct conn *c)
{
	const struct addr *a = &cfg_of(c)->connect;
	if (a->kind == ADDR_UNIX) {
		union stream *s = dialed(c);
		int rc = uv_pipe_init(loop_of(c), &s->pipe, 0);
		if (rc != 0) {
			set_error_uv(c, "socket", rc);
			drop(c, "connect_failed", true);
			return;
		}
		s->h.data = c;
		*dialed_open(c) = true;
		c->refs++;
		c->connect_req.data = c;
		uv_pipe_connect(&c->connect_req, &s->pipe, a->path, on_connected);
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
	int rc = uv_getaddrinfo(loop_of(c), &c->gai, on_resolved, a->host,
	    port, &hints);
	if (rc != 0) {
		errorf(c, "resolve %s: %s", a->host,
		    log_uverr(rc));
		drop(c, "resolve_failed", true);
		return;
	}
	c->resolving = true;
	c->refs++;
}

/* ---- accepting ---- */

static void describe_peer(struct conn *c, union stream *s)
{
	if (s->h.type != UV_TCP) {
		snprintf(c->peer_text, sizeof c->peer_text, "unix");
		return;
	}
	struct sockaddr_storage ss;
	int len = sizeof ss;
	if (uv_tcp_getpeername(&s->tcp, (struct sockaddr *)&ss, &len) == 0)
		addr_format_sockaddr((struct sockaddr *)&ss, c->peer_text,
		    sizeof c->peer_text);
	else
		snprintf(c->peer_text, sizeof c->peer_text, "unknown");
}

void conn_accept(struct tunnel *t)
{
	struct conn *c = calloc(1, sizeof *c);
	if (c == NULL) {
		/* Leave it pending; the next freed connection retries. */
		t->accept_held = true;
		log_msg(LOG_ERROR, "accept_failed", "tunnel %s: out of memory",
		    t->cfg->name);
		return;
	}
	c->tun = t;
	c->id = atomic_fetch_add(&next_conn_id, 1) + 1;
	c->started = uv_now(t->loop);
	snprintf(c->peer_text, sizeof c->peer_text, "-");
	c->next = t->conns;
	if (t->conns != NULL)
		t->conns->prev = c;
	t->conns = c;
	t->live++;
	t->accepted++;

	uv_timer_init(t->loop, &c->timer);
	c->timer.data = c;
	c->timer_open = true;
	c->refs = 1;

	union stream *s = t->role == CFG_CLIENT ? &c->plain : &c->tls;
	bool *open = t->role == CFG_CLIENT ? &c->plain_open : &c->tls_open;
	int rc = t->listener.h.type == UV_TCP ? uv_tcp_init(t->loop, &s->tcp) :
	    uv_pipe_init(t->loop, &s->pipe, 0);
	if (rc != 0) {
		set_error_uv(c, "accept", rc);
		drop(c, "accept_failed", false);
		return;
	}
	s->h.data = c;
	*open = true;
	c->refs++;
	rc = uv_accept(&t->listener.s, &s->s);
	if (rc != 0) {
		set_error_uv(c, "accept", rc);
		drop(c, "accept_failed", false);
		return;
	}
	describe_peer(c, s);
	stream_tune(s, t->role == CFG_SERVER);

	if (t->role == CFG_CLIENT) {
		c->phase = PH_DIAL;
		phase_timer(c, t->cfg->connect_timeout_ms);
		dial_start(c);
	} else {
		tls_begin(c);
	}
}
