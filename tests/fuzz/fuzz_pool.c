/*
 * libFuzzer target: the server's handling of what follows a handshake
 * that negotiated ALPN upseal/2 (the preamble, common/tls/preamble.c: the
 * byte 0x01, or a PROXY v2 header carrying the client's address),
 * through the product's tlsio (its BIO and read loop), as pool.c's
 * preamble_input drives it.
 *
 * Per input: a client (tls_session_setup_preamble: offers upseal/2 and
 * upseal/1) and a
 * server (tlsio_init: tls_session_setup), both from tls_ctx_new as the
 * daemons build them, do a resumed handshake over in-memory pipes (a session is cached
 * once at start-up, so each run costs no public-key operation). The input
 * is then a script of what reaches the server:
 *
 *   0xFF            the client sends close_notify
 *   0xFE n BYTES    n raw bytes go onto the wire (forged records, junk)
 *   0xFD            the client's TCP end closes (EOF)
 *   other h, BYTES  the client writes (h % 64) bytes as one record
 *
 * after which the server runs preamble_recv until it decides or runs out
 * of input; on PREAMBLE_GO it reads what is left with tlsio_read, as the
 * relay would.
 *
 * Oracles, when no raw bytes were injected: the decision follows what the
 * client wrote, judged by pp_parse independently: 0x01 first, or a whole
 * v2 header of at most PREAMBLE_MAX bytes: GO, with the header's address;
 * any other first byte, bytes that cannot begin a v2 header, or a header
 * cut short by close_notify or EOF: BAD; nothing before close_notify or EOF: CLOSED;
 * the beginning of a header, or nothing: WAIT. After GO, the server
 * reads exactly the client's bytes after the preamble, none lost, none
 * added. With raw bytes, only memory safety.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mbedtls/ssl.h>

#include "config.h"
#include "fuzz.h"
#include "fuzz_ids.h"
#include "log.h"
#include "preamble.h"
#include "rng.h"
#include "tls.h"
#include "tlsio.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);

#define PIPE_CAP (64 * 1024)

/* One direction of the in-memory connection. */
struct pipe {
	unsigned char buf[PIPE_CAP];
	size_t len, pos;
	bool eof;
};

struct wire {
	struct pipe to_server, to_client;
};

static struct tls_ctx *srv_ctx, *cli_ctx;

static int pipe_send(struct pipe *p, const unsigned char *buf, size_t len)
{
	if (p->pos > 0 && p->pos == p->len)
		p->pos = p->len = 0;
	if (len > PIPE_CAP - p->len)
		return MBEDTLS_ERR_SSL_WANT_WRITE;	/* whole records only */
	memcpy(p->buf + p->len, buf, len);
	p->len += len;
	return (int)len;
}

static int pipe_recv(struct pipe *p, unsigned char *buf, size_t len)
{
	size_t n = p->len - p->pos;
	if (n == 0)
		return p->eof ? 0 : MBEDTLS_ERR_SSL_WANT_READ;
	if (n > len)
		n = len;
	memcpy(buf, p->buf + p->pos, n);
	p->pos += n;
	return (int)n;
}

static int cli_send(void *w, const unsigned char *b, size_t n)
{
	return pipe_send(&((struct wire *)w)->to_server, b, n);
}

static int cli_recv(void *w, unsigned char *b, size_t n)
{
	return pipe_recv(&((struct wire *)w)->to_client, b, n);
}

/* The server's socket: what reached it goes into its tlsio. */
static void srv_feed(struct wire *w, struct tlsio *io)
{
	struct pipe *p = &w->to_server;
	if (p->pos < p->len) {
		tlsio_input(io, p->buf + p->pos, p->len - p->pos);
		p->pos = p->len;
	}
	if (p->eof && !io->in_eof)
		tlsio_input(io, NULL, 0);
}

/* After an operation: keep the input left, send what it wrote. */
static void srv_done(struct wire *w, struct tlsio *io)
{
	if (tlsio_settle(io) != 0)
		fuzz_die("fuzz_pool", "settle", "no memory");
	struct chunk *out = tlsio_take_out(io);
	if (out != NULL)
		(void)pipe_send(&w->to_client, out->data, out->len);
	chunk_free(out);
}

static void die(const char *what, const char *err)
{
	fuzz_die("fuzz_pool", what, err);
}

/* Both sides to the end of the handshake; 0, or -1 if either failed. */
static int handshake(struct wire *w, mbedtls_ssl_context *cli,
    struct tlsio *srv)
{
	int rc_c = MBEDTLS_ERR_SSL_WANT_READ, rc_s = MBEDTLS_ERR_SSL_WANT_READ;
	for (int i = 0; i < 64 && (rc_c != 0 || rc_s != 0); i++) {
		if (rc_c != 0)
			rc_c = mbedtls_ssl_handshake(cli);
		if (rc_s != 0) {
			srv_feed(w, srv);
			rc_s = tlsio_handshake(srv);
			srv_done(w, srv);
		}
		if ((rc_c != 0 && rc_c != MBEDTLS_ERR_SSL_WANT_READ &&
		    rc_c != MBEDTLS_ERR_SSL_WANT_WRITE) ||
		    (rc_s != 0 && rc_s != MBEDTLS_ERR_SSL_WANT_READ &&
		    rc_s != MBEDTLS_ERR_SSL_WANT_WRITE))
			return -1;
	}
	return rc_c == 0 && rc_s == 0 ? 0 : -1;
}

/* A client and a server session on w, handshaken; -1 if that failed. */
static int pair(struct wire *w, mbedtls_ssl_context *cli,
    struct tlsio *srv, struct tls_peer *cp, char *err, size_t errlen)
{
	if (tls_session_setup_preamble(cli_ctx, cli, cp) != 0 ||
	    tlsio_init(srv, srv_ctx, false, err, errlen) != 0)
		die("setup", "mbedtls_ssl_setup failed");
	mbedtls_ssl_set_bio(cli, w, cli_send, cli_recv, NULL);
	tls_session_resume(cli_ctx, cli);
	if (handshake(w, cli, srv) != 0)
		return -1;
	/* Judged as conn.c judges them after its handshake step. */
	if (tls_check_peer(cli_ctx, cli, cp) != TLS_PEER_OK ||
	    tls_check_peer(srv_ctx, &srv->ssl, &srv->peer) != TLS_PEER_OK)
		die("pair", "a pinned peer was refused");
	if (preamble_version(cli) != 2 || preamble_version(&srv->ssl) != 2)
		die("pair", "upseal/2 was not negotiated");
	return 0;
}

static void cleanup(void)
{
	static const char *const names[] = { "srv", "cli" };
	tls_ctx_free(srv_ctx);
	tls_ctx_free(cli_ctx);
	fuzz_ids_cleanup(names, 2);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	char err[512];
	log_setup(LOG_ERROR, false);
	if (rng_init() != 0)
		die("rng", "cannot seed");
	fuzz_ids_init();
	atexit(cleanup);
	static char scrt[FUZZ_PATH_MAX], skey[FUZZ_PATH_MAX];
	static char ccrt[FUZZ_PATH_MAX], ckey[FUZZ_PATH_MAX];
	static struct pin srv_pin, cli_pin;
	fuzz_make_identity("srv", scrt, skey, &srv_pin);
	fuzz_make_identity("cli", ccrt, ckey, &cli_pin);

	static struct cfg_tunnel s, c;
	snprintf(s.name, sizeof s.name, "fuzz");
	s.cert = scrt;
	s.key = skey;
	s.pins = &cli_pin;
	s.npins = 1;
	s.resumption = true;
	c = s;
	c.cert = ccrt;
	c.key = ckey;
	c.pins = &srv_pin;
	c.pool = 1;
	if (addr_parse("127.0.0.1:0", &s.listen, err, sizeof err) != 0 ||
	    addr_parse("127.0.0.1:1", &s.connect, err, sizeof err) != 0)
		die("addr", err);
	c.listen = s.listen;
	c.connect = s.connect;
	if (tls_ctx_new(&s, CFG_SERVER, (uid_t)-1, &srv_ctx, err, sizeof err) != 0 ||
	    tls_ctx_new(&c, CFG_CLIENT, (uid_t)-1, &cli_ctx, err, sizeof err) != 0)
		die("tls_ctx_new", err);

	/* One full handshake: its session makes every later one resumed. */
	struct wire *w = calloc(1, sizeof *w);
	mbedtls_ssl_context cli;
	struct tlsio srv;
	struct tls_peer cp;
	mbedtls_ssl_init(&cli);
	if (w == NULL || pair(w, &cli, &srv, &cp, err, sizeof err) != 0)
		die("init", "the first handshake failed");
	tls_session_save(cli_ctx, &cli);
	mbedtls_ssl_free(&cli);
	tlsio_free(&srv);
	free(w);
	return 0;
}

/* What the client sent as application data, for the oracles. */
struct sent {
	unsigned char data[PIPE_CAP];
	size_t len;
	bool ended;		/* close_notify or EOF: nothing after counts */
	bool closed;		/* ended before any data */
	bool raw;		/* raw bytes were injected */
};

/* Run the script in data on the client's side of the wire. */
static void play(const uint8_t *data, size_t size, struct wire *w,
    mbedtls_ssl_context *cli, struct sent *sent)
{
	size_t i = 0;
	while (i < size && !w->to_server.eof) {
		uint8_t op = data[i++];
		if (op == 0xFF) {
			mbedtls_ssl_close_notify(cli);
			sent->closed |= !sent->ended && sent->len == 0;
			sent->ended = true;
		} else if (op == 0xFE) {
			size_t n = i < size ? data[i++] : 0;
			if (n > size - i)
				n = size - i;
			pipe_send(&w->to_server, data + i, n);
			i += n;
			sent->raw = true;
		} else if (op == 0xFD) {
			w->to_server.eof = true;
			sent->closed |= !sent->ended && sent->len == 0;
			sent->ended = true;
		} else {
			size_t n = op % 64;
			if (n > size - i)
				n = size - i;
			if (n == 0)
				continue;
			if (sent->len + n > sizeof sent->data / 2)
				return;	/* room on the wire for the records */
			if (mbedtls_ssl_write(cli, data + i, n) != (int)n)
				return;
			if (!sent->ended) {
				memcpy(sent->data + sent->len, data + i, n);
				sent->len += n;
			}
			i += n;
		}
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct wire *w = calloc(1, sizeof *w);
	struct sent *sent = calloc(1, sizeof *sent);
	mbedtls_ssl_context cli;
	struct tlsio srv;
	struct tls_peer cp;
	char err[160] = "";
	mbedtls_ssl_init(&cli);
	memset(&srv, 0, sizeof srv);
	if (w == NULL || sent == NULL)
		goto out;
	if (pair(w, &cli, &srv, &cp, err, sizeof err) != 0)
		die("pair", "a resumed handshake failed");
	play(data, size, w, &cli, sent);

	/*
	 * The server, as preamble_input: one preamble_recv per arrival of
	 * input (tlsio_read retries a stalled WANT_READ itself).
	 */
	enum preamble_result r;
	unsigned char hdr[PREAMBLE_MAX];
	size_t have = 0;
	struct pp_addrs carried;
	enum reason why = REASON_OTHER;
	srv_feed(w, &srv);
	r = preamble_recv(&srv, preamble_version(&srv.ssl), hdr, &have,
	    &carried, &why);
	srv_done(w, &srv);
	unsigned char rest[PIPE_CAP];
	size_t nrest = 0;
	if (r == PREAMBLE_GO) {
		size_t n = 0;
		(void)tlsio_read(&srv, rest,
		    sizeof rest, &n, &why);
		nrest = n;
		srv_done(w, &srv);
	}
	if (sent->raw)
		goto out;
	if (sent->len == 0) {
		if (r != (sent->closed ? PREAMBLE_CLOSED : PREAMBLE_WAIT))
			die("oracle", "a decision without an application byte");
		goto out;
	}
	struct pp_header h;
	char pwhy[256];
	size_t used = 0;
	enum preamble_result want = PREAMBLE_BAD;
	if (sent->data[0] == PREAMBLE_DIAL) {
		want = PREAMBLE_GO;
		used = 1;
	} else if (sent->data[0] == 0x0D) {	/* a v2 header, or nothing */
		switch (pp_parse(sent->data, sent->len, &h, pwhy, sizeof pwhy)) {
		case PP_DONE:
			if (h.version == 2 && h.len <= PREAMBLE_MAX) {
				want = PREAMBLE_GO;
				used = h.len;
			}
			break;
		case PP_MORE:
			if (!sent->ended && (sent->len < PP_V2_FIXED ||
			    PP_V2_FIXED + ((size_t)sent->data[14] << 8 |
			    sent->data[15]) <= PREAMBLE_MAX))
				want = PREAMBLE_WAIT;
			break;
		case PP_BAD:
			break;
		}
	}
	if (r != want)
		die("oracle", "the decision differs from pp_parse's");
	if (r == PREAMBLE_GO && (nrest != sent->len - used ||
	    memcmp(rest, sent->data + used, nrest) != 0))
		die("oracle", "the bytes after the preamble differ");
	if (r == PREAMBLE_GO && used > 1 && !h.local &&
	    (h.addrs.family == PP_INET || h.addrs.family == PP_INET6) &&
	    (carried.family != h.addrs.family ||
	    carried.src_port != h.addrs.src_port ||
	    memcmp(carried.src, h.addrs.src, 16) != 0))
		die("oracle", "the carried address differs from the header's");
out:
	mbedtls_ssl_free(&cli);
	tlsio_free(&srv);
	free(sent);
	free(w);
	return 0;
}
