#include "tunnel.h"
#include "tunnel_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conn.h"
#include "log.h"
#include "pool.h"

static bool under_limit(const struct tunnel *t)
{
	return atomic_load(&t->stats->open) < tunnel_cfg(t)->max_connections;
}

/*
 * Take one of the tunnel's max_connections slots (counted over every
 * worker) for a connection about to be accepted; false if none is free.
 * The connection gives it back when it is freed (tunnel_conn_freed).
 */
static bool take_slot(struct tunnel *t)
{
	unsigned max = tunnel_cfg(t)->max_connections;
	unsigned cur = atomic_load(&t->stats->open);
	while (cur < max)
		if (atomic_compare_exchange_weak(&t->stats->open, &cur, cur + 1))
			return true;
	return false;
}

/*
 * max_handshakes (server). A connection costs about 37 KB of mbedTLS
 * buffers from tls_begin on, before its peer has sent a byte, and a
 * silent socket keeps them until handshake_timeout. Counting such sockets
 * only against max_connections let a flood of them fill the cap: accepting
 * paused, and a pinned peer queued in the kernel's backlog behind the
 * flood. Pausing at a smaller cap would not help it either, so at
 * max_handshakes the daemon keeps accepting and drops the oldest
 * unfinished handshake instead (haproxy/nginx-style early drop, oldest
 * rather than sshd's random pick, because a silent socket ages while a
 * real peer is done in a few ms): a flood then costs each silent socket
 * its place, not the service. conn_shed_oldest says which one may go.
 *
 * The count is one atomic over every worker; a worker can only drop its
 * own connections. A worker over the budget with no handshake of its own
 * accepts anyway (the total may exceed max_handshakes by at most the
 * number of workers - 1, as it may when workers accept at once), so a peer
 * that lands on an idle worker is never locked out by another's flood. A
 * worker whose own handshakes may not be shed yet (all silent for less
 * than CONN_SILENT_MS, or all talking and younger than CONN_SHED_AGE_MS)
 * holds the accept like max_connections does, woken when a handshake ends
 * on any worker or by shed_timer when one becomes sheddable.
 */
#define HS_QUIET_MS 5000

static void on_shed_timer(uv_timer_t *timer)
{
	tunnel_resume_accept(timer->data);
}

static bool handshake_room(struct tunnel *t)
{
	unsigned max = tunnel_cfg(t)->max_handshakes;
	struct log_line l;
	uint64_t retry_ms = 0;

	if (t->role != CFG_SERVER)
		return true;
	uint64_t now = uv_now(t->loop);
	if (atomic_load(&t->stats->handshaking) < max) {
		/*
		 * The burst is over once the budget was not found full for
		 * HS_QUIET_MS: a place freed now and then in a flood (a pinned
		 * peer done) does not end it, so it is told once, not per dip.
		 */
		if (t->hs_full && now - t->hs_full_at >= HS_QUIET_MS) {
			t->hs_full = false;
			log_begin(&l, LOG_INFO, "max_handshakes_end");
			log_str(&l, "tunnel", tunnel_cfg(t)->name);
			log_u64(&l, "worker", t->worker);
			log_u64(&l, "shed", t->hs_shed);
			log_end(&l);
			t->hs_shed = 0;
		}
		return true;
	}
	t->hs_full_at = now;
	if (!t->hs_full) {
		t->hs_full = true;
		log_begin(&l, LOG_WARN, "max_handshakes");
		log_str(&l, "tunnel", tunnel_cfg(t)->name);
		log_u64(&l, "worker", t->worker);
		log_u64(&l, "limit", max);
		log_str(&l, "msg", "unfinished handshakes at the limit: the "
		    "oldest silent ones are dropped for new connections");
		log_end(&l);
	}
	int rc = conn_shed_oldest(t, &retry_ms);
	if (rc == 0)
		t->hs_shed++;
	if (rc >= 0)
		return true;
	if (!t->shed_timer_open) {
		uv_timer_init(t->loop, &t->shed_timer);
		t->shed_timer.data = t;
		t->shed_timer_open = true;
	}
	uv_timer_start(&t->shed_timer, on_shed_timer, retry_ms, 0);
	/* Held: a handshake ending on any worker wakes it (set, look again). */
	atomic_fetch_or(&t->stats->held, (uint64_t)1 << t->worker);
	return atomic_load(&t->stats->handshaking) < max;
}

/* Accept the pending connection into a slot taken for it. */
static void accept_into_slot(struct tunnel *t)
{
	if (conn_accept(t) != 0) {
		/* Left pending (no memory): the slot goes back. */
		atomic_fetch_sub(&t->stats->open, 1);
		t->accept_held = true;
		atomic_fetch_or(&t->stats->held, (uint64_t)1 << t->worker);
	}
}

/*
 * Not calling uv_accept makes libuv stop polling the listener until we
 * do: new connections wait in the kernel's backlog. The limit counts the
 * tunnel's connections on every worker, so a worker that holds back sets
 * its bit in the shared counters, for whichever worker frees a slot to
 * wake it; it looks again after setting the bit, so a slot freed between
 * the two is not missed.
 */
void tunnel_resume_accept(struct tunnel *t)
{
	if (!t->accept_held || t->stopping || !t->listener_open)
		return;
	if (!take_slot(t)) {
		atomic_fetch_or(&t->stats->held, (uint64_t)1 << t->worker);
		if (!take_slot(t))
			return;
	}
	if (!handshake_room(t)) {
		atomic_fetch_sub(&t->stats->open, 1);
		return;
	}
	t->accept_held = false;
	accept_into_slot(t);
}

static void hold_accept(struct tunnel *t)
{
	if (!t->accept_held) {
		struct log_line l;
		log_begin(&l, LOG_WARN, "max_connections");
		log_str(&l, "tunnel", tunnel_cfg(t)->name);
		log_u64(&l, "limit", tunnel_cfg(t)->max_connections);
		log_str(&l, "msg", "accepting paused until a connection ends");
		log_end(&l);
	}
	t->accept_held = true;
	tunnel_resume_accept(t);
}

static void check_empty(struct tunnel *t);
static void pause_listener(struct tunnel *t, int status);

static void on_connection(uv_stream_t *server, int status)
{
	struct tunnel *t = server->data;
	if (status == UV_EMFILE || status == UV_ENFILE) {
		pause_listener(t, status);
		return;
	}
	if (status < 0) {
		log_msg(LOG_WARN, "accept_error", "tunnel %s: %s", tunnel_cfg(t)->name,
		    log_uverr(status));
		return;
	}
	t->pause_ms = 0;
	if (t->stopping)
		return;
	if (!take_slot(t)) {
		hold_accept(t);
		return;
	}
	if (!handshake_room(t)) {
		atomic_fetch_sub(&t->stats->open, 1);
		t->accept_held = true;
		return;
	}
	accept_into_slot(t);
}

struct tunnel_conf *tunnel_conf_new(struct cfg *owner,
    const struct cfg_tunnel *cfg, enum cfg_role role, char *err,
    size_t errlen)
{
	struct tunnel_conf *tc = calloc(1, sizeof *tc);
	if (tc == NULL) {
		snprintf(err, errlen, "[%s] out of memory", cfg->name);
		return NULL;
	}
	/* `user =`: the keys may belong to the user it is about to run as. */
	struct passwd *pw = owner->user != NULL ? getpwnam(owner->user) : NULL;
	uid_t run_as = pw != NULL ? pw->pw_uid : (uid_t)-1;
	if (tls_ctx_new(cfg, role, run_as, &tc->tls, err, errlen) != 0) {
		free(tc);
		return NULL;
	}
	tc->refs = 1;
	tc->owner = cfg_hold(owner);
	tc->cfg = cfg;
	return tc;
}

struct tunnel_conf *tunnel_conf_hold(struct tunnel_conf *tc)
{
	atomic_fetch_add(&tc->refs, 1);
	return tc;
}

void tunnel_conf_release(struct tunnel_conf *tc)
{
	if (tc == NULL || atomic_fetch_sub(&tc->refs, 1) > 1)
		return;
	tls_ctx_free(tc->tls);
	cfg_release(tc->owner);
	free(tc);
}

struct tunnel_stats *tunnel_stats_new(void)
{
	struct tunnel_stats *st = calloc(1, sizeof *st);
	if (st != NULL)
		atomic_init(&st->refs, 1);
	return st;
}

struct tunnel_stats *tunnel_stats_hold(struct tunnel_stats *st)
{
	atomic_fetch_add(&st->refs, 1);
	return st;
}

void tunnel_stats_release(struct tunnel_stats *st)
{
	if (st != NULL && atomic_fetch_sub(&st->refs, 1) == 1)
		free(st);
}

static void on_listener_closed_free(uv_handle_t *h)
{
	struct tunnel *t = h->data;
	t->listener_open = false;
	tunnel_conf_release(t->conf);
	tunnel_stats_release(t->stats);
	free(t);
}

/* Make t's listener poll socket fd (which it takes over); libuv code. */
static int listener_open(struct tunnel *t, int fd)
{
	bool unix_socket = tunnel_cfg(t)->listen.kind == ADDR_UNIX;
	int rc = unix_socket ? uv_pipe_init(t->loop, &t->listener.pipe, 0) :
	    uv_tcp_init(t->loop, &t->listener.tcp);
	if (rc != 0) {
		close(fd);
		return rc;
	}
	t->listener_open = true;
	t->listener.h.data = t;
	rc = unix_socket ? uv_pipe_open(&t->listener.pipe, fd) :
	    uv_tcp_open(&t->listener.tcp, fd);
	if (rc != 0) {
		close(fd);
		return rc;
	}
	return uv_listen(&t->listener.s, LISTEN_BACKLOG, on_connection);
}

static void on_listener_paused(uv_handle_t *h);

/* The next pause: 100 ms, doubling to 2 s. */
static unsigned next_pause(unsigned ms)
{
	return ms == 0 ? 100 : ms * 2 > 2000 ? 2000 : ms * 2;
}

static void on_pause_timer(uv_timer_t *timer)
{
	struct tunnel *t = timer->data;
	if (t->stopping)
		return;
	int fd = fcntl(t->spare_fd, F_DUPFD_CLOEXEC, 0);
	int rc = fd < 0 ? -errno : listener_open(t, fd);
	if (rc != 0) {
		t->pause_ms = next_pause(t->pause_ms);
		if (t->listener_open) {	/* half set up: close, retry later */
			t->listener_open = false;
			t->listener_closing = true;
			uv_close(&t->listener.h, on_listener_paused);
		} else {
			uv_timer_start(&t->pause_timer, on_pause_timer,
			    t->pause_ms, 0);
		}
		return;
	}
	struct log_line l;
	log_begin(&l, LOG_INFO, "accept_resumed");
	log_str(&l, "tunnel", tunnel_cfg(t)->name);
	log_end(&l);
}

static void on_listener_paused(uv_handle_t *h)
{
	struct tunnel *t = h->data;
	t->listener_closing = false;
	if (t->stopping)
		check_empty(t);
	else
		uv_timer_start(&t->pause_timer, on_pause_timer, t->pause_ms, 0);
}

static void pause_listener(struct tunnel *t, int status)
{
	if (t->spare_fd < 0 || !t->listener_open) {
		log_msg(LOG_WARN, "accept_error", "tunnel %s: %s",
		    tunnel_cfg(t)->name, log_uverr(status));
		return;
	}
	if (!t->pause_timer_open) {
		uv_timer_init(t->loop, &t->pause_timer);
		t->pause_timer.data = t;
		t->pause_timer_open = true;
	}
	t->pause_ms = next_pause(t->pause_ms);
	struct log_line l;
	log_begin(&l, LOG_WARN, "accept_paused");
	log_str(&l, "tunnel", tunnel_cfg(t)->name);
	log_str(&l, "error", log_uverr(status));
	log_u64(&l, "retry_ms", t->pause_ms);
	log_str(&l, "msg", "out of file descriptors: new connections wait "
	    "in the backlog");
	log_end(&l);
	t->listener_open = false;
	t->listener_closing = true;
	uv_close(&t->listener.h, on_listener_paused);
}

int tunnel_start(uv_loop_t *loop, unsigned worker, struct tunnel_conf *conf,
    enum cfg_role role, struct tunnel_stats *stats, struct listen_fds *l,
    const struct tunnel_waker *waker, struct conn_counters *counters,
    struct tunnel **out, char *err, size_t errlen)
{
	const struct cfg_tunnel *cfg = conf->cfg;
	int fd = l->fd[worker];
	*out = NULL;
	struct tunnel *t = calloc(1, sizeof *t);
	if (t == NULL) {
		snprintf(err, errlen, "[%s] out of memory", cfg->name);
		return -1;
	}
	l->fd[worker] = -1;
	t->loop = loop;
	t->worker = worker;
	t->nworkers = l->n;
	t->conf = tunnel_conf_hold(conf);
	t->stats = tunnel_stats_hold(stats);
	t->role = role;
	t->waker = waker;
	t->counters = counters;
	t->owns_path = worker == 0;
	t->spare_fd = -1;
	snprintf(t->listen_text, sizeof t->listen_text, "%s", l->text);
	t->listener.h.data = t;

	int rc = listener_open(t, fd);
	if (rc != 0)
		goto fail;
	/* No spare (no descriptor left): libuv's own reserve must do. */
	t->spare_fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
	*out = t;
	pool_configure(t);
	return 0;

fail:
	snprintf(err, errlen, "[%s] listen %s: %s", cfg->name, l->text,
	    log_uverr(rc));
	if (t->listener_open) {
		uv_close(&t->listener.h, on_listener_closed_free);
		return -1;
	}
	tunnel_conf_release(t->conf);
	tunnel_stats_release(t->stats);
	free(t);
	return -1;
}

void tunnel_log_start(const struct cfg_tunnel *cfg, enum cfg_role role,
    const char *bound)
{
	struct log_line l;
	log_begin(&l, LOG_INFO, "listening");
	log_str(&l, "tunnel", cfg->name);
	log_str(&l, "role", role == CFG_CLIENT ? "client" : "server");
	log_str(&l, "addr", bound);
	log_end(&l);
	const struct addr *plain = role == CFG_CLIENT ? &cfg->listen : &cfg->connect;
	if (cfg->allow_remote && !addr_is_loopback(plain)) {
		char text[ADDR_TEXT_MAX];
		addr_format(plain, text, sizeof text);
		log_begin(&l, LOG_WARN, "allow_remote");
		log_str(&l, "tunnel", cfg->name);
		log_str(&l, "plaintext_end", text);
		log_str(&l, "msg", "the plaintext end is reachable beyond this "
		    "host (allow_remote = yes): traffic there is not protected");
		if (role == CFG_CLIENT && cfg->proxy_protocol == CFG_PP_ACCEPT)
			log_str(&l, "proxy_protocol", "accept: whoever reaches "
			    "it chooses the client address the backend is told");
		log_end(&l);
	}
}

void tunnel_reconfigure(struct tunnel *t, struct tunnel_conf *conf)
{
	struct tunnel_conf *old = t->conf;
	/* Pool conns of the old settings go; new ones are opened. */
	if (t->role == CFG_CLIENT)
		pool_flush(t, REASON_POOL_FLUSH);
	t->conf = tunnel_conf_hold(conf);
	tunnel_conf_release(old);
	/* conn_drop frees nothing before the loop runs: the list holds. */
	for (struct conn *c = t->conns; c != NULL; c = conn_next(c))
		conn_settings_changed(c);
	pool_configure(t);
	/* A raised max_connections lets a held connection in. */
	tunnel_resume_accept(t);
}

static void check_empty(struct tunnel *t)
{
	if (t->stopping && t->live == 0 && t->pool.live == 0 &&
	    !t->listener_open && !t->listener_closing && !t->pause_timer_open &&
	    !t->shed_timer_open && t->on_empty) {
		void (*cb)(struct tunnel *) = t->on_empty;
		t->on_empty = NULL;
		cb(t);
	}
}

/* The listener, the pause timer or the shed timer finished closing. */
static void on_part_closed(uv_handle_t *h)
{
	struct tunnel *t = h->data;
	if (h == &t->listener.h)
		t->listener_closing = false;
	else if (h == (uv_handle_t *)&t->pause_timer)
		t->pause_timer_open = false;
	else
		t->shed_timer_open = false;
	check_empty(t);
}

void tunnel_stop(struct tunnel *t, void (*on_empty)(struct tunnel *t))
{
	if (t->stopping)
		return;
	t->stopping = true;
	t->on_empty = on_empty;
	/* Unused pool conns hold nothing a client waits for: close them now. */
	pool_flush(t, REASON_DRAIN);
	if (tunnel_cfg(t)->listen.kind == ADDR_UNIX && t->owns_path)
		unlink(tunnel_cfg(t)->listen.path);
	if (t->listener_open) {
		t->listener_open = false;
		t->listener_closing = true;
		uv_close(&t->listener.h, on_part_closed);
	}
	if (t->spare_fd >= 0) {
		close(t->spare_fd);
		t->spare_fd = -1;
	}
	if (t->pause_timer_open) {
		uv_timer_stop(&t->pause_timer);
		uv_close((uv_handle_t *)&t->pause_timer, on_part_closed);
	}
	if (t->shed_timer_open) {
		uv_timer_stop(&t->shed_timer);
		uv_close((uv_handle_t *)&t->shed_timer, on_part_closed);
	}
}

void tunnel_drop_all(struct tunnel *t, enum reason why)
{
	/* conn_drop frees nothing before the loop runs: the list holds. */
	for (struct conn *c = t->conns; c != NULL; c = conn_next(c))
		conn_drop(c, why);
}

/* Wake every worker holding back an accept; each retries on its own loop. */
static void wake_held(const struct tunnel *t, struct tunnel_stats *st)
{
	uint64_t held = atomic_exchange(&st->held, 0);
	for (unsigned w = 0; w < CFG_WORKERS_MAX; w++) {
		if (!(held & ((uint64_t)1 << w)))
			continue;
		if (t->waker != NULL)
			t->waker->wake(t->waker->arg, w);
	}
}

void tunnel_handshake_ended(struct tunnel *t)
{
	struct tunnel_stats *st = t->stats;
	atomic_fetch_sub(&st->handshaking, 1);
	if (atomic_load(&st->held) != 0)
		wake_held(t, st);
}

void tunnel_conn_freed(struct tunnel *t)
{
	struct tunnel_stats *st = t->stats;
	t->live--;
	atomic_fetch_sub(&st->open, 1);
	if (atomic_load(&st->held) != 0 && under_limit(t))
		wake_held(t, st);
	check_empty(t);
}

void tunnel_pool_conn_freed(struct tunnel *t)
{
	t->pool.live--;
	pool_fill(t);
	check_empty(t);
}

void tunnel_free(struct tunnel *t)
{
	if (t == NULL)
		return;
	tunnel_conf_release(t->conf);
	tunnel_stats_release(t->stats);
	free(t);
}

/* ---- accessors, for the daemon layer ---- */

uint64_t tunnel_id(const struct tunnel *t)
{
	return t->id;
}

void tunnel_set_id(struct tunnel *t, uint64_t id)
{
	t->id = id;
}

void *tunnel_data(const struct tunnel *t)
{
	return t->data;
}

void tunnel_set_data(struct tunnel *t, void *data)
{
	t->data = data;
}

const char *tunnel_listen_text(const struct tunnel *t)
{
	return t->listen_text;
}

struct tunnel_stats *tunnel_stats(const struct tunnel *t)
{
	return t->stats;
}

bool tunnel_is_listening(const struct tunnel *t)
{
	return t->listener_open && !t->stopping;
}

bool tunnel_listener_open(const struct tunnel *t)
{
	return t->listener_open;
}

const struct cfg_tunnel *tunnel_cfg(const struct tunnel *t)
{
	return t->conf->cfg;
}

const struct tls_ctx *tunnel_tls(const struct tunnel *t)
{
	return t->conf->tls;
}

uv_loop_t *tunnel_loop(const struct tunnel *t)
{
	return t->loop;
}

unsigned tunnel_worker(const struct tunnel *t)
{
	return t->worker;
}

enum cfg_role tunnel_role(const struct tunnel *t)
{
	return t->role;
}
