/*
 * libFuzzer target: the TLS input path of upseal-server. The input is a
 * client's byte stream, fed through an in-memory BIO into a server-side
 * mbedtls_ssl_context set up exactly as a connection is (tls_ctx_new for a
 * server tunnel, then tls_session_setup). The handshake (and, should it
 * ever finish, tls_check_peer and mbedtls_ssl_read) runs until the input is
 * consumed or the session fails. What the server sends is discarded.
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

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static char crt_path[FUZZ_PATH_MAX], key_path[FUZZ_PATH_MAX];
static struct tls_ctx *ctx;

struct feed {
	const uint8_t *data;
	size_t len, pos;
};

static int bio_recv(void *p, unsigned char *buf, size_t len)
{
	struct feed *f = p;
	if (f->pos >= f->len)
		return MBEDTLS_ERR_SSL_WANT_READ;
	size_t n = f->len - f->pos;
	if (n > len)
		n = len;
	/* Deliver in odd-sized pieces: partial records are the hard case. */
	if (n > 1 && (f->data[f->pos] & 1))
		n = n / 2 + 1;
	memcpy(buf, f->data + f->pos, n);
	f->pos += n;
	return (int)n;
}

static int bio_send(void *p, const unsigned char *buf, size_t len)
{
	(void)p;
	(void)buf;
	return (int)len;
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
	mbedtls_ssl_context ssl;
	struct tls_peer peer;
	struct feed f = { data, size, 0 };
	mbedtls_ssl_init(&ssl);
	if (tls_session_setup(ctx, &ssl, &peer) != 0)
		abort();
	mbedtls_ssl_set_bio(&ssl, &f, bio_send, bio_recv, NULL);
	/* Bounded: each round consumes input or ends the session. */
	int rc = 0;
	for (int i = 0; i < 4096; i++) {
		size_t before = f.pos;
		rc = mbedtls_ssl_handshake(&ssl);
		if (rc == 0)
			break;
		if (rc != MBEDTLS_ERR_SSL_WANT_READ &&
		    rc != MBEDTLS_ERR_SSL_WANT_WRITE)
			goto out;
		if (f.pos == before && f.pos >= f.len)
			goto out;	/* input consumed mid-handshake */
	}
	if (rc != 0)
		goto out;
	/* A completed handshake: judged as a connection would judge it. */
	if (tls_check_peer(ctx, &ssl, &peer) != TLS_PEER_OK)
		goto out;
	unsigned char buf[4096];
	for (int i = 0; i < 4096; i++) {
		size_t before = f.pos;
		rc = mbedtls_ssl_read(&ssl, buf, sizeof buf);
		if (rc > 0)
			continue;
		if (rc != MBEDTLS_ERR_SSL_WANT_READ || (f.pos == before &&
		    f.pos >= f.len))
			break;
	}
out:
	mbedtls_ssl_free(&ssl);
	return 0;
}
