/*
 * A whole server-role connection on a real loop: the smallest real tunnel
 * (a config written by the test, tunnel_start on a unix listener), a TLS
 * client driven by the test through tlsio (identities made at run time,
 * as test_tlsio.c makes them), and a backend the test listens as. What is
 * checked is what the peers see and what the tunnel counts: the handshake,
 * bytes both ways, close_notify becoming a FIN and a FIN becoming
 * close_notify, a drop that frees everything, and the pool's server side
 * (no backend until the preamble byte). Each ends with uv_loop_close
 * returning 0: no handle of the connection or the tunnel is left behind.
 */
#include "test.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#include <uv.h>

#include "config.h"
#include "conn.h"
#include "listeners.h"
#include "log.h"
#include "preamble.h"
#include "tls.h"
#include "tlsio.h"
#include "tunnel.h"
#include "unit_ids.h"

static struct tls_ctx *cli_ctx;
static char ini[256];

/* Two identities, the client's context, the server's config file: once. */
static int setup(void)
{
	static struct cfg_tunnel c;
	char err[512], pin[PIN_TEXT_MAX];
	if (cli_ctx != NULL)
		return 0;
	struct unit_ids *ids = unit_ids();
	if (ids == NULL || unit_tunnel(&c, ids, CFG_CLIENT) != 0)
		return -1;
	c.pool = 1;	/* the client context can offer upseal/2 and upseal/1 */
	if (tls_ctx_new(&c, CFG_CLIENT, (uid_t)-1, &cli_ctx, err,
	    sizeof err) != 0) {
		printf("  client context: %s\n", err);
		return -1;
	}
	pin_format(&ids->cli_pin, pin);
	const char *dir = test_tmpdir();
	snprintf(ini, sizeof ini, "%s/server.ini", dir);
	FILE *f = fopen(ini, "w");
	if (f == NULL)
		return -1;
	fprintf(f, "[unit]\nlisten = unix:%s/s.sock\nconnect = unix:%s/b.sock\n"
	    "cert = %s\nkey = %s\npin = %s\n", dir, dir, ids->srv_crt,
	    ids->srv_key, pin);
	return fclose(f);
}

__attribute__((destructor)) static void setup_free(void)
{
	tls_ctx_free(cli_ctx);
}

struct wr {
	uv_write_t req;
	struct chunk *ch;
};

struct rig {
	uv_loop_t loop;
	struct conn_counters counters;
	struct tunnel_stats *stats;
	struct tunnel *t;
	bool empty;
	/* The test's TLS client. */
	uv_pipe_t cli;
	uv_connect_t creq;
	struct tlsio io;
	char cli_err[160];
	bool handshaken, close_notify, cli_eof;
	unsigned char cli_got[64];
	size_t cli_len;
	/* The test's backend. */
	uv_pipe_t be_listen, be;
	bool accepted, be_eof;
	unsigned char be_got[64];
	size_t be_len;
	uv_shutdown_t be_shut;
	uv_timer_t tick;	/* so that a turn never blocks for long */
	bool ready;		/* rig_start got as far as the handles */
};

static void on_wr(uv_write_t *req, int status)
{
	struct wr *w = req->data;
	(void)status;
	chunk_free(w->ch);
	free(w);
}

static void send_chunk(uv_stream_t *s, struct chunk *ch)
{
	struct wr *w = malloc(sizeof *w);
	w->ch = ch;
	w->req.data = w;
	uv_buf_t b = uv_buf_init((char *)ch->data, (unsigned)ch->len);
	CHECK_INT(uv_write(&w->req, s, &b, 1, on_wr), 0);
}

static void cli_flush(struct rig *r)
{
	struct chunk *ch = tlsio_take_out(&r->io);
	if (ch != NULL)
		send_chunk((uv_stream_t *)&r->cli, ch);
}

/* The client's side of the handshake, then reading what came. */
static void cli_step(struct rig *r)
{
	if (!r->handshaken) {
		int rc = tlsio_handshake(&r->io);
		cli_flush(r);
		if (rc != 0) {
			if (rc != MBEDTLS_ERR_SSL_WANT_READ)
				CHECK_INT(rc, MBEDTLS_ERR_SSL_WANT_READ);
			CHECK_INT(tlsio_settle(&r->io), 0);
			return;
		}
		r->handshaken = true;
	}
	enum tlsio_status st = TLSIO_MORE;
	while (st == TLSIO_MORE && !r->close_notify) {
		size_t len = 0;
		enum reason why;
		st = tlsio_read(&r->io, r->cli_got + r->cli_len,
		    sizeof r->cli_got - r->cli_len, &len, &why);
		r->cli_len += len;
		if (st == TLSIO_CLOSED)
			r->close_notify = true;
	}
	CHECK_INT(tlsio_settle(&r->io), 0);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	static char b[65536];
	(void)h;
	(void)suggested;
	*buf = uv_buf_init(b, sizeof b);
}

static void on_cli_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
	struct rig *r = s->data;
	if (n > 0) {
		tlsio_input(&r->io, (const unsigned char *)buf->base,
		    (size_t)n);
		cli_step(r);
	} else if (n < 0) {
		r->cli_eof = true;
		uv_read_stop(s);
	}
}

static void on_cli_connect(uv_connect_t *req, int status)
{
	struct rig *r = req->data;
	CHECK_INT(status, 0);
	CHECK_INT(uv_read_start((uv_stream_t *)&r->cli, on_alloc, on_cli_read),
	    0);
	cli_step(r);	/* the ClientHello */
}

static void on_be_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
	struct rig *r = s->data;
	if (n > 0 && r->be_len + (size_t)n <= sizeof r->be_got) {
		memcpy(r->be_got + r->be_len, buf->base, (size_t)n);
		r->be_len += (size_t)n;
	} else if (n < 0) {
		r->be_eof = true;
		uv_read_stop(s);
	}
}

static void on_be_connection(uv_stream_t *l, int status)
{
	struct rig *r = l->data;
	CHECK_INT(status, 0);
	CHECK(!r->accepted);
	CHECK_INT(uv_pipe_init(&r->loop, &r->be, 0), 0);
	r->be.data = r;
	CHECK_INT(uv_accept(l, (uv_stream_t *)&r->be), 0);
	r->accepted = true;
	CHECK_INT(uv_read_start((uv_stream_t *)&r->be, on_alloc, on_be_read),
	    0);
}

static void on_tick(uv_timer_t *t)
{
	(void)t;
}

static int rig_start(struct rig *r, bool pool)
{
	char err[512], path[300];
	struct cfg *cfg = NULL;
	struct listen_fds fds;
	if (setup() != 0)
		return -1;
	log_setup(LOG_ERROR, false);	/* no conn_end lines in the output */
	CHECK_INT(uv_loop_init(&r->loop), 0);
	if (cfg_load(ini, CFG_SERVER, &cfg, err, sizeof err) != 0) {
		printf("  cfg_load: %s\n", err);
		return -1;
	}
	const struct cfg_tunnel *ct = &cfg->tunnels[0];
	struct tunnel_conf *tc = tunnel_conf_new(cfg, ct, CFG_SERVER, err,
	    sizeof err);
	cfg_release(cfg);	/* tc holds it */
	r->stats = tunnel_stats_new();
	if (tc == NULL || r->stats == NULL ||
	    listen_open(tc->cfg, CFG_SERVER, 1, &fds, err, sizeof err) != 0 ||
	    tunnel_start(&r->loop, 0, tc, CFG_SERVER, r->stats, &fds, NULL,
	    &r->counters, &r->t, err, sizeof err) != 0) {
		printf("  tunnel: %s\n", err);
		tunnel_conf_release(tc);
		return -1;
	}
	tunnel_conf_release(tc);	/* the tunnel holds it */

	CHECK_INT(uv_timer_init(&r->loop, &r->tick), 0);
	CHECK_INT(uv_timer_start(&r->tick, on_tick, 5, 5), 0);
	snprintf(path, sizeof path, "%s/b.sock", test_tmpdir());
	unlink(path);
	CHECK_INT(uv_pipe_init(&r->loop, &r->be_listen, 0), 0);
	r->be_listen.data = r;
	CHECK_INT(uv_pipe_bind(&r->be_listen, path), 0);
	CHECK_INT(uv_listen((uv_stream_t *)&r->be_listen, 8, on_be_connection),
	    0);

	CHECK_INT(tlsio_init(&r->io, cli_ctx, pool, r->cli_err,
	    sizeof r->cli_err), 0);
	CHECK_INT(uv_pipe_init(&r->loop, &r->cli, 0), 0);
	r->cli.data = r;
	r->creq.data = r;
	snprintf(path, sizeof path, "%s/s.sock", test_tmpdir());
	uv_pipe_connect(&r->creq, &r->cli, path, on_cli_connect);
	r->ready = true;
	return 0;
}

static void on_empty(struct tunnel *t)
{
	struct rig *r = tunnel_data(t);
	r->empty = true;
	tunnel_free(t);
}

/* Stop the tunnel, close the test's ends: the loop must close clean. */
static void rig_finish(struct rig *r)
{
	if (!r->ready) {
		CHECK(!"the rig did not start");
		return;
	}
	uv_close((uv_handle_t *)&r->tick, NULL);
	if (r->t != NULL) {
		tunnel_set_data(r->t, r);
		tunnel_stop(r->t, on_empty);
	}
	uv_close((uv_handle_t *)&r->cli, NULL);
	uv_close((uv_handle_t *)&r->be_listen, NULL);
	if (r->accepted)
		uv_close((uv_handle_t *)&r->be, NULL);
	uv_run(&r->loop, UV_RUN_DEFAULT);
	CHECK(r->t == NULL || r->empty);
	CHECK_INT(uv_loop_close(&r->loop), 0);
	tlsio_free(&r->io);
	tunnel_stats_release(r->stats);
	log_setup(LOG_INFO, false);
}

/* Run the loop until cond holds (or give up after many turns). */
#define RUN_UNTIL(r, cond)						\
	for (int turn_ = 0; turn_ < 2000 && !(cond); turn_++)		\
		uv_run(&(r)->loop, UV_RUN_ONCE)

static void cli_send(struct rig *r, const char *text)
{
	enum reason why;
	CHECK_INT(tlsio_write(&r->io, (const unsigned char *)text,
	    strlen(text), &why), TLSIO_WANT);
	cli_flush(r);
}

static void be_send(struct rig *r, const char *text)
{
	struct chunk *ch = chunk_new(strlen(text));
	memcpy(ch->data, text, strlen(text));
	ch->len = strlen(text);
	send_chunk((uv_stream_t *)&r->be, ch);
}

static uint64_t counted(stat_counter *c)
{
	return atomic_load(c);
}

TEST(conn_server_relays_both_ways_and_closes_like_tcp)
{
	struct rig r = { 0 };
	if (rig_start(&r, false) != 0)
		goto out;
	RUN_UNTIL(&r, r.handshaken && r.accepted);
	CHECK(r.handshaken);
	CHECK(r.accepted);	/* dialed once the peer was pinned */
	CHECK_INT(conn_open_count(&r.counters), 1);

	cli_send(&r, "ping");
	RUN_UNTIL(&r, r.be_len == 4);
	CHECK_INT(r.be_len, 4);
	CHECK(memcmp(r.be_got, "ping", 4) == 0);
	be_send(&r, "pong!");
	RUN_UNTIL(&r, r.cli_len == 5);
	CHECK_INT(r.cli_len, 5);
	CHECK(memcmp(r.cli_got, "pong!", 5) == 0);

	/* close_notify from the client: a FIN to the backend, nothing more. */
	CHECK_INT(tlsio_close_notify(&r.io), 0);
	cli_flush(&r);
	RUN_UNTIL(&r, r.be_eof);
	CHECK(r.be_eof);
	CHECK(!r.close_notify);
	CHECK_INT(conn_open_count(&r.counters), 1);	/* half open */
	/* The backend's FIN: close_notify to the client, then the end. */
	CHECK_INT(uv_shutdown(&r.be_shut, (uv_stream_t *)&r.be, NULL), 0);
	RUN_UNTIL(&r, conn_open_count(&r.counters) == 0 && r.cli_eof);
	CHECK(r.close_notify);
	CHECK(r.cli_eof);
	CHECK_INT(conn_open_count(&r.counters), 0);
	CHECK_INT(counted(&r.stats->closed[REASON_CLOSED]), 1);
	CHECK_INT(counted(&r.stats->bytes_in), 5);
	CHECK_INT(counted(&r.stats->bytes_out), 4);
out:
	rig_finish(&r);
}

TEST(conn_drop_mid_relay_frees_everything)
{
	struct rig r = { 0 };
	if (rig_start(&r, false) != 0)
		goto out;
	RUN_UNTIL(&r, r.handshaken && r.accepted);
	cli_send(&r, "ping");
	be_send(&r, "pong");
	RUN_UNTIL(&r, r.be_len == 4 && r.cli_len == 4);
	CHECK_INT(conn_open_count(&r.counters), 1);
	tunnel_drop_all(r.t, REASON_DRAIN);
	RUN_UNTIL(&r, conn_open_count(&r.counters) == 0 && r.cli_eof &&
	    r.be_eof);
	CHECK_INT(conn_open_count(&r.counters), 0);
	CHECK(r.cli_eof);
	CHECK(r.be_eof);
	CHECK(!r.close_notify);	/* a drop is not a clean close */
	CHECK_INT(counted(&r.stats->closed[REASON_DRAIN]), 1);
out:
	rig_finish(&r);
}

TEST(conn_server_pool_dials_on_the_preamble)
{
	struct rig r = { 0 };
	if (rig_start(&r, true) != 0)
		goto out;
	RUN_UNTIL(&r, r.handshaken || r.cli_eof);
	CHECK(r.handshaken);
	if (!r.handshaken)
		printf("  client: %s\n", r.cli_err);
	CHECK_INT(preamble_version(&r.io.ssl), 2);
	/* Waiting for the preamble: the backend is not dialed. */
	for (int i = 0; i < 5; i++)
		uv_run(&r.loop, UV_RUN_NOWAIT);
	CHECK(!r.accepted);
	CHECK_INT(conn_open_count(&r.counters), 1);

	CHECK_INT(preamble_send(&r.io.ssl, 2, NULL), 0);
	cli_send(&r, "ping");	/* in the same flight as the preamble */
	RUN_UNTIL(&r, r.be_len == 4);
	CHECK(r.accepted);
	CHECK_INT(r.be_len, 4);
	CHECK(memcmp(r.be_got, "ping", 4) == 0);
	tunnel_drop_all(r.t, REASON_DRAIN);
	RUN_UNTIL(&r, conn_open_count(&r.counters) == 0);
	CHECK_INT(conn_open_count(&r.counters), 0);
out:
	rig_finish(&r);
}
