/*
 * sha1_cv: a test-only TLS 1.2 client (mbedTLS 2.28) with an honest key
 * whose CertificateVerify is signed with SHA-1 (hash id 2), which the
 * server's CertificateRequest did not offer (RFC 5246 7.4.8). mbedTLS's
 * client always signs with SHA-256/384, so the BIO rewrites the message:
 * it keeps its own SHA-1 of the handshake messages both ways (plaintext,
 * before ChangeCipherSpec), signs that, and puts the client's Finished
 * transcript back as if the new message had been sent (2.28's handshake
 * struct is public). With "sha256" as MODE the message is left alone
 * (the control case).
 *
 *   sha1_cv HOST PORT CERT KEY sha1|sha256
 *
 * Exit 0: the handshake completed, "ping\n" was written and echoed back
 * (prints "handshake ok", "echo ok"). Exit 1: the handshake failed
 * (prints "handshake failed: -0xNNNN", then "alert N" if the server sent
 * the fatal alert N). Exit 2: usage or set-up error. Waits at most ~10 s.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/net_sockets.h>
#include <mbedtls/pk.h>
#include <mbedtls/sha1.h>
#include <mbedtls/ssl.h>
#include <mbedtls/ssl_internal.h>
#include <mbedtls/x509_crt.h>

#include "handshake_ping.h"

struct tap {
	mbedtls_net_context *net;
	mbedtls_ssl_context *ssl;
	mbedtls_pk_context *key;
	mbedtls_ctr_drbg_context *drbg;
	bool rewrite;
	mbedtls_sha1_context tr;	/* handshake messages, both ways */
	bool out_plain, in_plain;
	unsigned char hdr[5];		/* incoming record header */
	size_t hdr_got, body_left;
	mbedtls_sha256_context snap256;	/* client transcript after CKE */
	mbedtls_sha512_context snap512;
};

static void feed_in(struct tap *t, const unsigned char *p, size_t n)
{
	while (n > 0) {
		if (t->hdr_got < 5) {
			t->hdr[t->hdr_got++] = *p++;
			n--;
			if (t->hdr_got == 5)
				t->body_left = (size_t)t->hdr[3] << 8 | t->hdr[4];
			continue;
		}
		size_t k = n < t->body_left ? n : t->body_left;
		if (t->hdr[0] == MBEDTLS_SSL_MSG_HANDSHAKE && t->in_plain)
			mbedtls_sha1_update_ret(&t->tr, p, k);
		p += k;
		n -= k;
		t->body_left -= k;
		if (t->body_left == 0) {
			if (t->hdr[0] == MBEDTLS_SSL_MSG_CHANGE_CIPHER_SPEC)
				t->in_plain = false;
			t->hdr_got = 0;
		}
	}
}

static int tap_recv(void *arg, unsigned char *buf, size_t len, uint32_t ms)
{
	struct tap *t = arg;
	int rc = mbedtls_net_recv_timeout(t->net, buf, len, ms);
	if (rc > 0)
		feed_in(t, buf, (size_t)rc);
	return rc;
}

static int send_all(struct tap *t, const unsigned char *p, size_t n)
{
	while (n > 0) {
		int rc = mbedtls_net_send(t->net, p, n);
		if (rc <= 0)
			return rc < 0 ? rc : -1;
		p += rc;
		n -= (size_t)rc;
	}
	return 0;
}

static int tap_send(void *arg, const unsigned char *buf, size_t len)
{
	struct tap *t = arg;
	mbedtls_ssl_handshake_params *hs = t->ssl->handshake;
	if (len > 5 && buf[0] == MBEDTLS_SSL_MSG_CHANGE_CIPHER_SPEC)
		t->out_plain = false;
	if (!(len > 9 && buf[0] == MBEDTLS_SSL_MSG_HANDSHAKE && t->out_plain))
		return mbedtls_net_send(t->net, buf, len);
	if (buf[5] != MBEDTLS_SSL_HS_CERTIFICATE_VERIFY || !t->rewrite) {
		mbedtls_sha1_update_ret(&t->tr, buf + 5, len - 5);
		if (buf[5] == MBEDTLS_SSL_HS_CLIENT_KEY_EXCHANGE && hs != NULL) {
			mbedtls_sha256_clone(&t->snap256, &hs->fin_sha256);
			mbedtls_sha512_clone(&t->snap512, &hs->fin_sha512);
		}
		return mbedtls_net_send(t->net, buf, len);
	}
	unsigned char h[20], sig[MBEDTLS_PK_SIGNATURE_MAX_SIZE];
	size_t siglen = 0;
	mbedtls_sha1_context c;
	mbedtls_sha1_init(&c);
	mbedtls_sha1_clone(&c, &t->tr);
	mbedtls_sha1_finish_ret(&c, h);
	if (mbedtls_pk_sign(t->key, MBEDTLS_MD_SHA1, h, sizeof h, sig, &siglen,
	    mbedtls_ctr_drbg_random, t->drbg) != 0)
		return MBEDTLS_ERR_SSL_INTERNAL_ERROR;
	unsigned char rec[5 + 8 + sizeof sig];
	size_t mlen = 8 + siglen;
	unsigned char *m = rec + 5;
	rec[0] = MBEDTLS_SSL_MSG_HANDSHAKE;
	rec[1] = 3;
	rec[2] = 3;
	rec[3] = (unsigned char)(mlen >> 8);
	rec[4] = (unsigned char)mlen;
	m[0] = MBEDTLS_SSL_HS_CERTIFICATE_VERIFY;
	m[1] = 0;
	m[2] = (unsigned char)((mlen - 4) >> 8);
	m[3] = (unsigned char)(mlen - 4);
	m[4] = MBEDTLS_SSL_HASH_SHA1;
	m[5] = MBEDTLS_SSL_SIG_ECDSA;
	m[6] = (unsigned char)(siglen >> 8);
	m[7] = (unsigned char)siglen;
	memcpy(m + 8, sig, siglen);
	/* The client's Finished must cover the message actually sent. */
	mbedtls_sha256_clone(&hs->fin_sha256, &t->snap256);
	mbedtls_sha512_clone(&hs->fin_sha512, &t->snap512);
	hs->update_checksum(t->ssl, m, mlen);
	int rc = send_all(t, rec, 5 + mlen);
	return rc < 0 ? rc : (int)len;
}

int main(int argc, char **argv)
{
	if (argc != 6 || (strcmp(argv[5], "sha1") && strcmp(argv[5], "sha256"))) {
		fprintf(stderr, "usage: sha1_cv HOST PORT CERT KEY sha1|sha256\n");
		return 2;
	}
	struct hp_client c;
	struct tap t = { .net = &c.net, .ssl = &c.ssl, .key = &c.key,
		.drbg = &c.drbg, .rewrite = strcmp(argv[5], "sha1") == 0,
		.out_plain = true, .in_plain = true };
	mbedtls_sha1_init(&t.tr);
	mbedtls_sha1_starts_ret(&t.tr);
	mbedtls_sha256_init(&t.snap256);
	mbedtls_sha512_init(&t.snap512);
	int rc = hp_open(&c, "sha1_cv", argv[3], argv[4]);
	if (rc == 0) {
		mbedtls_ssl_conf_min_version(&c.conf, MBEDTLS_SSL_MAJOR_VERSION_3,
		    MBEDTLS_SSL_MINOR_VERSION_3);
		/* No ticket, no resumption: every run has a CertificateVerify. */
		mbedtls_ssl_conf_session_tickets(&c.conf,
		    MBEDTLS_SSL_SESSION_TICKETS_DISABLED);
		rc = hp_connect(&c, "sha1_cv", argv[1], argv[2]);
	}
	if (rc == 0) {
		mbedtls_ssl_set_bio(&c.ssl, &t, tap_send, NULL, tap_recv);
		rc = handshake_ping(&c.ssl);
	}
	hp_free(&c);
	mbedtls_sha1_free(&t.tr);
	mbedtls_sha256_free(&t.snap256);
	mbedtls_sha512_free(&t.snap512);
	return rc;
}
