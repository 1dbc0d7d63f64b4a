/*
 * relay: the bytes of an established connection: the TLS end's socket
 * under tlsio (tls layer), both directions with their bounded queues,
 * half-close and truncation. The connection's life (dial, handshake,
 * teardown) is in conn.c; the struct and the functions the two share are
 * in conn_int.h.
 */
#include <errno.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <string.h>

#include "conn_int.h"
#include "log.h"

/*
 * Reads are consumed before the read callback returns (plaintext is
 * encrypted at once; ciphertext mbedTLS left is copied by tlsio_settle),
 * so one buffer per thread serves every connection.
 */
static _Thread_local unsigned char read_buf[CHUNK_READ];

static void tls_drain(struct conn *c);
static void on_plain_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	(void)h;
	(void)suggested;
	buf->base = (char *)read_buf;
	buf->len = sizeof read_buf;
}

void conn_release_buffers(void)
{
	chunk_release_spares();
}

/* One queued write: the request and the chunk it sends. */
struct wreq {
	uv_write_t req;
	struct conn *c;
	struct chunk *ch;
};

/* ---- reading on and off ---- */

/*
 * Start or stop reading end s (*reading says which it does now); a libuv
 * error ends c with why.
 */
static void set_reading(struct conn *c, union stream *s, bool on,
    uv_read_cb cb, bool *reading, enum reason why)
{
	if (on == *reading)
		return;
	int rc = on ? uv_read_start(&s->s, on_alloc, cb) : uv_read_stop(&s->s);
	if (rc != 0) {
		conn_error_uv(c, s == &c->tls ? "TLS read" : "plaintext read",
		    rc);
		conn_fail(c, why);
		return;
	}
	*reading = on;
}

static void plain_reading(struct conn *c, bool on)
{
	if (c->plain_open)
		set_reading(c, &c->plain, on, on_plain_read, &c->plain_reading,
		    REASON_PLAIN_ERROR);
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
		want = tlsio_wants_input(&c->io);
		break;
	case PH_RELAY:
		want = tlsio_wants_input(&c->io) && !c->t2p_eof &&
		    c->plain_queued < RELAY_HIGH;
		break;
	default:
		want = false;
	}
	set_reading(c, &c->tls, want, relay_on_tls_read, &c->tls_reading,
	    REASON_TLS_ERROR);
}

/* ---- writing ---- */

/*
 * Write ch on s, first with uv_try_write: when nothing is queued there
 * (libuv refuses otherwise, so the order holds), a record or a chunk
 * usually goes out in that one write(2), with no request. A uv_write that
 * completes makes libuv stop and re-arm the descriptor's epoll interest,
 * one more system call per message on each side (strace of the ping-pong
 * test). What the socket does not take (or an error, which uv_write then
 * reports through cb) goes to uv_write. ch is taken. Returns 0 (then
 * *queued grew by what stays queued), or a negative libuv code.
 */
static int stream_write(struct conn *c, uv_stream_t *s, struct chunk *ch,
    uv_write_cb cb, size_t *queued)
{
	uv_buf_t b = uv_buf_init((char *)ch->data, (unsigned)ch->len);
	int n = uv_try_write(s, &b, 1);
	if (n == (int)ch->len) {
		chunk_free(ch);
		return 0;
	}
	if (n > 0) {	/* the rest, in place: ch->len is what stays queued */
		ch->len -= (size_t)n;
		memmove(ch->data, ch->data + n, ch->len);
		b = uv_buf_init((char *)ch->data, (unsigned)ch->len);
	}
	struct wreq *w = malloc(sizeof *w);
	if (w == NULL) {
		chunk_free(ch);
		return UV_ENOMEM;
	}
	w->c = c;
	w->ch = ch;
	w->req.data = w;
	int rc = uv_write(&w->req, s, &b, 1, cb);
	if (rc != 0) {
		chunk_free(ch);
		free(w);
		return rc;
	}
	*queued += ch->len;
	return 0;
}

/*
 * A queued write completed (or failed, or was cancelled by the close):
 * free it and count it off. Returns c if it is still live and the write
 * went out; NULL otherwise, c ended for the error if it was live.
 */
static struct conn *write_done(uv_write_t *req, int status, bool tls)
{
	struct wreq *w = req->data;
	struct conn *c = w->c;
	*(tls ? &c->tls_queued : &c->plain_queued) -= w->ch->len;
	chunk_free(w->ch);
	free(w);
	if (c->dropped)
		return NULL;
	if (status < 0) {
		bool reset = status == UV_ECONNRESET || status == UV_EPIPE;
		conn_error_uv(c, tls ? "TLS write" : "plaintext write", status);
		conn_fail(c, tls ? (reset ? REASON_TLS_RESET : REASON_TLS_ERROR) :
		    reset ? REASON_PLAIN_RESET : REASON_PLAIN_ERROR);
		return NULL;
	}
	return c;
}

static void on_tls_written(uv_write_t *req, int status)
{
	struct conn *c = write_done(req, status, true);
	if (c == NULL)
		return;
	if (c->phase == PH_RELAY && !c->p2t_eof && c->tls_queued < RELAY_LOW)
		plain_reading(c, true);
}

/* Hand the records mbedTLS produced to libuv as one write. */
void relay_flush_tls(struct conn *c)
{
	struct chunk *ch = tlsio_take_out(&c->io);
	if (ch == NULL)
		return;
	if (c->dropped || !c->tls_open) {
		chunk_free(ch);
		return;
	}
	int rc = stream_write(c, &c->tls.s, ch, on_tls_written, &c->tls_queued);
	if (rc < 0) {
		conn_error_uv(c, "TLS write", rc);
		conn_fail(c, REASON_TLS_ERROR);
	}
}

void relay_send_alert(struct conn *c, unsigned char desc)
{
	if (c->dropped)
		return;
	tlsio_alert(&c->io, desc);
	relay_flush_tls(c);
}

/* After processing TLS input: keep what mbedTLS did not take. */
static void in_settle(struct conn *c)
{
	if (!c->dropped && tlsio_settle(&c->io) != 0)
		conn_fail(c, REASON_NOMEM);
}

/* ---- relay ---- */

static void on_plain_written(uv_write_t *req, int status)
{
	struct conn *c = write_done(req, status, false);
	if (c == NULL)
		return;
	if (c->plain_queued < RELAY_LOW && !c->t2p_eof) {
		tls_drain(c);
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
	if (tlsio_close_notify(&c->io) != 0) {
		conn_fail(c, REASON_TLS_ERROR);
		return;
	}
	relay_flush_tls(c);
	if (c->dropped)
		return;
	c->tls_shut.data = c;
	int rc = uv_shutdown(&c->tls_shut, &c->tls.s, on_tls_shutdown);
	if (rc != 0) {
		conn_error_uv(c, "TLS shutdown", rc);
		conn_fail(c, REASON_TLS_ERROR);
	}
}

/* Hand one chunk of decrypted bytes to the plaintext end. */
static void plain_write(struct conn *c, struct chunk *ch)
{
	size_t len = ch->len;
	int rc = stream_write(c, &c->plain.s, ch, on_plain_written,
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
 * Decrypt everything mbedTLS can give (from its own buffer and from the
 * input tlsio holds) into writes on the plaintext end, until it wants
 * more input or the plaintext end has RELAY_HIGH bytes queued.
 */
static void tls_drain(struct conn *c)
{
	enum tlsio_status st = TLSIO_MORE;
	while (st == TLSIO_MORE && !c->t2p_eof &&
	    c->plain_queued < RELAY_HIGH && !c->dropped) {
		struct chunk *ch = chunk_new(CHUNK_CAP);
		if (ch == NULL) {
			conn_fail(c, REASON_NOMEM);
			return;
		}
		enum reason why = REASON_TLS_ERROR;
		st = tlsio_read(&c->io, ch->data, ch->cap, &ch->len, &why);
		if (ch->len > 0)
			plain_write(c, ch);
		else
			chunk_free(ch);
		if (c->dropped)
			return;
		if (st == TLSIO_CLOSED) {
			t2p_end(c);
		} else if (st == TLSIO_FAIL) {
			relay_flush_tls(c);	/* the alert this end sends */
			conn_fail(c, why);
			return;
		}
	}
	/* TLS 1.3 sends tickets from inside mbedtls_ssl_read. */
	relay_flush_tls(c);
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
		conn_fail(c, n == UV_ECONNRESET ? REASON_PLAIN_RESET :
		    REASON_PLAIN_ERROR);
		return;
	}
	conn_touch(c);
	c->plain_in += (uint64_t)n;
	STAT_ADD(c->tun->stats->bytes_in, (uint64_t)n);
	enum reason why;
	if (tlsio_write(&c->io, (const unsigned char *)buf->base, (size_t)n,
	    &why) == TLSIO_FAIL) {
		conn_fail(c, why);
		return;
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
	/* Records may already wait in mbedTLS's buffer or in tlsio's input. */
	tls_drain(c);
	in_settle(c);
}

void relay_on_tls_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
	struct conn *c = s->data;
	if (n == 0 || c->dropped)
		return;
	if (n == UV_EOF) {
		tlsio_input(&c->io, NULL, 0);
		relay_tls_reading(c);
	} else if (n < 0) {
		conn_error_uv(c, "TLS read", (int)n);
		conn_fail(c, n == UV_ECONNRESET ? REASON_TLS_RESET :
		    REASON_TLS_ERROR);
		return;
	} else {
		conn_touch(c);
		tlsio_input(&c->io, (const unsigned char *)buf->base,
		    (size_t)n);
	}
	if (c->phase == PH_HANDSHAKE)
		conn_handshake_step(c);
	else if (c->phase == PH_RELAY)
		tls_drain(c);
	else if (c->phase == PH_POOLED || c->phase == PH_PREAMBLE)
		pool_tls_input(c);
	in_settle(c);
	if (!c->dropped)
		relay_tls_reading(c);
}
