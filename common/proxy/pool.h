/*
 * pool: pre-handshaken connections (pool = N in a client tunnel). The
 * client keeps N connections to its server handshaken and pinned, each
 * in phase PH_POOLED with no plaintext end, refilled in the background
 * and replaced after pool_idle; an accepted client takes one and sends
 * the preamble (preamble.h) as its first application data. The server,
 * on a connection that negotiated ALPN upseal/2 or upseal/1, dials its
 * backend only when the preamble comes. Part of the conn module: pool.c
 * shares conn_int.h with conn.c and relay.c.
 */
#ifndef UPSEAL_POOL_H
#define UPSEAL_POOL_H

#include "reason.h"
#include "tunnel.h"

/*
 * Take t's pool size from its current settings (the one place that reads
 * cfg->pool; 0 in the server role), forget any failure streak, and open
 * connections up to it. Called by tunnel_start and tunnel_reconfigure.
 */
void pool_configure(struct tunnel *t);

/*
 * Close every pool connection of t at once, for why (REASON_DRAIN,
 * REASON_POOL_FLUSH): a client's pooled and still-opening ones, and
 * in the server role those still waiting for the preamble (no client
 * byte is in flight on them). Nothing is freed before the loop runs.
 */
void pool_flush(struct tunnel *t, enum reason why);

/*
 * Open pool connections until t has t->pool.target of them (ready or on
 * their way). In a failure streak, at most one attempt is on its way,
 * and it waits for the backoff before it dials. No-op while stopping.
 */
void pool_fill(struct tunnel *t);

#endif
