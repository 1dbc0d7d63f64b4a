/*
 * tunnel_int.h: the definition of struct tunnel, for tunnel.c and the two
 * files that keep state inside it: conn.c (the tunnel's list of
 * connections, its handshaking list for max_handshakes, its count of live
 * connections, the listener it accepts from) and pool.c (the pool's state
 * below). Accessors for those would be one function per list operation,
 * each with a single caller, so these three files share the struct
 * instead; everything else (relay.c, the daemon layer, the tests) sees
 * only tunnel.h's functions.
 */
#ifndef UPSEAL_TUNNEL_INT_H
#define UPSEAL_TUNNEL_INT_H

#include "tunnel.h"

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

#endif
