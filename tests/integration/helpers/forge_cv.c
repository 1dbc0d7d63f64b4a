/*
 * forge_cv: a test-only TLS 1.2 client (mbedTLS) that presents the
 * certificate CERT but signs its CertificateVerify with KEY, which need not
 * be CERT's key: a peer that copied a pinned certificate (public) without
 * holding its private key. With a matching KEY it is an honest client (the
 * control case).
 *
 *   forge_cv HOST PORT CERT KEY
 *
 * Exit 0: the handshake completed, "ping\n" was written and echoed back
 * (prints "handshake ok" and "echo ok"). Exit 1: the handshake failed
 * (prints "handshake failed: -0xNNNN", then "alert N" if the server sent
 * the fatal alert N). Exit 2: usage or set-up error.
 * Never waits more than about 10 s.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/net_sockets.h>
#include <mbedtls/pk.h>
#include <mbedtls/ssl.h>
#include <mbedtls/x509_crt.h>

int main(int argc, char **argv)
{
	if (argc != 5) {
		fprintf(stderr, "usage: forge_cv HOST PORT CERT KEY\n");
		return 2;
	}
	mbedtls_net_context net;
	mbedtls_ssl_context ssl;
	mbedtls_ssl_config conf;
	mbedtls_x509_crt crt;
	mbedtls_pk_context key;
	mbedtls_entropy_context ent;
	mbedtls_ctr_drbg_context drbg;
	int rc;

	mbedtls_net_init(&net);
	mbedtls_ssl_init(&ssl);
	mbedtls_ssl_config_init(&conf);
	mbedtls_x509_crt_init(&crt);
	mbedtls_pk_init(&key);
	mbedtls_entropy_init(&ent);
	mbedtls_ctr_drbg_init(&drbg);
	if (mbedtls_ctr_drbg_seed(&drbg, mbedtls_entropy_func, &ent, NULL, 0) ||
	    mbedtls_x509_crt_parse_file(&crt, argv[3]) ||
	    mbedtls_pk_parse_keyfile(&key, argv[4], NULL)) {
		fprintf(stderr, "forge_cv: cannot load %s / %s\n", argv[3], argv[4]);
		return 2;
	}
	if (mbedtls_ssl_config_defaults(&conf, MBEDTLS_SSL_IS_CLIENT,
	    MBEDTLS_SSL_TRANSPORT_STREAM, MBEDTLS_SSL_PRESET_DEFAULT))
		return 2;
	mbedtls_ssl_conf_authmode(&conf, MBEDTLS_SSL_VERIFY_NONE);
	mbedtls_ssl_conf_rng(&conf, mbedtls_ctr_drbg_random, &drbg);
	mbedtls_ssl_conf_read_timeout(&conf, 10000);
	/* No pair check here, on purpose: that is the forgery. */
	if (mbedtls_ssl_conf_own_cert(&conf, &crt, &key) ||
	    mbedtls_ssl_setup(&ssl, &conf))
		return 2;
	if ((rc = mbedtls_net_connect(&net, argv[1], argv[2],
	    MBEDTLS_NET_PROTO_TCP)) != 0) {
		fprintf(stderr, "forge_cv: connect: -0x%04x\n", -rc);
		return 2;
	}
	mbedtls_ssl_set_bio(&ssl, &net, mbedtls_net_send, NULL,
	    mbedtls_net_recv_timeout);
	while ((rc = mbedtls_ssl_handshake(&ssl)) != 0) {
		if (rc != MBEDTLS_ERR_SSL_WANT_READ &&
		    rc != MBEDTLS_ERR_SSL_WANT_WRITE) {
			printf("handshake failed: -0x%04x\n", -rc);
			/* 2.28: the record that held the alert is still there. */
			if (rc == MBEDTLS_ERR_SSL_FATAL_ALERT_MESSAGE)
				printf("alert %u\n", (unsigned)ssl.in_msg[1]);
			return 1;
		}
	}
	printf("handshake ok\n");
	fflush(stdout);
	const unsigned char ping[] = "ping\n";
	if (mbedtls_ssl_write(&ssl, ping, 5) != 5) {
		printf("write failed\n");
		return 1;
	}
	unsigned char buf[64];
	size_t got = 0;
	while (got < 5) {
		rc = mbedtls_ssl_read(&ssl, buf + got, sizeof buf - got);
		if (rc <= 0) {
			printf("read ended: -0x%04x after %zu bytes\n", -rc, got);
			return 1;
		}
		got += (size_t)rc;
	}
	printf(memcmp(buf, ping, 5) == 0 ? "echo ok\n" : "echo wrong\n");
	mbedtls_ssl_close_notify(&ssl);
	mbedtls_net_free(&net);
	mbedtls_ssl_free(&ssl);
	mbedtls_ssl_config_free(&conf);
	mbedtls_x509_crt_free(&crt);
	mbedtls_pk_free(&key);
	mbedtls_ctr_drbg_free(&drbg);
	mbedtls_entropy_free(&ent);
	return memcmp(buf, ping, 5) == 0 ? 0 : 1;
}
