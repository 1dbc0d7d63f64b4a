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
#include "tls.h"

struct conn;

/* A libuv stream that is a TCP or a unix socket. */
union stream {
	uv_handle_t h;
	uv_stream_t s;
	uv_tcp_t tcp;
	uv_pipe_t pipe;
};

struct tunnel {
	uv_loop_t *loop;
	const struct cfg_tunnel *cfg;	/* owned by the daemon's cfg */
	enum cfg_role role;
	struct tls_ctx *tls;
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
	/* Counters. */
	uint64_t accepted;
	uint64_t handshakes_failed;
};

/*
 * Create the tunnel for cfg (which must outlive it): build its TLS
 * context, bind and listen. Logs `listening` with the bound address. On
 * error returns -1 and writes what went wrong into err; nothing is left
 * open.
 */
int tunnel_start(uv_loop_t *loop, const struct cfg_tunnel *cfg,
    enum cfg_role role, struct tunnel **out, char *err, size_t errlen);

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

#endif
