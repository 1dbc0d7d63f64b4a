#include "tunnel.h"

#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "conn.h"
#include "log.h"
#include "pool.h"

#define LISTEN_BACKLOG 511

static void on_connection(uv_stream_t *server, int status)
{
	struct tunnel *t = server->data;
	if (status < 0) {
		/* EMFILE and friends: libuv sheds the connection; say so. */
		log_msg(LOG_WARN, "accept_error", "tunnel %s: %s", tunnel_cfg(t)->name,
		    log_uverr(status));
		return;
	}
	if (t->stopping)
		return;
	if (t->live >= tunnel_cfg(t)->max_connections) {
		/*
		 * Not calling uv_accept makes libuv stop polling the listener
		 * until we do: new connections wait in the kernel's backlog.
		 */
		if (!t->accept_held) {
			struct log_line l;
			log_begin(&l, LOG_WARN, "max_connections");
			log_str(&l, "tunnel", tunnel_cfg(t)->name);
			log_u64(&l, "limit", tunnel_cfg(t)->max_connections);
			log_str(&l, "msg", "accepting paused until a connection ends");
			log_end(&l);
		}
		t->accept_held = true;
		return;
	}
	conn_accept(t);
}

/*
 * A unix socket path left behind by a process that is gone is removed; one
 * that a live process still accepts on is an error, and so is any other
 * kind of file.
 */
static int unix_path_free(const char *path, char *err, size_t errlen,
    const char *name)
{
	struct stat st;
	if (lstat(path, &st) != 0)
		return 0;
	if (!S_ISSOCK(st.st_mode)) {
		snprintf(err, errlen, "[%s] listen unix:%s: the path exists and "
		    "is not a socket", name, path);
		return -1;
	}
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return 0;
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	snprintf(sun.sun_path, sizeof sun.sun_path, "%s", path);
	int rc = connect(fd, (struct sockaddr *)&sun, sizeof sun);
	close(fd);
	if (rc == 0) {
		snprintf(err, errlen, "[%s] listen unix:%s: another process is "
		    "listening there", name, path);
		return -1;
	}
	unlink(path);
	return 0;
}

static int listen_unix(struct tunnel *t, char *err, size_t errlen)
{
	const struct addr *a = &tunnel_cfg(t)->listen;
	if (unix_path_free(a->path, err, errlen, tunnel_cfg(t)->name) != 0)
		return -1;
	int rc = uv_pipe_init(t->loop, &t->listener.pipe, 0);
	if (rc == 0) {
		t->listener_open = true;
		rc = uv_pipe_bind(&t->listener.pipe, a->path);
	}
	if (rc != 0) {
		snprintf(err, errlen, "[%s] listen unix:%s: %s", tunnel_cfg(t)->name,
		    a->path, log_uverr(rc));
		return -1;
	}
	snprintf(t->listen_text, sizeof t->listen_text, "unix:%s", a->path);
	return 0;
}

static int listen_tcp(struct tunnel *t, char *err, size_t errlen)
{
	const struct addr *a = &tunnel_cfg(t)->listen;
	char text[ADDR_TEXT_MAX];
	struct addrinfo *res = NULL;
	const struct sockaddr *sa = (const struct sockaddr *)&a->sa;

	addr_format(a, text, sizeof text);
	if (!a->numeric) {
		char port[8];
		struct addrinfo hints = { .ai_family = AF_UNSPEC,
			.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE };
		snprintf(port, sizeof port, "%u", a->port);
		int gai = getaddrinfo(a->host, port, &hints, &res);
		if (gai != 0) {
			snprintf(err, errlen, "[%s] listen %s: cannot resolve: %s",
			    tunnel_cfg(t)->name, text, gai_strerror(gai));
			return -1;
		}
		sa = res->ai_addr;
	}
	int rc = uv_tcp_init(t->loop, &t->listener.tcp);
	if (rc == 0) {
		t->listener_open = true;
		rc = uv_tcp_bind(&t->listener.tcp, sa, 0);
	}
	if (res != NULL)
		freeaddrinfo(res);
	if (rc != 0) {
		snprintf(err, errlen, "[%s] listen %s: %s", tunnel_cfg(t)->name, text,
		    log_uverr(rc));
		return -1;
	}
	return 0;
}

static void bound_name(struct tunnel *t)
{
	struct sockaddr_storage ss;
	int len = sizeof ss;
	if (t->listener.h.type != UV_TCP)
		return;
	if (uv_tcp_getsockname(&t->listener.tcp, (struct sockaddr *)&ss, &len) == 0)
		addr_format_sockaddr((struct sockaddr *)&ss, t->listen_text,
		    sizeof t->listen_text);
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
	if (tls_ctx_new(cfg, role, &tc->tls, err, errlen) != 0) {
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
	tc->refs++;
	return tc;
}

void tunnel_conf_release(struct tunnel_conf *tc)
{
	if (tc == NULL || --tc->refs > 0)
		return;
	tls_ctx_free(tc->tls);
	cfg_release(tc->owner);
	free(tc);
}

static void stats_release(struct tunnel_stats *s)
{
	if (s != NULL && --s->refs == 0)
		free(s);
}

void tunnel_share_stats(struct tunnel *t, struct tunnel *other)
{
	stats_release(t->stats);
	t->stats = other->stats;
	t->stats->refs++;
}

static void on_listener_closed_free(uv_handle_t *h)
{
	struct tunnel *t = h->data;
	t->listener_open = false;
	tunnel_conf_release(t->conf);
	stats_release(t->stats);
	free(t);
}

int tunnel_start(uv_loop_t *loop, struct tunnel_conf *conf,
    enum cfg_role role, struct tunnel **out, char *err, size_t errlen)
{
	const struct cfg_tunnel *cfg = conf->cfg;
	*out = NULL;
	struct tunnel *t = calloc(1, sizeof *t);
	if (t == NULL) {
		snprintf(err, errlen, "[%s] out of memory", cfg->name);
		return -1;
	}
	t->stats = calloc(1, sizeof *t->stats);
	if (t->stats == NULL) {
		snprintf(err, errlen, "[%s] out of memory", cfg->name);
		free(t);
		return -1;
	}
	t->stats->refs = 1;
	t->loop = loop;
	t->conf = tunnel_conf_hold(conf);
	t->role = role;
	t->listener.h.data = t;

	int rc = cfg->listen.kind == ADDR_UNIX ? listen_unix(t, err, errlen) :
	    listen_tcp(t, err, errlen);
	if (rc != 0)
		goto fail;
	t->listener.h.data = t;
	rc = uv_listen(&t->listener.s, LISTEN_BACKLOG, on_connection);
	if (rc != 0) {
		char text[ADDR_TEXT_MAX];
		addr_format(&cfg->listen, text, sizeof text);
		snprintf(err, errlen, "[%s] listen %s: %s", cfg->name, text,
		    log_uverr(rc));
		goto fail;
	}
	bound_name(t);
	tunnel_log_listening(t);
	struct log_line l;
	const struct addr *plain = role == CFG_CLIENT ? &cfg->listen : &cfg->connect;
	if (cfg->allow_remote && !addr_is_loopback(plain)) {
		char text[ADDR_TEXT_MAX];
		addr_format(plain, text, sizeof text);
		log_begin(&l, LOG_WARN, "allow_remote");
		log_str(&l, "tunnel", cfg->name);
		log_str(&l, "plaintext_end", text);
		log_str(&l, "msg", "the plaintext end is reachable beyond this "
		    "host (allow_remote = yes): traffic there is not protected");
		log_end(&l);
	}
	*out = t;
	pool_configure(t);
	return 0;

fail:
	if (t->listener_open) {
		uv_close(&t->listener.h, on_listener_closed_free);
		return -1;
	}
	tunnel_conf_release(t->conf);
	stats_release(t->stats);
	free(t);
	return -1;
}

void tunnel_reconfigure(struct tunnel *t, struct tunnel_conf *conf)
{
	struct tunnel_conf *old = t->conf;
	/* Pool conns of the old settings go; new ones are opened. */
	if (t->role == CFG_CLIENT)
		pool_flush(t, "pool_flush");
	t->conf = tunnel_conf_hold(conf);
	tunnel_conf_release(old);
	pool_configure(t);
	/* A raised max_connections lets a held connection in. */
	if (t->accept_held && !t->stopping &&
	    t->live < tunnel_cfg(t)->max_connections) {
		t->accept_held = false;
		conn_accept(t);
	}
}

void tunnel_log_listening(const struct tunnel *t)
{
	struct log_line l;
	log_begin(&l, LOG_INFO, "listening");
	log_str(&l, "tunnel", tunnel_cfg(t)->name);
	log_str(&l, "role", t->role == CFG_CLIENT ? "client" : "server");
	log_str(&l, "addr", t->listen_text);
	log_end(&l);
}

static void check_empty(struct tunnel *t)
{
	if (t->stopping && t->live == 0 && t->pool.live == 0 &&
	    !t->listener_open && t->on_empty) {
		void (*cb)(struct tunnel *) = t->on_empty;
		t->on_empty = NULL;
		cb(t);
	}
}

static void on_listener_closed(uv_handle_t *h)
{
	struct tunnel *t = h->data;
	t->listener_open = false;
	check_empty(t);
}

void tunnel_stop(struct tunnel *t, void (*on_empty)(struct tunnel *t))
{
	if (t->stopping)
		return;
	t->stopping = true;
	t->on_empty = on_empty;
	/* Unused pool conns hold nothing a client waits for: close them now. */
	pool_flush(t, "drain");
	if (tunnel_cfg(t)->listen.kind == ADDR_UNIX)
		unlink(tunnel_cfg(t)->listen.path);
	if (t->listener_open)
		uv_close(&t->listener.h, on_listener_closed);
}

void tunnel_drop_all(struct tunnel *t, const char *reason)
{
	/* conn_drop frees nothing before the loop runs: the list holds. */
	for (struct conn *c = t->conns; c != NULL; c = conn_next(c))
		conn_drop(c, reason);
}

void tunnel_conn_freed(struct tunnel *t)
{
	t->live--;
	if (t->accept_held && !t->stopping &&
	    t->live < tunnel_cfg(t)->max_connections) {
		t->accept_held = false;
		conn_accept(t);
	}
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
	stats_release(t->stats);
	free(t);
}
