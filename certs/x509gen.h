/*
 * x509gen: the keys and certificates upseal-certs makes, with mbedTLS only.
 * Every function returns 0, or -1 with a sentence in err (no trailing dot,
 * naming the file where there is one). Buffers handed out are malloc'd; the
 * caller owns them and, for keys, wipes them before freeing.
 */
#ifndef UPSEAL_X509GEN_H
#define UPSEAL_X509GEN_H

#include <stdbool.h>
#include <stddef.h>

#include <mbedtls/pk.h>
#include <mbedtls/x509_crt.h>

/* Bounds of --days, and the longest subject CN (RFC 5280 ub-common-name). */
#define X509GEN_DAYS_MAX 36500
#define X509GEN_NAME_MAX 64

struct x509gen_ip {
	unsigned char addr[16];
	size_t len;		/* 4 (IPv4) or 16 (IPv6) */
};

struct x509gen_opts {
	const char *name;	/* the subject is CN=name */
	bool ca;		/* CA:TRUE pathlen 0, keyCertSign + cRLSign */
	unsigned days;		/* valid from now-5min to now+days */
	/* subjectAltName of a leaf; with no dns and no ip, DNS:name. */
	const char *const *dns;
	size_t ndns;
	const struct x509gen_ip *ip;
	size_t nip;
	/* uniformResourceIdentifier entries (SPIFFE IDs), after the above. */
	const char *const *uri;
	size_t nuri;
	/*
	 * The issuing CA (from x509gen_load_ca), or both NULL for a
	 * self-signed certificate. Borrowed, not modified.
	 */
	mbedtls_x509_crt *issuer_crt;
	mbedtls_pk_context *issuer_key;
};

/*
 * Generate an ECDSA P-256 key into key, which the caller has set up with
 * mbedtls_pk_init() and frees with mbedtls_pk_free(). rng_init() first.
 */
int x509gen_key(mbedtls_pk_context *key, char *err, size_t errlen);

/*
 * The private key as PEM ("EC PRIVATE KEY", NUL-terminated) in a new buffer
 * of *size bytes, *len of them text. The caller wipes all *size bytes with
 * mbedtls_platform_zeroize() and frees it.
 */
int x509gen_key_pem(mbedtls_pk_context *key, unsigned char **pem,
    size_t *len, size_t *size, char *err, size_t errlen);

/*
 * The certificate for key described by o, signed with SHA-256 by
 * o->issuer_key (or key itself), as PEM in a new buffer: *len bytes of text
 * and a NUL. The result is parsed back and verified against its issuer
 * before it is returned. The caller frees it.
 */
int x509gen_crt_pem(const struct x509gen_opts *o, mbedtls_pk_context *key,
    unsigned char **pem, size_t *len, char *err, size_t errlen);

/*
 * Load a CA: base.crt and base.key (a trailing ".crt" or ".key" on base is
 * dropped). Checks that the key matches the certificate and that the
 * certificate is a CA. crt and key are set up by the caller (init/free).
 */
int x509gen_load_ca(const char *base, mbedtls_x509_crt *crt,
    mbedtls_pk_context *key, char *err, size_t errlen);

/*
 * The keyIdentifier of crt's subjectKeyIdentifier extension (a pointer
 * into crt, *idlen bytes), or NULL. Read from the raw extensions because
 * mbedTLS 2.28 does not parse it.
 */
unsigned char *x509gen_find_ski(const mbedtls_x509_crt *crt, size_t *idlen);

/* base without a trailing ".crt" or ".key", then ext, into out; 0 or -1. */
int x509gen_ca_path(const char *base, const char *ext, char *out, size_t size);

/*
 * PEM-encode der under label into a new buffer (*out, *outsize bytes of
 * which *outlen are text and a NUL follows); 0 or -1 (out of memory).
 */
int x509gen_pem(const char *label, const unsigned char *der, size_t derlen,
    unsigned char **out, size_t *outlen, size_t *outsize);

#endif
