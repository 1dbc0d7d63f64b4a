/*
 * policy: what a tunnel in CA mode asks of a peer's certificate beyond a
 * chain that verifies: that one of its names matches a rule (allow_dns,
 * allow_uri, allow_cn; names.h), and that no CRL of the tunnel revokes
 * it (crl = FILE). Plus the dates of certificates and CRLs, as seconds
 * since the epoch, for the expiry metrics and warnings.
 *
 * The chain is verified by mbedTLS (in the handshake, with the CRLs given
 * to mbedtls_ssl_conf_ca_chain, and by tls.c's judge from scratch); the
 * policy is the cheap part, no signature in it, that tls.c applies the
 * same way in the verify callback, in the judgement of a ticket, and
 * after every resumed handshake.
 */
#ifndef UPSEAL_POLICY_H
#define UPSEAL_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <mbedtls/x509_crl.h>
#include <mbedtls/x509_crt.h>

#include "config.h"
#include "names.h"

struct policy {
	struct name_rule *allow;	/* copies of the tunnel's rules */
	size_t nallow;
	mbedtls_x509_crl crl;		/* every crl = FILE, chained */
	bool has_crl;
	time_t crl_next_update;		/* the earliest nextUpdate; 0: none */
};

enum policy_result {
	POLICY_OK,
	POLICY_REVOKED,		/* a CRL of the tunnel lists its serial */
	POLICY_NAME,		/* rules are set and none matches */
};

/*
 * The flags of a stale CRL (nextUpdate passed, or thisUpdate ahead of
 * our clock). mbedTLS fails the chain for them; upseal does not: a CRL
 * that is past its nextUpdate still revokes what it lists, and a warning
 * says that it is stale (policy_load, and daily with the expiry check).
 */
#define POLICY_CRL_STALE_FLAGS \
	(MBEDTLS_X509_BADCRL_EXPIRED | MBEDTLS_X509_BADCRL_FUTURE)

/*
 * Load t's rules and CRLs into p (zeroed by the caller). Each CRL (PEM or
 * DER; a file may hold several) must be issued by a certificate of ca and
 * carry its valid signature. A CRL past its nextUpdate is loaded, and a
 * warning (event=crl_stale) is logged. On error returns -1 with
 * "[tunnel] crl: FILE: what is wrong" in err. policy_free in any case.
 */
int policy_load(struct policy *p, const struct cfg_tunnel *t,
    const mbedtls_x509_crt *ca, char *err, size_t errlen);
void policy_free(struct policy *p);

/*
 * Judge crt, whose chain verified, against p: first revocation, then
 * the names. detail (size bytes) receives, on POLICY_OK with rules set,
 * the rule that matched ("allow_dns=*.proxies.internal"); on POLICY_NAME
 * the names crt carries ("dns=...,uri=...,cn=..."); else "".
 */
enum policy_result policy_check(const struct policy *p,
    const mbedtls_x509_crt *crt, char *detail, size_t size);

/* Whether the certificate's dates do not contain now. */
bool policy_out_of_dates(const mbedtls_x509_crt *crt);

/* An X.509 time (UTC) as seconds since the epoch. */
int64_t policy_epoch(const mbedtls_x509_time *t);

/* The earliest notAfter of a chain of certificates; 0 for none. */
int64_t policy_chain_not_after(const mbedtls_x509_crt *chain);

#endif
