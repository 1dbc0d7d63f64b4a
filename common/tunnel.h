/*
 * tunnel: one running tunnel of a sidecar: its listener, its TLS
 * configuration, its live connections and counters. The struct is visible
 * because conn.c reads it; everything else uses the functions.
 */
#ifndef UPSEAL_TUNNEL_H
#define UPSEAL_TUNNEL_H

#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

#include "config.h"
#include "metrics.h"
#include "tls.h"

struct conn;

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
	unsigned refs;
	struct cfg *owner;		/* held: cfg lives inside it */
	const struct cfg_tunnel *cfg;
	struct tls_ctx *tls;
};

struct tunnel {
	uv_loop_t *loop;
	struct tunnel_conf *conf;	/* current settings (held) */
	enum cfg_role role;
	union stream listener;
	bool listener_open;		/* initialised, needs uv_close */
	bool accept_held;		/* a connection waits for uv_accept */
	bool stopping;			/* no more accepting: draining */
	unsigned live;			/* connections not yet freed */
	struct conn *conns;		/* list of live connections */
	char listen_text[ADDR_TEXT_MAX];	/* the bound address */
	/* Called when stopping and the last connection is freed. */
	void (*on_empty)(struct tunnel *t);
	void *data;			/* the daemon's */
	/*
	 * Counters, shared with the tunnel of the same name that a reload
	 * moved to another address, so they carry on instead of resetting.
	 */
	struct tunnel_stats *stats;
	/*
	 * Client role, pool = N: handshaken connections kept ready (pool.c).
	 * Pool connections are in conns but not in live: they do not count
	 * against max_connections until a client takes one.
	 */
	struct tunnel_pool {
		unsigned target;	/* how many to keep: pool_configure */
		unsigned live;		/* pool conns not yet freed, any phase */
		unsigned ready;		/* of those, waiting in the ready list */
		struct conn *ready_list;	/* most recently ready first */
		unsigned failures;	/* failed in a row; 0: healthy */
		uint64_t backoff_ms;	/* current retry delay in a failure streak */
		uint64_t retry_at;	/* uv_now when the next attempt may dial */
		bool announce;		/* log pool_filled when full next */
	} pool;
};

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
 * Create a tunnel with settings conf (the tunnel takes a reference): bind
 * and listen. Logs `listening` with the bound address. On error returns
 * -1 and writes what went wrong into err; nothing is left open (a listener
 * that was opened is closed on the next loop turn).
 */
int tunnel_start(uv_loop_t *loop, struct tunnel_conf *conf,
    enum cfg_role role, struct tunnel **out, char *err, size_t errlen);

/*
 * Make t count into other's counters from now on (a reload moved other's
 * tunnel to t's address): t's own are dropped, other's are shared.
 */
void tunnel_share_stats(struct tunnel *t, struct tunnel *other);

/*
 * Switch a running tunnel to new settings with the same listen address:
 * connections accepted from now on use conf; open ones keep theirs.
 */
void tunnel_reconfigure(struct tunnel *t, struct tunnel_conf *conf);

/* Log `listening` with the tunnel's name and bound address. */
void tunnel_log_listening(const struct tunnel *t);

/* The tunnel's current section of the config. */
static inline const struct cfg_tunnel *tunnel_cfg(const struct tunnel *t)
{
	return t->conf->cfg;
}

/*
 * Stop accepting (the listener is closed; a unix socket file is removed)
 * and let live connections finish. on_empty fires once no connection is
 * left (at once, from a later loop turn, if there is none).
 */
void tunnel_stop(struct tunnel *t, void (*on_empty)(struct tunnel *t));

/* Drop every live connection with reason (e.g. "drain"). */
void tunnel_drop_all(struct tunnel *t, const char *reason);

/* Free a stopped tunnel whose connections and listener are all closed. */
void tunnel_free(struct tunnel *t);

/* Called by conn.c when a connection has been freed. */
void tunnel_conn_freed(struct tunnel *t);

/* Called by conn.c when a pool connection (never handed off) was freed. */
void tunnel_pool_conn_freed(struct tunnel *t);

#endif
