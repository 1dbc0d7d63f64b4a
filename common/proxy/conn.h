/*
 * conn: one proxied connection's life: accepting or dialing its two ends,
 * the handshake and the judgment of the peer, the phase and its timer,
 * every libuv callback, and the one teardown (conn_drop). Its bytes are
 * relay.c's (two pipes, pipe.h: bounded queues, backpressure, half-close),
 * the TLS record layer is tlsio's, a pooled connection's waiting is
 * pool.c's; those return a status and conn.c alone acts on it.
 *
 * Roles: in the client role the plaintext end is accepted and the TLS end
 * is dialed; in the server role the TLS end is accepted, and the
 * plaintext backend is dialed only after the peer passed the handshake.
 */
#ifndef UPSEAL_CONN_H
#define UPSEAL_CONN_H

#include <stdatomic.h>
#include <stdint.h>

#include "reason.h"
#include "tunnel.h"

/*
 * Accept one pending connection from t's listener and start serving it,
 * in a max_connections slot the caller took (the conn gives it back when
 * freed). The conn is linked into t->conns and counted in t->live until it
 * is freed; an accept error closes it with the reason logged. -1: no
 * memory, the connection is left pending (and the slot is the caller's).
 */
int conn_accept(struct tunnel *t);

/*
 * End the connection for why (reason.h: the word the log's reason= shows,
 * the line's level, RST or FIN on the plaintext end). Safe to call more than once; only the first reason
 * counts. Stops timers, closes both ends, logs `conn_end`; the memory is
 * freed once the last close callback has run.
 */
void conn_drop(struct conn *c, enum reason why);

/*
 * The settings of c's tunnel changed (a reload; tunnel_reconfigure). A
 * server connection that has passed its handshake but not yet reached
 * the backend (a pool connection waiting for the preamble) is judged
 * again against the new settings and ended (reason pin_mismatch,
 * chain_invalid, ...) if its peer no longer passes. One still in its
 * handshake is judged against the tunnel's settings when it completes
 * (its handshake step); one that reached its backend keeps going.
 */
void conn_settings_changed(struct conn *c);

/*
 * Server, max_handshakes reached: drop (reason handshake_shed) the oldest
 * of t's handshaking connections on this worker that may be shed, so a
 * new one can take its place. One may be shed if it has been given
 * CONN_SILENT_MS to send its first byte and sent none (silent), or,
 * failing that, if its handshake has run for CONN_SHED_AGE_MS. Returns 0
 * when one was dropped; 1 when this worker has no handshaking connection
 * at all; -1 when none may be shed yet, with *retry_ms set to when one
 * may.
 */
#define CONN_SHED_AGE_MS 1000
#define CONN_SILENT_MS 10
int conn_shed_oldest(struct tunnel *t, uint64_t *retry_ms);

/*
 * The process's connection counters, shared by every worker: the next
 * connection id (ids are unique in the process) and the accepted
 * connections not yet freed. The daemon owns one and hands it to every
 * tunnel_start; it must outlive every tunnel.
 */
struct conn_counters {
	_Atomic uint64_t next_id;
	_Atomic uint64_t open;
};

/* Connections open now, on every worker that counts in cc. */
uint64_t conn_open_count(struct conn_counters *cc);

/* Free this thread's recycled write buffers (at exit, for leak checks). */
void conn_release_buffers(void);

/* The next connection in a tunnel's list (for tunnel_drop_all). */
struct conn *conn_next(struct conn *c);

#endif
