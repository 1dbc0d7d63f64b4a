/*
 * relay: the bytes of an established connection: the mbedTLS BIO over
 * libuv, both directions with their bounded queues, half-close and
 * truncation. The connection's life (dial, handshake, teardown) is in
 * conn.c; the struct and the functions the two share are in conn_int.h.
 */
#include <errno.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <string.h>

#include <mbedtls/error.h>

#include "compat.h"
#include "conn_int.h"
#include "log.h"

/*
 * Reads are consumed before the read callback returns (plaintext is
 * encrypted into tls_out at once; leftover ciphertext is copied into
 * in_saved), so one buffer per thread serves every connection.
 */
static _Thread_local unsigned char read_buf[CHUNK];

static void tls_drain(struct conn *c);
static void in_settle(struct conn *c);
static void on_plain_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);

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

void relay_wbuf_free(struct wbuf *w)
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

/* ---- reading on and off ---- */

static void on_plain_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);
void relay_on_tls_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);

static void plain_reading(struct conn *c, bool on)
{
	if (on == c->plain_reading || !c->plain_open)
		return;
	int rc = on ? uv_read_start(&c->plain.s, on_alloc, on_plain_read) :
	    uv_read_stop(&c->plain.s);
	if (rc != 0) {
		conn_error_uv(c, "plaintext read", rc);
		conn_fail(c, REASON_PLAIN_ERROR);
		return;
	}
	c->plain_reading = on;
}

/* Read the TLS end exactly when there is somewhere for the bytes to go. */
void relay_tls_reading(struct conn *c)
{
	bool want;
	if (c->dropped || !c->tls_open)
		return;
	switch (c->phase) {
	case PH_HANDSHAKE:
	case PH_POOLED:
	case PH_PREAMBLE:
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
	int rc = want ? uv_read_start(&c->tls.s, on_alloc, relay_on_tls_read) :
	    uv_read_stop(&c->tls.s);
	if (rc != 0) {
		conn_error_uv(c, "TLS read", rc);
		conn_fail(c, REASON_TLS_ERROR);
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
	relay_wbuf_free(w);
	if (c->dropped)
		return;
	if (status < 0) {
		conn_error_uv(c, "TLS write", status);
		conn_fail(c, status == UV_ECONNRESET || status == UV_EPIPE ?
		    REASON_TLS_RESET : REASON_TLS_ERROR);
		return;
	}
	if (c->phase == PH_RELAY && !c->p2t_eof && c->tls_queued < RELAY_LOW)
		plain_reading(c, true);
}

/*
 * Write what w holds on s, first with uv_try_write: when nothing is queued
 * there (libuv refuses otherwise, so the order holds), a record or a chunk
 * usually goes out in that one write(2), with no request. A uv_write that
 * completes makes libuv stop and re-arm the descriptor's epoll interest,
 * one more system call per message on each side (strace of the ping-pong
 * test). What the socket does not take (or an error, which uv_write then
 * reports through cb) goes to uv_write as before. Returns the bytes left
 * queued in w (then *queued), or 0 with w freed; a negative libuv code if
 * uv_write refused (w freed).
 */
static int stream_write(uv_stream_t *s, struct wbuf *w, uv_write_cb cb,
    size_t *queued)
{
	uv_buf_t b = uv_buf_init((char *)w->data, (unsigned)w->len);
	int n = uv_try_write(s, &b, 1);
	if (n == (int)w->len) {
		relay_wbuf_free(w);
		return 0;
	}
	if (n > 0) {	/* the rest, in place: w->len is what stays queued */
		w->len -= (size_t)n;
		b = uv_buf_init((char *)w->data + n, (unsigned)w->len);
	}
	int rc = uv_write(&w->req, s, &b, 1, cb);
	if (rc != 0) {
		relay_wbuf_free(w);
		return rc;
	}
	*queued += w->len;
	return (int)w->len;
}

/* Hand the records mbedTLS produced to libuv as one write. */
void relay_flush_tls(struct conn *c)
{
	struct wbuf *w = c->tls_out;
	if (w == NULL || w->len == 0 || c->dropped)
		return;
	c->tls_out = NULL;
	int rc = stream_write(&c->tls.s, w, on_tls_written, &c->tls_queued);
	if (rc < 0) {
		conn_error_uv(c, "TLS write", rc);
		conn_fail(c, REASON_TLS_ERROR);
	}
}

void relay_send_alert(struct conn *c, unsigned char desc)
{
	if (c->dropped)
		return;
	(void)mbedtls_ssl_send_alert_message(&c->ssl,
	    MBEDTLS_SSL_ALERT_LEVEL_FATAL, desc);
	relay_flush_tls(c);
}

int relay_bio_send(void *arg, const unsigned char *buf, size_t len)
{
	struct conn *c = arg;
	if (c->dropped)
		return MBEDTLS_ERR_SSL_INTERNAL_ERROR;
	/*
	 * A fatal alert in the clear (7 bytes: header, level, description)
	 * can only come before the keys are in use, in the handshake: keep
	 * its description so the log can say why (no_application_protocol).
	 */
	if (len == 7 && buf[0] == MBEDTLS_SSL_MSG_ALERT &&
	    buf[5] == MBEDTLS_SSL_ALERT_LEVEL_FATAL)
		c->alert_sent = buf[6];
	/* Encrypted too, a TLS 1.2 record still shows its type. */
	if (len > 0 && buf[0] == MBEDTLS_SSL_MSG_ALERT)
		c->alert_out = true;
	if (c->tls_out != NULL && c->tls_out->cap - c->tls_out->len < len) {
		relay_flush_tls(c);
		if (c->dropped)
			return MBEDTLS_ERR_SSL_INTERNAL_ERROR;
	}
	if (c->tls_out == NULL) {
		c->tls_out = wbuf_new(c, len);
		if (c->tls_out == NULL)
			return MBEDTLS_ERR_SSL_ALLOC_FAILED;
	}
	memcpy(c->tls_out->data + c->tls_out->len, buf, len);
	c->tls_out->len += len;
	return (int)len;
}

int relay_bio_recv(void *arg, unsigned char *buf, size_t len)
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
		conn_fail(c, REASON_NOMEM);
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
	relay_wbuf_free(w);
	if (c->dropped)
		return;
	if (status < 0) {
		conn_error_uv(c, "plaintext write", status);
		conn_fail(c, status == UV_ECONNRESET || status == UV_EPIPE ?
		    REASON_PLAIN_RESET : REASON_PLAIN_ERROR);
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
		conn_fail(c, REASON_CLOSED);
}

static void on_plain_shutdown(uv_shutdown_t *req, int status)
{
	struct conn *c = req->data;
	if (c->dropped || status == UV_ECANCELED)
		return;
	if (status < 0) {
		conn_error_uv(c, "plaintext shutdown", status);
		conn_fail(c, REASON_PLAIN_ERROR);
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
	if (status == UV_ENOTCONN && c->t2p_eof) {
		/*
		 * The peer sent close_notify and then closed outright (as
		 * TLS 1.2 allows): nothing is left to say to it. Done.
		 */
		status = 0;
	}
	if (status < 0) {
		conn_error_uv(c, "TLS shutdown", status);
		conn_fail(c, status == UV_ENOTCONN || status == UV_ECONNRESET ||
		    status == UV_EPIPE ? REASON_TLS_RESET : REASON_TLS_ERROR);
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
		conn_error_uv(c, "plaintext shutdown", rc);
		conn_fail(c, REASON_PLAIN_ERROR);
	}
}

/* The plaintext end sent its FIN: send close_notify, then our FIN. */
static void p2t_end(struct conn *c)
{
	c->p2t_eof = true;
	plain_reading(c, false);
	int rc = mbedtls_ssl_close_notify(&c->ssl);
	if (rc != 0 && rc != MBEDTLS_ERR_SSL_WANT_WRITE) {
		conn_error_tls(c, "close_notify", rc);
		conn_fail(c, REASON_TLS_ERROR);
		return;
	}
	relay_flush_tls(c);
	if (c->dropped)
		return;
	c->tls_shut.data = c;
	rc = uv_shutdown(&c->tls_shut, &c->tls.s, on_tls_shutdown);
	if (rc != 0) {
		conn_error_uv(c, "TLS shutdown", rc);
		conn_fail(c, REASON_TLS_ERROR);
	}
}

/* Hand one chunk of decrypted bytes to the plaintext end. */
static void plain_write(struct conn *c, struct wbuf *w)
{
	size_t len = w->len;
	int rc = stream_write(&c->plain.s, w, on_plain_written,
	    &c->plain_queued);
	if (rc < 0) {
		conn_error_uv(c, "plaintext write", rc);
		conn_fail(c, REASON_PLAIN_ERROR);
		return;
	}
	c->plain_out += len;
	STAT_ADD(c->tun->stats->bytes_out, len);
}

/*
 * Decrypt everything mbedTLS can give (from its own buffer and from
 * c->in) into writes on the plaintext end, until it wants more input or
 * the plaintext end has RELAY_HIGH bytes queued.
 */
static void tls_drain(struct conn *c)
{
	size_t stalled_at = SIZE_MAX;	/* in_len when WANT_READ left input */
	while (!c->t2p_eof && c->plain_queued < RELAY_HIGH && !c->dropped) {
		struct wbuf *w = wbuf_new(c, WBUF_CAP);
		if (w == NULL) {
			conn_fail(c, REASON_NOMEM);
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
			relay_wbuf_free(w);
		if (c->dropped)
			return;
		if (rc == MBEDTLS_ERR_SSL_INVALID_MAC) {
			/* mbedTLS queued the bad_record_mac alert: send it. */
			relay_flush_tls(c);
			conn_errorf(c, "a record failed its integrity check "
			    "(tampered or corrupted)");
			conn_fail(c, REASON_BAD_RECORD);
			return;
		}
		if (rc == MBEDTLS_ERR_SSL_BAD_INPUT_DATA) {
			/*
			 * The only way a read of ours gets this (2.28 and 3.6):
			 * a record header whose length does not fit mbedTLS's
			 * input buffer, over what the protocol allows. mbedTLS
			 * sends nothing; RFC 5246 6.2.3 says record_overflow.
			 */
			relay_send_alert(c, MBEDTLS_SSL_ALERT_MSG_RECORD_OVERFLOW);
			conn_errorf(c, "record too large: the peer announced a "
			    "record longer than TLS allows");
			conn_fail(c, REASON_RECORD_TOO_LARGE);
			return;
		}
		if (c->tls_out != NULL && c->tls_out->len > 0 &&
		    compat_is_tls12(&c->ssl)) {
			/*
			 * Reading made mbedTLS answer: in TLS 1.2 with
			 * renegotiation off, the only answer it gives is the
			 * no_renegotiation alert to a peer that asked for a new
			 * handshake. Send it and end: a peer that tries this is
			 * not ours. (TLS 1.3 servers send tickets from here.)
			 */
			relay_flush_tls(c);
			conn_errorf(c, "the peer tried to renegotiate (refused)");
			conn_fail(c, REASON_RENEGOTIATION);
			return;
		}
		if (rc > 0)
			continue;
		if (rc == MBEDTLS_ERR_SSL_WANT_READ) {
			/*
			 * Usually: our input is used up. But mbedTLS 3.6 also
			 * says WANT_READ after a post-handshake message (a TLS
			 * 1.3 ticket) with records still waiting: go on while
			 * that makes progress.
			 */
			if ((c->in_len > 0 || mbedtls_ssl_check_pending(&c->ssl)) &&
			    c->in_len != stalled_at) {
				stalled_at = c->in_len;
				continue;
			}
			break;
		}
#if defined(MBEDTLS_ERR_SSL_RECEIVED_NEW_SESSION_TICKET)
		if (rc == MBEDTLS_ERR_SSL_RECEIVED_NEW_SESSION_TICKET) {
			/* TLS 1.3: the ticket comes after the handshake. */
			tls_session_save(c->conf->tls, &c->ssl);
			continue;
		}
#endif
		if (rc == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY) {
			t2p_end(c);
			break;
		}
		if (rc == 0 || rc == MBEDTLS_ERR_SSL_CONN_EOF) {
			conn_errorf(c, "the TLS peer "
			    "closed the connection without close_notify");
			conn_fail(c, REASON_TRUNCATED);
			return;
		}
		conn_error_tls(c, "TLS read", rc);
		conn_fail(c, REASON_TLS_ERROR);
		return;
	}
	/* TLS 1.3 sends tickets from inside mbedtls_ssl_read. */
	relay_flush_tls(c);
	if (c->dropped)
		return;
	relay_tls_reading(c);
}

/*
 * libuv reports a hang-up as EOF when its last read was short, even when
 * the hang-up was a reset (the socket's error is then still pending). A
 * reset must not become a clean close downstream: ask the socket.
 */
static bool pending_reset(union stream *s)
{
	uv_os_fd_t fd;
	int err = 0;
	socklen_t len = sizeof err;
	if (s->h.type != UV_TCP || uv_fileno(&s->h, &fd) != 0)
		return false;
	return getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 &&
	    err == ECONNRESET;
}

static void on_plain_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
	struct conn *c = s->data;
	if (n == 0 || c->dropped)
		return;
	if (n == UV_EOF && pending_reset(&c->plain))
		n = UV_ECONNRESET;
	if (n == UV_EOF) {
		p2t_end(c);
		return;
	}
	if (n < 0) {
		conn_error_uv(c, "plaintext read", (int)n);
		conn_fail(c, n == UV_ECONNRESET ? REASON_PLAIN_RESET : REASON_PLAIN_ERROR);
		return;
	}
	conn_touch(c);
	c->plain_in += (uint64_t)n;
	STAT_ADD(c->tun->stats->bytes_in, (uint64_t)n);
	const unsigned char *p = (const unsigned char *)buf->base;
	size_t left = (size_t)n;
	while (left > 0) {
		int rc = mbedtls_ssl_write(&c->ssl, p, left);
#if defined(MBEDTLS_ERR_SSL_RECEIVED_NEW_SESSION_TICKET)
		if (rc == MBEDTLS_ERR_SSL_RECEIVED_NEW_SESSION_TICKET) {
			/* TLS 1.3: a ticket was processed on the way. */
			tls_session_save(c->conf->tls, &c->ssl);
			continue;
		}
#endif
		if (rc < 0) {
			conn_error_tls(c, "TLS write", rc);
			conn_fail(c, rc == MBEDTLS_ERR_SSL_ALLOC_FAILED ? REASON_NOMEM :
			    REASON_TLS_ERROR);
			return;
		}
		p += rc;
		left -= (size_t)rc;
	}
	relay_flush_tls(c);
	if (!c->dropped && c->tls_queued >= RELAY_HIGH)
		plain_reading(c, false);
}

void relay_start(struct conn *c)
{
	c->phase = PH_RELAY;
	conn_touch(c);
	conn_phase_timer(c, conn_cfg(c)->idle_timeout_ms);
	plain_reading(c, true);
	if (c->dropped)
		return;
	/* Records may already wait in mbedTLS's buffer or in c->in. */
	tls_drain(c);
	if (!c->dropped)
		in_settle(c);
}

void relay_on_tls_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
	struct conn *c = s->data;
	if (n == 0 || c->dropped)
		return;
	if (n == UV_EOF) {
		c->tls_eof = true;
		relay_tls_reading(c);
	} else if (n < 0) {
		conn_error_uv(c, "TLS read", (int)n);
		conn_fail(c, n == UV_ECONNRESET ? REASON_TLS_RESET : REASON_TLS_ERROR);
		return;
	} else {
		conn_touch(c);
		if (!c->saw_tls_bytes) {
			c->saw_tls_bytes = true;
			c->first_byte = (unsigned char)buf->base[0];
		}
		c->in = (const unsigned char *)buf->base;
		c->in_len = (size_t)n;
	}
	if (c->phase == PH_HANDSHAKE)
		conn_handshake_step(c);
	else if (c->phase == PH_RELAY)
		tls_drain(c);
	else if (c->phase == PH_POOLED || c->phase == PH_PREAMBLE)
		pool_tls_input(c);
	if (!c->dropped)
		in_settle(c);
	if (!c->dropped)
		relay_tls_reading(c);
}

