/*
 * relay_ktls_int.h: what relay_ktls.c (the switch to kTLS, the kTLS
 * socket read and written by copying, control records) and
 * relay_splice.c (the same bytes moved by splice) share. Part of the conn
 * module; only those two files include it.
 */
#ifndef UPSEAL_RELAY_KTLS_INT_H
#define UPSEAL_RELAY_KTLS_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <sys/socket.h>

#include <uv.h>

#include "conn_int.h"

enum tx_state { TX_OFF, TX_WAITING, TX_ON };
enum rx_state { RX_OFF, RX_SWITCHING, RX_ON };

/* One direction's splice pipe: r/w ends, bytes in it, the sink full. */
struct spipe {
	int fd[2];		/* -1, -1 while the direction copies */
	size_t held;
	bool blocked;
};

struct relay_ktls {
	uv_poll_t poll;		/* on fd_dup: reads (RX), room to write */
	int fd;			/* the TLS end's socket (libuv's) */
	int fd_dup;
	bool poll_open;
	int events;		/* what poll watches now */
	enum tx_state tx;
	enum rx_state rx;
	bool close_pending;	/* our close_notify waits for the queue */
	bool close_blocked;	/* ... or for room on the socket */

	/* Splice: the plaintext end (its own poll) and a pipe a direction. */
	uv_poll_t ppoll;	/* on pfd_dup: TX reads, RX room to write */
	int pfd, pfd_dup;
	bool ppoll_open;
	int pevents;
	struct spipe tx_pipe, rx_pipe;
	bool rx_close_seen;	/* close_notify came; the FIN waits for rx_pipe */
	/* RX switching: plaintext mbedTLS still gave, bytes read exactly. */
	uint64_t rx_carried, rx_exact;
};

static inline bool splicing(const struct spipe *sp)
{
	return sp->fd[0] >= 0;
}

/* TLS alerts (RFC 5246 7.2). */
#define ALERT_WARNING 1
#define ALERT_FATAL 2
#define ALERT_CLOSE_NOTIFY 0
#define ALERT_NO_RENEGOTIATION 100
/* Handshake message types after the handshake (RFC 8446 4). */
#define HS_NEW_SESSION_TICKET 4

/* relay_ktls.c */

/* Watch for what is wanted now on both polls (see poll_update). */
int relay_ktls_poll_update(struct conn *c);
/* A socket error of the TLS end, as the end it is. */
int relay_ktls_sock_error(struct conn *c, int err);
/* A record that is not application data, after the switch. */
int relay_ktls_rx_control(struct conn *c, unsigned char type,
    const unsigned char *b, size_t n);
/* Our close_notify, once what was queued before it has left; then FIN. */
int relay_ktls_close_flush(struct conn *c);

/*
 * A poll callback's status < 0 on fd: the socket's own error (libuv says
 * EBADF for a socket error), as a positive errno, else -status.
 */
static inline int relay_poll_error(int fd, int status)
{
	int err = 0;
	socklen_t len = sizeof err;
	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err == 0)
		err = -status;
	return err;
}

/* relay_splice.c */

/*
 * Splice sp's direction from now on if a pipe and the plaintext end's
 * poll can be had (else it copies); says so at debug. Whether it does.
 */
bool relay_splice_start(struct conn *c, struct spipe *sp);
/* Move what can move now: RX (kTLS -> plaintext), TX (plaintext -> kTLS). */
int relay_splice_rx(struct conn *c);
int relay_splice_tx(struct conn *c);
/* The plaintext end's poll callback. */
void relay_splice_on_poll(uv_poll_t *h, int status, int events);
/* Teardown: close the plaintext end's poll (cb) and the pipes. */
void relay_splice_close(struct conn *c, uv_close_cb cb);

#endif
