#include "plan.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

/*
 * One entry of a plan: a section of the config, and either the running
 * tunnel (by id) it keeps or the sockets of a fresh one. A kept entry
 * carries its tunnel's counters and bound address too, for a worker that
 * starts it from sockets plan_carry gave it.
 */
struct plan_entry {
	struct tunnel_conf *tc;		/* held */
	uint64_t keep;			/* id of the tunnel kept, or 0 */
	uint64_t tid;			/* the tunnel's id from now on */
	bool renamed;			/* kept under a new name */
	struct tunnel_stats *stats;	/* its counters (held) */
	struct listen_fds fds;		/* fresh: one socket per worker */
};

struct plan {
	_Atomic unsigned refs;
	struct cfg *cfg;		/* held */
	enum cfg_role role;
	struct plan_entry *e;
	size_t n;
};

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
static struct tunnel *find_reusable(const struct tset *active,
    const struct cfg_tunnel *nt, struct tunnel **keep, size_t nkeep)
{
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
		    strcmp(tunnel_listen_text(t), want) == 0)
			return t;
	}
	return NULL;
}

/* The running tunnel named name, if a reload is moving it elsewhere. */
static struct tunnel *find_named(const struct tset *active, const char *name)
{
	for (size_t i = 0; i < active->n; i++)
		if (strcmp(tunnel_cfg(active->t[i])->name, name) == 0)
			return active->t[i];
	return NULL;
}

/* Entry i keeps tunnel t: its id, counters and bound address. */
static void plan_keep(struct plan *p, size_t i, struct tunnel *t,
    unsigned nworkers)
{
	struct plan_entry *e = &p->e[i];
	e->keep = e->tid = tunnel_id(t);
	e->renamed = strcmp(tunnel_cfg(t)->name, e->tc->cfg->name) != 0;
	e->stats = tunnel_stats_hold(tunnel_stats(t));
	e->fds.n = nworkers;
	snprintf(e->fds.text, sizeof e->fds.text, "%s", tunnel_listen_text(t));
}

/* Entry i is a fresh tunnel: its id, counters and sockets. */
static int plan_fresh(struct plan *p, size_t i, struct plan_ctx *ctx,
    struct tunnel **keep, char *err, size_t errlen)
{
	struct plan_entry *e = &p->e[i];
	const struct cfg_tunnel *ct = e->tc->cfg;
	e->tid = ++ctx->last_tid;
	/* Moved to a new address: its counters carry on. */
	struct tunnel *old = find_named(ctx->running, ct->name);
	e->stats = old != NULL && !claimed(old, keep, p->n) ?
	    tunnel_stats_hold(tunnel_stats(old)) : tunnel_stats_new();
	if (e->stats == NULL) {
		snprintf(err, errlen, "[%s] out of memory", ct->name);
		return -1;
	}
	return listen_open(ct, ctx->role, ctx->nworkers, &e->fds, err, errlen);
}

struct plan *plan_new(struct plan_ctx *ctx, struct cfg *cfg, char *err,
    size_t errlen)
{
	size_t n = cfg->ntunnels;
	struct tunnel **keep = NULL;
	struct plan *p = calloc(1, sizeof *p);
	if (p == NULL)
		goto fail_nomem;
	atomic_init(&p->refs, 1);
	p->cfg = cfg_hold(cfg);
	p->role = ctx->role;
	p->e = calloc(n ? n : 1, sizeof *p->e);
	keep = calloc(n ? n : 1, sizeof *keep);
	if (p->e == NULL || keep == NULL)
		goto fail_nomem_1;
	p->n = n;
	for (size_t i = 0; i < n; i++)
		for (unsigned w = 0; w < CFG_WORKERS_MAX; w++)
			p->e[i].fds.fd[w] = -1;	/* kept tunnels get none */
	for (size_t i = 0; i < n; i++) {
		p->e[i].tc = tunnel_conf_new(cfg, &cfg->tunnels[i], ctx->role,
		    err, errlen);
		if (p->e[i].tc == NULL)
			goto fail_1;
	}
	for (size_t i = 0; i < n; i++)
		keep[i] = find_reusable(ctx->running, &cfg->tunnels[i], keep, i);
	for (size_t i = 0; i < n; i++) {
		if (keep[i] != NULL)
			plan_keep(p, i, keep[i], ctx->nworkers);
		else if (plan_fresh(p, i, ctx, keep, err, errlen) != 0)
			goto fail_1;
	}
	free(keep);
	return p;

fail_nomem_1:
	snprintf(err, errlen, "out of memory");
fail_1:
	free(keep);
	plan_discard(p);
	return NULL;
fail_nomem:
	snprintf(err, errlen, "out of memory");
	return NULL;
}

struct plan *plan_hold(struct plan *p)
{
	atomic_fetch_add(&p->refs, 1);
	return p;
}

void plan_release(struct plan *p)
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
	cfg_release(p->cfg);
	free(p);
}

void plan_discard(struct plan *p)
{
	for (size_t i = 0; i < p->n; i++)
		if (p->e[i].tc != NULL)
			listen_close(&p->e[i].fds, p->e[i].tc->cfg);
	plan_release(p);
}

void plan_apply(struct plan *p, const struct plan_worker *w)
{
	struct tset next = { 0 };
	for (size_t i = 0; i < p->n; i++) {
		struct plan_entry *e = &p->e[i];
		struct tunnel *t = e->keep ? tset_find(w->active, e->keep) : NULL;
		bool have_fd = e->fds.fd[w->idx] >= 0;
		char err[512];
		if (t != NULL) {
			tunnel_reconfigure(t, e->tc);
			tset_remove(w->active, t);
		} else if (!have_fd ||
		    tunnel_start(w->loop, w->idx, e->tc, p->role, e->stats,
		    &e->fds, w->waker, w->counters, &t, err, sizeof err) != 0) {
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
		tunnel_set_id(t, e->tid);
		tunnel_set_data(t, w->arg);
		if (tset_add(&next, t) != 0)
			w->stop(w->arg, t);	/* cannot track it: stop, not lose it */
	}
	/* What is left was removed or moved: it drains. */
	for (size_t i = 0; i < w->active->n; i++)
		w->stop(w->arg, w->active->t[i]);
	tset_clear(w->active);
	*w->active = next;
}

void plan_carry(struct plan *newer, struct plan *older, unsigned worker)
{
	for (size_t i = 0; i < newer->n; i++) {
		struct plan_entry *e = &newer->e[i];
		for (size_t j = 0; e->keep && j < older->n; j++) {
			struct plan_entry *o = &older->e[j];
			if (o->tid == e->keep && o->fds.fd[worker] >= 0 &&
			    e->fds.fd[worker] < 0) {
				e->fds.fd[worker] = o->fds.fd[worker];
				o->fds.fd[worker] = -1;
			}
		}
	}
}

void plan_log(const struct plan *p)
{
	for (size_t i = 0; i < p->n; i++) {
		const struct plan_entry *e = &p->e[i];
		/* A renamed one: the same listener, under its new name. */
		if (!e->keep || e->renamed)
			tunnel_log_start(e->tc->cfg, p->role, e->fds.text);
	}
}

size_t plan_size(const struct plan *p)
{
	return p->n;
}

size_t plan_kept(const struct plan *p)
{
	size_t kept = 0;
	for (size_t i = 0; i < p->n; i++)
		if (p->e[i].keep)
			kept++;
	return kept;
}

struct plan_item plan_item(const struct plan *p, size_t i)
{
	const struct plan_entry *e = &p->e[i];
	return (struct plan_item){ .tid = e->tid, .name = e->tc->cfg->name,
		.stats = e->keep ? NULL : e->stats };
}
