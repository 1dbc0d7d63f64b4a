#include "daemon.h"

#include <errno.h>
#include <grp.h>
#include <pthread.h>
#include <pwd.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <uv.h>

#include <mbedtls/version.h>

#include "audit.h"
#include "compat.h"	/* the mbedTLS configuration (MBEDTLS_THREADING_C) */
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

/*
 * One entry of a plan: a section of the config, and either the running
 * tunnel (by id) it keeps or the sockets and counters of a fresh one.
 */
struct plan_entry {
	struct tunnel_conf *tc;		/* held */
	uint64_t keep;			/* id of the tunnel kept, or 0 */
	uint64_t tid;			/* the tunnel's id from now on */
	bool renamed;			/* kept under a new name */
	struct tunnel_stats *stats;	/* fresh: its counters (held) */
	struct listen_fds fds;		/* fresh: one socket per worker */
};

/*
 * What every worker runs to switch to a config (at start and on reload),
 * built and bound on the main thread; shared, counted, read-only but for
 * each worker taking its own sockets.
 */
struct plan {
	_Atomic unsigned refs;
	enum cfg_role role;
	struct plan_entry *e;
	size_t n;
};

enum msg_kind { MSG_APPLY, MSG_STOP, MSG_DROP };

struct msg {
	enum msg_kind kind;
	struct plan *plan;		/* MSG_APPLY: held */
	struct msg *next;
};

/*
 * A worker: an event loop with its own copy of every tunnel (its own
 * listening socket, its own connections). Worker 0 runs on the main
 * thread's loop, next to the signals and the status endpoint; the others
 * run on threads of their own and are told what to do through messages.
 */
struct worker {
	struct daemon *d;
	unsigned idx;
	uv_loop_t *loop;
	uv_loop_t own_loop;		/* workers 1..: their thread's */
	struct tunnel_set active;
	struct tunnel_set retiring;
	bool stopping;
	uv_thread_t thread;
	uv_sem_t ready;
	int start_err;
	uv_async_t async;		/* wakes the worker's loop */
	uv_mutex_t lock;		/* guards the queue and async_open */
	bool async_open;
	struct msg *head, *tail;
	_Atomic bool resume;		/* a max_connections slot was freed */
};

/*
 * One tunnel as the status endpoint reports it, kept on the main thread
 * (the workers' copies come and go on their own threads): its id, name and
 * counters; a tunnel a reload removed (or every tunnel, while stopping)
 * stays listed, not listening, while connections are open under its
 * counters on any worker.
 */
struct series {
	uint64_t tid;
	char name[CFG_NAME_MAX];
	struct tunnel_stats *stats;	/* held */
	bool current;			/* in the running config */
};

struct daemon {
	const char *prog;
	const char *path;
	enum cfg_role role;
	struct cfg *cfg;		/* current (held) */
	uv_loop_t loop;			/* the main thread's, worker 0's */
	struct worker *w;
	unsigned nworkers;		/* configured */
	unsigned nstarted;		/* running (worker 0 included) */
	_Atomic unsigned running;	/* worker threads not yet finished */
	uint64_t next_tid;
	struct series *series;		/* current first, in config order */
	size_t nseries;
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

static struct tunnel *set_find(const struct tunnel_set *s, uint64_t id)
{
	for (size_t i = 0; i < s->n; i++)
		if (s->t[i]->id == id)
			return s->t[i];
	return NULL;
}

/* ---- plans: what every worker runs after a start or a reload ---- */

static void plan_release(struct plan *p)
{
	if (p == NULL || atomic_fetch_sub(&p->refs, 1) > 1)
		return;
	for (size_t i = 0; i < p->n; i++) {
		struct plan_entry *e = &p->e[i];
		tunnel_conf_release(e->tc);
		tunnel_stats_release(e->stats);
		/* Sockets a worker did not take (it failed): not the file. */
		for (unsigned w = 0; w < e->fds.n; w++)
			if (e->fds.fd[w] >= 0)
				close(e->fds.fd[w]);
	}
	free(p->e);
	free(p);
}

/* ---- workers ---- */

static struct daemon *the_daemon;	/* for tunnel.c's waker */

static void worker_maybe_done(struct worker *w);

/* A stopped tunnel has no connection left: free it. */
static void on_tunnel_empty(struct tunnel *t)
{
	struct worker *w = t->data;
	if (!set_remove(&w->retiring, t))
		set_remove(&w->active, t);
	tunnel_free(t);
	worker_maybe_done(w);
}

static void stop_tunnel(struct worker *w, struct tunnel *t)
{
	if (set_add(&w->retiring, t) != 0)
		tunnel_drop_all(t, "nomem");
	tunnel_stop(t, on_tunnel_empty);
}

/*
 * Run plan p on worker w: reconfigure the tunnels it keeps, start the new
 * ones on the sockets made for this worker, stop the rest. The same plan
 * runs on every worker, so their tunnels stay copies of each other.
 */
static void worker_apply(struct worker *w, struct plan *p)
{
	struct tunnel_set next = { 0 };
	for (size_t i = 0; i < p->n; i++) {
		struct plan_entry *e = &p->e[i];
		struct tunnel *t = e->keep ? set_find(&w->active, e->keep) : NULL;
		bool have_fd = e->fds.fd[w->idx] >= 0;
		char err[512];
		if (t != NULL) {
			tunnel_reconfigure(t, e->tc);
			set_remove(&w->active, t);
		} else if (!have_fd ||
		    tunnel_start(w->loop, w->idx, e->tc, p->role, e->stats,
		    &e->fds, &t, err, sizeof err) != 0) {
			/* A kept tunnel this worker lost earlier has no socket. */
			if (!have_fd)
				snprintf(err, sizeof err, "[%s] not running on this "
				    "worker", e->tc->cfg->name);
			struct log_line l;
			log_begin(&l, LOG_ERROR, "worker_listen_failed");
			log_u64(&l, "worker", w->idx);
			log_str(&l, "error", err);
			log_str(&l, "msg", "the other workers carry this tunnel");
			log_end(&l);
			continue;
		}
		t->id = e->tid;
		t->data = w;
		if (set_add(&next, t) != 0)
			stop_tunnel(w, t);	/* cannot track it: stop, not lose it */
	}
	/* What is left was removed or moved: it drains. */
	for (size_t i = 0; i < w->active.n; i++)
		stop_tunnel(w, w->active.t[i]);
	free(w->active.t);
	w->active = next;
}

static void worker_stop(struct worker *w)
{
	if (w->stopping)
		return;
	w->stopping = true;
	/* tunnel_stop may call back at once: iterate over a copy. */
	struct tunnel_set all = { 0 };
	for (size_t i = 0; i < w->active.n; i++)
		if (set_add(&all, w->active.t[i]) != 0)
			tunnel_drop_all(w->active.t[i], "nomem");
	for (size_t i = 0; i < all.n; i++)
		tunnel_stop(all.t[i], on_tunnel_empty);
	free(all.t);
	worker_maybe_done(w);
}

static void worker_drop_all(struct worker *w, const char *reason)
{
	for (size_t i = 0; i < w->active.n; i++)
		tunnel_drop_all(w->active.t[i], reason);
	for (size_t i = 0; i < w->retiring.n; i++)
		tunnel_drop_all(w->retiring.t[i], reason);
}

/* max_connections freed a slot: let held-back accepts try again. */
static void worker_resume(struct worker *w)
{
	for (size_t i = 0; i < w->active.n; i++)
		tunnel_resume_accept(w->active.t[i]);
}

static void main_maybe_finish(struct daemon *d);

static void on_worker_async(uv_async_t *a)
{
	struct worker *w = a->data;
	if (atomic_exchange(&w->resume, false))
		worker_resume(w);
	uv_mutex_lock(&w->lock);
	struct msg *m = w->head;
	w->head = w->tail = NULL;
	uv_mutex_unlock(&w->lock);
	while (m != NULL) {
		struct msg *next = m->next;
		switch (m->kind) {
		case MSG_APPLY:
			worker_apply(w, m->plan);
			break;
		case MSG_STOP:
			worker_stop(w);
			break;
		case MSG_DROP:
			worker_drop_all(w, "drain");
			break;
		}
		plan_release(m->plan);
		free(m);
		m = next;
	}
	if (w->idx == 0)
		main_maybe_finish(w->d);
}

/* Hand worker w (a thread) a message; a plan gains a reference. */
static void worker_post(struct worker *w, enum msg_kind kind, struct plan *p)
{
	struct msg *m = calloc(1, sizeof *m);
	if (m == NULL) {
		log_msg(LOG_ERROR, "internal", "worker %u: out of memory: a "
		    "message was lost", w->idx);
		return;
	}
	m->kind = kind;
	if (p != NULL) {
		atomic_fetch_add(&p->refs, 1);
		m->plan = p;
	}
	uv_mutex_lock(&w->lock);
	if (w->async_open) {
		if (w->tail != NULL)
			w->tail->next = m;
		else
			w->head = m;
		w->tail = m;
		uv_async_send(&w->async);
		m = NULL;
	}
	uv_mutex_unlock(&w->lock);
	if (m != NULL) {	/* the worker has ended */
		plan_release(m->plan);
		free(m);
	}
}

/* Run on every worker: worker 0 (this thread) now, the others queued. */
static void workers_apply(struct daemon *d, struct plan *p)
{
	worker_apply(&d->w[0], p);
	for (unsigned i = 1; i < d->nstarted; i++)
		worker_post(&d->w[i], MSG_APPLY, p);
}

static void workers_stop(struct daemon *d)
{
	worker_stop(&d->w[0]);
	for (unsigned i = 1; i < d->nstarted; i++)
		worker_post(&d->w[i], MSG_STOP, NULL);
}

static void workers_drop_all(struct daemon *d)
{
	worker_drop_all(&d->w[0], "drain");
	for (unsigned i = 1; i < d->nstarted; i++)
		worker_post(&d->w[i], MSG_DROP, NULL);
}

/* tunnel.c: a connection ended; worker i may accept again. */
static void wake_worker(unsigned i)
{
	struct daemon *d = the_daemon;
	if (d == NULL || i >= d->nstarted)
		return;
	struct worker *w = &d->w[i];
	atomic_store(&w->resume, true);
	uv_mutex_lock(&w->lock);
	if (w->async_open)
		uv_async_send(&w->async);
	uv_mutex_unlock(&w->lock);
}

static void worker_close_async(struct worker *w)
{
	uv_mutex_lock(&w->lock);
	bool open = w->async_open;
	w->async_open = false;
	struct msg *m = w->head;
	w->head = w->tail = NULL;
	uv_mutex_unlock(&w->lock);
	while (m != NULL) {
		struct msg *next = m->next;
		plan_release(m->plan);
		free(m);
		m = next;
	}
	if (open)
		uv_close((uv_handle_t *)&w->async, NULL);
}

/* A stopping worker without tunnels is done: its loop may end. */
static void worker_maybe_done(struct worker *w)
{
	if (!w->stopping || w->active.n != 0 || w->retiring.n != 0)
		return;
	if (w->idx == 0)
		main_maybe_finish(w->d);
	else
		worker_close_async(w);
}

static void worker_thread(void *arg)
{
	struct worker *w = arg;
	int rc = uv_loop_init(&w->own_loop);
	if (rc == 0) {
		rc = uv_async_init(&w->own_loop, &w->async, on_worker_async);
		if (rc != 0)
			uv_loop_close(&w->own_loop);
	}
	if (rc != 0) {
		w->start_err = rc;
		uv_sem_post(&w->ready);
		return;
	}
	w->async.data = w;
	w->loop = &w->own_loop;
	char name[16];	/* for top -H and /proc/PID/task/TID/comm */
	snprintf(name, sizeof name, "worker-%u", w->idx);
	pthread_setname_np(pthread_self(), name);
	w->async_open = true;
	uv_sem_post(&w->ready);

	uv_run(&w->own_loop, UV_RUN_DEFAULT);

	free(w->active.t);
	free(w->retiring.t);
	w->active = w->retiring = (struct tunnel_set){ 0 };
	conn_release_buffers();
	rng_thread_free();
	if (uv_loop_close(&w->own_loop) != 0)
		log_msg(LOG_ERROR, "internal", "worker %u: event loop closed "
		    "with handles still open", w->idx);
	atomic_fetch_sub(&w->d->running, 1);
	/* Joined by the main thread before it closes this async. */
	uv_async_send(&w->d->w[0].async);
}

/*
 * Start workers 1..n-1, each on its own thread and loop, and hand them
 * plan p. On error returns -1 with err set; those started still run.
 */
static int workers_spawn(struct daemon *d, struct plan *p, char *err,
    size_t errlen)
{
	for (unsigned i = 1; i < d->nworkers; i++) {
		struct worker *w = &d->w[i];
		if (uv_sem_init(&w->ready, 0) != 0) {
			snprintf(err, errlen, "worker %u: cannot create a "
			    "semaphore", i);
			return -1;
		}
		atomic_fetch_add(&d->running, 1);
		int rc = uv_thread_create(&w->thread, worker_thread, w);
		if (rc == 0)
			uv_sem_wait(&w->ready);
		uv_sem_destroy(&w->ready);
		if (rc == 0 && w->start_err == 0) {
			d->nstarted = i + 1;
			worker_post(w, MSG_APPLY, p);
			continue;
		}
		if (rc == 0)
			uv_thread_join(&w->thread);
		atomic_fetch_sub(&d->running, 1);
		snprintf(err, errlen, "worker %u: cannot start: %s", i,
		    log_uverr(rc != 0 ? rc : w->start_err));
		return -1;
	}
	return 0;
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

/*
 * Stopping, and every worker has finished: join the threads, close what
 * is left on the main loop, and let it end.
 */
static void main_maybe_finish(struct daemon *d)
{
	struct worker *w0 = &d->w[0];
	if (!d->stopping || w0->active.n != 0 || w0->retiring.n != 0 ||
	    atomic_load(&d->running) != 0)
		return;
	for (unsigned i = 1; i < d->nstarted; i++)
		uv_thread_join(&d->w[i].thread);
	d->nstarted = d->nstarted ? 1 : 0;
	worker_close_async(w0);
	close_daemon_handles(d);
}

static void on_drain_timeout(uv_timer_t *timer)
{
	struct daemon *d = timer->data;
	struct log_line l;
	log_begin(&l, LOG_WARN, "drain_timeout");
	log_u64(&l, "connections", conn_open_count());
	log_str(&l, "msg", "closing the connections still open");
	log_end(&l);
	workers_drop_all(d);
}

/* Stop accepting everywhere; the loops end when every tunnel is empty. */
static void daemon_stop(struct daemon *d)
{
	d->stopping = true;
	if (d->handles_open)
		uv_timer_start(&d->drain_timer, on_drain_timeout,
		    d->cfg->drain_timeout_ms, 0);
	workers_stop(d);
	main_maybe_finish(d);
}

/* ---- status endpoint ---- */

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
	/* Retired series whose last connection ended go now. */
	size_t keep = 0;
	for (size_t i = 0; i < d->nseries; i++) {
		struct series *sr = &d->series[i];
		if (!sr->current && !d->stopping &&
		    atomic_load(&sr->stats->open) == 0) {
			tunnel_stats_release(sr->stats);
			continue;
		}
		d->series[keep++] = *sr;
	}
	d->nseries = keep;
	struct metrics_tunnel *mt = calloc(keep ? keep : 1, sizeof *mt);
	if (mt == NULL) {
		body->failed = true;
		return 500;
	}
	/*
	 * One series per set of counters: a tunnel moved by a reload shares
	 * its counters with the one still draining (listed once, under the
	 * current name), and a removed tunnel is reported (not listening)
	 * until its last connection ends.
	 */
	size_t k = 0;
	for (size_t i = 0; i < d->nseries; i++) {
		const struct series *sr = &d->series[i];
		if (counted(mt, k, sr->stats))
			continue;
		struct tunnel *t = set_find(&d->w[0].active, sr->tid);
		mt[k++] = (struct metrics_tunnel){ .name = sr->name,
			.stats = sr->stats, .open = atomic_load(&sr->stats->open),
			.listening = sr->current && t != NULL &&
			t->listener_open && !t->stopping };
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
		struct worker *w = &d->w[0];
		for (size_t i = 0; i < w->active.n; i++) {
			if (!w->active.t[i]->listener_open) {
				sbuf_printf(body, "tunnel %s is not listening\n",
				    tunnel_cfg(w->active.t[i])->name);
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
 * unix socket would open a connection through it. Worker 0's copies stand
 * for all: every worker runs the same plans.
 */
static struct tunnel *find_reusable(struct daemon *d,
    const struct cfg_tunnel *nt, struct tunnel **keep, size_t nkeep)
{
	const struct tunnel_set *active = &d->w[0].active;
	char want[ADDR_TEXT_MAX];
	addr_format(&nt->listen, want, sizeof want);
	for (size_t i = 0; i < active->n; i++) {
		struct tunnel *t = active->t[i];
		const struct cfg_tunnel *ot = tunnel_cfg(t);
		if (strcmp(ot->name, nt->name) == 0 && same_listen(ot, nt) &&
		    !claimed(t, keep, nkeep))
			return t;
	}
	for (size_t i = 0; i < active->n; i++) {
		struct tunnel *t = active->t[i];
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
	const struct tunnel_set *active = &d->w[0].active;
	for (size_t i = 0; i < active->n; i++)
		if (strcmp(tunnel_cfg(active->t[i])->name, name) == 0)
			return active->t[i];
	return NULL;
}

/*
 * Plan the switch to cfg, whose tunnel settings are tc (the plan takes
 * them over): which running tunnel each section keeps, and for the others
 * a fresh id, counters and listening sockets, bound here and now. All or
 * nothing: on error err says what and where, and nothing is left bound.
 */
static struct plan *plan_build(struct daemon *d, struct cfg *cfg,
    struct tunnel_conf **tc, char *err, size_t errlen)
{
	struct plan *p = calloc(1, sizeof *p);
	struct tunnel **keep = calloc(cfg->ntunnels ? cfg->ntunnels : 1,
	    sizeof *keep);
	if (p != NULL)
		p->e = calloc(cfg->ntunnels ? cfg->ntunnels : 1, sizeof *p->e);
	if (p == NULL || keep == NULL || p->e == NULL) {
		snprintf(err, errlen, "out of memory");
		free(keep);
		if (p != NULL)
			free(p->e);
		free(p);
		for (size_t i = 0; i < cfg->ntunnels; i++)
			tunnel_conf_release(tc[i]);
		return NULL;
	}
	atomic_init(&p->refs, 1);
	p->role = d->role;
	p->n = cfg->ntunnels;
	for (size_t i = 0; i < p->n; i++) {
		p->e[i].tc = tc[i];
		p->e[i].fds.n = 0;
		for (unsigned w = 0; w < CFG_WORKERS_MAX; w++)
			p->e[i].fds.fd[w] = -1;	/* kept tunnels get none */
		keep[i] = find_reusable(d, &cfg->tunnels[i], keep, i);
	}
	bool failed = false;
	for (size_t i = 0; i < p->n && !failed; i++) {
		struct plan_entry *e = &p->e[i];
		if (keep[i] != NULL) {
			e->keep = e->tid = keep[i]->id;
			e->renamed = strcmp(tunnel_cfg(keep[i])->name,
			    cfg->tunnels[i].name) != 0;
			continue;
		}
		e->tid = ++d->next_tid;
		/* Moved to a new address: its counters carry on. */
		struct tunnel *old = find_named(d, cfg->tunnels[i].name);
		e->stats = old != NULL && !claimed(old, keep, p->n) ?
		    tunnel_stats_hold(old->stats) : tunnel_stats_new();
		if (e->stats == NULL) {
			snprintf(err, errlen, "[%s] out of memory",
			    cfg->tunnels[i].name);
			failed = true;
		} else if (listen_open(&cfg->tunnels[i], d->role, d->nworkers,
		    &e->fds, err, errlen) != 0) {
			failed = true;
		}
	}
	free(keep);
	if (failed) {
		for (size_t i = 0; i < p->n; i++)
			listen_close(&p->e[i].fds, &cfg->tunnels[i]);
		plan_release(p);
		return NULL;
	}
	return p;
}

/*
 * The status endpoint's view after plan p: its sections, in order, then
 * the series it retires. Out of memory, a new tunnel is just not listed.
 */
static void series_apply(struct daemon *d, const struct plan *p)
{
	struct series *next = calloc(p->n + d->nseries + 1, sizeof *next);
	if (next == NULL)
		return;
	size_t k = 0;
	for (size_t i = 0; i < p->n; i++) {
		const struct plan_entry *e = &p->e[i];
		struct series *s = &next[k++];
		s->tid = e->tid;
		s->current = true;
		snprintf(s->name, sizeof s->name, "%s", e->tc->cfg->name);
		s->stats = NULL;
		for (size_t j = 0; j < d->nseries; j++) {
			if (d->series[j].tid == e->tid && d->series[j].stats) {
				s->stats = d->series[j].stats;	/* moved over */
				d->series[j].stats = NULL;
			}
		}
		if (s->stats == NULL && e->stats != NULL)
			s->stats = tunnel_stats_hold(e->stats);
		if (s->stats == NULL)
			k--;
	}
	for (size_t j = 0; j < d->nseries; j++) {
		if (d->series[j].stats == NULL)
			continue;
		next[k] = d->series[j];
		next[k++].current = false;
	}
	free(d->series);
	d->series = next;
	d->nseries = k;
}

static void series_free(struct daemon *d)
{
	for (size_t j = 0; j < d->nseries; j++)
		tunnel_stats_release(d->series[j].stats);
	free(d->series);
	d->series = NULL;
	d->nseries = 0;
}

/* Say where the new and renamed tunnels listen, once for all workers. */
static void plan_log(struct daemon *d, const struct plan *p)
{
	for (size_t i = 0; i < p->n; i++) {
		const struct plan_entry *e = &p->e[i];
		if (!e->keep) {
			tunnel_log_start(e->tc->cfg, d->role, e->fds.text);
		} else if (e->renamed) {
			/* The same listener, under its new name. */
			struct tunnel *t = set_find(&d->w[0].active, e->keep);
			if (t != NULL)
				tunnel_log_start(e->tc->cfg, d->role,
				    t->listen_text);
		}
	}
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
	struct plan *p = plan_build(d, cfg, tc, err, sizeof err);
	free(tc);	/* the plan holds the settings now */
	if (p == NULL) {
		log_reload_failed(d, err);
		cfg_release(cfg);
		return;
	}
	struct status *old_status = NULL;
	bool status_changed = !same_status(d->cfg, cfg);
	if (status_changed) {
		old_status = d->status;
		d->status = NULL;
		if (start_status(d, cfg, err, sizeof err) != 0) {
			d->status = old_status;
			for (size_t i = 0; i < p->n; i++)
				listen_close(&p->e[i].fds, &cfg->tunnels[i]);
			plan_release(p);
			cfg_release(cfg);
			log_reload_failed(d, err);
			return;
		}
	}

	/* Commit: nothing below can fail in a way that needs undoing. */
	if (status_changed)
		status_stop(old_status);
	size_t kept = 0, added = 0;
	for (size_t i = 0; i < p->n; i++) {
		if (p->e[i].keep)
			kept++;
		else
			added++;
	}
	size_t removed = d->w[0].active.n - kept;
	plan_log(d, p);
	series_apply(d, p);
	workers_apply(d, p);
	plan_release(p);
	if (workers_wanted(cfg) != d->nworkers) {
		struct log_line l;
		log_begin(&l, LOG_WARN, "workers_unchanged");
		log_u64(&l, "running", d->nworkers);
		log_u64(&l, "configured", workers_wanted(cfg));
		log_str(&l, "msg", "the number of workers changes at restart");
		log_end(&l);
	}
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
	struct worker *w0 = &d->w[0];
	if (uv_async_init(&d->loop, &w0->async, on_worker_async) != 0)
		return -1;
	w0->async.data = w0;
	w0->async_open = true;
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
	struct plan *p = plan_build(d, d->cfg, tc, err, sizeof err);
	free(tc);	/* the plan holds the settings now */
	if (p == NULL) {
		start_failed(d, err);
		return;
	}
	plan_log(d, p);
	series_apply(d, p);
	worker_apply(&d->w[0], p);
	if (d->role == CFG_SERVER)
		audit_warn(d);
	if (start_status(d, d->cfg, err, sizeof err) != 0) {
		plan_release(p);
		start_failed(d, err);
		return;
	}
	if (d->cfg->user != NULL) {
		if (drop_privileges(d->cfg->user, err, sizeof err) != 0) {
			plan_release(p);
			start_failed(d, err);
			return;
		}
		d->dropped_privileges = true;
	}
	/* The other workers start as the user, with the same tunnels. */
	int rc = workers_spawn(d, p, err, sizeof err);
	plan_release(p);
	if (rc != 0) {
		start_failed(d, err);
		return;
	}
	struct log_line l;
	log_begin(&l, LOG_INFO, "ready");
	log_str(&l, "role", d->role == CFG_CLIENT ? "client" : "server");
	log_u64(&l, "tunnels", d->cfg->ntunnels);
	log_u64(&l, "workers", d->nworkers);
	log_str(&l, "version", UPSEAL_VERSION);
	if (d->cfg->user != NULL)
		log_str(&l, "user", d->cfg->user);
	log_end(&l);
}

static int run(struct daemon *d)
{
	d->nworkers = workers_wanted(d->cfg);
	if (d->nworkers < workers_configured(d->cfg)) {
		struct log_line l;
		log_begin(&l, LOG_WARN, "workers_limited");
		log_u64(&l, "configured", workers_configured(d->cfg));
		log_u64(&l, "running", d->nworkers);
		log_str(&l, "msg", "this mbedTLS was built without "
		    "MBEDTLS_THREADING_C: one worker");
		log_end(&l);
	}
	d->w = calloc(d->nworkers, sizeof *d->w);
	if (d->w == NULL || uv_loop_init(&d->loop) != 0) {
		fprintf(stderr, "%s: cannot set up the event loop\n", d->prog);
		free(d->w);
		return 1;
	}
	for (unsigned i = 0; i < d->nworkers; i++) {
		struct worker *w = &d->w[i];
		w->d = d;
		w->idx = i;
		w->loop = i == 0 ? &d->loop : NULL;
		if (uv_mutex_init(&w->lock) != 0) {
			fprintf(stderr, "%s: cannot create a lock\n", d->prog);
			for (unsigned j = 0; j < i; j++)
				uv_mutex_destroy(&d->w[j].lock);
			free(d->w);
			uv_loop_close(&d->loop);
			return 1;
		}
	}
	d->nstarted = 1;
	the_daemon = d;
	tunnel_set_waker(wake_worker);
	start(d);
	uv_run(&d->loop, UV_RUN_DEFAULT);

	tunnel_set_waker(NULL);
	the_daemon = NULL;
	free(d->w[0].active.t);
	free(d->w[0].retiring.t);
	series_free(d);
	for (unsigned i = 0; i < d->nworkers; i++)
		uv_mutex_destroy(&d->w[i].lock);
	free(d->w);
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
