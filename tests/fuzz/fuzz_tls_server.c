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
 * removed at exit. No key material is kept in the repository.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <mbedtls/ssl.h>

#include "../../certs/x509gen.h"
#include "config.h"
#include "log.h"
#include "pin.h"
#include "rng.h"
#include "tls.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static char dir[64];
static char crt_path[128], key_path[128];
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
	fprintf(stderr, "fuzz_tls_server: %s: %s\n", what, err);
	abort();
}

static void write_file(const char *path, const unsigned char *buf, size_t len)
{
	FILE *f = fopen(path, "wb");
	if (f == NULL || fwrite(buf, 1, len, f) != len || fclose(f) != 0)
		die("write", path);
}

/* One identity: key + self-signed certificate written to dir/name.{key,crt}. */
static void make_identity(const char *name, char *crt_out, char *key_out,
    struct pin *pin)
{
	char err[256];
	mbedtls_pk_context key;
	unsigned char *pem = NULL;
	size_t len = 0, sz = 0;
	mbedtls_pk_init(&key);
	if (x509gen_key(&key, err, sizeof err) != 0)
		die("key", err);
	if (x509gen_key_pem(&key, &pem, &len, &sz, err, sizeof err) != 0)
		die("key pem", err);
	snprintf(key_out, 128, "%s/%s.key", dir, name);
	write_file(key_out, pem, len);
	mbedtls_platform_zeroize(pem, sz);
	free(pem);
	struct x509gen_opts o = { .name = name, .days = 30 };
	if (x509gen_crt_pem(&o, &key, &pem, &len, err, sizeof err) != 0)
		die("crt", err);
	snprintf(crt_out, 128, "%s/%s.crt", dir, name);
	write_file(crt_out, pem, len);
	free(pem);
	if (pin_of_pk(&key, pin) != 0)
		die("pin", name);
	mbedtls_pk_free(&key);
}

static void cleanup(void)
{
	tls_ctx_free(ctx);
	char p[160];
	const char *names[] = { "srv.key", "srv.crt", "cli.key", "cli.crt" };
	for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
		snprintf(p, sizeof p, "%s/%s", dir, names[i]);
		unlink(p);
	}
	rmdir(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	char err[512];
	log_setup(LOG_ERROR, false);
	if (rng_init() != 0)
		die("rng", "cannot seed");
	snprintf(dir, sizeof dir, "/tmp/upseal-fuzz-tls-XXXXXX");
	if (mkdtemp(dir) == NULL)
		die("mkdtemp", dir);
	atexit(cleanup);
	char ccrt[128], ckey[128];
	struct pin srv_pin, cli_pin;
	make_identity("srv", crt_path, key_path, &srv_pin);
	make_identity("cli", ccrt, ckey, &cli_pin);

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
	if (tls_ctx_new(&t, CFG_SERVER, &ctx, err, sizeof err) != 0)
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
	if (tls_check_peer(&ssl, &peer) != TLS_PEER_OK)
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
