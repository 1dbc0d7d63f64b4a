/*
 * relay: the bytes of an established connection: the TLS end's socket
 * under tlsio (tls layer), both directions (two pipes, pipe.h) with their
 * bounded queues, half-close and truncation. It ends nothing: every
 * function that may end the connection returns a status for conn.c
 * (conn_int.h), which owns the callbacks and the phase.
 */
#include <errno.h>
#include <sys/socket.h>

#include "conn_int.h"
#include "log.h"

void conn_release_buffers(void)
{
	chunk_release_spares();
}

/* ---- reading on and off ---- */

/* Start or stop reading p's source; a libuv error is CONN_END(why). */
static int pipe_reading(struct conn *c, struct pipe *p, bool on,
    enum reason why)
{
	int rc = pipe_read(p, on);
	if (rc != 0) {
		conn_error_uv(c, p == &c->t2p ? "TLS read" : "plaintext read",
		    rc);
		return CONN_END(why);
	}
	return 0;
}

static int plain_reading(struct conn *c, bool on)
{
	if (!c->plain_open || relay_ktls_owns_plain(c))
		return 0;
	return pipe_reading(c, &c->p2t, on, REASON_PLAIN_ERROR);
}

/*
 * Read the TLS end exactly when there is somewhere for the bytes to go
 * (the pipe itself refuses while the plaintext end is full or after
 * close_notify).
 */
int relay_tls_reading(struct conn *c)
{
	bool want;
	if (!c->tls_open)
		return 0;
	if (relay_ktls_owns_rx(c))
		return relay_ktls_reading(c);
	switch (c->phase) {
	case PH_HANDSHAKE:
	case PH_POOLED:
	case PH_PREAMBLE:
	case PH_RELAY:
		want = tlsio_wants_input(&c->io);
		break;
	default:
		want = false;
	}
	return pipe_reading(c, &c->t2p, want, REASON_TLS_ERROR);
}

/* ---- writing ---- */

static int write_failed(struct conn *c, int status, bool tls)
{
	bool reset = status == UV_ECONNRESET || status == UV_EPIPE;
	conn_error_uv(c, tls ? "TLS write" : "plaintext write", status);
	return CONN_END(tls ? (reset ? REASON_TLS_RESET : REASON_TLS_ERROR) :
	    reset ? REASON_PLAIN_RESET : REASON_PLAIN_ERROR);
}

int relay_flush_tls(struct conn *c)
{
	struct chunk *ch = tlsio_take_out(&c->io);
	if (ch == NULL)
		return 0;
	if (!c->tls_open) {
		chunk_free(ch);
		return 0;
	}
	int rc = pipe_write(&c->p2t, ch);
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

static int tls_drain(struct conn *c);

int relay_written(struct conn *c, struct pipe *p, int status)
{
	if (status < 0)
		return write_failed(c, status, p == &c->p2t);
	if (p == &c->p2t) {	/* records left: the plaintext may go on */
		int st = c->kt != NULL ? relay_ktls_p2t_written(c) : 0;
		if (st != 0)
			return st;
		return c->phase == PH_RELAY ? plain_reading(c, true) : 0;
	}
	if (c->kt != NULL && pipe_below_low(p) && !p->eof &&
	    relay_ktls_owns_rx(c))
		return relay_ktls_t2p_written(c);
	if (pipe_below_low(p) && !p->eof) {
		int st = tls_drain(c);
		return st != 0 ? st : relay_settle(c);
	}
	return 0;
}

int relay_shutdown_done(struct conn *c, struct pipe *p, int status)
{
	if (p == &c->t2p && status < 0) {
		conn_error_uv(c, "plaintext shutdown", status);
		return CONN_END(REASON_PLAIN_ERROR);
	}
	/*
	 * The peer sent close_notify and then closed outright (as TLS 1.2
	 * allows): nothing is left to say to it. Done.
	 */
	if (p == &c->p2t && status == UV_ENOTCONN && c->t2p.eof)
		status = 0;
	if (status < 0) {
		conn_error_uv(c, "TLS shutdown", status);
		return CONN_END(status == UV_ENOTCONN || status == UV_ECONNRESET ||
		    status == UV_EPIPE ? REASON_TLS_RESET : REASON_TLS_ERROR);
	}
	p->done = true;
	/* Both directions have ended cleanly: the connection is done. */
	return c->p2t.done && c->t2p.done ? CONN_END(REASON_CLOSED) : 0;
}

int relay_t2p_end(struct conn *c)
{
	int rc = pipe_end(&c->t2p);
	if (rc != 0) {
		conn_error_uv(c, "TLS read", rc);
		return CONN_END(REASON_TLS_ERROR);
	}
	rc = pipe_shutdown(&c->t2p);
	if (rc != 0) {
		conn_error_uv(c, "plaintext shutdown", rc);
		return CONN_END(REASON_PLAIN_ERROR);
	}
	return 0;
}

/* The plaintext end sent its FIN: send close_notify, then our FIN. */
static int p2t_end(struct conn *c)
{
	int rc = pipe_end(&c->p2t);
	if (rc != 0) {
		conn_error_uv(c, "plaintext read", rc);
		return CONN_END(REASON_PLAIN_ERROR);
	}
	if (relay_ktls_tx(c))	/* the kernel seals it, after the queue */
		return relay_ktls_close_notify(c);
	if (tlsio_close_notify(&c->io) != 0)
		return CONN_END(REASON_TLS_ERROR);
	int st = relay_flush_tls(c);
	if (st != 0)
		return st;
	rc = pipe_shutdown(&c->p2t);
	if (rc != 0) {
		conn_error_uv(c, "TLS shutdown", rc);
		return CONN_END(REASON_TLS_ERROR);
	}
	return 0;
}

/*
 * Hand one chunk to the plaintext end: len decrypted bytes (after a PROXY
 * header, in the first chunk of a server with proxy_protocol).
 */
static int plain_write(struct conn *c, struct chunk *ch, size_t len)
{
	int rc = pipe_write(&c->t2p, ch);
	if (rc < 0) {
		conn_error_uv(c, "plaintext write", rc);
		return CONN_END(REASON_PLAIN_ERROR);
	}
	c->t2p.bytes += len;
	STAT_ADD(tunnel_stats(c->tun)->bytes_out, len);
	return 0;
}

int relay_to_plain(struct conn *c, struct chunk *ch)
{
	return plain_write(c, ch, ch->len);
}

/*
 * Decrypt everything mbedTLS can give (from its own buffer and from the
 * input tlsio holds) into writes on the plaintext end, until it wants
 * more input or the plaintext end is full (the t2p pipe is held).
 */
static int tls_drain(struct conn *c)
{
	enum tlsio_status st = TLSIO_MORE;
	int rc = 0;
	while (st == TLSIO_MORE && !c->t2p.eof && !c->t2p.held) {
		/* The first, on a server with proxy_protocol: the header's. */
		struct chunk *ch = c->pp_out != NULL ? c->pp_out :
		    chunk_new(CHUNK_CAP);
		c->pp_out = NULL;
		if (ch == NULL)
			return CONN_END(REASON_NOMEM);
		enum reason why = REASON_TLS_ERROR;
		size_t n = 0;
		st = tlsio_read(&c->io, ch->data + ch->len, ch->cap - ch->len, &n,
		    &why);
		ch->len += n;
		if (ch->len > 0)
			rc = plain_write(c, ch, n);
		else
			chunk_free(ch);
		if (rc != 0)
			return rc;
		if (st == TLSIO_CLOSED) {
			if ((rc = relay_t2p_end(c)) != 0)
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
	c->p2t.bytes += (uint64_t)n;
	STAT_ADD(tunnel_stats(c->tun)->bytes_in, (uint64_t)n);
	if (relay_ktls_tx(c))	/* the kernel seals it */
		return relay_ktls_send(c, (const unsigned char *)buf->base,
		    (size_t)n);
	enum reason why;
	if (tlsio_write(&c->io, (const unsigned char *)buf->base, (size_t)n,
	    &why) == TLSIO_FAIL)
		return CONN_END(why);
	/* At PIPE_HIGH queued on the TLS end, the pipe stops reading. */
	int st = relay_flush_tls(c);
	if (st == 0 && c->kt != NULL)	/* TX waits for the queue to empty */
		st = relay_ktls_p2t_written(c);
	return st;
}

int relay_begin(struct conn *c)
{
	conn_touch(c);
	/* Client: what came after a PROXY header goes before what follows. */
	int st = origin_send_early(c);
	if (st == 0)
		st = plain_reading(c, true);
	/* Records may already wait in mbedTLS's buffer or in tlsio's input. */
	if (st == 0)
		st = tls_drain(c);
	if (st == 0)
		st = relay_settle(c);
	/* Then, where the kernel can, it takes the record layer over. */
	return st != 0 ? st : relay_ktls_begin(c);
}
