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

#include "audit.h"
#include "cli.h"
#include "compat.h"	/* the mbedTLS configuration (MBEDTLS_THREADING_C) */
#include "conn.h"
#include "expiry.h"
#include "log.h"
#include "page.h"
#include "plan.h"
#include "rng.h"
#include "status.h"
#include "watch.h"
#include "workers.h"

struct daemon {
	/* Every worker's connection ids and open count (conn.h). */
	struct conn_counters counters;
	const char *prog;
	const char *path;
	enum cfg_role role;
	struct cfg *cfg;		/* current (held) */
	uv_loop_t loop;			/* the main thread's, worker 0's */
	struct workers *workers;
	struct plan_ctx plan_ctx;	/* role, workers running, tunnel ids */
	struct page *page;
	struct status *status;
	struct expiry *expiry;		/* the certificates' expiry warnings */
	uv_signal_t sig_term, sig_int, sig_hup;
	uv_timer_t drain_timer;
	struct watch *watch;		/* file events and reload_interval */
	/* watch_digest of what the last reload attempt read (reload_check). */
	unsigned char digest[32];
	bool handles_open;
	bool stopping;
	int exit_code;
};

static void close_daemon_handles(struct daemon *d)
{
	if (!d->handles_open)
		return;
	d->handles_open = false;
	uv_close((uv_handle_t *)&d->sig_term, NULL);
	uv_close((uv_handle_t *)&d->sig_int, NULL);
	uv_close((uv_handle_t *)&d->sig_hup, NULL);
	uv_close((uv_handle_t *)&d->drain_timer, NULL);
	watch_close(d->watch);
	d->watch = NULL;
	status_stop(d->status);
	d->status = NULL;
	expiry_stop(d->expiry);
	d->expiry = NULL;
}

/*
 * workers' on_idle. Stopping, and every worker has finished: join the
 * threads, close what is left on the main loop, and let it end.
 */
static void main_maybe_finish(void *arg)
{
	struct daemon *d = arg;
	if (!d->stopping || !workers_done(d->workers))
		return;
	workers_join(d->workers);
	close_daemon_handles(d);
}

static void on_drain_timeout(uv_timer_t *timer)
{
	struct daemon *d = timer->data;
	struct log_line l;
	log_begin(&l, LOG_WARN, "drain_timeout");
	log_u64(&l, "connections", conn_open_count(&d->counters));
	log_str(&l, "msg", "closing the connections still open");
	log_end(&l);
	workers_drop_all(d->workers);
}

/* Stop accepting everywhere; the loops end when every tunnel is empty. */
static void daemon_stop(struct daemon *d)
{
	d->stopping = true;
	watch_close(d->watch);		/* a reload is ignored from now on */
	d->watch = NULL;
	page_draining(d->page);
	if (d->handles_open)
		uv_timer_start(&d->drain_timer, on_drain_timeout,
		    d->cfg->drain_timeout_ms, 0);
	workers_stop(d->workers);
	main_maybe_finish(d);
}

static int start_status(struct daemon *d, const struct cfg *cfg, char *err,
    size_t errlen)
{
	if (!cfg->has_status)
		return 0;
	return status_start(&d->loop, &cfg->status, page_render, d->page,
	    &d->status, err, errlen);
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

/* workers = auto: one per core the process may run on. */
static unsigned workers_configured(const struct cfg *cfg)
{
	unsigned n = cfg->workers;
	if (n == 0)
		n = uv_available_parallelism();
	if (n < 1)
		n = 1;
	return n > CFG_WORKERS_MAX ? CFG_WORKERS_MAX : n;
}

/*
 * What runs: an mbedTLS built without MBEDTLS_THREADING_C has no locks
 * where threads share state (3.x: the PSA key store), so one worker.
 */
static unsigned workers_wanted(const struct cfg *cfg)
{
#if defined(MBEDTLS_THREADING_C)
	return workers_configured(cfg);
#else
	(void)workers_configured;
	(void)cfg;
	return 1;
#endif
}

/* What asked for a reload, and the file it saw change (or NULL). */
struct trigger {
	const char *why;	/* signal | file | interval */
	const char *changed;
};

static void log_trigger(struct log_line *l, const struct trigger *tr)
{
	log_str(l, "trigger", tr->why);
	if (tr->changed != NULL)
		log_str(l, "changed", tr->changed);
}

/* Say what a reload did, now that it is done. */
static void log_reloaded(struct daemon *d, const struct cfg *cfg,
    size_t kept, size_t added, size_t removed, const struct trigger *tr)
{
	struct log_line l;
	unsigned nworkers = d->plan_ctx.nworkers;
	if (workers_wanted(cfg) != nworkers) {
		log_begin(&l, LOG_WARN, "workers_unchanged");
		log_u64(&l, "running", nworkers);
		log_u64(&l, "configured", workers_wanted(cfg));
		log_str(&l, "msg", "the number of workers changes at restart");
		log_end(&l);
	}
	log_begin(&l, LOG_INFO, "reloaded");
	log_str(&l, "file", d->path);
	log_u64(&l, "tunnels", cfg->ntunnels);
	log_u64(&l, "kept", kept);
	log_u64(&l, "added", added);
	log_u64(&l, "removed", removed);
	log_trigger(&l, tr);
	log_end(&l);
}

/* The files a config names (cfg_files), as an array of its strings. */
struct paths {
	const char **v;
	size_t n, cap;
	bool oom;
};

static void add_path(const char *path, void *arg)
{
	struct paths *ps = arg;
	if (ps->oom)
		return;
	if (ps->n == ps->cap) {
		size_t cap = ps->cap ? ps->cap * 2 : 8;
		const char **v = realloc(ps->v, cap * sizeof *v);
		if (v == NULL) {
			ps->oom = true;
			return;
		}
		ps->v = v;
		ps->cap = cap;
	}
	ps->v[ps->n++] = path;
}

/*
 * Before a reload reads the files cfg names (cfg NULL: a config that
 * did not load, named by path): watch them from now on, then take their
 * digest, seeded with the text cfg was parsed from. In that order, a
 * change that lands after the digest was taken is an event still to
 * come, so a reload that compares digests never misses one. Returns
 * whether the digest differs from the last attempt's (and records it);
 * true when it could not be taken.
 */
static bool reload_check(struct daemon *d, const struct cfg *cfg,
    const char *path)
{
	static const unsigned char none[32];
	struct paths ps = { 0 };
	unsigned char digest[32];
	bool changed = true;
	if (cfg != NULL)
		cfg_files(cfg, add_path, &ps);
	else
		add_path(path, &ps);
	if (ps.oom)
		goto out;
	if (cfg != NULL && d->watch != NULL)
		watch_set(d->watch, ps.v, ps.n);
	if (watch_digest(cfg != NULL ? cfg->text_sha256 : none, ps.v, ps.n,
	    digest) != 0)
		goto out;
	changed = memcmp(digest, d->digest, sizeof digest) != 0;
	memcpy(d->digest, digest, sizeof digest);
out:
	free(ps.v);
	return changed;
}

/*
 * SIGHUP, or a change the watch saw: load the file and every certificate
 * and key it names, bind what is new, and only then switch. Any failure
 * on the way changes nothing. Triggered by the watch, a reload whose
 * files hold what the last attempt read (successful or not) does nothing
 * and says so at debug only; SIGHUP always reloads.
 */
static void reload(struct daemon *d, const struct trigger *tr)
{
	char err[1024];
	struct cfg *cfg;
	struct status *old_status = d->status;
	struct log_line l;
	bool signalled = strcmp(tr->why, "signal") == 0;
	int loaded = cfg_load(d->path, d->role, &cfg, err, sizeof err);
	if (!reload_check(d, cfg, d->path) && !signalled) {
		cfg_release(cfg);
		log_begin(&l, LOG_DEBUG, "reload_unchanged");
		log_str(&l, "file", d->path);
		log_trigger(&l, tr);
		log_end(&l);
		return;
	}
	if (loaded != 0)
		goto fail_0;
	struct plan *p = plan_new(&d->plan_ctx, cfg, err, sizeof err);
	if (p == NULL)
		goto fail_1;
	bool status_changed = !same_status(d->cfg, cfg);
	if (status_changed) {
		d->status = NULL;
		if (start_status(d, cfg, err, sizeof err) != 0)
			goto fail_2;
	}

	/* Commit: nothing below can fail in a way that needs undoing. */
	if (status_changed)
		status_stop(old_status);
	size_t kept = plan_kept(p), added = plan_size(p) - kept;
	size_t removed = workers_running(d->workers)->n - kept;
	plan_log(p);
	page_apply(d->page, p);
	workers_apply(d->workers, p);
	plan_release(p);	/* with one worker, the last reference */
	log_reloaded(d, cfg, kept, added, removed, tr);
	cfg_release(d->cfg);
	d->cfg = cfg;
	log_setup(cfg->log_level, cfg->log_json);
	if (d->watch != NULL)
		watch_enable(d->watch, cfg->watch, cfg->reload_interval_ms);
	page_reloaded(d->page, true);
	expiry_check(d->expiry);
	return;

fail_2:
	d->status = old_status;
	plan_discard(p);
fail_1:
	cfg_release(cfg);
fail_0:
	page_reloaded(d->page, false);
	log_begin(&l, LOG_ERROR, "reload_failed");
	log_str(&l, "file", d->path);
	log_str(&l, "error", err);
	log_str(&l, "msg", "the running configuration is unchanged");
	log_trigger(&l, tr);
	log_end(&l);
}

/* The watch: a burst of file events ended, or reload_interval fired. */
static void on_watch(void *arg, enum watch_trigger why, const char *changed)
{
	struct daemon *d = arg;
	struct trigger tr = {
		.why = why == WATCH_FILE ? "file" : "interval",
		.changed = changed,
	};
	if (!d->stopping)
		reload(d, &tr);
}

static void on_signal(uv_signal_t *s, int signum)
{
	struct daemon *d = s->data;
	if (signum == SIGHUP) {
		static const struct trigger tr = { .why = "signal" };
		if (d->stopping) {
			log_msg(LOG_WARN, "reload_ignored", "stopping: SIGHUP ignored");
		} else {
			/* It reads everything now: events so far are covered. */
			watch_settle(d->watch);
			reload(d, &tr);
		}
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
	if ((d->expiry = expiry_start(&d->loop, workers_running(d->workers))) == NULL)
		return -1;
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

/* At start: say loudly when a backend can be reached around the tunnel. */
static void audit_warn(const struct cfg *cfg)
{
	for (size_t i = 0; i < cfg->ntunnels; i++) {
		const struct cfg_tunnel *t = &cfg->tunnels[i];
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

static void start(struct daemon *d)
{
	char err[1024];
	struct log_line l;
	struct plan *p = NULL;
	if (start_handles(d) != 0) {
		snprintf(err, sizeof err, "cannot install signal handlers");
		goto fail;
	}
	/* Watch first, then digest, then load (reload_check says why). */
	if (watch_new(&d->loop, on_watch, d, &d->watch) != 0) {
		snprintf(err, sizeof err, "out of memory");
		goto fail;
	}
	watch_enable(d->watch, d->cfg->watch, d->cfg->reload_interval_ms);
	reload_check(d, d->cfg, d->path);
	p = plan_new(&d->plan_ctx, d->cfg, err, sizeof err);
	if (p == NULL)
		goto fail;
	plan_log(p);
	page_apply(d->page, p);
	workers_apply(d->workers, p);	/* worker 0: the others start below */
	expiry_check(d->expiry);
	if (d->role == CFG_SERVER)
		audit_warn(d->cfg);
	if (start_status(d, d->cfg, err, sizeof err) != 0)
		goto fail;
	if (d->cfg->user != NULL &&
	    drop_privileges(d->cfg->user, err, sizeof err) != 0)
		goto fail;
	/* The other workers start as the user, with the same tunnels. */
	if (workers_spawn(d->workers, p, err, sizeof err) != 0)
		goto fail;
	plan_release(p);

	log_begin(&l, LOG_INFO, "ready");
	log_str(&l, "role", d->role == CFG_CLIENT ? "client" : "server");
	log_u64(&l, "tunnels", d->cfg->ntunnels);
	log_u64(&l, "workers", d->plan_ctx.nworkers);
	log_str(&l, "version", UPSEAL_VERSION);
	if (d->cfg->user != NULL)
		log_str(&l, "user", d->cfg->user);
	log_end(&l);
	return;

fail:
	plan_release(p);
	log_begin(&l, LOG_ERROR, "start_failed");
	log_str(&l, "file", d->path);
	log_str(&l, "msg", err);
	log_end(&l);
	d->exit_code = 1;
	daemon_stop(d);
}

static int run(struct daemon *d)
{
	char err[256];
	unsigned n = workers_wanted(d->cfg);
	if (n < workers_configured(d->cfg)) {
		struct log_line l;
		log_begin(&l, LOG_WARN, "workers_limited");
		log_u64(&l, "configured", workers_configured(d->cfg));
		log_u64(&l, "running", n);
		log_str(&l, "msg", "this mbedTLS was built without "
		    "MBEDTLS_THREADING_C: one worker");
		log_end(&l);
	}
	snprintf(err, sizeof err, "cannot set up the event loop");
	if (uv_loop_init(&d->loop) != 0)
		goto fail_0;
	if (workers_new(&d->loop, n, main_maybe_finish, d, &d->counters,
	    &d->workers, err, sizeof err) != 0)
		goto fail_1;
	const struct tset *running = workers_running(d->workers);
	d->page = page_new(d->role, running);
	if (d->page == NULL)
		goto fail_2;
	d->plan_ctx = (struct plan_ctx){ .role = d->role, .nworkers = n,
		.running = running };

	start(d);
	uv_run(&d->loop, UV_RUN_DEFAULT);

	page_free(d->page);
	workers_free(d->workers);
	conn_release_buffers();
	rng_thread_free();
	int rc = uv_loop_close(&d->loop);
	if (rc != 0) {
		log_msg(LOG_ERROR, "internal", "event loop closed with handles "
		    "still open: %s", log_uverr(rc));
		d->exit_code = 1;
	}
	if (d->exit_code == 0)
		log_msg(LOG_INFO, "stopped", "all connections closed");
	return d->exit_code;

fail_2:
	workers_join(d->workers);	/* closes worker 0's handle */
	uv_run(&d->loop, UV_RUN_DEFAULT);
	workers_free(d->workers);
fail_1:
	uv_loop_close(&d->loop);
fail_0:
	fprintf(stderr, "%s: %s\n", d->prog, err);
	return 1;
}

int daemon_main(int argc, char **argv, enum cfg_role role)
{
	struct cli c;
	int rc = cli_parse(argc, argv, role, &c);
	if (rc >= 0)
		return rc;
	struct daemon d = { .prog = c.prog, .path = c.path, .role = role };
	char err[1024];
	if (cfg_load(d.path, role, &d.cfg, err, sizeof err) != 0) {
		fprintf(stderr, "%s: %s\n", d.prog, err);
		return 1;
	}
	if (c.audit) {
		rc = cli_audit(d.cfg);
	} else if (c.check) {
		rc = cli_check(&c, d.cfg, role);
	} else {
		log_setup(d.cfg->log_level, d.cfg->log_json);
		signal(SIGPIPE, SIG_IGN);	/* libuv does not; a write error is enough */
		rc = run(&d);
	}
	cfg_release(d.cfg);
	return rc;
}
