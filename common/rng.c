#include "rng.h"

#include <stdbool.h>

#include <mbedtls/entropy.h>

#include "compat.h"

static mbedtls_entropy_context entropy;
static mbedtls_ctr_drbg_context drbg;
static bool seeded;

int rng_init(void)
{
	static const unsigned char personal[] = "upseal";
	if (seeded)
		return 0;
	int rc = compat_crypto_init();
	if (rc != 0)
		return rc;
	mbedtls_entropy_init(&entropy);
	mbedtls_ctr_drbg_init(&drbg);
	rc = mbedtls_ctr_drbg_seed(&drbg, mbedtls_entropy_func, &entropy,
	    personal, sizeof personal - 1);
	if (rc != 0) {
		mbedtls_ctr_drbg_free(&drbg);
		mbedtls_entropy_free(&entropy);
		return rc;
	}
	seeded = true;
	return 0;
}

mbedtls_ctr_drbg_context *rng_get(void)
{
	return &drbg;
}

int rng_random(void *p_rng, unsigned char *out, size_t len)
{
	(void)p_rng;
	return mbedtls_ctr_drbg_random(&drbg, out, len);
}
