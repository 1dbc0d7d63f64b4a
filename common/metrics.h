/*
 * metrics: the counters a tunnel keeps, and their rendering in the
 * Prometheus text exposition format (version 0.0.4).
 */
#ifndef UPSEAL_METRICS_H
#define UPSEAL_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sbuf.h"

/* Reasons a connection ends, as in the conn_end log line. */
#define METRICS_REASONS 28
/* Handshake duration histogram: upper bounds in seconds, then +Inf. */
#define METRICS_HS_BUCKETS 10

struct tunnel_stats {
	unsigned refs;		/* tunnels counting into these */
	uint64_t accepted;
	uint64_t closed[METRICS_REASONS];	/* by reason index */
	uint64_t hs_failed[METRICS_REASONS];	/* by reason index */
	uint64_t hs_full, hs_resumed;
	uint64_t bytes_in;	/* read from the plaintext end */
	uint64_t bytes_out;	/* written to the plaintext end */
	uint64_t connect_failures;	/* the next hop could not be reached */
	uint64_t hs_bucket[METRICS_HS_BUCKETS + 1];	/* not cumulative */
	double hs_seconds;
	/* The pool (pool.c). Client: ready is a gauge; the rest count. */
	uint64_t pool_ready;	/* handshaken, waiting for a client */
	uint64_t pool_handoffs;	/* client: handed to a client; server: preamble */
	uint64_t pool_misses;	/* client: accepted with none ready */
	uint64_t pool_failures;	/* client: pool dials/handshakes that failed */
	uint64_t pool_recycled;	/* client: closed unused after pool_idle */
};

/* The index of a reason word; unknown words map to "other". */
unsigned metrics_reason(const char *reason);

/* Count one finished handshake that took seconds. */
void metrics_handshake(struct tunnel_stats *s, double seconds, bool resumed);

/* What the renderer needs to know about one tunnel. */
struct metrics_tunnel {
	const char *name;
	const struct tunnel_stats *stats;
	unsigned open;
	bool listening;
};

struct metrics_process {
	const char *role;
	const char *version;
	bool draining;
	uint64_t reloads_ok, reloads_failed;
};

/* Append the exposition for n tunnels and the process to b. */
void metrics_render(struct sbuf *b, const struct metrics_tunnel *t, size_t n,
    const struct metrics_process *p);

#endif
