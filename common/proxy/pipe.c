#include "pipe.h"

#include <stdlib.h>
#include <string.h>

/*
 * Reads are consumed before the read callback returns (plaintext is
 * encrypted at once; ciphertext mbedTLS left is copied by tlsio_settle),
 * so one buffer per thread serves every pipe.
 */
static _Thread_local unsigned char read_buf[CHUNK_READ];

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	(void)h;
	(void)suggested;
	buf->base = (char *)read_buf;
	buf->len = sizeof read_buf;
}

/* One queued write: the request and the chunk it sends. */
struct wreq {
	uv_write_t req;
	struct pipe *p;
	struct chunk *ch;
};

void pipe_init(struct pipe *p, uv_stream_t *from, uv_stream_t *to,
    uv_read_cb read_cb, pipe_cb *on_written, pipe_cb *on_shutdown,
    void *data)
{
	memset(p, 0, sizeof *p);
	p->from = from;
	p->to = to;
	p->read_cb = read_cb;
	p->on_written = on_written;
	p->on_shutdown = on_shutdown;
	p->data = data;
	p->shut.data = p;
}

int pipe_read(struct pipe *p, bool on)
{
	on = on && !p->held && !p->eof;
	if (on == p->reading)
		return 0;
	int rc = on ? uv_read_start(p->from, on_alloc, p->read_cb) :
	    uv_read_stop(p->from);
	if (rc == 0)
		p->reading = on;
	return rc;
}

int pipe_end(struct pipe *p)
{
	p->eof = true;
	return pipe_read(p, false);
}

/*
 * A queued write completed (or failed, or was cancelled by the close):
 * free it, count it off, and tell the owner.
 */
static void on_written(uv_write_t *req, int status)
{
	struct wreq *w = req->data;
	struct pipe *p = w->p;
	p->queued -= w->ch->len;
	chunk_free(w->ch);
	free(w);
	if (p->held && p->queued < PIPE_LOW)
		p->held = false;
	p->on_written(p, status);
}

/*
 * uv_try_write first: when nothing is queued there (libuv refuses
 * otherwise, so the order holds), a record or a chunk usually goes out in
 * that one write(2), with no request. A uv_write that completes makes
 * libuv stop and re-arm the descriptor's epoll interest, one more system
 * call per message on each side (strace of the ping-pong test). What the
 * socket does not take (or an error, which uv_write then reports through
 * on_written) goes to uv_write.
 */
int pipe_write(struct pipe *p, struct chunk *ch)
{
	uv_buf_t b = uv_buf_init((char *)ch->data, (unsigned)ch->len);
	int n = uv_try_write(p->to, &b, 1);
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
	w->p = p;
	w->ch = ch;
	w->req.data = w;
	int rc = uv_write(&w->req, p->to, &b, 1, on_written);
	if (rc != 0) {
		chunk_free(ch);
		free(w);
		return rc;
	}
	p->queued += ch->len;
	if (p->queued >= PIPE_HIGH) {
		rc = pipe_read(p, false);
		p->held = true;
	}
	return rc;
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
	struct pipe *p = req->data;
	p->on_shutdown(p, status);
}

int pipe_shutdown(struct pipe *p)
{
	return uv_shutdown(&p->shut, p->to, on_shutdown);
}
