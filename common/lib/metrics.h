/*
 * metrics: the counters a tunnel keeps, and their rendering in the
 * Prometheus text exposition format (version 0.0.4).
 */
#ifndef UPSEAL_METRICS_H
#define UPSEAL_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdatomic.h>
#include <stdint.h>

#include "reason.h"
#include "sbuf.h"

/* Reasons a connection ends, as in the conn_end log line (reason.h). */
#define METRICS_REASONS REASON_METRICS
/* Handshake duration histogram: upper bounds in seconds, then +Inf. */
#define METRICS_HS_BUCKETS 10

/*
 * Every event-loop thread (worker) counts into the same struct: the
 * counters are atomic, updated with relaxed ordering (each is a tally, not
 * a synchronisation point), and summed by nothing but the hardware.
 */
typedef _Atomic uint64_t stat_counter;

struct tunnel_stats {
	_Atomic unsigned refs;	/* tunnels counting into these */
	_Atomic unsigned open;	/* connections open under these counters */
	/* Workers holding back an accept at max_connections (bit per worker). */
	_Atomic uint64_t held;
	/* Server: connections accepted and not yet handshaken (max_handshakes). */
	stat_counter handshaking;
	stat_counter hs_shed;	/* of those, dropped for a newer one */
	stat_counter accepted;
	stat_counter closed[METRICS_REASONS];	/* by reason index */
	stat_counter hs_failed[METRICS_REASONS];	/* by reason index */
	stat_counter hs_full, hs_resumed;
	stat_counter bytes_in;	/* read from the plaintext end */
	stat_counter bytes_out;	/* written to the plaintext end */
	stat_counter connect_failures;	/* the next hop could not be reached */
	stat_counter hs_bucket[METRICS_HS_BUCKETS + 1];	/* not cumulative */
	stat_counter hs_micros;	/* total handshake time, microseconds */
	/* CA mode: refused for an expired or not yet valid certificate. */
	stat_counter peer_out_of_dates;
	/* The pool (pool.c). Client: ready is a gauge; the rest count. */
	stat_counter pool_ready;	/* handshaken, waiting for a client */
	stat_counter pool_handoffs;	/* client: handed to a client; server: preamble */
	stat_counter pool_misses;	/* client: accepted with none ready */
	stat_counter pool_failures;	/* client: pool dials/handshakes that failed */
	stat_counter pool_recycled;	/* client: closed unused after pool_idle */
	_Atomic unsigned pool_failing;	/* client: workers in a failure streak */
	/* The PROXY protocol (origin.c). */
	stat_counter proxy_headers;	/* client: accepted; server: sent */
	stat_counter carried;		/* client: sent an address; server: used one */
	/* kTLS: connections switched, per direction; the tunnel's line logged. */
	stat_counter ktls_tx, ktls_rx;
	_Atomic bool ktls_logged;
};

/* Add n to a counter (any thread). */
#define STAT_ADD(counter, n) \
	atomic_fetch_add_explicit(&(counter), (n), memory_order_relaxed)

/* Count one finished handshake that took seconds. */
void metrics_handshake(struct tunnel_stats *s, double seconds, bool resumed);

/* What the renderer needs to know about one tunnel. */
struct metrics_tunnel {
	const char *name;
	const struct tunnel_stats *stats;
	unsigned open;
	bool listening;
	/* Seconds since the epoch, 0 if none (a retired tunnel: all 0). */
	int64_t cert_not_after;		/* the own certificate's notAfter */
	int64_t ca_not_after;		/* the CA file's earliest notAfter */
	int64_t crl_next_update;	/* the CRLs' earliest nextUpdate */
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
