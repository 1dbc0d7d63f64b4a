/*
 * crlgen: the certificate revocation list of a CA that upseal-certs made,
 * written with mbedTLS's ASN.1 writer and signed with the CA's key (no
 * openssl command): CertificateList v2 with thisUpdate, nextUpdate, the
 * revoked serials and their dates, and the extensions cRLNumber and
 * authorityKeyIdentifier.
 */
#ifndef UPSEAL_CRLGEN_H
#define UPSEAL_CRLGEN_H

#include <stddef.h>

#include <mbedtls/pk.h>
#include <mbedtls/x509_crt.h>

/* nextUpdate when --days is not given: a CRL is re-signed within this. */
#define CRLGEN_DAYS_DEFAULT 30

struct crlgen_result {
	size_t entries;		/* serials in the CRL written */
	size_t added;		/* of those, new ones */
	size_t already;		/* certificates given that were listed already */
};

/*
 * Write crl_path (PEM, mode 0644, replaced atomically) as ca's CRL valid
 * for days from now: the entries of the CRL already at crl_path (which
 * must be ca's and verify with its key), plus the serial of each of the
 * ncerts certificate files, which ca must have issued. With ncerts 0 the
 * CRL is only signed again with new dates. The result is parsed back and
 * every revoked certificate checked against it. rng_init() first. 0, or
 * -1 with a sentence naming the file in err.
 */
int crlgen_revoke(const char *crl_path, mbedtls_x509_crt *ca,
    mbedtls_pk_context *ca_key, const char *const *certs, size_t ncerts,
    unsigned days, struct crlgen_result *res, char *err, size_t errlen);

#endif
