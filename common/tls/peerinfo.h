/*
 * peerinfo: what a completed handshake says about the connection and its
 * peer, in the words that PROXY protocol v2's PP2_TYPE_SSL uses (which
 * are OpenSSL's, as haproxy sends them): the protocol version, the suite,
 * the peer certificate's common name, signature and key algorithms, and
 * the server name the peer asked for.
 */
#ifndef UPSEAL_PEERINFO_H
#define UPSEAL_PEERINFO_H

#include <stdbool.h>
#include <stddef.h>

#include <mbedtls/ssl.h>

#include "tls.h"

#define PEERINFO_TEXT 128

struct peerinfo {
	const char *version;	/* "TLSv1.2", "TLSv1.3" */
	const char *cipher;	/* "ECDHE-ECDSA-AES128-GCM-SHA256", ... */
	char cn[PEERINFO_TEXT];	/* the subject's CN, or "" */
	char sig_alg[32];	/* the certificate's: "ecdsa-with-SHA256", ... */
	char key_alg[32];	/* its key's: "EC256", "RSA2048", ... */
	const char *sni;	/* the server name the client sent, or "" */
	bool has_cert;		/* the peer's certificate is known */
};

/*
 * Describe ssl (a completed handshake, resumed or not) and its peer; the
 * strings point into *out, ssl's configuration or static storage, and
 * live as long as ssl and peer.
 */
void peerinfo_describe(const mbedtls_ssl_context *ssl,
    const struct tls_peer *peer, struct peerinfo *out);

#endif
