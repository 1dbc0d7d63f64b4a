/*
 * pipe: one direction of a relayed connection. It writes to one stream
 * (the bytes queued there, bounded), reads from another (reading or not),
 * and ends by passing EOF on as a shutdown of its write side. A
 * connection has two, plaintext to TLS and TLS to plaintext; what the
 * bytes become between the read and the write (records, plaintext) is the
 * owner's. libuv only: no connection, no mbedTLS.
 *
 * Backpressure: a write that leaves PIPE_HIGH bytes or more queued stops
 * reading the source (the pipe is held); reading may start again once the
 * queue is below PIPE_LOW. pipe_read refuses to read a held or ended pipe,
 * so the owner may ask for reading whenever it has room for the bytes.
 */
#ifndef UPSEAL_PIPE_H
#define UPSEAL_PIPE_H

#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

#include "chunk.h"

#define PIPE_HIGH (256 * 1024)
#define PIPE_LOW (64 * 1024)

struct pipe;

/*
 * The owner's completions: a write finished (status < 0: failed, or
 * UV_ECANCELED when the stream was closed under it); the shutdown
 * finished. Called from the loop, never from inside a pipe_ function.
 */
typedef void pipe_cb(struct pipe *p, int status);

struct pipe {
	uv_stream_t *from;		/* read for this direction */
	uv_stream_t *to;		/* written */
	uv_read_cb read_cb;		/* the owner's, for from */
	pipe_cb *on_written, *on_shutdown;
	void *data;			/* the owner's */
	size_t queued;			/* bytes in writes not yet done */
	bool reading;			/* from is being read */
	bool held;			/* stopped at PIPE_HIGH, not yet below LOW */
	bool eof;			/* the source ended: no more reading */
	bool done;			/* the owner saw the shutdown complete */
	uint64_t bytes;			/* the owner's count of what it carried */
	uv_shutdown_t shut;
};

/*
 * Set p up to read from and write to (neither need be open yet; both
 * must outlive p's requests). read_cb reads from; on_written and
 * on_shutdown report completions; data is for the owner.
 */
void pipe_init(struct pipe *p, uv_stream_t *from, uv_stream_t *to,
    uv_read_cb read_cb, pipe_cb *on_written, pipe_cb *on_shutdown,
    void *data);

/*
 * Read from, or stop: on is taken as false while p is held or ended.
 * Every read lands in one buffer per thread, which the read callback must
 * be done with before it returns. 0 or a libuv error.
 */
int pipe_read(struct pipe *p, bool on);

/*
 * Write ch (taken) to to, at once if the socket takes it (uv_try_write),
 * the rest queued (on_written reports it). At PIPE_HIGH queued, reading
 * stops (p is held). 0 or a libuv error (ch is freed either way).
 */
int pipe_write(struct pipe *p, struct chunk *ch);

/*
 * The source ended: stop reading and mark p ended (no more reading,
 * ever). The write side stays open until pipe_shutdown. 0 or a libuv
 * error (of stopping the read).
 */
int pipe_end(struct pipe *p);

/* Shut the write side down after what is queued; on_shutdown reports it. */
int pipe_shutdown(struct pipe *p);

/* Fewer than PIPE_LOW bytes queued. */
static inline bool pipe_below_low(const struct pipe *p)
{
	return p->queued < PIPE_LOW;
}

#endif
