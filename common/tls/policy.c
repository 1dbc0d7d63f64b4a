#include "policy.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <mbedtls/asn1.h>
#include <mbedtls/md.h>
#include <mbedtls/oid.h>

#include "log.h"

int64_t policy_epoch(const mbedtls_x509_time *t)
{
	struct tm tm = {
		.tm_year = t->year - 1900, .tm_mon = t->mon - 1,
		.tm_mday = t->day, .tm_hour = t->hour, .tm_min = t->min,
		.tm_sec = t->sec,
	};
	return (int64_t)timegm(&tm);
}

int64_t policy_chain_not_after(const mbedtls_x509_crt *chain)
{
	int64_t min = 0;
	for (const mbedtls_x509_crt *c = chain; c != NULL && c->raw.len > 0;
	    c = c->next) {
		int64_t t = policy_epoch(&c->valid_to);
		if (min == 0 || t < min)
			min = t;
	}
	return min;
}

bool policy_out_of_dates(const mbedtls_x509_crt *crt)
{
	return mbedtls_x509_time_is_past(&crt->valid_to) ||
	    mbedtls_x509_time_is_future(&crt->valid_from);
}

static bool same_buf(const mbedtls_x509_buf *a, const mbedtls_x509_buf *b)
{
	return a->len == b->len && a->p != NULL && b->p != NULL &&
	    memcmp(a->p, b->p, a->len) == 0;
}

/*
 * Check crl's signature with issuer's key, from the raw DER: mbedTLS
 * checks it in every handshake but has no call for it alone, and a CRL
 * that fails there would fail every peer of the CA.
 * CertificateList ::= SEQUENCE { tbsCertList, signatureAlgorithm,
 * signatureValue BIT STRING }
 */
static int crl_signed_by(const mbedtls_x509_crl *crl,
    const mbedtls_x509_crt *issuer)
{
	unsigned char *p = crl->raw.p, *end = p + crl->raw.len;
	size_t len;
	if (mbedtls_asn1_get_tag(&p, end, &len, MBEDTLS_ASN1_CONSTRUCTED |
	    MBEDTLS_ASN1_SEQUENCE) != 0)
		return -1;
	end = p + len;
	if (crl->tbs.p != p || crl->tbs.len > (size_t)(end - p))
		return -1;
	p += crl->tbs.len;
	mbedtls_x509_buf alg, params;
	if (mbedtls_asn1_get_alg(&p, end, &alg, &params) != 0)
		return -1;
	mbedtls_md_type_t md;
	mbedtls_pk_type_t pk;
	if (mbedtls_oid_get_sig_alg(&alg, &md, &pk) != 0)
		return -1;
	mbedtls_asn1_bitstring sig;
	if (mbedtls_asn1_get_bitstring(&p, end, &sig) != 0 ||
	    sig.unused_bits != 0)
		return -1;
	const mbedtls_md_info_t *info = mbedtls_md_info_from_type(md);
	unsigned char hash[MBEDTLS_MD_MAX_SIZE];
	if (info == NULL || mbedtls_md(info, crl->tbs.p, crl->tbs.len, hash) != 0)
		return -1;
	if (!mbedtls_pk_can_do((mbedtls_pk_context *)&issuer->pk, pk))
		return -1;
	return mbedtls_pk_verify((mbedtls_pk_context *)&issuer->pk, md, hash,
	    mbedtls_md_get_size(info), sig.p, sig.len) == 0 ? 0 : -1;
}

static void log_stale(const struct cfg_tunnel *t, const char *path,
    const mbedtls_x509_crl *crl)
{
	char when[32];
	const mbedtls_x509_time *n = &crl->next_update;
	snprintf(when, sizeof when, "%04d-%02d-%02dT%02d:%02d:%02dZ", n->year,
	    n->mon, n->day, n->hour, n->min, n->sec);
	struct log_line l;
	log_begin(&l, LOG_WARN, "crl_stale");
	log_str(&l, "tunnel", t->name);
	log_str(&l, "crl", path);
	log_str(&l, "next_update", when);
	log_str(&l, "msg", "the CRL is past its nextUpdate: it still "
	    "revokes what it lists, but certificates revoked since are not "
	    "in it; publish a new one (upseal-certs revoke --ca CA)");
	log_end(&l);
}

/* Load one file's CRLs after those already in p->crl, and check them. */
static int load_one(struct policy *p, const struct cfg_tunnel *t,
    const char *path, const mbedtls_x509_crt *ca, char *err, size_t errlen)
{
	mbedtls_x509_crl *last = NULL;
	for (mbedtls_x509_crl *c = &p->crl; p->has_crl && c != NULL;
	    c = c->next)
		last = c;
	FILE *f = fopen(path, "rb");
	if (f == NULL) {
		snprintf(err, errlen, "[%s] crl: %s: cannot read: %s", t->name,
		    path, strerror(errno));
		return -1;
	}
	fclose(f);
	int rc = mbedtls_x509_crl_parse_file(&p->crl, path);
	if (rc != 0) {
		char msg[200];
		snprintf(err, errlen, "[%s] crl: %s: not a PEM or DER CRL: %s",
		    t->name, path, log_tlserr(rc, msg, sizeof msg));
		return -1;
	}
	p->has_crl = true;
	mbedtls_x509_crl *first = last != NULL ? last->next : &p->crl;
	for (mbedtls_x509_crl *c = first; c != NULL; c = c->next) {
		if (c->raw.len == 0)
			continue;
		const mbedtls_x509_crt *issuer = NULL;
		for (const mbedtls_x509_crt *a = ca; a != NULL && a->raw.len > 0;
		    a = a->next)
			if (same_buf(&a->subject_raw, &c->issuer_raw))
				issuer = a;
		if (issuer == NULL) {
			snprintf(err, errlen, "[%s] crl: %s: issued by none of "
			    "the certificates in ca = %s; expected the CRL of "
			    "that CA (upseal-certs revoke --ca CA)", t->name,
			    path, t->ca);
			return -1;
		}
		if (crl_signed_by(c, issuer) != 0) {
			snprintf(err, errlen, "[%s] crl: %s: its signature does "
			    "not verify with the key of its issuer in ca = %s",
			    t->name, path, t->ca);
			return -1;
		}
		if (c->next_update.year != 0) {
			time_t nu = (time_t)policy_epoch(&c->next_update);
			if (p->crl_next_update == 0 || nu < p->crl_next_update)
				p->crl_next_update = nu;
			if (mbedtls_x509_time_is_past(&c->next_update))
				log_stale(t, path, c);
		}
	}
	return 0;
}

int policy_load(struct policy *p, const struct cfg_tunnel *t,
    const mbedtls_x509_crt *ca, char *err, size_t errlen)
{
	mbedtls_x509_crl_init(&p->crl);
	if (t->nallow > 0) {
		p->allow = name_rules_copy(t->allow, t->nallow);
		if (p->allow == NULL) {
			snprintf(err, errlen, "[%s] out of memory", t->name);
			return -1;
		}
		p->nallow = t->nallow;
	}
	for (size_t i = 0; i < t->ncrl_files; i++)
		if (load_one(p, t, t->crl_files[i], ca, err, errlen) != 0)
			return -1;
	return 0;
}

void policy_free(struct policy *p)
{
	mbedtls_x509_crl_free(&p->crl);
	name_rules_free(p->allow, p->nallow);
	p->allow = NULL;
	p->nallow = 0;
	p->has_crl = false;
}

static bool revoked(const struct policy *p, const mbedtls_x509_crt *crt)
{
	for (const mbedtls_x509_crl *c = &p->crl; p->has_crl && c != NULL;
	    c = c->next)
		if (c->raw.len > 0 && same_buf(&c->issuer_raw, &crt->issuer_raw) &&
		    mbedtls_x509_crt_is_revoked(crt, c))
			return true;
	return false;
}

enum policy_result policy_check(const struct policy *p,
    const mbedtls_x509_crt *crt, char *detail, size_t size)
{
	if (size > 0)
		detail[0] = '\0';
	if (revoked(p, crt))
		return POLICY_REVOKED;
	if (p->nallow == 0)
		return POLICY_OK;
	int i = names_match_crt(p->allow, p->nallow, crt);
	if (i < 0) {
		names_of_crt(crt, detail, size);
		return POLICY_NAME;
	}
	snprintf(detail, size, "%s=%s", name_kind_key(p->allow[i].kind),
	    p->allow[i].text);
	return POLICY_OK;
}
