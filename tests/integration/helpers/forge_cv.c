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

#include "handshake_ping.h"

int main(int argc, char **argv)
{
	if (argc != 5) {
		fprintf(stderr, "usage: forge_cv HOST PORT CERT KEY\n");
		return 2;
	}
	struct hp_client c;
	int rc = hp_open(&c, "forge_cv", argv[3], argv[4]);
	/* No pair check in hp_connect, on purpose: that is the forgery. */
	if (rc == 0)
		rc = hp_connect(&c, "forge_cv", argv[1], argv[2]);
	if (rc == 0) {
		mbedtls_ssl_set_bio(&c.ssl, &c.net, mbedtls_net_send, NULL,
		    mbedtls_net_recv_timeout);
		rc = handshake_ping(&c.ssl);
	}
	hp_free(&c);
	return rc;
}
