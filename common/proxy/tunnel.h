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

struct tunnel {
	uv_loop_t *loop;
	unsigned worker;		/* the event-loop thread it runs on */
	unsigned nworkers;		/* how many run a copy of it */
	uint64_t id;			/* the same on every worker */
	struct tunnel_conf *conf;	/* current settings (held) */
	enum cfg_role role;
	union stream listener;
	bool listener_open;		/* initialised, needs uv_close */
	bool listener_closing;		/* uv_close called, callback not yet */
	/*
	 * Out of descriptors with libuv's reserve gone, its accept loop would
	 * spin: the listener is closed for a while instead, and opened again
	 * from spare_fd, a duplicate that keeps the socket (and its backlog).
	 */
	int spare_fd;
	uv_timer_t pause_timer;
	bool pause_timer_open;
	unsigned pause_ms;		/* the last pause; 0 after an accept */
	bool accept_held;		/* a connection waits for uv_accept */
	bool stopping;			/* no more accepting: draining */
	bool owns_path;			/* removes its unix socket file on stop */
	unsigned live;			/* connections not yet freed */
	struct conn *conns;		/* list of live connections */
	/*
	 * Server: this worker's connections still handshaking, oldest first
	 * (conn.c keeps the list), the ones max_handshakes may shed.
	 */
	struct conn *hs_oldest, *hs_newest;
	unsigned hs_live;
	bool hs_full;			/* at max_handshakes: warned once */
	uint64_t hs_full_at;		/* uv_now when last found full */
	uint64_t hs_shed;		/* shed since hs_full was set */
	uv_timer_t shed_timer;		/* retries an accept held for a handshake */
	bool shed_timer_open;
	char listen_text[ADDR_TEXT_MAX];	/* the bound address */
	/* Called when stopping and the last connection is freed. */
	void (*on_empty)(struct tunnel *t);
	void *data;			/* the daemon's */
	const struct tunnel_waker *waker;	/* the daemon's, or NULL */
	struct conn_counters *counters;	/* the daemon's (conn.h) */
	/*
	 * Counters, shared by this tunnel's copies on every worker and with
	 * the tunnel of the same name that a reload moved to another
	 * address, so they carry on instead of resetting.
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

#endif
