#include "crlgen.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <mbedtls/asn1.h>
#include <mbedtls/asn1write.h>
#include <mbedtls/md.h>
#include <mbedtls/oid.h>
#include <mbedtls/x509_crl.h>

#include "compat.h"
#include "log.h"
#include "outfile.h"
#include "rng.h"
#include "x509gen.h"

/* id-ce-cRLNumber 2.5.29.20, id-ce-authorityKeyIdentifier 2.5.29.35 */
#define OID_CRL_NUMBER "\x55\x1d\x14"
#define OID_AKI "\x55\x1d\x23"
#define ENTRIES_MAX 100000
#define SERIAL_MAX 32

struct entry {
	unsigned char serial[SERIAL_MAX];	/* INTEGER content octets */
	size_t len;
	time_t when;
};

static void mbed_err(char *err, size_t errlen, const char *what, int rc)
{
	char why[160];
	snprintf(err, errlen, "%s: %s", what, log_tlserr(rc, why, sizeof why));
}

static time_t epoch_of(const mbedtls_x509_time *t)
{
	struct tm tm = {
		.tm_year = t->year - 1900, .tm_mon = t->mon - 1,
		.tm_mday = t->day, .tm_hour = t->hour, .tm_min = t->min,
		.tm_sec = t->sec,
	};
	return timegm(&tm);
}

/* Time ::= UTCTime (1950..2049) | GeneralizedTime, in UTC ("Z"). */
static int write_time(unsigned char **p, unsigned char *start, time_t t)
{
	struct tm tm;
	char text[16];
	gmtime_r(&t, &tm);
	bool utc = tm.tm_year + 1900 >= 1950 && tm.tm_year + 1900 < 2050;
	if (strftime(text, sizeof text, "%Y%m%d%H%M%SZ", &tm) == 0)
		return MBEDTLS_ERR_ASN1_INVALID_DATA;
	if (utc)	/* YYMMDDhhmmssZ: the century goes */
		memmove(text, text + 2, strlen(text + 2) + 1);
	int ret;
	size_t len = 0;
	MBEDTLS_ASN1_CHK_ADD(len, mbedtls_asn1_write_raw_buffer(p, start,
	    (const unsigned char *)text, strlen(text)));
	MBEDTLS_ASN1_CHK_ADD(len, mbedtls_asn1_write_len(p, start, len));
	MBEDTLS_ASN1_CHK_ADD(len, mbedtls_asn1_write_tag(p, start, utc ?
	    MBEDTLS_ASN1_UTC_TIME : MBEDTLS_ASN1_GENERALIZED_TIME));
	return (int)len;
}

static int write_header(unsigned char **p, unsigned char *start, size_t len,
    unsigned char tag)
{
	int ret;
	size_t n = 0;
	MBEDTLS_ASN1_CHK_ADD(n, mbedtls_asn1_write_len(p, start, len));
	MBEDTLS_ASN1_CHK_ADD(n, mbedtls_asn1_write_tag(p, start, tag));
	return (int)n;
}

#define SEQ (MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE)

/* Extension ::= SEQUENCE { extnID, extnValue OCTET STRING } (value: DER). */
static int write_ext(unsigned char **p, unsigned char *start,
    const char *oid, size_t oidlen, const unsigned char *val, size_t vlen)
{
	int ret;
	size_t len = 0;
	MBEDTLS_ASN1_CHK_ADD(len, mbedtls_asn1_write_octet_string(p, start,
	    val, vlen));
	MBEDTLS_ASN1_CHK_ADD(len, mbedtls_asn1_write_oid(p, start, oid, oidlen));
	MBEDTLS_ASN1_CHK_ADD(len, write_header(p, start, len, SEQ));
	return (int)len;
}

/* AlgorithmIdentifier of ca_key's signature with SHA-256. */
static int write_sig_alg(unsigned char **p, unsigned char *start,
    mbedtls_pk_type_t pk)
{
	const char *oid;
	size_t oidlen;
	if (pk == MBEDTLS_PK_ECKEY)	/* an EC key signs with ECDSA */
		pk = MBEDTLS_PK_ECDSA;
	int ret = mbedtls_oid_get_oid_by_sig_alg(pk, MBEDTLS_MD_SHA256, &oid,
	    &oidlen);
	if (ret != 0)
		return ret;
	size_t len = 0;
	/* ECDSA: no parameters (RFC 5758); RSA: NULL. */
	if (pk == MBEDTLS_PK_RSA)
		MBEDTLS_ASN1_CHK_ADD(len, mbedtls_asn1_write_null(p, start));
	MBEDTLS_ASN1_CHK_ADD(len, mbedtls_asn1_write_oid(p, start, oid, oidlen));
	MBEDTLS_ASN1_CHK_ADD(len, write_header(p, start, len, SEQ));
	return (int)len;
}

struct tbs {
	const mbedtls_x509_crt *ca;
	mbedtls_pk_type_t pk;
	time_t this_update, next_update;
	const struct entry *e;
	size_t n;
	unsigned long long number;
};

/*
 * TBSCertList ::= SEQUENCE { version v2, signature, issuer, thisUpdate,
 * nextUpdate, revokedCertificates SEQUENCE OF SEQUENCE { userCertificate,
 * revocationDate } OPTIONAL, crlExtensions [0] EXPLICIT Extensions }
 * written backwards from *p.
 */
static int write_tbs(unsigned char **p, unsigned char *start,
    const struct tbs *t)
{
	int ret;
	size_t len = 0, sub;

	/* crlExtensions: authorityKeyIdentifier (if the CA has an id), cRLNumber */
	unsigned char num[16], *q = num + sizeof num;
	size_t ext = 0;
	/* asn1_write_int takes an int; the 64-bit number is written by hand. */
	{
		unsigned long long v = t->number;
		size_t k = 0;
		do {
			*--q = (unsigned char)v;
			v >>= 8;
			k++;
		} while (v != 0);
		if (*q & 0x80) {
			*--q = 0;
			k++;
		}
		MBEDTLS_ASN1_CHK_ADD(k, write_header(&q, num, k,
		    MBEDTLS_ASN1_INTEGER));
		MBEDTLS_ASN1_CHK_ADD(ext, write_ext(p, start, OID_CRL_NUMBER, 3,
		    q, k));
	}
	size_t idlen = 0;
	const unsigned char *id = x509gen_find_ski(t->ca, &idlen);
	if (id != NULL && idlen <= 64) {
		unsigned char aki[80], *a = aki + sizeof aki;
		size_t alen = 0;
		MBEDTLS_ASN1_CHK_ADD(alen, mbedtls_asn1_write_raw_buffer(&a, aki,
		    id, idlen));
		MBEDTLS_ASN1_CHK_ADD(alen, write_header(&a, aki, alen,
		    MBEDTLS_ASN1_CONTEXT_SPECIFIC | 0));
		MBEDTLS_ASN1_CHK_ADD(alen, write_header(&a, aki, alen, SEQ));
		MBEDTLS_ASN1_CHK_ADD(ext, write_ext(p, start, OID_AKI, 3, a, alen));
	}
	MBEDTLS_ASN1_CHK_ADD(ext, write_header(p, start, ext, SEQ));
	MBEDTLS_ASN1_CHK_ADD(ext, write_header(p, start, ext,
	    MBEDTLS_ASN1_CONTEXT_SPECIFIC | MBEDTLS_ASN1_CONSTRUCTED | 0));
	len += ext;

	if (t->n > 0) {
		size_t list = 0;
		for (size_t i = t->n; i-- > 0;) {
			sub = 0;
			MBEDTLS_ASN1_CHK_ADD(sub, write_time(p, start, t->e[i].when));
			MBEDTLS_ASN1_CHK_ADD(sub, mbedtls_asn1_write_raw_buffer(p,
			    start, t->e[i].serial, t->e[i].len));
			MBEDTLS_ASN1_CHK_ADD(sub, write_header(p, start,
			    t->e[i].len, MBEDTLS_ASN1_INTEGER));
			MBEDTLS_ASN1_CHK_ADD(sub, write_header(p, start, sub, SEQ));
			list += sub;
		}
		MBEDTLS_ASN1_CHK_ADD(list, write_header(p, start, list, SEQ));
		len += list;
	}
	MBEDTLS_ASN1_CHK_ADD(len, write_time(p, start, t->next_update));
	MBEDTLS_ASN1_CHK_ADD(len, write_time(p, start, t->this_update));
	MBEDTLS_ASN1_CHK_ADD(len, mbedtls_asn1_write_raw_buffer(p, start,
	    t->ca->subject_raw.p, t->ca->subject_raw.len));
	MBEDTLS_ASN1_CHK_ADD(len, write_sig_alg(p, start, t->pk));
	MBEDTLS_ASN1_CHK_ADD(len, mbedtls_asn1_write_int(p, start, 1));
	MBEDTLS_ASN1_CHK_ADD(len, write_header(p, start, len, SEQ));
	return (int)len;
}

/* The cRLNumber of an existing CRL's extensions, or 0. */
static unsigned long long crl_number(const mbedtls_x509_crl *crl)
{
	const unsigned char *b = crl->crl_ext.p;
	size_t n = crl->crl_ext.len;
	static const unsigned char oid[] = { 0x06, 0x03, 0x55, 0x1d, 0x14 };
	const unsigned char *at = b ? memmem(b, n, oid, sizeof oid) : NULL;
	if (at == NULL)
		return 0;
	unsigned char *p = (unsigned char *)at + sizeof oid;
	const unsigned char *end = b + n;
	size_t len;
	int crit;
	if (p < end && *p == MBEDTLS_ASN1_BOOLEAN &&
	    mbedtls_asn1_get_bool(&p, end, &crit) != 0)
		return 0;
	if (mbedtls_asn1_get_tag(&p, end, &len, MBEDTLS_ASN1_OCTET_STRING) != 0 ||
	    mbedtls_asn1_get_tag(&p, p + len, &len, MBEDTLS_ASN1_INTEGER) != 0 ||
	    len > 8)
		return 0;
	unsigned long long v = 0;
	for (size_t i = 0; i < len; i++)
		v = v << 8 | p[i];
	return v;
}

static bool same_buf(const mbedtls_x509_buf *a, const mbedtls_x509_buf *b)
{
	return a->len == b->len && memcmp(a->p, b->p, a->len) == 0;
}

/* Add the serial of crt unless listed; 1 if added, 0 if there, -1 full. */
static int add_entry(struct entry *e, size_t *n, const unsigned char *serial,
    size_t len, time_t when)
{
	for (size_t i = 0; i < *n; i++)
		if (e[i].len == len && memcmp(e[i].serial, serial, len) == 0)
			return 0;
	if (*n == ENTRIES_MAX || len > SERIAL_MAX || len == 0)
		return -1;
	memcpy(e[*n].serial, serial, len);
	e[*n].len = len;
	e[*n].when = when;
	(*n)++;
	return 1;
}

/* The entries and number of the CRL at path, if there is one. */
static int read_old(const char *path, const mbedtls_x509_crt *ca,
    struct entry *e, size_t *n, unsigned long long *number, char *err,
    size_t errlen)
{
	if (access(path, F_OK) != 0)
		return errno == ENOENT ? 0 : (snprintf(err, errlen, "%s: %s",
		    path, strerror(errno)), -1);
	mbedtls_x509_crl crl;
	mbedtls_x509_crl_init(&crl);
	int rc = mbedtls_x509_crl_parse_file(&crl, path);
	if (rc != 0) {
		char what[4200];
		snprintf(what, sizeof what, "%s: not a CRL", path);
		mbed_err(err, errlen, what, rc);
		mbedtls_x509_crl_free(&crl);
		return -1;
	}
	rc = 0;
	if (crl.next != NULL || !same_buf(&crl.issuer_raw, &ca->subject_raw)) {
		snprintf(err, errlen, "%s: not one CRL of this CA; move it away "
		    "or name the CA that issued it", path);
		rc = -1;
	}
	for (const mbedtls_x509_crl_entry *x = &crl.entry; rc == 0 &&
	    x != NULL && x->serial.len > 0; x = x->next) {
		if (add_entry(e, n, x->serial.p, x->serial.len,
		    epoch_of(&x->revocation_date)) < 0) {
			snprintf(err, errlen, "%s: too many entries", path);
			rc = -1;
		}
	}
	*number = crl_number(&crl);
	mbedtls_x509_crl_free(&crl);
	return rc;
}

/* Sign tbs and wrap it: CertificateList; returns the DER in out (size). */
static int sign_crl(mbedtls_pk_context *key, const unsigned char *tbs,
    size_t tbslen, unsigned char *buf, size_t size, unsigned char **der,
    size_t *derlen, char *err, size_t errlen)
{
	unsigned char hash[32], sig[MBEDTLS_PK_SIGNATURE_MAX_SIZE];
	size_t siglen = 0;
	const mbedtls_md_info_t *md = mbedtls_md_info_from_type(MBEDTLS_MD_SHA256);
	int rc = mbedtls_md(md, tbs, tbslen, hash);
	if (rc == 0)
		rc = compat_pk_sign(key, MBEDTLS_MD_SHA256, hash, sizeof hash,
		    sig, sizeof sig, &siglen, rng_random, NULL);
	if (rc != 0) {
		mbed_err(err, errlen, "cannot sign the CRL", rc);
		return -1;
	}
	unsigned char *p = buf + size;
	size_t len = 0;
	int ret;
	/* BIT STRING of the signature, the algorithm, the TBS, the SEQUENCE. */
	if ((ret = mbedtls_asn1_write_bitstring(&p, buf, sig, siglen * 8)) < 0 ||
	    (len += (size_t)ret, ret = write_sig_alg(&p, buf,
	    mbedtls_pk_get_type(key))) < 0 ||
	    (len += (size_t)ret, ret = mbedtls_asn1_write_raw_buffer(&p, buf,
	    tbs, tbslen)) < 0 ||
	    (len += (size_t)ret, ret = write_header(&p, buf, len, SEQ)) < 0) {
		mbed_err(err, errlen, "cannot encode the CRL", ret);
		return -1;
	}
	len += (size_t)ret;
	*der = p;
	*derlen = len;
	return 0;
}

/* Parse der back: from ca, signed, and every given certificate revoked. */
static int self_check(const unsigned char *der, size_t len,
    mbedtls_x509_crt *ca, mbedtls_x509_crt *certs, char *err, size_t errlen)
{
	mbedtls_x509_crl crl;
	mbedtls_x509_crl_init(&crl);
	int rc = mbedtls_x509_crl_parse_der(&crl, der, len);
	if (rc != 0) {
		mbed_err(err, errlen, "the new CRL does not parse", rc);
		mbedtls_x509_crl_free(&crl);
		return -1;
	}
	for (mbedtls_x509_crt *c = certs; c != NULL && c->raw.len > 0;
	    c = c->next) {
		uint32_t flags = 0;
		mbedtls_x509_crt *next = c->next;
		c->next = NULL;	/* verify this certificate alone */
		(void)mbedtls_x509_crt_verify(c, ca, &crl, NULL, &flags, NULL,
		    NULL);
		c->next = next;
		if (!(flags & MBEDTLS_X509_BADCERT_REVOKED) ||
		    (flags & MBEDTLS_X509_BADCRL_NOT_TRUSTED)) {
			snprintf(err, errlen, "the new CRL does not revoke a "
			    "certificate it lists (verify flags 0x%x)",
			    (unsigned)flags);
			mbedtls_x509_crl_free(&crl);
			return -1;
		}
	}
	mbedtls_x509_crl_free(&crl);
	return 0;
}

int crlgen_revoke(const char *crl_path, mbedtls_x509_crt *ca,
    mbedtls_pk_context *ca_key, const char *const *certs, size_t ncerts,
    unsigned days, struct crlgen_result *res, char *err, size_t errlen)
{
	int ret = -1;
	struct entry *e = calloc(ENTRIES_MAX, sizeof *e);
	size_t n = 0, size = 0;
	unsigned long long number = 0;
	unsigned char *buf = NULL, *pem = NULL;
	mbedtls_x509_crt given;
	mbedtls_x509_crt_init(&given);
	memset(res, 0, sizeof *res);
	if (e == NULL) {
		snprintf(err, errlen, "out of memory");
		goto out;
	}
	if (read_old(crl_path, ca, e, &n, &number, err, errlen) != 0)
		goto out;
	time_t now = time(NULL);
	for (size_t i = 0; i < ncerts; i++) {
		mbedtls_x509_crt one;
		mbedtls_x509_crt_init(&one);
		int rc = mbedtls_x509_crt_parse_file(&one, certs[i]);
		if (rc != 0) {
			char what[4200];
			snprintf(what, sizeof what, "%s: not a certificate", certs[i]);
			mbed_err(err, errlen, what, rc);
			mbedtls_x509_crt_free(&one);
			goto out;
		}
		if (!same_buf(&one.issuer_raw, &ca->subject_raw)) {
			snprintf(err, errlen, "%s: not issued by this CA", certs[i]);
			mbedtls_x509_crt_free(&one);
			goto out;
		}
		rc = add_entry(e, &n, one.serial.p, one.serial.len, now);
		if (rc < 0) {
			snprintf(err, errlen, "%s: its serial cannot be listed",
			    certs[i]);
			mbedtls_x509_crt_free(&one);
			goto out;
		}
		if (rc == 1)
			res->added++;
		else
			res->already++;
		mbedtls_x509_crt_parse_der(&given, one.raw.p, one.raw.len);
		mbedtls_x509_crt_free(&one);
	}
	struct tbs t = { .ca = ca, .pk = mbedtls_pk_get_type(ca_key),
		.this_update = now - 5 * 60, .next_update = now +
		(time_t)days * 86400, .e = e, .n = n,
		.number = number >= (unsigned long long)now ? number + 1 :
		(unsigned long long)now };
	size = 1024 + n * (SERIAL_MAX + 32) + ca->subject_raw.len;
	buf = malloc(2 * size + 256);
	if (buf == NULL) {
		snprintf(err, errlen, "out of memory");
		goto out;
	}
	unsigned char *p = buf + size;
	int len = write_tbs(&p, buf, &t);
	if (len < 0) {
		mbed_err(err, errlen, "cannot encode the CRL", len);
		goto out;
	}
	unsigned char *der;
	size_t derlen;
	if (sign_crl(ca_key, p, (size_t)len, buf + size, size + 256, &der, &derlen,
	    err, errlen) != 0)
		goto out;
	if (self_check(der, derlen, ca, &given, err, errlen) != 0)
		goto out;
	size_t pemlen, pemsize;
	if (x509gen_pem("X509 CRL", der, derlen, &pem, &pemlen, &pemsize) != 0) {
		snprintf(err, errlen, "out of memory");
		goto out;
	}
	struct outfile f;
	if (outfile_stage(&f, crl_path, pem, pemlen, 0644, true, err,
	    errlen) != 0)
		goto out;
	if (outfile_commit(&f, err, errlen) != 0) {
		outfile_abort(&f);
		goto out;
	}
	res->entries = n;
	ret = 0;
out:
	free(pem);
	free(buf);
	free(e);
	mbedtls_x509_crt_free(&given);
	return ret;
}
