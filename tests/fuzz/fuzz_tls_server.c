/*
 * libFuzzer target: the TLS input path of upseal-server. The input is a
 * client's byte stream, fed in pieces into the product's tlsio (its BIO and
 * read loop) set up exactly as a connection's is (tls_ctx_new for a server
 * tunnel, then tlsio_init). The handshake (and, should it ever finish,
 * tls_check_peer and tlsio_read) runs until the input is consumed or the
 * session fails. What the server sends is discarded.
 *
 * The identities (server and a pinned client, ECDSA P-256 from
 * certs/x509gen.c) are made once per process into a temp dir that is
 * removed at exit (fuzz_ids.h). No key material is kept in the repository.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <mbedtls/ssl.h>

#include "config.h"
#include "fuzz_ids.h"
#include "log.h"
#include "pin.h"
#include "rng.h"
#include "tls.h"
#include "tlsio.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static char crt_path[FUZZ_PATH_MAX], key_path[FUZZ_PATH_MAX];
static struct tls_ctx *ctx;

/*
 * The next piece of the input: odd-sized, since partial records are the
 * hard case. 0 when the input is used up.
 */
static size_t piece(const uint8_t *data, size_t size, size_t pos)
{
	size_t n = size - pos;
	if (n > 1 && (data[pos] & 1))
		n = n / 2 + 1;
	return n;
}

/* After an operation: keep the input left, discard what it wrote. */
static void settle(struct tlsio *io)
{
	if (tlsio_settle(io) != 0)
		abort();
	chunk_free(tlsio_take_out(io));
}

static void die(const char *what, const char *err)
{
	fuzz_die("fuzz_tls_server", what, err);
}

static void cleanup(void)
{
	static const char *const names[] = { "srv", "cli" };
	tls_ctx_free(ctx);
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
	char ccrt[FUZZ_PATH_MAX], ckey[FUZZ_PATH_MAX];
	struct pin srv_pin, cli_pin;
	fuzz_make_identity("srv", crt_path, key_path, &srv_pin);
	fuzz_make_identity("cli", ccrt, ckey, &cli_pin);

	static struct pin pins[1];
	pins[0] = cli_pin;
	static struct cfg_tunnel t;
	snprintf(t.name, sizeof t.name, "fuzz");
	t.cert = crt_path;
	t.key = key_path;
	t.pins = pins;
	t.npins = 1;
	t.handshake_timeout_ms = 10000;
	t.connect_timeout_ms = 5000;
	t.max_connections = 1;
	if (addr_parse("127.0.0.1:0", &t.listen, err, sizeof err) != 0 ||
	    addr_parse("127.0.0.1:1", &t.connect, err, sizeof err) != 0)
		die("addr", err);
	if (tls_ctx_new(&t, CFG_SERVER, (uid_t)-1, &ctx, err, sizeof err) != 0)
		die("tls_ctx_new", err);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct tlsio io;
	char err[160];
	size_t pos = 0;
	if (tlsio_init(&io, ctx, false, err, sizeof err) != 0)
		abort();
	/* Bounded: each round consumes input or ends the session. */
	int rc = MBEDTLS_ERR_SSL_WANT_READ;
	for (int i = 0; i < 4096 && rc != 0; i++) {
		if (tlsio_wants_input(&io)) {
			size_t n = piece(data, size, pos);
			if (n == 0)
				goto out;	/* input consumed mid-handshake */
			tlsio_input(&io, data + pos, n);
			pos += n;
		}
		rc = tlsio_handshake(&io);
		settle(&io);
		if (rc != 0 && rc != MBEDTLS_ERR_SSL_WANT_READ &&
		    rc != MBEDTLS_ERR_SSL_WANT_WRITE)
			goto out;
	}
	if (rc != 0)
		goto out;
	/* A completed handshake: judged as a connection would judge it. */
	if (tls_check_peer(ctx, &io.ssl, &io.peer) != TLS_PEER_OK)
		goto out;
	unsigned char buf[4096];
	for (int i = 0; i < 4096; i++) {
		size_t len;
		enum reason why;
		enum tlsio_status st = tlsio_read(&io, buf, sizeof buf, &len,
		    &why);
		settle(&io);
		if (st == TLSIO_CLOSED || st == TLSIO_FAIL)
			break;
		if (st == TLSIO_WANT) {
			size_t n = piece(data, size, pos);
			if (n == 0)
				break;
			tlsio_input(&io, data + pos, n);
			pos += n;
		}
	}
out:
	tlsio_free(&io);
	return 0;
}
