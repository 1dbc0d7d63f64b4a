/*
 * One direction of the relay (common/proxy/pipe.c) on a real loop, over
 * two socketpairs: the test writes into the source's far end, the pipe
 * reads the source and writes what it read to its destination, and the
 * test reads the destination's far end, or stops reading it to make the
 * pipe's queue grow. Like libuv's own tests, each ends by checking that
 * uv_loop_close returns 0 (no handle left behind).
 */
#include "test.h"

#include <stdlib.h>
#include <sys/socket.h>

#include <uv.h>

#include "chunk.h"
#include "pipe.h"

#define TOTAL (4 * 1024 * 1024)

struct rig {
	uv_loop_t loop;
	uv_pipe_t writer;	/* the test's end of the source */
	uv_pipe_t src, dst;	/* the pipe's two streams */
	uv_pipe_t reader;	/* the test's end of the destination */
	struct pipe p;
	unsigned char *data;	/* TOTAL bytes written into the source */
	uv_write_t wreq;
	uv_shutdown_t wshut;
	size_t got;		/* bytes the reader read */
	bool got_eof;		/* the reader saw the pipe's FIN */
	bool in_order;		/* what it read is what was written */
	bool saw_held;		/* the pipe stopped reading at PIPE_HIGH */
	size_t held_queued;	/* queued when it did */
	bool read_while_held;	/* pipe_read(true) read while held */
	size_t resumed_queued;	/* queued when reading resumed; SIZE_MAX: never */
	int shut_status;	/* the pipe's shutdown; 1: not yet */
	int write_errors;
};

static void on_src_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
	struct rig *r = s->data;
	if (n > 0) {
		struct chunk *ch = chunk_new((size_t)n);
		memcpy(ch->data, buf->base, (size_t)n);
		ch->len = (size_t)n;
		r->p.bytes += (uint64_t)n;
		CHECK_INT(pipe_write(&r->p, ch), 0);
		if (r->p.held && !r->saw_held) {
			r->saw_held = true;
			r->held_queued = r->p.queued;
			CHECK(!r->p.reading);
		}
	} else if (n == UV_EOF) {
		/* The source's FIN: passed on as ours, after what is queued. */
		CHECK_INT(pipe_end(&r->p), 0);
		CHECK_INT(pipe_shutdown(&r->p), 0);
	} else if (n < 0) {
		CHECK_INT(n, 0);
	}
}

/* The owner asks for reading after every write; the pipe decides. */
static void on_p_written(struct pipe *p, int status)
{
	struct rig *r = p->data;
	bool was_reading = p->reading;
	if (status < 0)
		r->write_errors++;
	CHECK_INT(pipe_read(p, true), 0);
	if (p->held && p->reading)
		r->read_while_held = true;
	if (r->saw_held && !was_reading && p->reading &&
	    r->resumed_queued == SIZE_MAX)
		r->resumed_queued = p->queued;
}

static void on_p_shutdown(struct pipe *p, int status)
{
	struct rig *r = p->data;
	r->shut_status = status;
	p->done = true;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	static char b[65536];
	(void)h;
	(void)suggested;
	*buf = uv_buf_init(b, sizeof b);
}

static void on_reader_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
	struct rig *r = s->data;
	if (n > 0) {
		if (r->got + (size_t)n > TOTAL ||
		    memcmp(buf->base, r->data + r->got, (size_t)n) != 0)
			r->in_order = false;
		r->got += (size_t)n;
	} else if (n == UV_EOF) {
		r->got_eof = true;
		uv_read_stop(s);
	}
}

static void on_written_all(uv_write_t *req, int status)
{
	CHECK_INT(status, 0);
	(void)req;
}

static void on_wshut(uv_shutdown_t *req, int status)
{
	CHECK_INT(status, 0);
	(void)req;
}

static int open_pair(uv_loop_t *loop, uv_pipe_t *a, uv_pipe_t *b, void *data)
{
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0,
	    sv) != 0)
		return -1;
	CHECK_INT(uv_pipe_init(loop, a, 0), 0);
	CHECK_INT(uv_pipe_init(loop, b, 0), 0);
	CHECK_INT(uv_pipe_open(a, sv[0]), 0);
	CHECK_INT(uv_pipe_open(b, sv[1]), 0);
	a->data = b->data = data;
	return 0;
}

/* Run the loop until done(r) or a bound on turns. */
static void run_until(struct rig *r, bool (*done)(struct rig *r))
{
	for (int i = 0; i < 100000 && !done(r); i++)
		uv_run(&r->loop, UV_RUN_ONCE);
}

static bool is_held(struct rig *r)
{
	return r->saw_held;
}

static bool all_through(struct rig *r)
{
	return r->got_eof && r->shut_status != 1;
}

TEST(pipe_holds_at_high_mark_resumes_below_low_and_forwards_eof)
{
	struct rig *r = calloc(1, sizeof *r);
	r->data = malloc(TOTAL);
	for (size_t i = 0; i < TOTAL; i++)
		r->data[i] = (unsigned char)(i * 7 + i / 4096);
	r->in_order = true;
	r->resumed_queued = SIZE_MAX;
	r->shut_status = 1;
	CHECK_INT(uv_loop_init(&r->loop), 0);
	if (open_pair(&r->loop, &r->writer, &r->src, r) != 0 ||
	    open_pair(&r->loop, &r->dst, &r->reader, r) != 0) {
		CHECK(!"socketpair");
		return;
	}
	pipe_init(&r->p, (uv_stream_t *)&r->src, (uv_stream_t *)&r->dst,
	    on_src_read, on_p_written, on_p_shutdown, r);

	/* The source sends everything and its FIN; nobody reads yet. */
	uv_buf_t b = uv_buf_init((char *)r->data, TOTAL);
	CHECK_INT(uv_write(&r->wreq, (uv_stream_t *)&r->writer, &b, 1,
	    on_written_all), 0);
	CHECK_INT(uv_shutdown(&r->wshut, (uv_stream_t *)&r->writer, on_wshut),
	    0);
	CHECK_INT(pipe_read(&r->p, true), 0);
	CHECK(r->p.reading);
	run_until(r, is_held);
	CHECK(r->saw_held);
	CHECK(r->held_queued >= PIPE_HIGH);
	CHECK(!r->p.reading);
	/* Held: asking to read does not read. */
	CHECK_INT(pipe_read(&r->p, true), 0);
	CHECK(!r->p.reading);

	/* The reader reads: the queue drains, reading resumes below LOW. */
	CHECK_INT(uv_read_start((uv_stream_t *)&r->reader, on_alloc,
	    on_reader_read), 0);
	run_until(r, all_through);
	CHECK(r->resumed_queued < PIPE_LOW);
	CHECK(!r->read_while_held);
	CHECK_INT(r->got, TOTAL);
	CHECK(r->in_order);
	CHECK(r->got_eof);
	CHECK_INT(r->shut_status, 0);
	CHECK(r->p.eof && r->p.done && !r->p.reading);
	CHECK_INT(r->p.queued, 0);
	CHECK_INT(r->p.bytes, TOTAL);
	CHECK_INT(r->write_errors, 0);

	uv_close((uv_handle_t *)&r->writer, NULL);
	uv_close((uv_handle_t *)&r->src, NULL);
	uv_close((uv_handle_t *)&r->dst, NULL);
	uv_close((uv_handle_t *)&r->reader, NULL);
	uv_run(&r->loop, UV_RUN_DEFAULT);
	CHECK_INT(uv_loop_close(&r->loop), 0);
	free(r->data);
	free(r);
}
