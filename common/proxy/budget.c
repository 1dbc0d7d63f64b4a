/*
 * budget: the server's handshake budget (max_handshakes), part of the conn
 * module. Connections still handshaking are counted and kept in a list,
 * oldest first; when a new connection needs a place, budget_pick names
 * the one to shed, and conn.c (the only file that ends a connection)
 * sheds it.
 */
#include <stdatomic.h>
#include <sys/ioctl.h>

#include "conn_int.h"
#include "tunnel_int.h"

void budget_enter(struct conn *c)
{
	struct tunnel *t = c->tun;
	if (t->role != CFG_SERVER || c->hs_counted)
		return;
	c->hs_counted = true;
	c->hs_prev = t->hs_newest;
	c->hs_next = NULL;
	if (t->hs_newest != NULL)
		t->hs_newest->hs_next = c;
	else
		t->hs_oldest = c;
	t->hs_newest = c;
	t->hs_live++;
	atomic_fetch_add(&t->stats->handshaking, 1);
}

void budget_leave(struct conn *c)
{
	struct tunnel *t = c->tun;
	if (!c->hs_counted)
		return;
	c->hs_counted = false;
	CONN_UNLINK(c, hs_prev, hs_next, t->hs_oldest, t->hs_newest);
	t->hs_live--;
	tunnel_handshake_ended(t);
}

/*
 * Bytes are waiting unread on c's TLS socket: its ClientHello came, the
 * loop has not read it yet (an accept earlier in the same poll batch).
 * Such a peer is not silent.
 */
static bool input_waiting(struct conn *c)
{
	uv_os_fd_t fd;
	int n = 0;
	return c->tls_open && uv_fileno(&c->tls.h, &fd) == 0 &&
	    ioctl(fd, FIONREAD, &n) == 0 && n > 0;
}

/*
 * Oldest first, so that under a flood the sockets that waited longest go
 * first (a silent one ages; a real peer finishes in a few ms). Silent
 * means no byte CONN_SILENT_MS after the accept: a real client sends its
 * ClientHello right behind the ACK that completed the connect, so it is
 * there within a millisecond or two (a connection shed after 1 ms with
 * no byte yet was a pinned client, seen under load with two workers);
 * nor is one silent whose bytes wait unread behind an accept of the same
 * poll batch (input_waiting). That keeps a burst of real handshakes (say,
 * every client's pool refilling after a restart) from shedding itself:
 * the caller holds the accept instead, for at most CONN_SILENT_MS.
 */
int budget_pick(struct tunnel *t, struct conn **victim, uint64_t *retry_ms)
{
	uint64_t now = uv_now(t->loop);
	struct conn *oldest = t->hs_oldest;
	uint64_t young_wait = 0;	/* until a young silent one is silent */

	*victim = NULL;
	if (oldest == NULL)
		return 1;
	for (struct conn *c = oldest; c != NULL && *victim == NULL;
	    c = c->hs_next) {
		if (c->io.saw_bytes || input_waiting(c))
			continue;
		uint64_t age = now - c->started;
		if (age >= CONN_SILENT_MS)
			*victim = c;
		else if (young_wait == 0 || CONN_SILENT_MS - age < young_wait)
			young_wait = CONN_SILENT_MS - age;
	}
	if (*victim == NULL && now - oldest->started >= CONN_SHED_AGE_MS)
		*victim = oldest;
	if (*victim == NULL) {
		*retry_ms = young_wait > 0 ? young_wait :
		    CONN_SHED_AGE_MS - (now - oldest->started);
		return -1;
	}
	return 0;
}
