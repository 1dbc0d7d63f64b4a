/*
 * rng: random generators (CTR_DRBG seeded from the OS entropy source),
 * one per thread: each event-loop thread draws from its own, so workers
 * never contend for a lock or share a generator's state.
 */
#ifndef UPSEAL_RNG_H
#define UPSEAL_RNG_H

#include <mbedtls/ctr_drbg.h>

/*
 * Set up the crypto library (once per process) and seed this thread's
 * generator (idempotent). 0, or a negative mbedTLS error code.
 */
int rng_init(void);

/*
 * This thread's generator, seeded on first use; NULL if it cannot be
 * seeded (rng_random then fails too).
 */
mbedtls_ctr_drbg_context *rng_get(void);

/* For mbedtls_*_conf_rng style callbacks: p_rng is ignored. */
int rng_random(void *p_rng, unsigned char *out, size_t len);

/* Free this thread's generator (at thread exit, for leak checks). */
void rng_thread_free(void);

#endif
