/*
 * What sha1_cv.c and forge_cv.c share: an mbedTLS 2.28 TLS 1.2 client
 * with a certificate that does not verify the server (hp_open, then the
 * caller's own settings on c->conf, then hp_connect), and the end of a run
 * (handshake_ping). Each program differs only in how it bends its
 * CertificateVerify.
 */
#ifndef HANDSHAKE_PING_H
#define HANDSHAKE_PING_H

#include <stdio.h>
#include <string.h>

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/net_sockets.h>
#include <mbedtls/pk.h>
#include <mbedtls/ssl.h>
#include <mbedtls/x509_crt.h>

struct hp_client {
	mbedtls_net_context net;
	mbedtls_ssl_context ssl;
	mbedtls_ssl_config conf;
	mbedtls_x509_crt crt;
	mbedtls_pk_context key;
	mbedtls_entropy_context ent;
	mbedtls_ctr_drbg_context drbg;
};

/* Load crt and key, set up a client config (no server check). 0, or 2. */
static int hp_open(struct hp_client *c, const char *prog, const char *crt,
    const char *key)
{
	mbedtls_net_init(&c->net);
	mbedtls_ssl_init(&c->ssl);
	mbedtls_ssl_config_init(&c->conf);
	mbedtls_x509_crt_init(&c->crt);
	mbedtls_pk_init(&c->key);
	mbedtls_entropy_init(&c->ent);
	mbedtls_ctr_drbg_init(&c->drbg);
	if (mbedtls_ctr_drbg_seed(&c->drbg, mbedtls_entropy_func, &c->ent,
	    NULL, 0) || mbedtls_x509_crt_parse_file(&c->crt, crt) ||
	    mbedtls_pk_parse_keyfile(&c->key, key, NULL)) {
		fprintf(stderr, "%s: cannot load %s / %s\n", prog, crt, key);
		return 2;
	}
	if (mbedtls_ssl_config_defaults(&c->conf, MBEDTLS_SSL_IS_CLIENT,
	    MBEDTLS_SSL_TRANSPORT_STREAM, MBEDTLS_SSL_PRESET_DEFAULT))
		return 2;
	mbedtls_ssl_conf_authmode(&c->conf, MBEDTLS_SSL_VERIFY_NONE);
	mbedtls_ssl_conf_rng(&c->conf, mbedtls_ctr_drbg_random, &c->drbg);
	mbedtls_ssl_conf_read_timeout(&c->conf, 10000);
	return 0;
}

/* Own certificate (no pair check: forge_cv's forgery), set up, connect. */
static int hp_connect(struct hp_client *c, const char *prog,
    const char *host, const char *port)
{
	int rc;
	if (mbedtls_ssl_conf_own_cert(&c->conf, &c->crt, &c->key) ||
	    mbedtls_ssl_setup(&c->ssl, &c->conf))
		return 2;
	if ((rc = mbedtls_net_connect(&c->net, host, port,
	    MBEDTLS_NET_PROTO_TCP)) != 0) {
		fprintf(stderr, "%s: connect: -0x%04x\n", prog, -rc);
		return 2;
	}
	return 0;
}

static void hp_free(struct hp_client *c)
{
	mbedtls_net_free(&c->net);
	mbedtls_ssl_free(&c->ssl);
	mbedtls_ssl_config_free(&c->conf);
	mbedtls_x509_crt_free(&c->crt);
	mbedtls_pk_free(&c->key);
	mbedtls_ctr_drbg_free(&c->drbg);
	mbedtls_entropy_free(&c->ent);
}

/*
 * Finish the handshake on ssl (its BIO set), say how it went on stdout
 * ("handshake ok", or "handshake failed: -0xNNNN" and the alert number if
 * the peer sent one), then send "ping\n", expect it echoed ("echo ok" /
 * "echo wrong") and send close_notify. 0 when the echo came back, else 1.
 */
static int handshake_ping(mbedtls_ssl_context *ssl)
{
	int rc;
	while ((rc = mbedtls_ssl_handshake(ssl)) != 0) {
		if (rc != MBEDTLS_ERR_SSL_WANT_READ &&
		    rc != MBEDTLS_ERR_SSL_WANT_WRITE) {
			printf("handshake failed: -0x%04x\n", -rc);
			/* 2.28: the record that held the alert is still there. */
			if (rc == MBEDTLS_ERR_SSL_FATAL_ALERT_MESSAGE)
				printf("alert %u\n", (unsigned)ssl->in_msg[1]);
			return 1;
		}
	}
	printf("handshake ok\n");
	fflush(stdout);
	const unsigned char ping[] = "ping\n";
	if (mbedtls_ssl_write(ssl, ping, 5) != 5) {
		printf("write failed\n");
		return 1;
	}
	unsigned char buf[64];
	size_t got = 0;
	while (got < 5) {
		rc = mbedtls_ssl_read(ssl, buf + got, sizeof buf - got);
		if (rc <= 0) {
			printf("read ended: -0x%04x after %zu bytes\n", -rc, got);
			return 1;
		}
		got += (size_t)rc;
	}
	int ok = memcmp(buf, ping, 5) == 0;
	printf(ok ? "echo ok\n" : "echo wrong\n");
	mbedtls_ssl_close_notify(ssl);
	return ok ? 0 : 1;
}

#endif
