/*
 * expiry: the warnings before a certificate expires. While a tunnel's own
 * certificate expires within its expiry_warning (default 14 days),
 * event=cert_expiring is logged (a warning; cert_expired once it has) at
 * start, after each reload and once a day; the daily check also repeats
 * event=crl_stale for a CRL past its nextUpdate. The same dates are on
 * /metrics (metrics.h) and in --check (expiry_print).
 */
#ifndef UPSEAL_EXPIRY_H
#define UPSEAL_EXPIRY_H

#include <stdio.h>

#include <uv.h>

#include "tset.h"

struct expiry;

/*
 * Start the daily check on loop over running (the tunnels worker 0 runs
 * now: read at each check, so it follows reloads). NULL: out of memory.
 */
struct expiry *expiry_start(uv_loop_t *loop, const struct tset *running);

/* Check every running tunnel now (start, reload). NULL is a no-op. */
void expiry_check(struct expiry *e);

/* Stop and close the timer (freed in its close callback); NULL: no-op. */
void expiry_stop(struct expiry *e);

/*
 * For --check: one line per date of tunnel name to f, with the days
 * left ("cert notAfter 2027-03-01T12:00:00Z (88 days left)").
 */
void expiry_print(FILE *f, const char *name, const struct tls_ctx *tls);

#endif
