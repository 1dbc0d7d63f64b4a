/*
 * tunnel: one running tunnel of a sidecar: its listener, its TLS
 * configuration, its live connections and counters.
 */
#ifndef UPSEAL_TUNNEL_H
#define UPSEAL_TUNNEL_H

#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

#include "config.h"
#include "listeners.h"
#include "metrics.h"
#include "reason.h"
#include "tls.h"

struct conn;
struct conn_counters;

/*
 * How a tunnel wakes another worker that held back an accept (at
 * max_connections or max_handshakes) once a connection or a handshake
 * ends on this one: wake(arg, worker) may be called from any worker's
 * thread. Given to tunnel_start by the daemon, which keeps it alive
 * until every tunnel is freed.
 */
struct tunnel_waker {
	void (*wake)(void *arg, unsigned worker);
	void *arg;
};

/* A libuv stream that is a TCP or a unix socket. */
union stream {
	uv_handle_t h;
	uv_stream_t s;
	uv_tcp_t tcp;
	uv_pipe_t pipe;
};

/*
 * One generation of a tunnel's settings: its section of a loaded config
 * and the TLS context built from it. Shared (counted) by the tunnel and
 * by every connection accepted while it was current, so a reload can
 * swap in new settings while open connections keep theirs.
 */
struct tunnel_conf {
	_Atomic unsigned refs;		/* workers and connections share it */
	struct cfg *owner;		/* held: cfg lives inside it */
	const struct cfg_tunnel *cfg;
	struct tls_ctx *tls;
};

/*
 * One worker's copy of a running tunnel. Opaque: its definition is in
 * tunnel_int.h, for tunnel.c and the two files that keep its connection
 * lists (conn.c, pool.c); everything else uses the functions below.
 */
struct tunnel;

/* New counters with one reference. NULL: out of memory. */
struct tunnel_stats *tunnel_stats_new(void);
struct tunnel_stats *tunnel_stats_hold(struct tunnel_stats *s);
void tunnel_stats_release(struct tunnel_stats *s);

/* Accept a connection held back at max_connections if the limit allows. */
void tunnel_resume_accept(struct tunnel *t);

/*
 * Build the settings for section cfg of owner (which gains a reference):
 * loads its certificate, key and CA. On error returns NULL and err says
 * what is wrong and where.
 */
struct tunnel_conf *tunnel_conf_new(struct cfg *owner,
    const struct cfg_tunnel *cfg, enum cfg_role role, char *err,
    size_t errlen);
struct tunnel_conf *tunnel_conf_hold(struct tunnel_conf *tc);
/* Drop a reference; the last frees the TLS context and releases owner. */
void tunnel_conf_release(struct tunnel_conf *tc);

/*
 * Create worker's copy of a tunnel with settings conf and counters stats
 * (it takes a reference to both) on loop, listening on l->fd[worker]
 * (taken: set to -1). waker (may be NULL; not copied: it must outlive the
 * tunnel) wakes the other workers when this one frees a place. counters
 * (not copied: it must outlive the tunnel) numbers and counts its
 * connections, those of its pool from here on. On error returns -1 and
 * writes what went wrong into err; nothing is left open (the socket is
 * closed on the next loop turn).
 */
int tunnel_start(uv_loop_t *loop, unsigned worker, struct tunnel_conf *conf,
    enum cfg_role role, struct tunnel_stats *stats, struct listen_fds *l,
    const struct tunnel_waker *waker, struct conn_counters *counters,
    struct tunnel **out, char *err, size_t errlen);

/* Say that the tunnel listens (and what allow_remote exposes). */
void tunnel_log_start(const struct cfg_tunnel *cfg, enum cfg_role role,
    const char *bound);

/*
 * Switch a running tunnel to new settings with the same listen address:
 * connections accepted from now on use conf; open ones keep theirs.
 */
void tunnel_reconfigure(struct tunnel *t, struct tunnel_conf *conf);


/* The tunnel's current section of the config. */
const struct cfg_tunnel *tunnel_cfg(const struct tunnel *t);
/* Its current TLS context (for the dates the status page shows). */
const struct tls_ctx *tunnel_tls(const struct tunnel *t);

/*
 * Stop accepting (the listener is closed; a unix socket file is removed)
 * and let live connections finish. on_empty fires once no connection is
 * left (at once, from a later loop turn, if there is none).
 */
void tunnel_stop(struct tunnel *t, void (*on_empty)(struct tunnel *t));

/* Drop every live connection for why (REASON_DRAIN, REASON_NOMEM). */
void tunnel_drop_all(struct tunnel *t, enum reason why);

/* Free a stopped tunnel whose connections and listener are all closed. */
void tunnel_free(struct tunnel *t);

/*
 * Called by conn.c when a server connection counted in
 * stats->handshaking (and linked in t's hs list) left it: handshake done,
 * failed or dropped. Wakes workers holding an accept for max_handshakes.
 */
void tunnel_handshake_ended(struct tunnel *t);

/* Called by conn.c when a connection has been freed. */
void tunnel_conn_freed(struct tunnel *t);

/* Called by conn.c when a pool connection (never handed off) was freed. */
void tunnel_pool_conn_freed(struct tunnel *t);

/*
 * Accessors, so that the daemon layer needs no field of struct tunnel.
 * The id is the same on every worker's copy (set by the daemon after
 * tunnel_start); data is the daemon's own pointer; the listen text is the
 * bound address; tunnel_stats returns the counters without a reference
 * (tunnel_stats_hold one to keep them). tunnel_listener_open: the listener
 * is open (not paused, not stopped); tunnel_is_listening: and accepting,
 * not stopping.
 */
uint64_t tunnel_id(const struct tunnel *t);
void tunnel_set_id(struct tunnel *t, uint64_t id);
void *tunnel_data(const struct tunnel *t);
void tunnel_set_data(struct tunnel *t, void *data);
const char *tunnel_listen_text(const struct tunnel *t);
struct tunnel_stats *tunnel_stats(const struct tunnel *t);
bool tunnel_is_listening(const struct tunnel *t);
bool tunnel_listener_open(const struct tunnel *t);
/* The loop the tunnel (and each of its connections) runs on. */
uv_loop_t *tunnel_loop(const struct tunnel *t);
/* The worker whose loop that is, and the sidecar's role. */
unsigned tunnel_worker(const struct tunnel *t);
enum cfg_role tunnel_role(const struct tunnel *t);

#endif
