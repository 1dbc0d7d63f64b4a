#include "x509gen.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <mbedtls/asn1.h>
#include <mbedtls/asn1write.h>
#include <mbedtls/base64.h>
#include <mbedtls/ecp.h>
#include <mbedtls/oid.h>
#include <mbedtls/platform_util.h>

#include "compat.h"
#include "log.h"
#include "pin.h"
#include "rng.h"

#define SERIAL_LEN 16
#define KEY_DER_MAX 512
#define CRT_DER_BASE 2048	/* a certificate without its SANs */
#define ISSUER_NAME_MAX 1024
#define BEFORE_NOW (5 * 60)	/* notBefore is this many seconds ago */

/* Tag of a GeneralName: [2] dNSName, [7] iPAddress (IMPLICIT, primitive). */
#define GN_DNS (MBEDTLS_ASN1_CONTEXT_SPECIFIC | 2)
#define GN_IP (MBEDTLS_ASN1_CONTEXT_SPECIFIC | 7)
/* [6] uniformResourceIdentifier (IMPLICIT IA5String). */
#define GN_URI (MBEDTLS_ASN1_CONTEXT_SPECIFIC | 6)
/* AuthorityKeyIdentifier's [0] keyIdentifier (IMPLICIT, primitive). */
#define AKI_KEYID (MBEDTLS_ASN1_CONTEXT_SPECIFIC | 0)

static void mbed_err(char *err, size_t errlen, const char *what, int rc)
{
	char why[160];
	snprintf(err, errlen, "%s: %s", what, log_tlserr(rc, why, sizeof why));
}

int x509gen_key(mbedtls_pk_context *key, char *err, size_t errlen)
{
	int rc = mbedtls_pk_setup(key, mbedtls_pk_info_from_type(MBEDTLS_PK_ECKEY));
	if (rc == 0)
		rc = mbedtls_ecp_gen_key(MBEDTLS_ECP_DP_SECP256R1,
		    mbedtls_pk_ec(*key), rng_random, NULL);
	if (rc != 0) {
		mbed_err(err, errlen, "cannot generate a P-256 key", rc);
		return -1;
	}
	return 0;
}

/*
 * PEM-encode der under label into a new buffer (64-character lines, the
 * text NUL-terminated). Written here rather than with mbedtls_pem_write_
 * buffer so that no copy of a private key is left unwiped on the heap.
 */
int x509gen_pem(const char *label, const unsigned char *der,
    size_t derlen, unsigned char **out, size_t *outlen, size_t *outsize)
{
	size_t b64 = 4 * ((derlen + 2) / 3);
	size_t size = 2 * (strlen(label) + 32) + b64 + b64 / 64 + 2;
	unsigned char *buf = malloc(size);
	if (buf == NULL)
		return -1;
	int n = snprintf((char *)buf, size, "-----BEGIN %s-----\n", label);
	size_t pos = (size_t)n;
	for (size_t off = 0; off < derlen; off += 48) {
		size_t chunk = derlen - off < 48 ? derlen - off : 48, olen = 0;
		if (mbedtls_base64_encode(buf + pos, size - pos, &olen,
		    der + off, chunk) != 0) {
			mbedtls_platform_zeroize(buf, size);
			free(buf);
			return -1;
		}
		pos += olen;
		buf[pos++] = '\n';
	}
	n = snprintf((char *)buf + pos, size - pos, "-----END %s-----\n", label);
	if (n < 0 || (size_t)n >= size - pos) {
		mbedtls_platform_zeroize(buf, size);
		free(buf);
		return -1;
	}
	*out = buf;
	*outlen = pos + (size_t)n;
	*outsize = size;
	return 0;
}

int x509gen_key_pem(mbedtls_pk_context *key, unsigned char **pem,
    size_t *len, size_t *size, char *err, size_t errlen)
{
	unsigned char der[KEY_DER_MAX];
	/* Writes at the END of der. */
	int n = mbedtls_pk_write_key_der(key, der, sizeof der);
	if (n <= 0) {
		mbed_err(err, errlen, "cannot encode the private key", n);
		mbedtls_platform_zeroize(der, sizeof der);
		return -1;
	}
	int rc = x509gen_pem("EC PRIVATE KEY", der + sizeof der - (size_t)n,
	    (size_t)n, pem, len, size);
	mbedtls_platform_zeroize(der, sizeof der);
	if (rc != 0) {
		snprintf(err, errlen, "cannot encode the private key: out of memory");
		return -1;
	}
	return 0;
}

/* One TLV: tag, length, then val (written backwards, as asn1write does). */
static int write_tlv(unsigned char **p, unsigned char *start,
    unsigned char tag, const unsigned char *val, size_t vlen)
{
	int ret;
	size_t len = 0;
	MBEDTLS_ASN1_CHK_ADD(len, mbedtls_asn1_write_raw_buffer(p, start, val, vlen));
	MBEDTLS_ASN1_CHK_ADD(len, mbedtls_asn1_write_len(p, start, len));
	MBEDTLS_ASN1_CHK_ADD(len, mbedtls_asn1_write_tag(p, start, tag));
	return (int)len;
}

/* Wrap the len bytes before *p into a SEQUENCE. */
static int write_seq(unsigned char **p, unsigned char *start, size_t len)
{
	int ret;
	size_t n = 0;
	MBEDTLS_ASN1_CHK_ADD(n, mbedtls_asn1_write_len(p, start, len));
	MBEDTLS_ASN1_CHK_ADD(n, mbedtls_asn1_write_tag(p, start,
	    MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE));
	return (int)n;
}

static size_t san_size(const struct x509gen_opts *o)
{
	size_t size = 16 + strlen(o->name) + 8;
	for (size_t i = 0; i < o->ndns; i++)
		size += strlen(o->dns[i]) + 8;
	for (size_t i = 0; i < o->nuri; i++)
		size += strlen(o->uri[i]) + 8;
	return size + o->nip * 24;
}

/*
 * GeneralNames ::= SEQUENCE OF GeneralName: every DNS name, then every
 * address, then every URI, in the order given (written last to first).
 */
static int write_san(unsigned char **p, unsigned char *start,
    const struct x509gen_opts *o)
{
	int ret;
	size_t len = 0;
	for (size_t i = o->nuri; i-- > 0;)
		MBEDTLS_ASN1_CHK_ADD(len, write_tlv(p, start, GN_URI,
		    (const unsigned char *)o->uri[i], strlen(o->uri[i])));
	if (o->ndns == 0 && o->nip == 0) {
		MBEDTLS_ASN1_CHK_ADD(len, write_tlv(p, start, GN_DNS,
		    (const unsigned char *)o->name, strlen(o->name)));
	}
	for (size_t i = o->nip; i-- > 0;)
		MBEDTLS_ASN1_CHK_ADD(len, write_tlv(p, start, GN_IP,
		    o->ip[i].addr, o->ip[i].len));
	for (size_t i = o->ndns; i-- > 0;)
		MBEDTLS_ASN1_CHK_ADD(len, write_tlv(p, start, GN_DNS,
		    (const unsigned char *)o->dns[i], strlen(o->dns[i])));
	MBEDTLS_ASN1_CHK_ADD(len, write_seq(p, start, len));
	return (int)len;
}

/* ExtKeyUsageSyntax ::= SEQUENCE OF KeyPurposeId: serverAuth, clientAuth. */
static int write_eku(unsigned char **p, unsigned char *start)
{
	int ret;
	size_t len = 0;
	MBEDTLS_ASN1_CHK_ADD(len, mbedtls_asn1_write_oid(p, start,
	    MBEDTLS_OID_CLIENT_AUTH, MBEDTLS_OID_SIZE(MBEDTLS_OID_CLIENT_AUTH)));
	MBEDTLS_ASN1_CHK_ADD(len, mbedtls_asn1_write_oid(p, start,
	    MBEDTLS_OID_SERVER_AUTH, MBEDTLS_OID_SIZE(MBEDTLS_OID_SERVER_AUTH)));
	MBEDTLS_ASN1_CHK_ADD(len, write_seq(p, start, len));
	return (int)len;
}

/*
 * The keyIdentifier of crt's subjectKeyIdentifier extension, or NULL. Read
 * from the raw extensions because mbedTLS 2.28 does not parse it.
 */
unsigned char *x509gen_find_ski(const mbedtls_x509_crt *crt, size_t *idlen)
{
	unsigned char *p = crt->v3_ext.p;
	if (p == NULL || crt->v3_ext.len == 0)
		return NULL;
	const unsigned char *end = p + crt->v3_ext.len;
	size_t len;
	const int seq = MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE;

	/* Extensions ::= SEQUENCE SIZE (1..MAX) OF Extension */
	if (mbedtls_asn1_get_tag(&p, end, &len, seq) != 0)
		return NULL;
	end = p + len;
	while (p < end) {
		/* Extension ::= SEQUENCE { extnID, critical DEFAULT FALSE, extnValue } */
		if (mbedtls_asn1_get_tag(&p, end, &len, seq) != 0)
			return NULL;
		const unsigned char *ext_end = p + len;
		unsigned char *q = p;
		p += len;
		if (mbedtls_asn1_get_tag(&q, ext_end, &len, MBEDTLS_ASN1_OID) != 0)
			return NULL;
		if (len != MBEDTLS_OID_SIZE(MBEDTLS_OID_SUBJECT_KEY_IDENTIFIER) ||
		    memcmp(q, MBEDTLS_OID_SUBJECT_KEY_IDENTIFIER, len) != 0)
			continue;
		q += len;
		int critical;
		if (q < ext_end && *q == MBEDTLS_ASN1_BOOLEAN &&
		    mbedtls_asn1_get_bool(&q, ext_end, &critical) != 0)
			return NULL;
		/* extnValue OCTET STRING holding KeyIdentifier ::= OCTET STRING */
		if (mbedtls_asn1_get_tag(&q, ext_end, &len,
		    MBEDTLS_ASN1_OCTET_STRING) != 0)
			return NULL;
		if (mbedtls_asn1_get_tag(&q, q + len, &len,
		    MBEDTLS_ASN1_OCTET_STRING) != 0 || len == 0)
			return NULL;
		*idlen = len;
		return q;
	}
	return NULL;
}

/* AuthorityKeyIdentifier ::= SEQUENCE { [0] keyIdentifier } */
static int write_aki(unsigned char **p, unsigned char *start,
    const unsigned char *id, size_t idlen)
{
	int ret;
	size_t len = 0;
	MBEDTLS_ASN1_CHK_ADD(len, write_tlv(p, start, AKI_KEYID, id, idlen));
	MBEDTLS_ASN1_CHK_ADD(len, write_seq(p, start, len));
	return (int)len;
}

static void time_text(time_t t, char out[16])
{
	struct tm tm;
	gmtime_r(&t, &tm);
	if (strftime(out, 16, "%Y%m%d%H%M%S", &tm) != 14)
		out[0] = '\0';	/* set_validity then refuses it */
}

/* The extensions other than those mbedTLS has setters for. */
static int add_extensions(mbedtls_x509write_cert *w,
    const struct x509gen_opts *o, char *err, size_t errlen)
{
	int rc;
	if (o->ca) {
		rc = mbedtls_x509write_crt_set_basic_constraints(w, 1, 0);
		if (rc == 0)
			rc = mbedtls_x509write_crt_set_key_usage(w,
			    MBEDTLS_X509_KU_KEY_CERT_SIGN | MBEDTLS_X509_KU_CRL_SIGN);
		if (rc != 0) {
			mbed_err(err, errlen, "cannot build the certificate", rc);
			return -1;
		}
		return 0;
	}
	rc = mbedtls_x509write_crt_set_basic_constraints(w, 0, -1);
	if (rc == 0)
		rc = mbedtls_x509write_crt_set_key_usage(w,
		    MBEDTLS_X509_KU_DIGITAL_SIGNATURE | MBEDTLS_X509_KU_KEY_AGREEMENT);
	if (rc != 0) {
		mbed_err(err, errlen, "cannot build the certificate", rc);
		return -1;
	}

	unsigned char eku[64];
	unsigned char *p = eku + sizeof eku;
	rc = write_eku(&p, eku);
	if (rc > 0)
		rc = mbedtls_x509write_crt_set_extension(w,
		    MBEDTLS_OID_EXTENDED_KEY_USAGE,
		    MBEDTLS_OID_SIZE(MBEDTLS_OID_EXTENDED_KEY_USAGE), 0, p,
		    (size_t)rc);
	if (rc < 0) {
		mbed_err(err, errlen, "cannot encode extendedKeyUsage", rc);
		return -1;
	}

	size_t size = san_size(o);
	unsigned char *san = malloc(size);
	if (san == NULL) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	p = san + size;
	rc = write_san(&p, san, o);
	if (rc > 0)
		rc = mbedtls_x509write_crt_set_extension(w,
		    MBEDTLS_OID_SUBJECT_ALT_NAME,
		    MBEDTLS_OID_SIZE(MBEDTLS_OID_SUBJECT_ALT_NAME), 0, p,
		    (size_t)rc);
	free(san);
	if (rc < 0) {
		mbed_err(err, errlen, "cannot encode subjectAltName", rc);
		return -1;
	}
	return 0;
}

/* Set the fields of w; the certificate is then written by the caller. */
static int build(mbedtls_x509write_cert *w, const struct x509gen_opts *o,
    mbedtls_pk_context *key, time_t *not_after, char *err, size_t errlen)
{
	mbedtls_x509_crt *ca = o->issuer_crt;
	char subject[8 + X509GEN_NAME_MAX];
	char issuer[ISSUER_NAME_MAX];
	int rc;

	snprintf(subject, sizeof subject, "CN=%s", o->name);
	if (ca != NULL && mbedtls_x509_dn_gets(issuer, sizeof issuer,
	    &ca->subject) < 0) {
		snprintf(err, errlen, "the CA's subject name is too long");
		return -1;
	}

	unsigned char serial[SERIAL_LEN];
	rc = rng_random(NULL, serial, sizeof serial);
	if (rc != 0) {
		mbed_err(err, errlen, "cannot make a serial number", rc);
		return -1;
	}
	/* Positive (top bit clear) and always SERIAL_LEN bytes long. */
	serial[0] = (unsigned char)((serial[0] & 0x7f) | 0x40);

	time_t now = time(NULL);
	*not_after = now + (time_t)o->days * 86400;
	char nb[16], na[16];
	time_text(now - BEFORE_NOW, nb);
	time_text(*not_after, na);

	mbedtls_x509write_crt_set_version(w, MBEDTLS_X509_CRT_VERSION_3);
	mbedtls_x509write_crt_set_md_alg(w, MBEDTLS_MD_SHA256);
	mbedtls_x509write_crt_set_subject_key(w, key);
	mbedtls_x509write_crt_set_issuer_key(w, ca ? o->issuer_key : key);
	rc = compat_x509write_crt_set_serial(w, serial, sizeof serial);
	if (rc == 0)
		rc = mbedtls_x509write_crt_set_validity(w, nb, na);
	if (rc == 0)
		rc = mbedtls_x509write_crt_set_subject_name(w, subject);
	if (rc == 0)
		rc = mbedtls_x509write_crt_set_issuer_name(w,
		    ca ? issuer : subject);
	if (rc == 0)
		rc = mbedtls_x509write_crt_set_subject_key_identifier(w);
	if (rc != 0) {
		mbed_err(err, errlen, "cannot build the certificate", rc);
		return -1;
	}

	/* AuthorityKeyIdentifier: the CA's own key id, or ours on a CA. */
	if (ca != NULL) {
		size_t idlen = 0;
		const unsigned char *id = x509gen_find_ski(ca, &idlen);
		if (id != NULL && idlen <= 64) {
			unsigned char aki[80];
			unsigned char *p = aki + sizeof aki;
			rc = write_aki(&p, aki, id, idlen);
			if (rc > 0)
				rc = mbedtls_x509write_crt_set_extension(w,
				    MBEDTLS_OID_AUTHORITY_KEY_IDENTIFIER,
				    MBEDTLS_OID_SIZE(MBEDTLS_OID_AUTHORITY_KEY_IDENTIFIER),
				    0, p, (size_t)rc);
		}
	} else if (o->ca) {
		rc = mbedtls_x509write_crt_set_authority_key_identifier(w);
	}
	if (rc < 0) {
		mbed_err(err, errlen, "cannot encode authorityKeyIdentifier", rc);
		return -1;
	}
	return add_extensions(w, o, err, errlen);
}

/* x509_time as a number that sorts like the time: YYYYMMDDhhmmss. */
static long long x509_time_num(const mbedtls_x509_time *t)
{
	return ((((t->year * 100LL + t->mon) * 100 + t->day) * 100 + t->hour) *
	    100 + t->min) * 100 + t->sec;
}

static long long time_num(time_t t)
{
	struct tm tm;
	gmtime_r(&t, &tm);
	mbedtls_x509_time x = {
		.year = tm.tm_year + 1900, .mon = tm.tm_mon + 1,
		.day = tm.tm_mday, .hour = tm.tm_hour, .min = tm.tm_min,
		.sec = tm.tm_sec,
	};
	return x509_time_num(&x);
}

/*
 * Parse the new certificate back and check it: same key, and a chain to its
 * issuer (or to itself) that mbedTLS accepts.
 */
static int self_check(const struct x509gen_opts *o, mbedtls_pk_context *key,
    const unsigned char *der, size_t derlen, char *err, size_t errlen)
{
	mbedtls_x509_crt crt;
	mbedtls_x509_crt_init(&crt);
	int rc = mbedtls_x509_crt_parse_der(&crt, der, derlen);
	if (rc != 0) {
		mbed_err(err, errlen, "the new certificate does not parse", rc);
		goto fail;
	}
	struct pin a, b;
	if (pin_of_crt(&crt, &a) != 0 || pin_of_pk(key, &b) != 0 ||
	    memcmp(a.hash, b.hash, sizeof a.hash) != 0) {
		snprintf(err, errlen, "the new certificate does not carry the new key");
		goto fail;
	}
	mbedtls_x509_crt *ca = o->issuer_crt;
	if (ca != NULL && (crt.issuer_raw.len != ca->subject_raw.len ||
	    memcmp(crt.issuer_raw.p, ca->subject_raw.p, ca->subject_raw.len) != 0)) {
		snprintf(err, errlen, "the CA's subject name cannot be copied "
		    "exactly into the issuer field; use a CA made by upseal-certs");
		goto fail;
	}
	uint32_t flags = 0;
	rc = mbedtls_x509_crt_verify(&crt, ca ? ca : &crt, NULL, NULL, &flags,
	    NULL, NULL);
	if (rc != 0) {
		char info[512];
		if (mbedtls_x509_crt_verify_info(info, sizeof info, "", flags) < 0)
			info[0] = '\0';
		/* One line: the lines become "; "-separated clauses. */
		size_t n = strlen(info);
		while (n > 0 && info[n - 1] == '\n')
			info[--n] = '\0';
		for (char *nl = strchr(info, '\n'); nl; nl = strchr(nl, '\n'))
			*nl = ';';
		snprintf(err, errlen, "the new certificate does not verify%s: %s",
		    ca ? " against the CA" : "", info[0] ? info : "unknown reason");
		goto fail;
	}
	mbedtls_x509_crt_free(&crt);
	return 0;
fail:
	mbedtls_x509_crt_free(&crt);
	return -1;
}

int x509gen_crt_pem(const struct x509gen_opts *o, mbedtls_pk_context *key,
    unsigned char **pem, size_t *len, char *err, size_t errlen)
{
	mbedtls_x509write_cert w;
	mbedtls_x509write_crt_init(&w);
	size_t size = CRT_DER_BASE + san_size(o);
	unsigned char *der = malloc(size);
	int ret = -1;
	time_t not_after;

	if (der == NULL) {
		snprintf(err, errlen, "out of memory");
		goto out;
	}
	if (build(&w, o, key, &not_after, err, errlen) != 0)
		goto out;
	/* Writes at the END of der. */
	int n = mbedtls_x509write_crt_der(&w, der, size, rng_random, NULL);
	if (n <= 0) {
		mbed_err(err, errlen, "cannot sign the certificate", n);
		goto out;
	}
	const unsigned char *start = der + size - (size_t)n;
	if (self_check(o, key, start, (size_t)n, err, errlen) != 0)
		goto out;
	size_t pem_size;
	if (x509gen_pem("CERTIFICATE", start, (size_t)n, pem, len, &pem_size) != 0) {
		snprintf(err, errlen, "out of memory");
		goto out;
	}
	if (o->issuer_crt != NULL &&
	    x509_time_num(&o->issuer_crt->valid_to) < time_num(not_after)) {
		const mbedtls_x509_time *t = &o->issuer_crt->valid_to;
		fprintf(stderr, "upseal-certs: warning: the CA expires on "
		    "%04d-%02d-%02d, before this certificate; the chain stops "
		    "verifying then\n", t->year, t->mon, t->day);
	}
	ret = 0;
out:
	free(der);
	mbedtls_x509write_crt_free(&w);
	return ret;
}

/* base without a trailing ".crt" or ".key", plus ext, into out. */
int x509gen_ca_path(const char *base, const char *ext, char *out, size_t size)
{
	size_t n = strlen(base);
	if (n > 4 && (strcmp(base + n - 4, ".crt") == 0 ||
	    strcmp(base + n - 4, ".key") == 0))
		n -= 4;
	int w = snprintf(out, size, "%.*s%s", (int)n, base, ext);
	return w < 0 || (size_t)w >= size ? -1 : 0;
}

int x509gen_load_ca(const char *base, mbedtls_x509_crt *crt,
    mbedtls_pk_context *key, char *err, size_t errlen)
{
	char crt_path[4096], key_path[4096];
	int rc;

	if (x509gen_ca_path(base, ".crt", crt_path, sizeof crt_path) != 0 ||
	    x509gen_ca_path(base, ".key", key_path, sizeof key_path) != 0) {
		snprintf(err, errlen, "--ca: path too long");
		return -1;
	}
	if (access(crt_path, R_OK) != 0) {
		snprintf(err, errlen, "%s: cannot read: %s", crt_path, strerror(errno));
		return -1;
	}
	if (access(key_path, R_OK) != 0) {
		snprintf(err, errlen, "%s: cannot read: %s", key_path, strerror(errno));
		return -1;
	}
	rc = mbedtls_x509_crt_parse_file(crt, crt_path);
	if (rc != 0) {
		char what[4200];
		snprintf(what, sizeof what, "%s: not a certificate", crt_path);
		mbed_err(err, errlen, what, rc);
		return -1;
	}
	rc = compat_pk_parse_keyfile(key, key_path, rng_get());
	if (rc == MBEDTLS_ERR_PK_PASSWORD_REQUIRED) {
		snprintf(err, errlen, "%s: private key is encrypted; "
		    "an unencrypted key is needed", key_path);
		return -1;
	}
	if (rc != 0) {
		char what[4200];
		snprintf(what, sizeof what, "%s: not a private key", key_path);
		mbed_err(err, errlen, what, rc);
		return -1;
	}
	if (compat_pk_check_pair(&crt->pk, key, rng_get()) != 0) {
		snprintf(err, errlen, "%s is not the key of %s", key_path, crt_path);
		return -1;
	}
	if (!compat_crt_is_ca(crt) ||
	    mbedtls_x509_crt_check_key_usage(crt, MBEDTLS_X509_KU_KEY_CERT_SIGN) != 0) {
		snprintf(err, errlen, "%s is not a CA certificate (make one with "
		    "upseal-certs ca NAME)", crt_path);
		return -1;
	}
	return 0;
}
