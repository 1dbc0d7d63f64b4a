/*
 * bench/aead.c: the mbedTLS ceiling. The linked mbedTLS's AEAD speed on one
 * core, 16 KiB records (a TLS record's payload), for each suite upseal
 * offers: AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305. Seal and open are
 * timed separately (the client side of a one-way transfer seals, the server
 * side opens). Prints one JSON object.
 *
 *   aead [--seconds S]     (per suite and direction, default 1)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mbedtls/chachapoly.h>
#include <mbedtls/gcm.h>
#include <mbedtls/version.h>

#define REC (16 * 1024)

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static unsigned char in[REC], out[REC], back[REC], tag[16], aad[13], iv[12];
static unsigned char key[32];

/* dir 0 seals, 1 opens; returns MB/s or -1. */
static double run(int suite, int dir, double seconds)
{
	mbedtls_gcm_context g;
	mbedtls_chachapoly_context cp;
	int rc = 0;
	if (suite < 2) {
		mbedtls_gcm_init(&g);
		rc = mbedtls_gcm_setkey(&g, MBEDTLS_CIPHER_ID_AES, key,
		                        suite == 0 ? 128 : 256);
	} else {
		mbedtls_chachapoly_init(&cp);
		rc = mbedtls_chachapoly_setkey(&cp, key);
	}
	if (rc != 0)
		return -1;
	/* one sealed record to open again and again */
	iv[11] = 0;
	if (suite < 2)
		rc = mbedtls_gcm_crypt_and_tag(&g, MBEDTLS_GCM_ENCRYPT, REC, iv, 12,
		                               aad, 13, in, out, 16, tag);
	else
		rc = mbedtls_chachapoly_encrypt_and_tag(&cp, REC, iv, aad, 13, in,
		                                        out, tag);
	long n = 0;
	double t0 = now(), t;
	do {
		for (int k = 0; k < 16 && rc == 0; k++, n++) {
			iv[11] = (unsigned char)n;
			if (dir == 1)
				iv[11] = 0;
			if (suite < 2 && dir == 0)
				rc = mbedtls_gcm_crypt_and_tag(&g, MBEDTLS_GCM_ENCRYPT, REC,
				                               iv, 12, aad, 13, in, out,
				                               16, tag);
			else if (suite < 2)
				rc = mbedtls_gcm_auth_decrypt(&g, REC, iv, 12, aad, 13, tag,
				                              16, out, back);
			else if (dir == 0)
				rc = mbedtls_chachapoly_encrypt_and_tag(&cp, REC, iv, aad,
				                                        13, in, out, tag);
			else
				rc = mbedtls_chachapoly_auth_decrypt(&cp, REC, iv, aad, 13,
				                                     tag, out, back);
		}
		t = now();
	} while (rc == 0 && t - t0 < seconds);
	if (suite < 2)
		mbedtls_gcm_free(&g);
	else
		mbedtls_chachapoly_free(&cp);
	if (rc != 0 || (dir == 1 && memcmp(in, back, REC) != 0))
		return -1;
	return (double)n * REC / (t - t0) / 1e6;
}

int main(int argc, char **argv)
{
	double seconds = 1.0;
	if (argc == 3 && strcmp(argv[1], "--seconds") == 0)
		seconds = atof(argv[2]);
	else if (argc != 1) {
		fprintf(stderr, "usage: aead [--seconds S]\n");
		return 2;
	}
	for (size_t i = 0; i < sizeof in; i++)
		in[i] = (unsigned char)i;
	for (size_t i = 0; i < sizeof key; i++)
		key[i] = (unsigned char)(i * 13 + 1);
	static const char *names[] = { "AES-128-GCM", "AES-256-GCM",
	                               "CHACHA20-POLY1305" };
	char ver[32];
	mbedtls_version_get_string(ver);
	printf("{\"mode\":\"aead\",\"mbedtls\":\"%s\",\"record\":%d", ver, REC);
	int bad = 0;
	for (int s = 0; s < 3; s++) {
		double seal = run(s, 0, seconds), open = run(s, 1, seconds);
		bad |= seal < 0 || open < 0;
		printf(",\"%s\":{\"seal_mbps\":%.1f,\"open_mbps\":%.1f}", names[s], seal,
		       open);
	}
	printf("}\n");
	return bad;
}
