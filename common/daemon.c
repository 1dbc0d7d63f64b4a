#include "daemon.h"

#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <uv.h>

#include <mbedtls/version.h>

#include "audit.h"
#include "conn.h"
#include "log.h"
#include "metrics.h"
#include "rng.h"
#include "status.h"
#include "tls.h"
#include "tunnel.h"

/*
 * A set of tunnels: the current ones (in config order) or those retired
 * by a reload that still drain.
 */
struct tunnel_set {
	struct tunnel **t;
	size_t n;
};

struct daemon {
	const char *prog;
	const char *path;
	enum cfg_role role;
	struct cfg *cfg;		/* current (held) */
	uv_loop_t loop;
	struct tunnel_set active;
	struct tunnel_set retiring;
	struct status *status;
	uv_signal_t sig_term, sig_int, sig_hup;
	uv_timer_t drain_timer;
	bool handles_open;
	bool stopping;
	bool dropped_privileges;
	uint64_t reloads_ok, reloads_failed;
	int exit_code;
};

static void usage(FILE *f, const char *prog, enum cfg_role role)
{
	bool server = role == CFG_SERVER;
	fprintf(f,
	    "usage: %s -c FILE [--check%s]\n"
	    "       %s --version | --help\n"
	    "\n"
	    "  -c, --config FILE  the ini file with the tunnels to run\n"
	    "      --check        validate the file (and its certificates and\n"
	    "                     keys), print the result and exit 0 or 1\n"
	    "%s"
	    "  -V, --version      print the version and exit\n"
	    "  -h, --help         print this help and exit\n"
	    "\n"
	    "Signals: HUP re-reads the file and every certificate and key it\n"
	    "names (open connections keep their settings; a file that fails\n"
	    "to load changes nothing). TERM or INT stop accepting, let open\n"
	    "connections finish (up to drain_timeout) and exit 0.\n",
	    prog, server ? " | --audit" : "", prog, server ?
	    "      --audit        tell whether each tunnel's backend also\n"
	    "                     listens where the network can reach it;\n"
	    "                     exit 1 if one does\n" : "");
}

/* ---- tunnel sets ---- */

static int set_add(struct tunnel_set *s, struct tunnel *t)
{
	struct tunnel **p = realloc(s->t, (s->n + 1) * sizeof *p);
	if (p == NULL)
		return -1;
	s->t = p;
	s->t[s->n++] = t;
	return 0;
}

static bool set_remove(struct tunnel_set *s, struct tunnel *t)
{
	for (size_t i = 0; i < s->n; i++) {
		if (s->t[i] == t) {
			memmove(&s->t[i], &s->t[i + 1], (s->n - i - 1) * sizeof *s->t);
			s->n--;
			return true;
		}
	}
	return false;
}

static void close_daemon_handles(struct daemon *d)
{
	if (!d->handles_open)
		return;
	d->handles_open = false;
	uv_close((uv_handle_t *)&d->sig_term, NULL);
	uv_close((uv_handle_t *)&d->sig_int, NULL);
	uv_close((uv_handle_t *)&d->sig_hup, NULL);
	uv_close((uv_handle_t *)&d->drain_timer, NULL);
	status_stop(d->status);
	d->status = NULL;
}

/* A stopped tunnel has no connection left: free it. */
static void on_tunnel_empty(struct tunnel *t)
{
	struct daemon *d = t->data;
	if (!set_remove(&d->retiring, t))
		set_remove(&d->active, t);
	tunnel_free(t);
	if (d->stopping && d->active.n == 0 && d->retiring.n == 0)
		close_daemon_handles(d);
}

static void drop_all(struct tunnel_set *s, const char *reason)
{
	for (size_t i = 0; i < s->n; i++)
		tunnel_drop_all(s->t[i], reason);
}

static void on_drain_timeout(uv_timer_t *timer)
{
	struct daemon *d = timer->data;
	unsigned left = 0;
	for (size_t i = 0; i < d->active.n; i++)
		left += d->active.t[i]->live;
	for (size_t i = 0; i < d->retiring.n; i++)
		left += d->retiring.t[i]->live;
	struct log_line l;
	log_begin(&l, LOG_WARN, "drain_timeout");
	log_u64(&l, "connections", left);
	log_str(&l, "msg", "closing the connections still open");
	log_end(&l);
	drop_all(&d->active, "drain");
	drop_all(&d->retiring, "drain");
}

/* Stop accepting everywhere; the loop ends when every tunnel is empty. */
static void daemon_stop(struct daemon *d)
{
	d->stopping = true;
	if (d->active.n == 0 && d->retiring.n == 0) {
		close_daemon_handles(d);
		return;
	}
	if (d->handles_open)
		uv_timer_start(&d->drain_timer, on_drain_timeout,
		    d->cfg->drain_timeout_ms, 0);
	/* tunnel_stop may call back at once: iterate over a copy. */
	struct tunnel_set all = { 0 };
	for (size_t i = 0; i < d->active.n; i++)
		if (set_add(&all, d->active.t[i]) != 0)
			tunnel_drop_all(d->active.t[i], "nomem");
	for (size_t i = 0; i < all.n; i++)
		tunnel_stop(all.t[i], on_tunnel_empty);
	free(all.t);
}

/* ---- status endpoint ---- */

/* Connections open under these counters, over current and retired tunnels. */
static unsigned open_under(struct daemon *d, const struct tunnel_stats *st)
{
	unsigned n = 0;
	for (size_t i = 0; i < d->active.n; i++)
		if (d->active.t[i]->stats == st)
			n += d->active.t[i]->live;
	for (size_t i = 0; i < d->retiring.n; i++)
		if (d->retiring.t[i]->stats == st)
			n += d->retiring.t[i]->live;
	return n;
}

static bool counted(const struct metrics_tunnel *mt, size_t k,
    const struct tunnel_stats *st)
{
	for (size_t i = 0; i < k; i++)
		if (mt[i].stats == st)
			return true;
	return false;
}

static int render_metrics(struct daemon *d, struct sbuf *body)
{
	size_t n = d->active.n + d->retiring.n;
	struct metrics_tunnel *mt = calloc(n ? n : 1, sizeof *mt);
	if (mt == NULL) {
		body->failed = true;
		return 500;
	}
	/*
	 * One series per set of counters: a tunnel moved by a reload shares
	 * its counters with the one still draining, and a removed tunnel is
	 * reported (not listening) until its last connection ends.
	 */
	size_t k = 0;
	for (size_t i = 0; i < d->active.n; i++) {
		struct tunnel *t = d->active.t[i];
		mt[k++] = (struct metrics_tunnel){ .name = tunnel_cfg(t)->name,
			.stats = t->stats, .open = open_under(d, t->stats),
			.listening = t->listener_open && !t->stopping };
	}
	for (size_t i = 0; i < d->retiring.n; i++) {
		struct tunnel *t = d->retiring.t[i];
		if (!counted(mt, k, t->stats))
			mt[k++] = (struct metrics_tunnel){
				.name = tunnel_cfg(t)->name, .stats = t->stats,
				.open = open_under(d, t->stats), .listening = false };
	}
	struct metrics_process p = {
		.role = d->role == CFG_CLIENT ? "client" : "server",
		.version = UPSEAL_VERSION, .draining = d->stopping,
		.reloads_ok = d->reloads_ok, .reloads_failed = d->reloads_failed,
	};
	metrics_render(body, mt, k, &p);
	free(mt);
	return 200;
}

static int render(void *arg, const char *path, struct sbuf *body,
    const char **content_type)
{
	struct daemon *d = arg;
	if (strcmp(path, "/metrics") == 0) {
		*content_type = "text/plain; version=0.0.4; charset=utf-8";
		return render_metrics(d, body);
	}
	if (strcmp(path, "/healthz") == 0) {
		if (d->stopping) {
			sbuf_printf(body, "draining\n");
			return 503;
		}
		for (size_t i = 0; i < d->active.n; i++) {
			if (!d->active.t[i]->listener_open) {
				sbuf_printf(body, "tunnel %s is not listening\n",
				    tunnel_cfg(d->active.t[i])->name);
				return 503;
			}
		}
		sbuf_printf(body, "ok\n");
		return 200;
	}
	sbuf_printf(body, "not found: try /metrics or /healthz\n");
	return 404;
}

/* ---- starting tunnels, and reloading ---- */

/*
 * Build the settings of every tunnel in cfg. All or nothing: on error,
 * err says what and where, and nothing is left built.
 */
static struct tunnel_conf **build_confs(struct daemon *d, struct cfg *cfg,
    char *err, size_t errlen)
{
	struct tunnel_conf **tc = calloc(cfg->ntunnels, sizeof *tc);
	if (tc == NULL) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	for (size_t i = 0; i < cfg->ntunnels; i++) {
		tc[i] = tunnel_conf_new(cfg, &cfg->tunnels[i], d->role, err,
		    errlen);
		if (tc[i] == NULL) {
			for (size_t j = 0; j < i; j++)
				tunnel_conf_release(tc[j]);
			free(tc);
			return NULL;
		}
	}
	return tc;
}

static void release_confs(struct tunnel_conf **tc, size_t n)
{
	for (size_t i = 0; i < n; i++)
		tunnel_conf_release(tc[i]);
	free(tc);
}

static bool same_listen(const struct cfg_tunnel *a, const struct cfg_tunnel *b)
{
	char ta[ADDR_TEXT_MAX], tb[ADDR_TEXT_MAX];
	addr_format(&a->listen, ta, sizeof ta);
	addr_format(&b->listen, tb, sizeof tb);
	return strcmp(ta, tb) == 0;
}

static bool claimed(struct tunnel *t, struct tunnel **keep, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (keep[i] == t)
			return true;
	return false;
}

/*
 * The running tunnel a new section takes over, or NULL: the one with the
 * same name and listen text; else one, not yet taken, that listens where
 * the section asks (same text, or the address it is bound to), whatever
 * its name. Rebinding an address we hold would fail, and probing our own
 * unix socket would open a connection through it.
 */
static struct tunnel *find_reusable(struct daemon *d,
    const struct cfg_tunnel *nt, struct tunnel **keep, size_t nkeep)
{
	char want[ADDR_TEXT_MAX];
	addr_format(&nt->listen, want, sizeof want);
	for (size_t i = 0; i < d->active.n; i++) {
		struct tunnel *t = d->active.t[i];
		const struct cfg_tunnel *ot = tunnel_cfg(t);
		if (strcmp(ot->name, nt->name) == 0 && same_listen(ot, nt) &&
		    !claimed(t, keep, nkeep))
			return t;
	}
	for (size_t i = 0; i < d->active.n; i++) {
		struct tunnel *t = d->active.t[i];
		if (claimed(t, keep, nkeep))
			continue;
		if (same_listen(tunnel_cfg(t), nt) ||
		    strcmp(t->listen_text, want) == 0)
			return t;
	}
	return NULL;
}

/* The running tunnel named name, if a reload is moving it elsewhere. */
static struct tunnel *find_named(struct daemon *d, const char *name)
{
	for (size_t i = 0; i < d->active.n; i++)
		if (strcmp(tunnel_cfg(d->active.t[i])->name, name) == 0)
			return d->active.t[i];
	return NULL;
}

static int start_status(struct daemon *d, const struct cfg *cfg, char *err,
    size_t errlen)
{
	if (!cfg->has_status)
		return 0;
	return status_start(&d->loop, &cfg->status, render, d, &d->status,
	    err, errlen);
}

static bool same_status(const struct cfg *a, const struct cfg *b)
{
	char ta[ADDR_TEXT_MAX], tb[ADDR_TEXT_MAX];
	if (a->has_status != b->has_status)
		return false;
	if (!a->has_status)
		return true;
	addr_format(&a->status, ta, sizeof ta);
	addr_format(&b->status, tb, sizeof tb);
	return strcmp(ta, tb) == 0;
}

static void log_reload_failed(struct daemon *d, const char *err)
{
	struct log_line l;
	d->reloads_failed++;
	log_begin(&l, LOG_ERROR, "reload_failed");
	log_str(&l, "file", d->path);
	log_str(&l, "error", err);
	log_str(&l, "msg", "the running configuration is unchanged");
	log_end(&l);
}

/*
 * SIGHUP: load the file and every certificate and key it names, bind what
 * is new, and only then switch. Any failure on the way changes nothing.
 */
static void reload(struct daemon *d)
{
	char err[1024];
	struct cfg *cfg;
	if (cfg_load(d->path, d->role, &cfg, err, sizeof err) != 0) {
		log_reload_failed(d, err);
		return;
	}
	struct tunnel_conf **tc = build_confs(d, cfg, err, sizeof err);
	if (tc == NULL) {
		log_reload_failed(d, err);
		cfg_release(cfg);
		return;
	}
	/* Bind the tunnels that are new or listen elsewhere now. */
	struct tunnel **fresh = calloc(cfg->ntunnels, sizeof *fresh);
	struct tunnel **keep = calloc(cfg->ntunnels, sizeof *keep);
	bool failed = fresh == NULL || keep == NULL;
	if (failed)
		snprintf(err, sizeof err, "out of memory");
	for (size_t i = 0; i < cfg->ntunnels && !failed; i++)
		keep[i] = find_reusable(d, &cfg->tunnels[i], keep, i);
	for (size_t i = 0; i < cfg->ntunnels && !failed; i++) {
		if (keep[i] != NULL)
			continue;
		if (tunnel_start(&d->loop, tc[i], d->role, &fresh[i], err,
		    sizeof err) != 0) {
			failed = true;
			break;
		}
		fresh[i]->data = d;
		/* Moved to a new address: its counters carry on. */
		struct tunnel *old = find_named(d, cfg->tunnels[i].name);
		if (old != NULL && !claimed(old, keep, cfg->ntunnels))
			tunnel_share_stats(fresh[i], old);
	}
	struct status *old_status = NULL;
	bool status_changed = !failed && !same_status(d->cfg, cfg);
	if (status_changed) {
		old_status = d->status;
		d->status = NULL;
		if (start_status(d, cfg, err, sizeof err) != 0) {
			failed = true;
			d->status = old_status;
			status_changed = false;
		}
	}
	if (failed) {
		for (size_t i = 0; fresh != NULL && i < cfg->ntunnels; i++) {
			if (fresh[i] != NULL) {
				set_add(&d->retiring, fresh[i]);
				tunnel_stop(fresh[i], on_tunnel_empty);
			}
		}
		free(fresh);
		free(keep);
		release_confs(tc, cfg->ntunnels);
		cfg_release(cfg);
		log_reload_failed(d, err);
		return;
	}

	/* Commit: nothing below can fail in a way that needs undoing. */
	if (status_changed)
		status_stop(old_status);
	struct tunnel_set next = { 0 };
	size_t kept = 0, added = 0, removed = 0;
	for (size_t i = 0; i < cfg->ntunnels; i++) {
		struct tunnel *t = keep[i] ? keep[i] : fresh[i];
		if (keep[i] != NULL) {
			bool renamed = strcmp(tunnel_cfg(keep[i])->name,
			    cfg->tunnels[i].name) != 0;
			tunnel_reconfigure(keep[i], tc[i]);
			if (renamed)	/* the same listener, under its new name */
				tunnel_log_listening(keep[i]);
			set_remove(&d->active, keep[i]);
			kept++;
		} else {
			added++;
		}
		if (set_add(&next, t) != 0) {
			/* Cannot track it: stop it rather than lose it. */
			set_add(&d->retiring, t);
			tunnel_stop(t, on_tunnel_empty);
		}
	}
	/* What is left of the old set was removed or moved: drain it. */
	for (size_t i = 0; i < d->active.n; i++) {
		struct tunnel *t = d->active.t[i];
		removed++;
		if (set_add(&d->retiring, t) != 0)
			tunnel_drop_all(t, "nomem");
		tunnel_stop(t, on_tunnel_empty);
	}
	free(d->active.t);
	d->active = next;
	free(fresh);
	free(keep);
	release_confs(tc, cfg->ntunnels);	/* tunnels hold their own */
	cfg_release(d->cfg);
	d->cfg = cfg;
	log_setup(cfg->log_level, cfg->log_json);
	d->reloads_ok++;

	struct log_line l;
	log_begin(&l, LOG_INFO, "reloaded");
	log_str(&l, "file", d->path);
	log_u64(&l, "tunnels", cfg->ntunnels);
	log_u64(&l, "kept", kept);
	log_u64(&l, "added", added);
	log_u64(&l, "removed", removed);
	log_end(&l);
}

static void on_signal(uv_signal_t *s, int signum)
{
	struct daemon *d = s->data;
	if (signum == SIGHUP) {
		if (d->stopping)
			log_msg(LOG_WARN, "reload_ignored", "stopping: SIGHUP ignored");
		else
			reload(d);
		return;
	}
	if (d->stopping) {
		log_msg(LOG_WARN, "stopping", "second %s: closing every "
		    "connection now", strsignal(signum));
		uv_timer_stop(&d->drain_timer);
		on_drain_timeout(&d->drain_timer);
		return;
	}
	struct log_line l;
	log_begin(&l, LOG_INFO, "stopping");
	log_str(&l, "signal", signum == SIGTERM ? "SIGTERM" : "SIGINT");
	log_u64(&l, "drain_timeout_ms", d->cfg->drain_timeout_ms);
	log_end(&l);
	daemon_stop(d);
}

static int start_handles(struct daemon *d)
{
	uv_signal_init(&d->loop, &d->sig_term);
	uv_signal_init(&d->loop, &d->sig_int);
	uv_signal_init(&d->loop, &d->sig_hup);
	uv_timer_init(&d->loop, &d->drain_timer);
	d->sig_term.data = d->sig_int.data = d->sig_hup.data = d;
	d->drain_timer.data = d;
	d->handles_open = true;
	if (uv_signal_start(&d->sig_term, on_signal, SIGTERM) != 0 ||
	    uv_signal_start(&d->sig_int, on_signal, SIGINT) != 0 ||
	    uv_signal_start(&d->sig_hup, on_signal, SIGHUP) != 0)
		return -1;
	return 0;
}

/*
 * user = NAME: after binding and reading keys, switch to that user and
 * its groups, for good. Running as that user already is fine.
 */
static int drop_privileges(const char *user, char *err, size_t errlen)
{
	errno = 0;
	struct passwd *pw = getpwnam(user);
	if (pw == NULL) {
		snprintf(err, errlen, "user = %s: no such user%s%s", user,
		    errno ? ": " : "", errno ? strerror(errno) : "");
		return -1;
	}
	if (getuid() == pw->pw_uid && geteuid() == pw->pw_uid)
		return 0;
	if (geteuid() != 0) {
		snprintf(err, errlen, "user = %s: cannot switch users: not "
		    "started as root", user);
		return -1;
	}
	if (initgroups(pw->pw_name, pw->pw_gid) != 0 ||
	    setgid(pw->pw_gid) != 0 || setuid(pw->pw_uid) != 0) {
		snprintf(err, errlen, "user = %s: cannot switch: %s", user,
		    strerror(errno));
		return -1;
	}
	if (setuid(0) == 0) {
		snprintf(err, errlen, "user = %s: root could be regained", user);
		return -1;
	}
	return 0;
}

/*
 * --audit: for each tunnel, does its backend also listen where the
 * network can reach it? Exit 1 if any does (or cannot be told).
 */
static int audit_all(const struct daemon *d)
{
	int rc = 0;
	for (size_t i = 0; i < d->cfg->ntunnels; i++) {
		const struct cfg_tunnel *t = &d->cfg->tunnels[i];
		struct audit_result r;
		if (audit_backend(&t->connect, &r) != 0 || r.exposed)
			rc = 1;
		audit_report(stdout, t->name, &t->connect, &r);
	}
	return rc;
}

/* At start: say loudly when a backend can be reached around the tunnel. */
static void audit_warn(const struct daemon *d)
{
	for (size_t i = 0; i < d->cfg->ntunnels; i++) {
		const struct cfg_tunnel *t = &d->cfg->tunnels[i];
		struct audit_result r;
		char where[256];
		if (audit_backend(&t->connect, &r) != 0 || !r.exposed)
			continue;
		audit_exposed_list(&r, where, sizeof where);
		struct log_line l;
		log_begin(&l, LOG_WARN, "backend_exposed");
		log_str(&l, "tunnel", t->name);
		log_str(&l, "listening", where);
		log_str(&l, "msg", "the backend also listens on a network "
		    "address, where it can be reached without the tunnel: bind "
		    "it to 127.0.0.1 only (run --audit for details)");
		log_end(&l);
	}
}

/* Load every tunnel's certificate and key without binding anything. */
static int check_tls(struct daemon *d)
{
	char err[1024];
	struct tunnel_conf **tc = build_confs(d, d->cfg, err, sizeof err);
	if (tc == NULL) {
		fprintf(stderr, "%s: %s: %s\n", d->prog, d->cfg->path, err);
		return -1;
	}
	release_confs(tc, d->cfg->ntunnels);
	return 0;
}

static void start_failed(struct daemon *d, const char *err)
{
	struct log_line l;
	log_begin(&l, LOG_ERROR, "start_failed");
	log_str(&l, "file", d->path);
	log_str(&l, "msg", err);
	log_end(&l);
	d->exit_code = 1;
	daemon_stop(d);
}

static void start(struct daemon *d)
{
	char err[1024];
	if (start_handles(d) != 0) {
		start_failed(d, "cannot install signal handlers");
		return;
	}
	struct tunnel_conf **tc = build_confs(d, d->cfg, err, sizeof err);
	if (tc == NULL) {
		start_failed(d, err);
		return;
	}
	for (size_t i = 0; i < d->cfg->ntunnels; i++) {
		struct tunnel *t;
		if (tunnel_start(&d->loop, tc[i], d->role, &t, err,
		    sizeof err) != 0) {
			release_confs(tc, d->cfg->ntunnels);
			start_failed(d, err);
			return;
		}
		t->data = d;
		if (set_add(&d->active, t) != 0) {
			set_add(&d->retiring, t);	/* may fail too: */
			tunnel_stop(t, on_tunnel_empty);
			release_confs(tc, d->cfg->ntunnels);
			start_failed(d, "out of memory");
			return;
		}
	}
	release_confs(tc, d->cfg->ntunnels);
	if (d->role == CFG_SERVER)
		audit_warn(d);
	if (start_status(d, d->cfg, err, sizeof err) != 0) {
		start_failed(d, err);
		return;
	}
	if (d->cfg->user != NULL) {
		if (drop_privileges(d->cfg->user, err, sizeof err) != 0) {
			start_failed(d, err);
			return;
		}
		d->dropped_privileges = true;
	}
	struct log_line l;
	log_begin(&l, LOG_INFO, "ready");
	log_str(&l, "role", d->role == CFG_CLIENT ? "client" : "server");
	log_u64(&l, "tunnels", d->cfg->ntunnels);
	log_str(&l, "version", UPSEAL_VERSION);
	if (d->cfg->user != NULL)
		log_str(&l, "user", d->cfg->user);
	log_end(&l);
}

static int run(struct daemon *d)
{
	if (uv_loop_init(&d->loop) != 0) {
		fprintf(stderr, "%s: cannot set up the event loop\n", d->prog);
		return 1;
	}
	start(d);
	uv_run(&d->loop, UV_RUN_DEFAULT);

	free(d->active.t);
	free(d->retiring.t);
	conn_release_buffers();
	int rc = uv_loop_close(&d->loop);
	if (rc != 0) {
		log_msg(LOG_ERROR, "internal", "event loop closed with handles "
		    "still open: %s", log_uverr(rc));
		d->exit_code = 1;
	}
	if (d->exit_code == 0)
		log_msg(LOG_INFO, "stopped", "all connections closed");
	return d->exit_code;
}

int daemon_main(int argc, char **argv, enum cfg_role role)
{
	struct daemon d = { .prog = role == CFG_CLIENT ? "upseal-client" :
	    "upseal-server", .role = role };
	bool check = false, audit = false;

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if ((strcmp(a, "-c") == 0 || strcmp(a, "--config") == 0) &&
		    i + 1 < argc) {
			d.path = argv[++i];
		} else if (strncmp(a, "--config=", 9) == 0) {
			d.path = a + 9;
		} else if (strcmp(a, "--check") == 0) {
			check = true;
		} else if (strcmp(a, "--audit") == 0 && role == CFG_SERVER) {
			audit = true;
		} else if (strcmp(a, "-V") == 0 || strcmp(a, "--version") == 0) {
			printf("%s %s (mbedTLS %s)\n", d.prog, UPSEAL_VERSION,
			    MBEDTLS_VERSION_STRING);
			return 0;
		} else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
			usage(stdout, d.prog, role);
			return 0;
		} else {
			fprintf(stderr, "%s: unexpected argument \"%s\"\n", d.prog, a);
			usage(stderr, d.prog, role);
			return 2;
		}
	}
	if (d.path == NULL) {
		fprintf(stderr, "%s: no configuration: use -c FILE\n", d.prog);
		usage(stderr, d.prog, role);
		return 2;
	}

	char err[1024];
	if (cfg_load(d.path, role, &d.cfg, err, sizeof err) != 0) {
		fprintf(stderr, "%s: %s\n", d.prog, err);
		return 1;
	}
	if (audit) {
		int rc = audit_all(&d);
		cfg_release(d.cfg);
		return rc;
	}
	if (check) {
		int rc = check_tls(&d);
		if (rc == 0)
			printf("%s: ok, %zu tunnel(s)\n", d.path, d.cfg->ntunnels);
		cfg_release(d.cfg);
		return rc == 0 ? 0 : 1;
	}

	log_setup(d.cfg->log_level, d.cfg->log_json);
	signal(SIGPIPE, SIG_IGN);	/* libuv does not; a write error is enough */
	int rc = run(&d);
	cfg_release(d.cfg);
	return rc;
}
