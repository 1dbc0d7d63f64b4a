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

static int tls_drain(struct conn *c);

void relay_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
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
 * error is CONN_END(why).
 */
static int set_reading(struct conn *c, union stream *s, bool on,
    uv_read_cb cb, bool *reading, enum reason why)
{
	if (on == *reading)
		return 0;
	int rc = on ? uv_read_start(&s->s, relay_alloc, cb) :
	    uv_read_stop(&s->s);
	if (rc != 0) {
		conn_error_uv(c, s == &c->tls ? "TLS read" : "plaintext read",
		    rc);
		return CONN_END(why);
	}
	*reading = on;
	return 0;
}

static int plain_reading(struct conn *c, bool on)
{
	if (!c->plain_open)
		return 0;
	return set_reading(c, &c->plain, on, conn_on_plain_read,
	    &c->plain_reading, REASON_PLAIN_ERROR);
}

/* Read the TLS end exactly when there is somewhere for the bytes to go. */
int relay_tls_reading(struct conn *c)
{
	bool want;
	if (c->dropped || !c->tls_open)
		return 0;
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
	return set_reading(c, &c->tls, want, conn_on_tls_read,
	    &c->tls_reading, REASON_TLS_ERROR);
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
 * free it and count it off. Returns c if it is still live; NULL if it
 * was dropped (nothing more to do).
 */
static struct conn *write_done(uv_write_t *req, bool tls)
{
	struct wreq *w = req->data;
	struct conn *c = w->c;
	*(tls ? &c->tls_queued : &c->plain_queued) -= w->ch->len;
	chunk_free(w->ch);
	free(w);
	return c->dropped ? NULL : c;
}

static int write_failed(struct conn *c, int status, bool tls)
{
	bool reset = status == UV_ECONNRESET || status == UV_EPIPE;
	conn_error_uv(c, tls ? "TLS write" : "plaintext write", status);
	return CONN_END(tls ? (reset ? REASON_TLS_RESET : REASON_TLS_ERROR) :
	    reset ? REASON_PLAIN_RESET : REASON_PLAIN_ERROR);
}

static int tls_written(struct conn *c, int status)
{
	if (status < 0)
		return write_failed(c, status, true);
	if (c->phase == PH_RELAY && !c->p2t_eof && c->tls_queued < RELAY_LOW)
		return plain_reading(c, true);
	return 0;
}

static void on_tls_written(uv_write_t *req, int status)
{
	struct conn *c = write_done(req, true);
	if (c != NULL)
		conn_event(c, tls_written(c, status));
}

int relay_flush_tls(struct conn *c)
{
	struct chunk *ch = tlsio_take_out(&c->io);
	if (ch == NULL)
		return 0;
	if (c->dropped || !c->tls_open) {
		chunk_free(ch);
		return 0;
	}
	int rc = stream_write(c, &c->tls.s, ch, on_tls_written, &c->tls_queued);
	if (rc < 0) {
		conn_error_uv(c, "TLS write", rc);
		return CONN_END(REASON_TLS_ERROR);
	}
	return 0;
}

int relay_send_alert(struct conn *c, unsigned char desc)
{
	tlsio_alert(&c->io, desc);
	return relay_flush_tls(c);
}

int relay_settle(struct conn *c)
{
	return tlsio_settle(&c->io) != 0 ? CONN_END(REASON_NOMEM) : 0;
}

/* ---- relay ---- */

static int plain_written(struct conn *c, int status)
{
	if (status < 0)
		return write_failed(c, status, false);
	if (c->plain_queued < RELAY_LOW && !c->t2p_eof) {
		int st = tls_drain(c);
		return st != 0 ? st : relay_settle(c);
	}
	return 0;
}

static void on_plain_written(uv_write_t *req, int status)
{
	struct conn *c = write_done(req, false);
	if (c != NULL)
		conn_event(c, plain_written(c, status));
}

/* Both directions have ended cleanly: the connection is done. */
static int maybe_finish(struct conn *c)
{
	return c->p2t_done && c->t2p_done ? CONN_END(REASON_CLOSED) : 0;
}

static int plain_shut(struct conn *c, int status)
{
	if (status < 0) {
		conn_error_uv(c, "plaintext shutdown", status);
		return CONN_END(REASON_PLAIN_ERROR);
	}
	c->t2p_done = true;
	return maybe_finish(c);
}

static void on_plain_shutdown(uv_shutdown_t *req, int status)
{
	struct conn *c = req->data;
	if (!c->dropped && status != UV_ECANCELED)
		conn_event(c, plain_shut(c, status));
}

static int tls_shut(struct conn *c, int status)
{
	if (status == UV_ENOTCONN && c->t2p_eof) {
		/*
		 * The peer sent close_notify and then closed outright (as
		 * TLS 1.2 allows): nothing is left to say to it. Done.
		 */
		status = 0;
	}
	if (status < 0) {
		conn_error_uv(c, "TLS shutdown", status);
		return CONN_END(status == UV_ENOTCONN || status == UV_ECONNRESET ||
		    status == UV_EPIPE ? REASON_TLS_RESET : REASON_TLS_ERROR);
	}
	c->p2t_done = true;
	return maybe_finish(c);
}

static void on_tls_shutdown(uv_shutdown_t *req, int status)
{
	struct conn *c = req->data;
	if (!c->dropped && status != UV_ECANCELED)
		conn_event(c, tls_shut(c, status));
}

/* close_notify arrived: pass the FIN on, after what is queued. */
static int t2p_end(struct conn *c)
{
	c->t2p_eof = true;
	c->plain_shut.data = c;
	int rc = uv_shutdown(&c->plain_shut, &c->plain.s, on_plain_shutdown);
	if (rc != 0) {
		conn_error_uv(c, "plaintext shutdown", rc);
		return CONN_END(REASON_PLAIN_ERROR);
	}
	return 0;
}

/* The plaintext end sent its FIN: send close_notify, then our FIN. */
static int p2t_end(struct conn *c)
{
	c->p2t_eof = true;
	int st = plain_reading(c, false);
	if (st != 0)
		return st;
	if (tlsio_close_notify(&c->io) != 0)
		return CONN_END(REASON_TLS_ERROR);
	if ((st = relay_flush_tls(c)) != 0)
		return st;
	c->tls_shut.data = c;
	int rc = uv_shutdown(&c->tls_shut, &c->tls.s, on_tls_shutdown);
	if (rc != 0) {
		conn_error_uv(c, "TLS shutdown", rc);
		return CONN_END(REASON_TLS_ERROR);
	}
	return 0;
}

/* Hand one chunk of decrypted bytes to the plaintext end. */
static int plain_write(struct conn *c, struct chunk *ch)
{
	size_t len = ch->len;
	int rc = stream_write(c, &c->plain.s, ch, on_plain_written,
	    &c->plain_queued);
	if (rc < 0) {
		conn_error_uv(c, "plaintext write", rc);
		return CONN_END(REASON_PLAIN_ERROR);
	}
	c->plain_out += len;
	STAT_ADD(c->tun->stats->bytes_out, len);
	return 0;
}

/*
 * Decrypt everything mbedTLS can give (from its own buffer and from the
 * input tlsio holds) into writes on the plaintext end, until it wants
 * more input or the plaintext end has RELAY_HIGH bytes queued.
 */
static int tls_drain(struct conn *c)
{
	enum tlsio_status st = TLSIO_MORE;
	int rc = 0;
	while (st == TLSIO_MORE && !c->t2p_eof &&
	    c->plain_queued < RELAY_HIGH) {
		struct chunk *ch = chunk_new(CHUNK_CAP);
		if (ch == NULL)
			return CONN_END(REASON_NOMEM);
		enum reason why = REASON_TLS_ERROR;
		st = tlsio_read(&c->io, ch->data, ch->cap, &ch->len, &why);
		if (ch->len > 0)
			rc = plain_write(c, ch);
		else
			chunk_free(ch);
		if (rc != 0)
			return rc;
		if (st == TLSIO_CLOSED) {
			if ((rc = t2p_end(c)) != 0)
				return rc;
		} else if (st == TLSIO_FAIL) {
			rc = relay_flush_tls(c);	/* the alert this end sends */
			return rc != 0 ? rc : CONN_END(why);
		}
	}
	/* TLS 1.3 sends tickets from inside mbedtls_ssl_read. */
	if ((rc = relay_flush_tls(c)) != 0)
		return rc;
	return relay_tls_reading(c);
}

int relay_tls_input(struct conn *c)
{
	return tls_drain(c);
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

int relay_plain_read(struct conn *c, ssize_t n, const uv_buf_t *buf)
{
	if (n == UV_EOF && pending_reset(&c->plain))
		n = UV_ECONNRESET;
	if (n == UV_EOF)
		return p2t_end(c);
	if (n < 0) {
		conn_error_uv(c, "plaintext read", (int)n);
		return CONN_END(n == UV_ECONNRESET ? REASON_PLAIN_RESET :
		    REASON_PLAIN_ERROR);
	}
	conn_touch(c);
	c->plain_in += (uint64_t)n;
	STAT_ADD(c->tun->stats->bytes_in, (uint64_t)n);
	enum reason why;
	if (tlsio_write(&c->io, (const unsigned char *)buf->base, (size_t)n,
	    &why) == TLSIO_FAIL)
		return CONN_END(why);
	int st = relay_flush_tls(c);
	if (st == 0 && c->tls_queued >= RELAY_HIGH)
		st = plain_reading(c, false);
	return st;
}

int relay_begin(struct conn *c)
{
	conn_touch(c);
	int st = plain_reading(c, true);
	/* Records may already wait in mbedTLS's buffer or in tlsio's input. */
	if (st == 0)
		st = tls_drain(c);
	return st != 0 ? st : relay_settle(c);
}
