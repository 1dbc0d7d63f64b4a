/*
 * listeners: the listening sockets of a tunnel section, bound on the main
 * thread (before privileges are dropped) and handed one per worker to
 * tunnel_start.
 */
#ifndef UPSEAL_LISTENERS_H
#define UPSEAL_LISTENERS_H

#include "config.h"

/* The backlog of every listening socket (listen(2) and uv_listen). */
#define LISTEN_BACKLOG 511

/*
 * The listening sockets of one tunnel section, one per worker, made on
 * the main thread before any worker is told about them. TCP sockets share
 * the address with SO_REUSEPORT (the kernel spreads connections over
 * them); a unix socket is one socket, duplicated.
 */
struct listen_fds {
	int fd[CFG_WORKERS_MAX];	/* -1 once taken by tunnel_start */
	unsigned n;
	char text[ADDR_TEXT_MAX];	/* the bound address */
};

/*
 * Bind and listen for section cfg of a role's file, n sockets. A host
 * name is resolved now; for the client (listen is its plaintext end) an
 * address that is not loopback is skipped unless allow_remote, and a name
 * with no loopback address is an error. On error returns -1, err says
 * what and where, and nothing is left open.
 */
int listen_open(const struct cfg_tunnel *cfg, enum cfg_role role, unsigned n,
    struct listen_fds *out, char *err, size_t errlen);
/* Close the sockets not taken; a unix socket file is removed with them. */
void listen_close(struct listen_fds *l, const struct cfg_tunnel *cfg);

#endif
