#include "peerinfo.h"

#include <stdio.h>
#include <string.h>

#include <mbedtls/oid.h>
#include <mbedtls/x509_crt.h>

/* OpenSSL's names of the suites upseal offers (TLS 1.2 and 1.3). */
static const char *suite_name(const mbedtls_ssl_context *ssl)
{
	static const struct { int id; const char *name; } known[] = {
		{ 0xCCA9, "ECDHE-ECDSA-CHACHA20-POLY1305" },
		{ 0xC02B, "ECDHE-ECDSA-AES128-GCM-SHA256" },
		{ 0xC02C, "ECDHE-ECDSA-AES256-GCM-SHA384" },
		{ 0x1301, "TLS_AES_128_GCM_SHA256" },
		{ 0x1302, "TLS_AES_256_GCM_SHA384" },
		{ 0x1303, "TLS_CHACHA20_POLY1305_SHA256" },
	};
	const char *name = mbedtls_ssl_get_ciphersuite(ssl);
	if (name == NULL)
		return "";
	int id = mbedtls_ssl_get_ciphersuite_id(name);
	for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
		if (known[i].id == id)
			return known[i].name;
	return name;	/* mbedTLS's name for any other */
}

static void common_name(const mbedtls_x509_crt *crt, char *out, size_t len)
{
	out[0] = 0;
	for (const mbedtls_x509_name *n = &crt->subject; n != NULL;
	    n = n->next) {
		if (MBEDTLS_OID_CMP(MBEDTLS_OID_AT_CN, &n->oid) != 0)
			continue;
		size_t l = n->val.len < len - 1 ? n->val.len : len - 1;
		memcpy(out, n->val.p, l);
		out[l] = 0;
		/* A name with a NUL inside is cut there, never passed on. */
		return;
	}
}

static void sig_alg(const mbedtls_x509_crt *crt, char *out, size_t len)
{
	mbedtls_md_type_t md;
	mbedtls_pk_type_t pk;
	const char *mdname = NULL;
	out[0] = 0;
	if (mbedtls_oid_get_sig_alg(&crt->sig_oid, &md, &pk) != 0)
		return;
	switch (md) {
	case MBEDTLS_MD_SHA256: mdname = "SHA256"; break;
	case MBEDTLS_MD_SHA384: mdname = "SHA384"; break;
	case MBEDTLS_MD_SHA512: mdname = "SHA512"; break;
	case MBEDTLS_MD_SHA224: mdname = "SHA224"; break;
	case MBEDTLS_MD_SHA1: mdname = "SHA1"; break;
	default: return;
	}
	if (pk == MBEDTLS_PK_ECDSA)
		snprintf(out, len, "ecdsa-with-%s", mdname);
	else if (pk == MBEDTLS_PK_RSA)
		snprintf(out, len, "RSA-%s", mdname);
	else if (pk == MBEDTLS_PK_RSASSA_PSS)
		snprintf(out, len, "RSASSA-PSS");
}

static void key_alg(const mbedtls_x509_crt *crt, char *out, size_t len)
{
	size_t bits = mbedtls_pk_get_bitlen(&crt->pk);
	switch (mbedtls_pk_get_type(&crt->pk)) {
	case MBEDTLS_PK_ECKEY:
	case MBEDTLS_PK_ECKEY_DH:
	case MBEDTLS_PK_ECDSA:
		snprintf(out, len, "EC%zu", bits);
		break;
	case MBEDTLS_PK_RSA:
		snprintf(out, len, "RSA%zu", bits);
		break;
	default:
		out[0] = 0;
	}
}

void peerinfo_describe(const mbedtls_ssl_context *ssl,
    const struct tls_peer *peer, struct peerinfo *out)
{
	memset(out, 0, sizeof *out);
	out->version = mbedtls_ssl_get_version(ssl);
	out->cipher = suite_name(ssl);
	out->sni = peer->sni;
	const mbedtls_x509_crt *crt = mbedtls_ssl_get_peer_cert(ssl);
	if (crt == NULL)
		return;
	out->has_cert = true;
	common_name(crt, out->cn, sizeof out->cn);
	sig_alg(crt, out->sig_alg, sizeof out->sig_alg);
	key_alg(crt, out->key_alg, sizeof out->key_alg);
}
