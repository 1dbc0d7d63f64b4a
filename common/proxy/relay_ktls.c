/*
 * relay_ktls: the kernel's record layer (kTLS, tls layer's ktls.h) under
 * a relayed connection, once mbedTLS has done the handshake and whatever
 * it already holds. Part of the conn module: like relay.c it ends
 * nothing and returns a status for conn.c.
 *
 * When PH_RELAY begins (relay_begin), each direction moves on its own,
 * and only at a record boundary:
 *   TX  (what we send): when every record mbedTLS made is on the socket
 *       (the p2t queue empty, nothing in tlsio's output), TLS_TX with
 *       mbedTLS's write counter. Until then mbedTLS goes on encrypting.
 *   RX  (what we receive): libuv stops reading the TLS end. What the
 *       socket gave and mbedTLS holds is decrypted by mbedTLS first (into
 *       the t2p queue, under its usual bounds); a record the socket gave
 *       in part is completed by reading exactly its remaining bytes; then,
 *       with nothing left in mbedTLS, TLS_RX with mbedTLS's read counter.
 * A direction that cannot switch stays on mbedTLS: silently, per
 * connection. The tunnel says once whether kTLS is in use, and why not.
 *
 * After the switch the TLS end is read here, not by libuv: a uv_poll on
 * a duplicate of its descriptor (libuv allows one watcher per descriptor;
 * the duplicate is another, on the same socket), recvmsg with the record
 * type. libuv still writes the socket (plaintext, which the kernel seals)
 * and shuts it down. Our close_notify goes out as an alert record through
 * a control message, once the queue before it has left.
 *
 * Splice: once a direction is on kTLS and libuv's queue of it is empty,
 * its bytes move socket -> pipe -> socket with splice(2), never through
 * upseal's memory: TX plaintext end -> pipe -> kTLS socket (libuv no
 * longer reads the plaintext end; a uv_poll on a duplicate of it does),
 * RX kTLS socket -> pipe -> plaintext end. Each pipe holds at most its
 * 64 KiB, under the bound a direction's queue has on the copying path,
 * and its source is not read while it holds any (the sink was full). A
 * control record stops a splice read (EINVAL) and comes by recvmsg. Our
 * FIN and close_notify wait until the pipe before them is empty. Without
 * a pipe (descriptors short), the direction copies: silently.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "compat.h"
#include "conn_int.h"
#include "ktls.h"
#include "log.h"
#include "tunnel_int.h"

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
};

static bool splicing(const struct spipe *sp)
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

bool relay_ktls_tx(const struct conn *c)
{
	return c->kt != NULL && c->kt->tx == TX_ON;
}

/* RX is ours, not libuv's: being switched or switched. */
static bool owns_rx(const struct conn *c)
{
	return c->kt != NULL && c->kt->rx != RX_OFF;
}

void relay_ktls_prepare(struct conn *c)
{
	if (conn_cfg(c)->ktls_off || c->tls.h.type != UV_TCP ||
	    ktls_probe(NULL, 0) != 0)
		return;
	tlsio_ktls_want(&c->io);
}

/* The tunnel's one line: whether kTLS is in use, and why not. */
static void tunnel_line(struct conn *c, const char *why)
{
	struct tunnel_stats *s = c->tun->stats;
	if (atomic_exchange(&s->ktls_logged, true))
		return;
	struct log_line l;
	log_begin(&l, LOG_INFO, "ktls");
	log_str(&l, "tunnel", conn_cfg(c)->name);
	log_str(&l, "ktls", why == NULL ? "on" : "off");
	if (why != NULL)
		log_str(&l, "why", why);
	log_end(&l);
}

/* The secrets are no longer needed once neither direction waits. */
static void settle_secrets(struct conn *c)
{
	struct relay_ktls *k = c->kt;
	if (k->tx != TX_WAITING && k->rx != RX_SWITCHING)
		tlsio_ktls_forget(&c->io);
}

static void on_poll(uv_poll_t *h, int status, int events);
static void on_ppoll(uv_poll_t *h, int status, int events);

static int poll_set(struct conn *c, uv_poll_t *h, bool open, int *now,
    int ev, uv_poll_cb cb)
{
	if (ev == *now || !open)
		return 0;
	int rc = ev == 0 ? uv_poll_stop(h) : uv_poll_start(h, ev, cb);
	if (rc != 0) {
		conn_error_uv(c, "poll", rc);
		return CONN_END(REASON_TLS_ERROR);
	}
	*now = ev;
	return 0;
}

/*
 * Watch for what is wanted now: the TLS end readable while RX has room
 * (on the splice path: its pipe empty and libuv's t2p queue too),
 * writable for our close_notify or a TX pipe waiting; the plaintext end
 * readable while the TX pipe is empty, writable for the RX pipe.
 */
static int poll_update(struct conn *c)
{
	struct relay_ktls *k = c->kt;
	int ev = 0, pev = 0;
	if (owns_rx(c) && c->tls_open && !c->t2p.held && !c->t2p.eof &&
	    !k->rx_close_seen && (!splicing(&k->rx_pipe) ||
	    (k->rx_pipe.held == 0 && c->t2p.queued == 0)))
		ev |= UV_READABLE;
	if (k->close_blocked || k->tx_pipe.blocked)
		ev |= UV_WRITABLE;
	if (splicing(&k->tx_pipe) && c->plain_open && !c->p2t.eof &&
	    k->tx_pipe.held == 0)
		pev |= UV_READABLE;
	if (k->rx_pipe.blocked)
		pev |= UV_WRITABLE;
	int st = poll_set(c, &k->poll, k->poll_open, &k->events, ev, on_poll);
	if (st == 0)
		st = poll_set(c, &k->ppoll, k->ppoll_open, &k->pevents, pev,
		    on_ppoll);
	return st;
}

bool relay_ktls_owns_plain(const struct conn *c)
{
	return c->kt != NULL && splicing(&c->kt->tx_pipe);
}

/*
 * A pipe for a direction, of the kernel's default size (64 KiB, 16
 * pages): below PIPE_HIGH, and a pipe an unprivileged user makes counts
 * against fs.pipe-user-pages-soft (16384 pages), so bigger pipes would
 * shrink to 2 pages after a few hundred connections.
 */
static void spipe_open(struct spipe *sp)
{
	if (pipe2(sp->fd, O_CLOEXEC | O_NONBLOCK) != 0)
		sp->fd[0] = sp->fd[1] = -1;
}

static void spipe_close(struct spipe *sp)
{
	for (int i = 0; i < 2; i++)
		if (sp->fd[i] >= 0)
			close(sp->fd[i]);
	sp->fd[0] = sp->fd[1] = -1;
	sp->held = 0;
}

/* The plaintext end's descriptor and its poll, once, for splicing. */
static bool plain_poll_open(struct conn *c)
{
	struct relay_ktls *k = c->kt;
	uv_os_fd_t fd;
	if (k->ppoll_open)
		return true;
	if (!c->plain_open || uv_fileno(&c->plain.h, &fd) != 0)
		return false;
	k->pfd = fd;
	k->pfd_dup = fcntl(fd, F_DUPFD_CLOEXEC, 0);
	if (k->pfd_dup < 0)
		return false;
	if (uv_poll_init_socket(conn_loop(c), &k->ppoll, k->pfd_dup) != 0) {
		close(k->pfd_dup);
		k->pfd_dup = -1;
		return false;
	}
	k->ppoll.data = c;
	k->ppoll_open = true;
	c->refs++;
	return true;
}

/*
 * Splice a direction from now on if a pipe and the plaintext poll can be
 * had; say (debug) how the direction now moves.
 */
static bool splice_start(struct conn *c, struct spipe *sp)
{
	if (plain_poll_open(c))
		spipe_open(sp);
	if (log_enabled(LOG_DEBUG)) {
		struct log_line l;
		log_begin(&l, LOG_DEBUG, "ktls_switched");
		log_str(&l, "tunnel", conn_cfg(c)->name);
		log_u64(&l, "id", c->id);
		log_str(&l, "direction", sp == &c->kt->tx_pipe ? "tx" : "rx");
		log_str(&l, "bytes", splicing(sp) ? "splice" : "copy");
		log_end(&l);
	}
	return splicing(sp);
}

int relay_ktls_reading(struct conn *c)
{
	return poll_update(c);
}

bool relay_ktls_owns_rx(const struct conn *c)
{
	return owns_rx(c);
}

/* A socket error, as the end it is (what the userspace path says). */
static int sock_error(struct conn *c, int err)
{
	switch (err) {
	case EBADMSG:
		conn_errorf(c, "a record failed its integrity check "
		    "(tampered or corrupted)");
		return CONN_END(REASON_BAD_RECORD);
	case EMSGSIZE:
		conn_errorf(c, "record too large: the peer announced a record "
		    "longer than TLS allows");
		return CONN_END(REASON_RECORD_TOO_LARGE);
	case ECONNRESET:
		conn_error_uv(c, "TLS read", UV_ECONNRESET);
		return CONN_END(REASON_TLS_RESET);
	default:
		conn_error_uv(c, "TLS read", -err);
		return CONN_END(REASON_TLS_ERROR);
	}
}

/* ---- TX ---- */

/* Switch TX if every record mbedTLS made has left. */
static int tx_try(struct conn *c)
{
	struct relay_ktls *k = c->kt;
	if (k->tx != TX_WAITING)
		return 0;
	if (c->p2t.eof) {		/* our close_notify went by mbedTLS */
		k->tx = TX_OFF;
	} else if (c->p2t.queued == 0 && c->io.out == NULL) {
		int rc = ktls_enable(k->fd, &c->io.ssl, c->io.ktls, true);
		k->tx = rc == 0 ? TX_ON : TX_OFF;
		if (rc == 0) {
			STAT_ADD(c->tun->stats->ktls_tx, 1);
			/* From here the plaintext end is read by splice. */
			if (splice_start(c, &k->tx_pipe)) {
				rc = pipe_read(&c->p2t, false);
				if (rc != 0) {
					conn_error_uv(c, "plaintext read", rc);
					return CONN_END(REASON_PLAIN_ERROR);
				}
			}
			settle_secrets(c);
			return poll_update(c);
		} else if (log_enabled(LOG_DEBUG))
			log_msg(LOG_DEBUG, "ktls_tx_failed", "tunnel %s id %llu: "
			    "%s", conn_cfg(c)->name, (unsigned long long)c->id,
			    strerror(-rc));
	}
	settle_secrets(c);
	return 0;
}

int relay_ktls_send(struct conn *c, const unsigned char *buf, size_t len)
{
	struct chunk *ch = chunk_new(len);
	if (ch == NULL)
		return CONN_END(REASON_NOMEM);
	memcpy(ch->data, buf, len);
	ch->len = len;
	int rc = pipe_write(&c->p2t, ch);
	if (rc < 0) {
		conn_error_uv(c, "TLS write", rc);
		return CONN_END(REASON_TLS_ERROR);
	}
	return 0;
}

/* Our close_notify, once what was queued before it has left; then FIN. */
static int close_flush(struct conn *c)
{
	struct relay_ktls *k = c->kt;
	static const unsigned char close_notify[2] = { ALERT_WARNING,
		ALERT_CLOSE_NOTIFY };
	if (!k->close_pending || c->p2t.queued > 0 || k->tx_pipe.held > 0)
		return 0;
	ssize_t n = ktls_send_record(k->fd, KTLS_TYPE_ALERT, close_notify,
	    sizeof close_notify);
	if (n == -EAGAIN) {
		k->close_blocked = true;
		return poll_update(c);
	}
	if (n < 0) {
		conn_error_uv(c, "close_notify", (int)n);
		return CONN_END(n == -ECONNRESET || n == -EPIPE ?
		    REASON_TLS_RESET : REASON_TLS_ERROR);
	}
	k->close_pending = k->close_blocked = false;
	int rc = pipe_shutdown(&c->p2t);
	if (rc != 0) {
		conn_error_uv(c, "TLS shutdown", rc);
		return CONN_END(REASON_TLS_ERROR);
	}
	return poll_update(c);
}

int relay_ktls_close_notify(struct conn *c)
{
	c->kt->close_pending = true;
	return close_flush(c);
}

int relay_ktls_p2t_written(struct conn *c)
{
	int st = tx_try(c);
	return st != 0 ? st : close_flush(c);
}

/* ---- RX ---- */

static int rx_switch(struct conn *c)
{
	struct relay_ktls *k = c->kt;
	int rc = ktls_enable(k->fd, &c->io.ssl, c->io.ktls, false);
	if (rc != 0) {
		/* Nothing was given to the kernel: mbedTLS reads on. */
		if (log_enabled(LOG_DEBUG))
			log_msg(LOG_DEBUG, "ktls_rx_failed", "tunnel %s id %llu: "
			    "%s", conn_cfg(c)->name, (unsigned long long)c->id,
			    strerror(-rc));
		k->rx = RX_OFF;
		settle_secrets(c);
		int st = poll_update(c);
		return st != 0 ? st : relay_tls_reading(c);
	}
	k->rx = RX_ON;
	STAT_ADD(c->tun->stats->ktls_rx, 1);
	settle_secrets(c);
	(void)splice_start(c, &k->rx_pipe);	/* else recvmsg copies */
	return poll_update(c);
}

/*
 * Bring RX to a record boundary with nothing left in mbedTLS, then
 * switch. Waits (returns 0) while the plaintext end is full or the
 * socket has not the bytes yet; called again from the write callback
 * and from poll.
 */
static int rx_advance(struct conn *c)
{
	struct relay_ktls *k = c->kt;
	unsigned char buf[16 * 1024 + 256];
	for (;;) {
		if (c->t2p.eof) {	/* close_notify came: nothing to read */
			k->rx = RX_OFF;
			settle_secrets(c);
			return poll_update(c);
		}
		if (c->t2p.held)
			return poll_update(c);
		size_t need = tlsio_record_need(&c->io);
		if (need == 0 && tlsio_drained(&c->io))
			return rx_switch(c);
		if (c->io.in_len > 0 || c->io.in_eof || need == 0) {
			/* mbedTLS first: what it holds, what tlsio holds. */
			size_t before = c->io.in_len;
			int st = relay_tls_input(c);
			if (st == 0)
				st = relay_settle(c);
			if (st != 0)
				return st;
			if (!c->t2p.held && !c->t2p.eof && c->io.in_len > 0 &&
			    c->io.in_len == before) {
				/* No progress: leave this one to mbedTLS. */
				k->rx = RX_OFF;
				settle_secrets(c);
				st = poll_update(c);
				return st != 0 ? st : relay_tls_reading(c);
			}
			if (need == 0 && !tlsio_drained(&c->io) &&
			    !c->t2p.held && !c->t2p.eof && c->io.in_len == 0) {
				/* mbedTLS holds something it does not give. */
				k->rx = RX_OFF;
				settle_secrets(c);
				st = poll_update(c);
				return st != 0 ? st : relay_tls_reading(c);
			}
			continue;
		}
		/* The rest of a record: exactly its bytes, not one more. */
		size_t want = need < sizeof buf ? need : sizeof buf;
		ssize_t n = recv(k->fd, buf, want, MSG_DONTWAIT);
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return poll_update(c);
		if (n < 0)
			return sock_error(c, errno);
		if (n > 0)
			conn_touch(c);
		tlsio_input(&c->io, buf, (size_t)n);
	}
}

/* A record that is not application data, after the switch. */
static int rx_control(struct conn *c, unsigned char type,
    const unsigned char *b, size_t n)
{
	struct relay_ktls *k = c->kt;
	bool tls12 = compat_is_tls12(&c->io.ssl);
	if (type == KTLS_TYPE_ALERT && n >= 2) {
		if (b[1] == ALERT_CLOSE_NOTIFY && k->rx_pipe.held > 0) {
			k->rx_close_seen = true;	/* FIN after the pipe */
			return 0;
		}
		if (b[1] == ALERT_CLOSE_NOTIFY)
			return relay_t2p_end(c);
		if (b[0] == ALERT_FATAL || !tls12) {
			conn_errorf(c, "TLS read: the peer sent a fatal alert "
			    "(%u)", b[1]);
			return CONN_END(REASON_TLS_ERROR);
		}
		return 0;	/* a warning: ignored, as mbedTLS does */
	}
	if (type == KTLS_TYPE_HANDSHAKE && tls12) {
		/*
		 * A HelloRequest or a ClientHello: renegotiation, off. Say
		 * so (best effort), as mbedTLS would, and end.
		 */
		static const unsigned char no_reneg[2] = { ALERT_WARNING,
			ALERT_NO_RENEGOTIATION };
		if (k->tx == TX_ON)
			(void)ktls_send_record(k->fd, KTLS_TYPE_ALERT, no_reneg,
			    sizeof no_reneg);
		conn_errorf(c, "the peer tried to renegotiate (refused)");
		return CONN_END(REASON_RENEGOTIATION);
	}
	if (type == KTLS_TYPE_HANDSHAKE && n >= 1 &&
	    b[0] == HS_NEW_SESSION_TICKET)
		return 0;	/* TLS 1.3: a ticket nobody can take now */
	conn_errorf(c, "TLS read: an unexpected record after the handshake "
	    "(type %u%s%u)", type, type == KTLS_TYPE_HANDSHAKE ?
	    ", message " : "", type == KTLS_TYPE_HANDSHAKE && n >= 1 ?
	    b[0] : 0);
	return CONN_END(REASON_TLS_ERROR);
}

/* Read the kTLS socket onto the plaintext end while there is room. */
static int rx_read(struct conn *c)
{
	struct relay_ktls *k = c->kt;
	while (!c->t2p.held && !c->t2p.eof) {
		struct chunk *ch = chunk_new(CHUNK_CAP);
		if (ch == NULL)
			return CONN_END(REASON_NOMEM);
		unsigned char type;
		ssize_t n = ktls_recv(k->fd, ch->data, ch->cap, &type);
		if (n == -EAGAIN || n == -EWOULDBLOCK) {
			chunk_free(ch);
			break;
		}
		if (n < 0) {
			chunk_free(ch);
			return sock_error(c, (int)-n);
		}
		if (type == KTLS_TYPE_DATA && n == 0) {
			chunk_free(ch);
			conn_errorf(c, "the TLS peer closed the connection "
			    "without close_notify");
			return CONN_END(REASON_TRUNCATED);
		}
		conn_touch(c);
		int st;
		if (type == KTLS_TYPE_DATA) {
			ch->len = (size_t)n;
			st = relay_to_plain(c, ch);
		} else {
			st = rx_control(c, type, ch->data, (size_t)n);
			chunk_free(ch);
		}
		if (st != 0)
			return st;
	}
	return poll_update(c);
}

/* What a failed splice into or out of the plaintext end means. */
static int plain_error(struct conn *c, int err, bool reading)
{
	conn_error_uv(c, reading ? "plaintext read" : "plaintext write", -err);
	return CONN_END(err == ECONNRESET || (!reading && err == EPIPE) ?
	    REASON_PLAIN_RESET : REASON_PLAIN_ERROR);
}

/*
 * Empty sp into to: 0 when empty, 1 when to is full (sp->blocked, poll
 * waits for room), or the status of an error (plaintext end when
 * to_plain, else the TLS end).
 */
static int spipe_drain(struct conn *c, struct spipe *sp, int to,
    bool to_plain)
{
	while (sp->held > 0) {
		ssize_t n = splice(sp->fd[0], NULL, to, NULL, sp->held,
		    SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN) {
			sp->blocked = true;
			return 1;
		}
		if (n <= 0 && to_plain)
			return plain_error(c, n < 0 ? errno : EPIPE, false);
		if (n <= 0) {
			int err = n < 0 ? errno : EPIPE;
			conn_error_uv(c, "TLS write", -err);
			return CONN_END(err == ECONNRESET || err == EPIPE ?
			    REASON_TLS_RESET : REASON_TLS_ERROR);
		}
		sp->held -= (size_t)n;
	}
	sp->blocked = false;
	return 0;
}

/* RX by splice: kTLS socket -> pipe -> plaintext end, while both allow. */
static int rx_pump(struct conn *c)
{
	struct relay_ktls *k = c->kt;
	struct tunnel_stats *stats = c->tun->stats;
	for (;;) {
		size_t before = k->rx_pipe.held;
		int st = spipe_drain(c, &k->rx_pipe, k->pfd, true);
		c->t2p.bytes += before - k->rx_pipe.held;
		STAT_ADD(stats->bytes_out, before - k->rx_pipe.held);
		if (st != 0)
			return st < 0 ? st : poll_update(c);
		if (k->rx_close_seen) {
			k->rx_close_seen = false;
			st = relay_t2p_end(c);
			return st != 0 ? st : poll_update(c);
		}
		if (c->t2p.eof || c->t2p.queued > 0)
			return poll_update(c);
		ssize_t n = splice(k->fd, NULL, k->rx_pipe.fd[1], NULL,
		    PIPE_HIGH, SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
		if (n > 0) {
			k->rx_pipe.held = (size_t)n;
			conn_touch(c);
			continue;
		}
		if (n == 0) {
			conn_errorf(c, "the TLS peer closed the connection "
			    "without close_notify");
			return CONN_END(REASON_TRUNCATED);
		}
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN)
			return poll_update(c);
		if (errno != EINVAL)
			return sock_error(c, errno);
		/* A control record: splice stops at it; recvmsg takes it. */
		unsigned char b[64], type;
		n = ktls_recv(k->fd, b, sizeof b, &type);
		if (n < 0)
			return n == -EAGAIN ? poll_update(c) :
			    sock_error(c, (int)-n);
		if (type == KTLS_TYPE_DATA)	/* cannot be: splice took data */
			return sock_error(c, EPROTO);
		st = rx_control(c, type, b, (size_t)n);
		if (st != 0)
			return st;
	}
}

/* TX by splice: plaintext end -> pipe -> kTLS socket, while both allow. */
static int tx_pump(struct conn *c)
{
	struct relay_ktls *k = c->kt;
	struct tunnel_stats *stats = c->tun->stats;
	for (;;) {
		int st = spipe_drain(c, &k->tx_pipe, k->fd, false);
		if (st != 0)
			return st < 0 ? st : poll_update(c);
		if (c->p2t.eof) {	/* the FIN came: close_notify now */
			st = close_flush(c);
			return st != 0 ? st : poll_update(c);
		}
		ssize_t n = splice(k->pfd, NULL, k->tx_pipe.fd[1], NULL,
		    PIPE_HIGH, SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
		if (n > 0) {
			k->tx_pipe.held = (size_t)n;
			c->p2t.bytes += (uint64_t)n;
			STAT_ADD(stats->bytes_in, (uint64_t)n);
			conn_touch(c);
			continue;
		}
		if (n == 0) {
			int rc = pipe_end(&c->p2t);
			if (rc != 0) {
				conn_error_uv(c, "plaintext read", rc);
				return CONN_END(REASON_PLAIN_ERROR);
			}
			k->close_pending = true;
			continue;
		}
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN)
			return poll_update(c);
		return plain_error(c, errno, true);
	}
}

/* The plaintext end's poll (splice only). */
static void on_ppoll(uv_poll_t *h, int status, int events)
{
	struct conn *c = h->data;
	struct relay_ktls *k = c->kt;
	int st = 0;
	if (c->dropped)
		return;
	if (status < 0) {
		int err = 0;
		socklen_t len = sizeof err;
		k->pevents = 0;
		if (getsockopt(k->pfd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 ||
		    err == 0)
			err = -status;
		conn_event(c, plain_error(c, err, true));
		return;
	}
	if (events & UV_WRITABLE)
		st = rx_pump(c);
	if (st == 0 && (events & UV_READABLE))
		st = tx_pump(c);
	conn_event(c, st);
}

int relay_ktls_t2p_written(struct conn *c)
{
	if (c->kt->rx == RX_SWITCHING)
		return rx_advance(c);
	if (c->kt->rx == RX_ON && splicing(&c->kt->rx_pipe) &&
	    c->t2p.queued == 0)
		return rx_pump(c);
	return poll_update(c);
}

static void on_poll(uv_poll_t *h, int status, int events)
{
	struct conn *c = h->data;
	struct relay_ktls *k = c->kt;
	int st = 0;
	if (c->dropped)
		return;
	if (status < 0) {
		/* libuv says EBADF for a socket error: ask the socket. */
		int err = 0;
		socklen_t len = sizeof err;
		k->events = 0;
		if (getsockopt(k->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 ||
		    err == 0)
			err = -status;
		conn_event(c, sock_error(c, err));
		return;
	}
	if (events & UV_WRITABLE) {
		k->close_blocked = false;
		st = k->tx_pipe.blocked ? tx_pump(c) : close_flush(c);
	}
	if (st == 0 && (events & UV_READABLE)) {
		if (k->rx == RX_SWITCHING)
			st = rx_advance(c);
		else if (k->rx == RX_ON && splicing(&k->rx_pipe))
			st = c->t2p.queued == 0 ? rx_pump(c) : poll_update(c);
		else if (k->rx == RX_ON)
			st = rx_read(c);
		else
			st = poll_update(c);
	}
	conn_event(c, st);
}

int relay_ktls_begin(struct conn *c)
{
	char why[160];
	const char *off = NULL;
	uv_os_fd_t fd = -1;
	if (conn_cfg(c)->ktls_off)
		off = "ktls = off";
	else if (c->tls.h.type != UV_TCP)
		off = "the TLS end is not a TCP socket";
	else if (ktls_probe(why, sizeof why) != 0)
		off = why;
	else if (ktls_suite_ok(&c->io.ssl, c->io.ktls, why, sizeof why) != 0)
		off = why;
	else if (uv_fileno(&c->tls.h, &fd) != 0)
		off = "the TLS end has no descriptor";
	else if (ktls_ulp(fd) != 0) {
		snprintf(why, sizeof why, "TCP_ULP tls: %s", strerror(errno));
		off = why;
	}
	if (off != NULL) {
		tlsio_ktls_forget(&c->io);
		tunnel_line(c, off);
		return 0;
	}
	struct relay_ktls *k = calloc(1, sizeof *k);
	if (k == NULL) {
		tlsio_ktls_forget(&c->io);
		return 0;	/* mbedTLS carries on */
	}
	k->fd = fd;
	k->pfd = k->pfd_dup = -1;
	k->tx_pipe.fd[0] = k->tx_pipe.fd[1] = -1;
	k->rx_pipe.fd[0] = k->rx_pipe.fd[1] = -1;
	k->fd_dup = fcntl(fd, F_DUPFD_CLOEXEC, 0);
	if (k->fd_dup < 0 || uv_poll_init_socket(conn_loop(c), &k->poll,
	    k->fd_dup) != 0) {
		if (k->fd_dup >= 0)
			close(k->fd_dup);
		free(k);
		tlsio_ktls_forget(&c->io);
		return 0;
	}
	k->poll.data = c;
	k->poll_open = true;
	c->refs++;
	c->kt = k;
	tunnel_line(c, NULL);

	/* Both wait for their boundary: the secrets stay until both moved. */
	k->tx = TX_WAITING;
	k->rx = RX_SWITCHING;
	int st = tx_try(c);
	if (st != 0)
		return st;
	if (c->t2p.eof) {
		k->rx = RX_OFF;
		settle_secrets(c);
		return 0;
	}
	int rc = pipe_read(&c->t2p, false);	/* libuv reads no more */
	if (rc != 0) {
		conn_error_uv(c, "TLS read", rc);
		return CONN_END(REASON_TLS_ERROR);
	}
	return rx_advance(c);
}

void relay_ktls_close(struct conn *c, uv_close_cb cb)
{
	struct relay_ktls *k = c->kt;
	if (k == NULL)
		return;
	/* uv_close stops the watcher at once: the descriptor may go. */
	if (k->poll_open) {
		k->poll_open = false;
		uv_close((uv_handle_t *)&k->poll, cb);
		close(k->fd_dup);
		k->fd_dup = -1;
	}
	if (k->ppoll_open) {
		k->ppoll_open = false;
		uv_close((uv_handle_t *)&k->ppoll, cb);
		close(k->pfd_dup);
		k->pfd_dup = -1;
	}
	spipe_close(&k->tx_pipe);
	spipe_close(&k->rx_pipe);
}

void relay_ktls_free(struct conn *c)
{
	free(c->kt);
	c->kt = NULL;
}
