#include "test.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <mbedtls/ecp.h>
#include <mbedtls/pk.h>
#include <mbedtls/platform_util.h>
#include <mbedtls/x509_crt.h>

#include "pin.h"
#include "rng.h"

/*
 * A self-signed P-256 certificate and its public key (public data only; the
 * private key was thrown away). KNOWN_PIN was computed independently with
 *   openssl x509 -in c.pem -pubkey -noout | openssl pkey -pubin -outform der \
 *     | openssl dgst -sha256 -binary | base64
 * The certificate's dates do not matter: a pin ignores them.
 */
static const char known_crt[] =
"-----BEGIN CERTIFICATE-----\n"
"MIIBgDCCASegAwIBAgIUcUzdcnVDuGUpbJgAOZv7AohCoB0wCgYIKoZIzj0EAwIw\n"
"FjEUMBIGA1UEAwwLdXBzZWFsLXRlc3QwHhcNMjYxMTI5MDU1NzE1WhcNMzYxMTI2\n"
"MDU1NzE1WjAWMRQwEgYDVQQDDAt1cHNlYWwtdGVzdDBZMBMGByqGSM49AgEGCCqG\n"
"SM49AwEHA0IABKllpbTi5pHzno9eY+gGPFGaOvYilvDCNuC1cYUbUUd7n5+AD92g\n"
"YVnArqP6Fg2kiCpdvqNechztB9EIEWKEYaOjUzBRMB0GA1UdDgQWBBSG+H8y53O9\n"
"Jfh7BceUaJZq8FFgzzAfBgNVHSMEGDAWgBSG+H8y53O9Jfh7BceUaJZq8FFgzzAP\n"
"BgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0cAMEQCIAwBbAbuNKhXAYesqVxi\n"
"Hqr/09LPGNn1NMimvM8aFUPIAiBsHWL2VEBwfeWTaGVSDjvMumSsFctU6oFH+qkI\n"
"59i+qw==\n"
"-----END CERTIFICATE-----\n";

static const char known_pub[] =
"-----BEGIN PUBLIC KEY-----\n"
"MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEqWWltOLmkfOej15j6AY8UZo69iKW\n"
"8MI24LVxhRtRR3ufn4AP3aBhWcCuo/oWDaSIKl2+o15yHO0H0QgRYoRhow==\n"
"-----END PUBLIC KEY-----\n";

#define KNOWN_PIN "sha256//O9hN2JLFx3BnqtJ6rEEWIr6CWfFpxvkWmIgBh868w+I="

/* The pin of bytes 0, 1, ..., 31 (python3: base64.b64encode(bytes(range(32)))). */
#define COUNT_PIN "sha256//AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="

static char err[4096];

static const char *fmt(const struct pin *p)
{
	static char buf[PIN_TEXT_MAX];
	pin_format(p, buf);
	return buf;
}

/* Parse expecting failure; returns the error text. */
static const char *parse_err(const char *text)
{
	struct pin p;
	err[0] = '\0';
	CHECK_INT(pin_parse(text, &p, err, sizeof err), -1);
	return err;
}

/* A file in the test's temporary directory holding len bytes of data. */
static const char *write_tmp(const char *name, const void *data, size_t len)
{
	static char path[4][512];
	static int next;
	char *out = path[next++ % 4];
	snprintf(out, sizeof path[0], "%s/%s", test_tmpdir(), name);
	FILE *f = fopen(out, "wb");
	CHECK(f != NULL);
	if (f == NULL)
		return out;
	CHECK_INT(fwrite(data, 1, len, f), len);
	CHECK_INT(fclose(f), 0);
	return out;
}

/* pin_of_file expecting success; returns the pin's text ("" on failure). */
static const char *file_pin(const char *path)
{
	static char buf[PIN_TEXT_MAX];
	struct pin p;
	err[0] = '\0';
	if (pin_of_file(path, &p, err, sizeof err) != 0) {
		CHECK_STR(err, "(no error)");
		return "";
	}
	pin_format(&p, buf);
	return buf;
}

static const char *file_err(const char *path)
{
	struct pin p;
	err[0] = '\0';
	CHECK_INT(pin_of_file(path, &p, err, sizeof err), -1);
	return err;
}

TEST(pin_parse_good)
{
	struct pin p;
	err[0] = '\0';
	CHECK_INT(pin_parse(COUNT_PIN, &p, err, sizeof err), 0);
	for (int i = 0; i < PIN_HASH_LEN; i++)
		CHECK_INT(p.hash[i], i);
	CHECK_STR(fmt(&p), COUNT_PIN);

	CHECK_INT(pin_parse(KNOWN_PIN, &p, err, sizeof err), 0);
	CHECK_STR(fmt(&p), KNOWN_PIN);
}

TEST(pin_parse_prefix)
{
	const char *want = "expected sha256//BASE64 as printed by upseal-certs pin";
	CHECK_CONTAINS(parse_err("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="), want);
	CHECK_CONTAINS(parse_err("sha1//AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="), want);
	CHECK_CONTAINS(parse_err("SHA256//AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="), want);
	CHECK_CONTAINS(parse_err("sha256/AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="), want);
	CHECK_CONTAINS(parse_err(""), want);
}

TEST(pin_parse_bad_base64)
{
	const char *want = "invalid base64";
	/* '!' is no base64 character. */
	CHECK_CONTAINS(parse_err("sha256//AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdH!8="), want);
	/* URL-safe alphabet. */
	CHECK_CONTAINS(parse_err("sha256//O9hN2JLFx3BnqtJ6rEEWIr6CWfFpxvkWmIgBh868w-I="), want);
	CHECK_CONTAINS(parse_err("sha256//O9hN2JLFx3BnqtJ6rEEWIr6CWfFpxvkWmIgBh868w_I="), want);
	/* Padding missing, misplaced, doubled past two; whitespace. */
	CHECK_CONTAINS(parse_err("sha256//AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"), want);
	CHECK_CONTAINS(parse_err("sha256//AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwd=h8="), want);
	CHECK_CONTAINS(parse_err("sha256//AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxw==="), want);
	CHECK_CONTAINS(parse_err("sha256//AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8= "), want);
	CHECK_CONTAINS(parse_err("sha256// AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="), want);
	CHECK_CONTAINS(parse_err("sha256//AAECAwQFBgcICQoLDA0O\nDxAREhMUFRYXGBkaGxwdHh8="), want);
}

TEST(pin_parse_length)
{
	/* 31 and 33 bytes (python3 base64 of bytes(range(31)) and (33)). */
	CHECK_STR(parse_err("sha256//AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHg=="),
	    "decodes to 31 bytes; a SHA-256 pin is 32");
	CHECK_STR(parse_err("sha256//AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8g"),
	    "decodes to 33 bytes; a SHA-256 pin is 32");
	CHECK_STR(parse_err("sha256//"), "decodes to 0 bytes; a SHA-256 pin is 32");
	/* A SHA-512-sized value (64 bytes). */
	CHECK_STR(parse_err("sha256//"
	    "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4v"
	    "MDEyMzQ1Njc4OTo7PD0+Pw=="),
	    "decodes to 64 bytes; a SHA-256 pin is 32");
}

TEST(pin_format_short_and_roundtrip)
{
	struct pin p, q;
	for (int i = 0; i < PIN_HASH_LEN; i++)
		p.hash[i] = (unsigned char)i;
	char buf[PIN_TEXT_MAX];
	pin_format_short(&p, buf);
	CHECK_STR(buf, "sha256//AAECAwQFBgcI");

	/* Every byte value through format and parse. */
	for (int round = 0; round < 8; round++) {
		for (int i = 0; i < PIN_HASH_LEN; i++)
			p.hash[i] = (unsigned char)(round * 32 + i);
		pin_format(&p, buf);
		CHECK_INT(strlen(buf), PIN_TEXT_MAX - 1);
		CHECK_INT(pin_parse(buf, &q, err, sizeof err), 0);
		CHECK(memcmp(p.hash, q.hash, PIN_HASH_LEN) == 0);
	}
}

TEST(pin_in_set)
{
	struct pin set[3], p;
	memset(set, 0, sizeof set);
	for (int i = 0; i < 3; i++)
		set[i].hash[PIN_HASH_LEN - 1] = (unsigned char)(i + 1);

	p = set[2];
	CHECK(pin_in(&p, set, 3));
	CHECK(!pin_in(&p, set, 2));
	CHECK(!pin_in(&p, set, 0));
	p = set[0];
	CHECK(pin_in(&p, set, 1));
	/* Differs in the first byte only. */
	p.hash[0] = 0x80;
	CHECK(!pin_in(&p, set, 3));
}

TEST(pin_of_known_crt_and_pub)
{
	mbedtls_x509_crt crt;
	mbedtls_x509_crt_init(&crt);
	CHECK_INT(mbedtls_x509_crt_parse(&crt, (const unsigned char *)known_crt,
	    sizeof known_crt), 0);
	struct pin p;
	CHECK_INT(pin_of_crt(&crt, &p), 0);
	CHECK_STR(fmt(&p), KNOWN_PIN);
	/* The certificate's key through pin_of_pk gives the same. */
	CHECK_INT(pin_of_pk(&crt.pk, &p), 0);
	CHECK_STR(fmt(&p), KNOWN_PIN);

	/* Files: PEM and DER certificate, PEM and DER public key. */
	CHECK_STR(file_pin(write_tmp("known.crt", known_crt, strlen(known_crt))),
	    KNOWN_PIN);
	CHECK_STR(file_pin(write_tmp("known.der", crt.raw.p, crt.raw.len)),
	    KNOWN_PIN);
	CHECK_STR(file_pin(write_tmp("known.pub", known_pub, strlen(known_pub))),
	    KNOWN_PIN);
	unsigned char der[512];
	int n = mbedtls_pk_write_pubkey_der(&crt.pk, der, sizeof der);
	CHECK(n > 0);
	if (n > 0)
		CHECK_STR(file_pin(write_tmp("known.pub.der",
		    der + sizeof der - (size_t)n, (size_t)n)), KNOWN_PIN);

	/*
	 * A certificate wins over a key in the same file, and in a chain only
	 * the first certificate counts (what follows it may even be damaged).
	 */
	char chain[4096];
	snprintf(chain, sizeof chain, "%s%s", known_pub, known_crt);
	CHECK_STR(file_pin(write_tmp("known-pub-crt.pem", chain, strlen(chain))),
	    KNOWN_PIN);
	snprintf(chain, sizeof chain, "%s%s", known_crt, known_crt);
	chain[sizeof known_crt + 100] = '!';
	CHECK_STR(file_pin(write_tmp("known-chain.pem", chain, strlen(chain))),
	    KNOWN_PIN);
	mbedtls_x509_crt_free(&crt);

	mbedtls_pk_context pk;
	mbedtls_pk_init(&pk);
	CHECK_INT(mbedtls_pk_parse_public_key(&pk, (const unsigned char *)known_pub,
	    sizeof known_pub), 0);
	CHECK_INT(pin_of_pk(&pk, &p), 0);
	CHECK_STR(fmt(&p), KNOWN_PIN);
	mbedtls_pk_free(&pk);
}

/* A private key made now (never stored in the repository), PEM and DER. */
TEST(pin_of_private_key_file)
{
	CHECK_INT(rng_init(), 0);
	mbedtls_pk_context pk;
	mbedtls_pk_init(&pk);
	CHECK_INT(mbedtls_pk_setup(&pk, mbedtls_pk_info_from_type(MBEDTLS_PK_ECKEY)), 0);
	CHECK_INT(mbedtls_ecp_gen_key(MBEDTLS_ECP_DP_SECP256R1, mbedtls_pk_ec(pk),
	    rng_random, NULL), 0);
	struct pin want;
	CHECK_INT(pin_of_pk(&pk, &want), 0);
	char want_text[PIN_TEXT_MAX];
	pin_format(&want, want_text);

	unsigned char buf[1024];
	CHECK_INT(mbedtls_pk_write_key_pem(&pk, buf, sizeof buf), 0);
	CHECK_STR(file_pin(write_tmp("fresh.key", buf, strlen((char *)buf))),
	    want_text);
	int n = mbedtls_pk_write_key_der(&pk, buf, sizeof buf);
	CHECK(n > 0);
	if (n > 0)
		CHECK_STR(file_pin(write_tmp("fresh.key.der",
		    buf + sizeof buf - (size_t)n, (size_t)n)), want_text);
	mbedtls_platform_zeroize(buf, sizeof buf);
	mbedtls_pk_free(&pk);
}

TEST(pin_of_file_errors)
{
	char path[512];
	snprintf(path, sizeof path, "%s/missing.pem", test_tmpdir());
	char want[600];
	snprintf(want, sizeof want, "%s: cannot read: %s", path, strerror(ENOENT));
	CHECK_STR(file_err(path), want);

	static const char junk[] = "this is not a key\n\x01\x02\x03";
	const char *g = write_tmp("garbage.pem", junk, sizeof junk);
	snprintf(want, sizeof want,
	    "%s: not a certificate, private key or public key (PEM or DER)", g);
	CHECK_STR(file_err(g), want);

	const char *e = write_tmp("empty.pem", "", 0);
	CHECK_CONTAINS(file_err(e), e);
	CHECK_CONTAINS(file_err(e), "empty");

	CHECK_CONTAINS(file_err(test_tmpdir()), "is a directory");

	/* A PEM certificate with a damaged body is named as such. */
	char bad[sizeof known_crt];
	memcpy(bad, known_crt, sizeof bad);
	bad[100] = bad[100] == 'A' ? 'B' : 'A';
	bad[101] = '!';
	const char *b = write_tmp("bad.crt", bad, strlen(bad));
	CHECK_CONTAINS(file_err(b), b);
	CHECK_CONTAINS(file_err(b), "certificate does not parse");
}
