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
 * Splice (relay_splice.c): once a direction is on kTLS and libuv holds
 * none of its bytes, they move socket -> pipe -> socket.
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
#include "ktls.h"
#include "log.h"
#include "relay_ktls_int.h"
#include "tunnel_int.h"

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
int relay_ktls_poll_update(struct conn *c)
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
		    relay_splice_on_poll);
	return st;
}


int relay_ktls_reading(struct conn *c)
{
	return relay_ktls_poll_update(c);
}

bool relay_ktls_owns_rx(const struct conn *c)
{
	return owns_rx(c);
}

/* A socket error, as the end it is (what the userspace path says). */
int relay_ktls_sock_error(struct conn *c, int err)
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
			if (relay_splice_start(c, &k->tx_pipe)) {
				rc = pipe_read(&c->p2t, false);
				if (rc != 0) {
					conn_error_uv(c, "plaintext read", rc);
					return CONN_END(REASON_PLAIN_ERROR);
				}
			}
			settle_secrets(c);
			return relay_ktls_poll_update(c);
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
int relay_ktls_close_flush(struct conn *c)
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
		return relay_ktls_poll_update(c);
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
	return relay_ktls_poll_update(c);
}

int relay_ktls_close_notify(struct conn *c)
{
	c->kt->close_pending = true;
	return relay_ktls_close_flush(c);
}

int relay_ktls_p2t_written(struct conn *c)
{
	int st = tx_try(c);
	return st != 0 ? st : relay_ktls_close_flush(c);
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
		int st = relay_ktls_poll_update(c);
		return st != 0 ? st : relay_tls_reading(c);
	}
	k->rx = RX_ON;
	STAT_ADD(c->tun->stats->ktls_rx, 1);
	settle_secrets(c);
	(void)relay_splice_start(c, &k->rx_pipe);	/* else recvmsg copies */
	return relay_ktls_poll_update(c);
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
			return relay_ktls_poll_update(c);
		}
		if (c->t2p.held)
			return relay_ktls_poll_update(c);
		size_t need = tlsio_record_need(&c->io);
		if (need == 0 && tlsio_drained(&c->io))
			return rx_switch(c);
		if (c->io.in_len > 0 || c->io.in_eof || need == 0) {
			/* mbedTLS first: what it holds, what tlsio holds. */
			size_t before = c->io.in_len;
			uint64_t out_before = c->t2p.bytes;
			int st = relay_tls_input(c);
			k->rx_carried += c->t2p.bytes - out_before;
			if (st == 0)
				st = relay_settle(c);
			if (st != 0)
				return st;
			if (!c->t2p.held && !c->t2p.eof && c->io.in_len > 0 &&
			    c->io.in_len == before) {
				/* No progress: leave this one to mbedTLS. */
				k->rx = RX_OFF;
				settle_secrets(c);
				st = relay_ktls_poll_update(c);
				return st != 0 ? st : relay_tls_reading(c);
			}
			if (need == 0 && !tlsio_drained(&c->io) &&
			    !c->t2p.held && !c->t2p.eof && c->io.in_len == 0) {
				/* mbedTLS holds something it does not give. */
				k->rx = RX_OFF;
				settle_secrets(c);
				st = relay_ktls_poll_update(c);
				return st != 0 ? st : relay_tls_reading(c);
			}
			continue;
		}
		/* The rest of a record: exactly its bytes, not one more. */
		size_t want = need < sizeof buf ? need : sizeof buf;
		ssize_t n = recv(k->fd, buf, want, MSG_DONTWAIT);
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return relay_ktls_poll_update(c);
		if (n < 0)
			return relay_ktls_sock_error(c, errno);
		if (n > 0)
			conn_touch(c);
		k->rx_exact += (uint64_t)n;
		tlsio_input(&c->io, buf, (size_t)n);
	}
}

/* A record that is not application data, after the switch. */
int relay_ktls_rx_control(struct conn *c, unsigned char type,
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
			return relay_ktls_sock_error(c, (int)-n);
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
			st = relay_ktls_rx_control(c, type, ch->data, (size_t)n);
			chunk_free(ch);
		}
		if (st != 0)
			return st;
	}
	return relay_ktls_poll_update(c);
}


int relay_ktls_t2p_written(struct conn *c)
{
	if (c->kt->rx == RX_SWITCHING)
		return rx_advance(c);
	if (c->kt->rx == RX_ON && splicing(&c->kt->rx_pipe) &&
	    c->t2p.queued == 0)
		return relay_splice_rx(c);
	return relay_ktls_poll_update(c);
}

static void on_poll(uv_poll_t *h, int status, int events)
{
	struct conn *c = h->data;
	struct relay_ktls *k = c->kt;
	int st = 0;
	if (c->dropped)
		return;
	if (status < 0) {
		k->events = 0;
		conn_event(c, relay_ktls_sock_error(c,
		    relay_poll_error(k->fd, status)));
		return;
	}
	if (events & UV_WRITABLE) {
		k->close_blocked = false;
		st = k->tx_pipe.blocked ? relay_splice_tx(c) : relay_ktls_close_flush(c);
	}
	if (st == 0 && (events & UV_READABLE)) {
		if (k->rx == RX_SWITCHING)
			st = rx_advance(c);
		else if (k->rx == RX_ON && splicing(&k->rx_pipe))
			st = c->t2p.queued == 0 ? relay_splice_rx(c) : relay_ktls_poll_update(c);
		else if (k->rx == RX_ON)
			st = rx_read(c);
		else
			st = relay_ktls_poll_update(c);
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
	relay_splice_close(c, cb);
}

void relay_ktls_free(struct conn *c)
{
	free(c->kt);
	c->kt = NULL;
}
