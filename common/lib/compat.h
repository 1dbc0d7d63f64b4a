/*
 * compat: the differences between mbedTLS 2.28 (Debian 12) and 3.6, in one
 * place. Everything else calls these and never tests the version itself.
 */
#ifndef UPSEAL_COMPAT_H
#define UPSEAL_COMPAT_H

#include <mbedtls/version.h>
/*
 * 2.28, or 3.6.1 and later. 3.6.0 does not call the verify callback (the
 * pin check) in a TLS 1.3 handshake and has CVE-2024-45159; 3.0 to 3.5 are
 * no longer maintained.
 */
#if MBEDTLS_VERSION_NUMBER >= 0x03000000 && MBEDTLS_VERSION_NUMBER < 0x03060100
#error "upseal needs mbedTLS 2.28 or 3.6.1 or later: 3.x before 3.6.1 skips the pin check (verify callback) under TLS 1.3 and has CVE-2024-45159"
#endif
#if MBEDTLS_VERSION_MAJOR >= 3
#include <mbedtls/build_info.h>
#include <psa/crypto.h>
#define UPSEAL_MBEDTLS3 1
#else
#include <mbedtls/config.h>
#define UPSEAL_MBEDTLS3 0
#endif

#include <stdbool.h>

#include <mbedtls/bignum.h>
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/pk.h>
#include <mbedtls/sha256.h>
#include <mbedtls/ssl.h>
#include <mbedtls/x509_crt.h>

static inline int compat_sha256(const unsigned char *in, size_t len,
    unsigned char out[32])
{
#if UPSEAL_MBEDTLS3
	return mbedtls_sha256(in, len, out, 0);
#else
	return mbedtls_sha256_ret(in, len, out, 0);
#endif
}

/* Parse a private key from a file (PEM or DER). */
static inline int compat_pk_parse_keyfile(mbedtls_pk_context *pk,
    const char *path, mbedtls_ctr_drbg_context *rng)
{
#if UPSEAL_MBEDTLS3
	return mbedtls_pk_parse_keyfile(pk, path, NULL, mbedtls_ctr_drbg_random, rng);
#else
	(void)rng;
	return mbedtls_pk_parse_keyfile(pk, path, NULL);
#endif
}

/* Parse a private key from memory (PEM needs the terminating NUL in len). */
static inline int compat_pk_parse_key(mbedtls_pk_context *pk,
    const unsigned char *buf, size_t len, mbedtls_ctr_drbg_context *rng)
{
#if UPSEAL_MBEDTLS3
	return mbedtls_pk_parse_key(pk, buf, len, NULL, 0, mbedtls_ctr_drbg_random, rng);
#else
	(void)rng;
	return mbedtls_pk_parse_key(pk, buf, len, NULL, 0);
#endif
}

/* 0 if prv is the private half of pub's key pair. */
static inline int compat_pk_check_pair(const mbedtls_pk_context *pub,
    const mbedtls_pk_context *prv, mbedtls_ctr_drbg_context *rng)
{
#if UPSEAL_MBEDTLS3
	return mbedtls_pk_check_pair(pub, prv, mbedtls_ctr_drbg_random, rng);
#else
	(void)rng;
	return mbedtls_pk_check_pair(pub, prv);
#endif
}

/* Process-wide crypto set-up (PSA on 3.x). 0 or an error code. */
static inline int compat_crypto_init(void)
{
#if UPSEAL_MBEDTLS3
	return psa_crypto_init() == PSA_SUCCESS ? 0 : -1;
#else
	return 0;
#endif
}

static inline int compat_handshake_over(const mbedtls_ssl_context *ssl)
{
#if UPSEAL_MBEDTLS3
	return mbedtls_ssl_is_handshake_over((mbedtls_ssl_context *)ssl);
#else
	return ssl->state == MBEDTLS_SSL_HANDSHAKE_OVER;
#endif
}

/* The raw SubjectPublicKeyInfo (DER) of a parsed certificate. */
#if UPSEAL_MBEDTLS3
#define COMPAT_CRT_PK_RAW(crt) ((crt)->pk_raw)
#else
#define COMPAT_CRT_PK_RAW(crt) ((crt)->pk_raw)
#endif

/*
 * The peer's certificate that a session (e.g. one just opened from a
 * ticket) carries, or NULL. Both versions keep it by default
 * (MBEDTLS_SSL_KEEP_PEER_CERTIFICATE); 3.6 hides the field.
 */
static inline const mbedtls_x509_crt *compat_session_peer_cert(
    const mbedtls_ssl_session *s)
{
#if !defined(MBEDTLS_SSL_KEEP_PEER_CERTIFICATE)
#error "upseal needs MBEDTLS_SSL_KEEP_PEER_CERTIFICATE to judge resumed sessions"
#elif UPSEAL_MBEDTLS3
	return s->MBEDTLS_PRIVATE(peer_cert);
#else
	return s->peer_cert;
#endif
}

/*
 * The argument a connection's verify callback was set with
 * (mbedtls_ssl_set_verify): the connection's own state, for callbacks
 * that mbedTLS sets per configuration (SNI). 3.6 hides the field.
 */
static inline void *compat_ssl_verify_arg(const mbedtls_ssl_context *ssl)
{
#if UPSEAL_MBEDTLS3
	return ssl->MBEDTLS_PRIVATE(p_vrfy);
#else
	return ssl->p_vrfy;
#endif
}

/* True if a parsed certificate says basicConstraints CA:TRUE. */
static inline bool compat_crt_is_ca(const mbedtls_x509_crt *crt)
{
#if UPSEAL_MBEDTLS3
	return mbedtls_x509_crt_get_ca_istrue(crt) == 1;
#else
	return crt->ca_istrue != 0;
#endif
}

/* Sign hash with pk (a signature of at most sig_size bytes into sig). */
static inline int compat_pk_sign(mbedtls_pk_context *pk, mbedtls_md_type_t md,
    const unsigned char *hash, size_t hash_len, unsigned char *sig,
    size_t sig_size, size_t *sig_len,
    int (*f_rng)(void *, unsigned char *, size_t), void *p_rng)
{
#if UPSEAL_MBEDTLS3
	return mbedtls_pk_sign(pk, md, hash, hash_len, sig, sig_size, sig_len,
	    f_rng, p_rng);
#else
	if (sig_size < MBEDTLS_PK_SIGNATURE_MAX_SIZE)
		return MBEDTLS_ERR_PK_BAD_INPUT_DATA;
	return mbedtls_pk_sign(pk, md, hash, hash_len, sig, sig_len, f_rng,
	    p_rng);
#endif
}

#if defined(MBEDTLS_X509_CRT_WRITE_C)
/* Set a new certificate's serial from big-endian bytes (at most 20). */
static inline int compat_x509write_crt_set_serial(mbedtls_x509write_cert *ctx,
    unsigned char *serial, size_t len)
{
#if UPSEAL_MBEDTLS3
	return mbedtls_x509write_crt_set_serial_raw(ctx, serial, len);
#else
	mbedtls_mpi n;
	mbedtls_mpi_init(&n);
	int rc = mbedtls_mpi_read_binary(&n, serial, len);
	if (rc == 0)
		rc = mbedtls_x509write_crt_set_serial(ctx, &n);
	mbedtls_mpi_free(&n);
	return rc;
#endif
}
#endif

/* TLS 1.2 as the lowest version; 1.3 too where the library has it. */
static inline void compat_conf_versions(mbedtls_ssl_config *conf)
{
#if UPSEAL_MBEDTLS3
	mbedtls_ssl_conf_min_tls_version(conf, MBEDTLS_SSL_VERSION_TLS1_2);
#else
	mbedtls_ssl_conf_min_version(conf, MBEDTLS_SSL_MAJOR_VERSION_3,
	    MBEDTLS_SSL_MINOR_VERSION_3);
	mbedtls_ssl_conf_max_version(conf, MBEDTLS_SSL_MAJOR_VERSION_3,
	    MBEDTLS_SSL_MINOR_VERSION_3);
#endif
}

/* Key exchange groups: X25519 first, then P-256; never P-521 by default. */
static inline void compat_conf_groups(mbedtls_ssl_config *conf)
{
#if UPSEAL_MBEDTLS3
	static const uint16_t groups[] = {
		MBEDTLS_SSL_IANA_TLS_GROUP_X25519,
		MBEDTLS_SSL_IANA_TLS_GROUP_SECP256R1,
		MBEDTLS_SSL_IANA_TLS_GROUP_NONE,
	};
	mbedtls_ssl_conf_groups(conf, groups);
#else
	static const mbedtls_ecp_group_id curves[] = {
		MBEDTLS_ECP_DP_CURVE25519,
		MBEDTLS_ECP_DP_SECP256R1,
		MBEDTLS_ECP_DP_NONE,
	};
	mbedtls_ssl_conf_curves(conf, curves);
#endif
}

/*
 * The suite ids for one AEAD choice (enum cfg_cipher in config.h: 1
 * ChaCha20-Poly1305, 2 AES-128-GCM, 3 AES-256-GCM): the TLS 1.3 suite,
 * where the library has TLS 1.3, and the ECDHE-ECDSA TLS 1.2 suite.
 * Writes up to two ids into out and returns how many.
 */
static inline size_t compat_suites_for(int aead, int out[2])
{
	static const int tls12[] = {
		MBEDTLS_TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
		MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
		MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	};
#if defined(MBEDTLS_SSL_PROTO_TLS1_3)
	static const int tls13[] = {
		MBEDTLS_TLS1_3_CHACHA20_POLY1305_SHA256,
		MBEDTLS_TLS1_3_AES_128_GCM_SHA256,
		MBEDTLS_TLS1_3_AES_256_GCM_SHA384,
	};
#endif
	size_t n = 0;
	if (aead < 1 || aead > 3)
		return 0;
#if defined(MBEDTLS_SSL_PROTO_TLS1_3)
	out[n++] = tls13[aead - 1];
#endif
	out[n++] = tls12[aead - 1];
	return n;
}

/* The handshake error for a protocol version we do not accept. */
#if UPSEAL_MBEDTLS3
#define COMPAT_ERR_PROTOCOL_VERSION MBEDTLS_ERR_SSL_BAD_PROTOCOL_VERSION
#else
#define COMPAT_ERR_PROTOCOL_VERSION MBEDTLS_ERR_SSL_BAD_HS_PROTOCOL_VERSION
#endif

/*
 * Handshake errors for which mbedTLS sends no alert itself. 2.28 has one
 * code per message that did not parse (BAD_HS_*), 3.6 one for all
 * (DECODE_ERROR) and one for a value the peer may not send
 * (ILLEGAL_PARAMETER; on 2.28, the same number, INVALID_VERIFY_HASH, is
 * what compat_ssl_handshake returns for a CertificateVerify hash that
 * was not offered).
 */
#if UPSEAL_MBEDTLS3
#define COMPAT_ERR_ILLEGAL_PARAMETER MBEDTLS_ERR_SSL_ILLEGAL_PARAMETER
static inline bool compat_err_is_decode(int rc)
{
	return rc == MBEDTLS_ERR_SSL_DECODE_ERROR;
}
#else
#define COMPAT_ERR_ILLEGAL_PARAMETER MBEDTLS_ERR_SSL_INVALID_VERIFY_HASH
static inline bool compat_err_is_decode(int rc)
{
	switch (rc) {
	case MBEDTLS_ERR_SSL_BAD_HS_CLIENT_HELLO:
	case MBEDTLS_ERR_SSL_BAD_HS_SERVER_HELLO:
	case MBEDTLS_ERR_SSL_BAD_HS_CERTIFICATE:
	case MBEDTLS_ERR_SSL_BAD_HS_CERTIFICATE_REQUEST:
	case MBEDTLS_ERR_SSL_BAD_HS_SERVER_KEY_EXCHANGE:
	case MBEDTLS_ERR_SSL_BAD_HS_SERVER_HELLO_DONE:
	case MBEDTLS_ERR_SSL_BAD_HS_CLIENT_KEY_EXCHANGE:
	case MBEDTLS_ERR_SSL_BAD_HS_CERTIFICATE_VERIFY:
	case MBEDTLS_ERR_SSL_BAD_HS_CHANGE_CIPHER_SPEC:
	case MBEDTLS_ERR_SSL_BAD_HS_FINISHED:
	case MBEDTLS_ERR_SSL_BAD_HS_NEW_SESSION_TICKET:
		return true;
	}
	return false;
}
#endif

/*
 * mbedtls_ssl_handshake, refusing a TLS 1.2 CertificateVerify signed with
 * a hash the server's CertificateRequest did not offer (RFC 5246 7.4.8:
 * it offers SHA-256 and SHA-384). 3.6 refuses the others itself
 * (ILLEGAL_PARAMETER). 2.28 built with TLS 1.0/1.1 (Debian's is) accepts
 * a SHA-1 one, and no setting changes that: mbedtls_ssl_conf_sig_hashes
 * only fills the CertificateRequest, ssl_parse_certificate_verify does
 * not consult it. So on 2.28 the handshake is run a step at a time and
 * the CertificateVerify just parsed (still in in_msg: type, 24-bit
 * length, then the hash id) is judged; a SHA-1 (or MD5) one fails with
 * INVALID_VERIFY_HASH, the code 3.6 calls ILLEGAL_PARAMETER.
 */
static inline int compat_ssl_handshake(mbedtls_ssl_context *ssl)
{
#if UPSEAL_MBEDTLS3
	return mbedtls_ssl_handshake(ssl);
#else
	while (ssl->state != MBEDTLS_SSL_HANDSHAKE_OVER) {
		bool cv = ssl->state == MBEDTLS_SSL_CERTIFICATE_VERIFY &&
		    ssl->conf->endpoint == MBEDTLS_SSL_IS_SERVER;
		int rc = mbedtls_ssl_handshake_step(ssl);
		if (rc != 0)
			return rc;
		if (cv && ssl->state != MBEDTLS_SSL_CERTIFICATE_VERIFY &&
		    ssl->in_hslen > 4 &&
		    ssl->in_msg[0] == MBEDTLS_SSL_HS_CERTIFICATE_VERIFY &&
		    ssl->in_msg[4] != MBEDTLS_SSL_HASH_SHA256 &&
		    ssl->in_msg[4] != MBEDTLS_SSL_HASH_SHA384)
			return MBEDTLS_ERR_SSL_INVALID_VERIFY_HASH;
	}
	return 0;
#endif
}

/* True if the connection negotiated TLS 1.2 (always, on 2.28). */
static inline int compat_is_tls12(const mbedtls_ssl_context *ssl)
{
#if UPSEAL_MBEDTLS3
	return mbedtls_ssl_get_version_number(ssl) == MBEDTLS_SSL_VERSION_TLS1_2;
#else
	(void)ssl;
	return 1;
#endif
}

/*
 * True if rc (from mbedtls_ssl_read or _write) says a TLS 1.3 ticket was
 * processed on the way: not an error; save the session and call again.
 * mbedTLS 2.28 has no such code.
 */
static inline int compat_is_new_ticket(int rc)
{
#if defined(MBEDTLS_ERR_SSL_RECEIVED_NEW_SESSION_TICKET)
	return rc == MBEDTLS_ERR_SSL_RECEIVED_NEW_SESSION_TICKET;
#else
	(void)rc;
	return 0;
#endif
}

/*
 * TLS 1.3 clients ignore the server's tickets unless told to hand them
 * over (mbedtls_ssl_read then returns RECEIVED_NEW_SESSION_TICKET).
 */
static inline void compat_conf_client_tickets(mbedtls_ssl_config *conf)
{
#if defined(MBEDTLS_SSL_PROTO_TLS1_3) && defined(MBEDTLS_SSL_SESSION_TICKETS)
	mbedtls_ssl_conf_tls13_enable_signal_new_session_tickets(conf,
	    MBEDTLS_SSL_TLS1_3_SIGNAL_NEW_SESSION_TICKETS_ENABLED);
#else
	(void)conf;
#endif
}

/*
 * TLS 1.3 servers: issue no tickets. mbedTLS 3.6's TLS 1.3 tickets do not
 * carry the client's certificate, so a resumed client could not be held
 * to the pins and would be refused anyway (no_cert). TLS 1.2 tickets do
 * carry it and stay on.
 */
static inline void compat_conf_server_tls13_tickets_off(mbedtls_ssl_config *conf)
{
#if defined(MBEDTLS_SSL_PROTO_TLS1_3) && defined(MBEDTLS_SSL_SESSION_TICKETS)
	mbedtls_ssl_conf_new_session_tickets(conf, 0);
#else
	(void)conf;
#endif
}

#endif
