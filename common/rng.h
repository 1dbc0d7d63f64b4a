/*
 * rng: the process's random generator (CTR_DRBG seeded from the OS
 * entropy source). Event loops are single-threaded; one generator per
 * process is enough until workers arrive.
 */
#ifndef UPSEAL_RNG_H
#define UPSEAL_RNG_H

#include <mbedtls/ctr_drbg.h>

/*
 * Seed the generator (idempotent). 0, or a negative mbedTLS error code.
 */
int rng_init(void);

/* The seeded generator; rng_init() must have returned 0. */
mbedtls_ctr_drbg_context *rng_get(void);

/* For mbedtls_*_conf_rng style callbacks: p_rng is ignored. */
int rng_random(void *p_rng, unsigned char *out, size_t len);

#endif
