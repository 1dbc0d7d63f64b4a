/*
 * relay_splice: a kTLS connection's bytes moved by splice(2), never
 * through upseal's memory (relay_ktls.c switches the directions and says
 * when). Once a direction is on kTLS and libuv holds none of its bytes:
 *   TX  plaintext end -> pipe -> kTLS socket. libuv no longer reads the
 *       plaintext end (plain_reading leaves it alone); a uv_poll on a
 *       duplicate of its descriptor does.
 *   RX  kTLS socket -> pipe -> plaintext end.
 * A pipe is a direction's queue: its source is read only while it is
 * empty, a full sink (EAGAIN) waits for the poll, so it holds at most its
 * 64 KiB, under the bound the copying path has. A splice read stops at a
 * control record (EINVAL), which recvmsg then takes. Our FIN after
 * close_notify, and our close_notify after a plaintext FIN, wait until
 * the pipe before them is empty. Without a pipe (descriptors short), the
 * direction copies: silently.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <unistd.h>

#include "ktls.h"
#include "log.h"
#include "relay_ktls_int.h"
#include "tunnel_int.h"

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
bool relay_splice_start(struct conn *c, struct spipe *sp)
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
		if (sp == &c->kt->rx_pipe) {	/* what the switch took */
			log_u64(&l, "mbedtls_bytes", c->kt->rx_carried);
			log_u64(&l, "exact_read", c->kt->rx_exact);
		}
		log_end(&l);
	}
	return splicing(sp);
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
int relay_splice_rx(struct conn *c)
{
	struct relay_ktls *k = c->kt;
	struct tunnel_stats *stats = c->tun->stats;
	for (;;) {
		size_t before = k->rx_pipe.held;
		int st = spipe_drain(c, &k->rx_pipe, k->pfd, true);
		c->t2p.bytes += before - k->rx_pipe.held;
		STAT_ADD(stats->bytes_out, before - k->rx_pipe.held);
		if (st != 0)
			return st < 0 ? st : relay_ktls_poll_update(c);
		if (k->rx_close_seen) {
			k->rx_close_seen = false;
			st = relay_t2p_end(c);
			return st != 0 ? st : relay_ktls_poll_update(c);
		}
		if (c->t2p.eof || c->t2p.queued > 0)
			return relay_ktls_poll_update(c);
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
			return relay_ktls_poll_update(c);
		if (errno != EINVAL)
			return relay_ktls_sock_error(c, errno);
		/* A control record: splice stops at it; recvmsg takes it. */
		unsigned char b[64], type;
		n = ktls_recv(k->fd, b, sizeof b, &type);
		if (n < 0)
			return n == -EAGAIN ? relay_ktls_poll_update(c) :
			    relay_ktls_sock_error(c, (int)-n);
		if (type == KTLS_TYPE_DATA)	/* cannot be: splice took data */
			return relay_ktls_sock_error(c, EPROTO);
		st = relay_ktls_rx_control(c, type, b, (size_t)n);
		if (st != 0)
			return st;
	}
}

/* TX by splice: plaintext end -> pipe -> kTLS socket, while both allow. */
int relay_splice_tx(struct conn *c)
{
	struct relay_ktls *k = c->kt;
	struct tunnel_stats *stats = c->tun->stats;
	for (;;) {
		int st = spipe_drain(c, &k->tx_pipe, k->fd, false);
		if (st != 0)
			return st < 0 ? st : relay_ktls_poll_update(c);
		if (c->p2t.eof) {	/* the FIN came: close_notify now */
			st = relay_ktls_close_flush(c);
			return st != 0 ? st : relay_ktls_poll_update(c);
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
			return relay_ktls_poll_update(c);
		return plain_error(c, errno, true);
	}
}

/* The plaintext end's poll (splice only). */
void relay_splice_on_poll(uv_poll_t *h, int status, int events)
{
	struct conn *c = h->data;
	struct relay_ktls *k = c->kt;
	int st = 0;
	if (c->dropped)
		return;
	if (status < 0) {
		k->pevents = 0;
		conn_event(c, plain_error(c, relay_poll_error(k->pfd, status),
		    true));
		return;
	}
	if (events & UV_WRITABLE)
		st = relay_splice_rx(c);
	if (st == 0 && (events & UV_READABLE))
		st = relay_splice_tx(c);
	conn_event(c, st);
}

void relay_splice_close(struct conn *c, uv_close_cb cb)
{
	struct relay_ktls *k = c->kt;
	/* uv_close stops the watcher at once: the descriptor may go. */
	if (k->ppoll_open) {
		k->ppoll_open = false;
		uv_close((uv_handle_t *)&k->ppoll, cb);
		close(k->pfd_dup);
		k->pfd_dup = -1;
	}
	spipe_close(&k->tx_pipe);
	spipe_close(&k->rx_pipe);
}
