#include "rng.h"

#include <stdbool.h>

#include <mbedtls/entropy.h>
#include <uv.h>

#include "compat.h"

/* The crypto library's one-time set-up (3.6: psa_crypto_init), its result. */
static uv_once_t crypto_once = UV_ONCE_INIT;
static int crypto_rc;

/*
 * The DRBG is per thread: each worker seeds its own on first use, so no
 * two threads share generator state or take a lock to draw from it.
 */
static _Thread_local mbedtls_entropy_context entropy;
static _Thread_local mbedtls_ctr_drbg_context drbg;
static _Thread_local bool seeded;

static void crypto_init(void)
{
	crypto_rc = compat_crypto_init();
}

int rng_init(void)
{
	static const unsigned char personal[] = "upseal";
	if (seeded)
		return 0;
	uv_once(&crypto_once, crypto_init);
	if (crypto_rc != 0)
		return crypto_rc;
	mbedtls_entropy_init(&entropy);
	mbedtls_ctr_drbg_init(&drbg);
	int rc = mbedtls_ctr_drbg_seed(&drbg, mbedtls_entropy_func, &entropy,
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
	return rng_init() == 0 ? &drbg : NULL;
}

int rng_random(void *p_rng, unsigned char *out, size_t len)
{
	(void)p_rng;
	int rc = rng_init();
	if (rc != 0)
		return rc;
	return mbedtls_ctr_drbg_random(&drbg, out, len);
}

void rng_thread_free(void)
{
	if (!seeded)
		return;
	mbedtls_ctr_drbg_free(&drbg);
	mbedtls_entropy_free(&entropy);
	seeded = false;
}
