#include "page.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon.h"	/* UPSEAL_VERSION */
#include "metrics.h"

/* One tunnel as the status endpoint reports it. */
struct series {
	uint64_t tid;
	char name[CFG_NAME_MAX];
	struct tunnel_stats *stats;	/* held */
	bool current;			/* in the running config */
};

struct page {
	enum cfg_role role;
	const struct tset *running;	/* worker 0's */
	struct series *series;		/* current first, in config order */
	size_t nseries;
	bool draining;
	uint64_t reloads_ok, reloads_failed;
};

struct page *page_new(enum cfg_role role, const struct tset *running)
{
	struct page *pg = calloc(1, sizeof *pg);
	if (pg != NULL) {
		pg->role = role;
		pg->running = running;
	}
	return pg;
}

void page_free(struct page *pg)
{
	if (pg == NULL)
		return;
	for (size_t j = 0; j < pg->nseries; j++)
		tunnel_stats_release(pg->series[j].stats);
	free(pg->series);
	free(pg);
}

void page_apply(struct page *pg, const struct plan *p)
{
	size_t n = plan_size(p);
	struct series *next = calloc(n + pg->nseries + 1, sizeof *next);
	if (next == NULL)
		return;
	size_t k = 0;
	for (size_t i = 0; i < n; i++) {
		struct plan_item it = plan_item(p, i);
		struct series *s = &next[k++];
		s->tid = it.tid;
		s->current = true;
		snprintf(s->name, sizeof s->name, "%s", it.name);
		s->stats = NULL;
		for (size_t j = 0; j < pg->nseries; j++) {
			if (pg->series[j].tid == it.tid && pg->series[j].stats) {
				s->stats = pg->series[j].stats;	/* moved over */
				pg->series[j].stats = NULL;
			}
		}
		if (s->stats == NULL && it.stats != NULL)
			s->stats = tunnel_stats_hold(it.stats);
		if (s->stats == NULL)
			k--;
	}
	for (size_t j = 0; j < pg->nseries; j++) {
		if (pg->series[j].stats == NULL)
			continue;
		next[k] = pg->series[j];
		next[k++].current = false;
	}
	free(pg->series);
	pg->series = next;
	pg->nseries = k;
}

void page_reloaded(struct page *pg, bool ok)
{
	if (ok)
		pg->reloads_ok++;
	else
		pg->reloads_failed++;
}

void page_draining(struct page *pg)
{
	pg->draining = true;
}

static bool counted(const struct metrics_tunnel *mt, size_t k,
    const struct tunnel_stats *st)
{
	for (size_t i = 0; i < k; i++)
		if (mt[i].stats == st)
			return true;
	return false;
}

static int render_metrics(struct page *pg, struct sbuf *body)
{
	/* Retired series whose last connection ended go now. */
	size_t keep = 0;
	for (size_t i = 0; i < pg->nseries; i++) {
		struct series *sr = &pg->series[i];
		if (!sr->current && !pg->draining &&
		    atomic_load(&sr->stats->open) == 0) {
			tunnel_stats_release(sr->stats);
			continue;
		}
		pg->series[keep++] = *sr;
	}
	pg->nseries = keep;
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
	for (size_t i = 0; i < pg->nseries; i++) {
		const struct series *sr = &pg->series[i];
		if (counted(mt, k, sr->stats))
			continue;
		struct tunnel *t = tset_find(pg->running, sr->tid);
		struct tls_dates d = { 0 };
		if (sr->current && t != NULL)
			tls_ctx_dates(tunnel_tls(t), &d);
		mt[k++] = (struct metrics_tunnel){ .name = sr->name,
			.stats = sr->stats, .open = atomic_load(&sr->stats->open),
			.listening = sr->current && t != NULL &&
			tunnel_is_listening(t),
			.cert_not_after = d.cert_not_after,
			.ca_not_after = d.ca_not_after,
			.crl_next_update = d.crl_next_update };
	}
	struct metrics_process p = {
		.role = pg->role == CFG_CLIENT ? "client" : "server",
		.version = UPSEAL_VERSION, .draining = pg->draining,
		.reloads_ok = pg->reloads_ok,
		.reloads_failed = pg->reloads_failed,
	};
	metrics_render(body, mt, k, &p);
	free(mt);
	return 200;
}

int page_render(void *arg, const char *path, struct sbuf *body,
    const char **content_type)
{
	struct page *pg = arg;
	if (strcmp(path, "/metrics") == 0) {
		*content_type = "text/plain; version=0.0.4; charset=utf-8";
		return render_metrics(pg, body);
	}
	if (strcmp(path, "/healthz") == 0) {
		if (pg->draining) {
			sbuf_printf(body, "draining\n");
			return 503;
		}
		const struct tset *s = pg->running;
		for (size_t i = 0; i < s->n; i++) {
			if (!tunnel_listener_open(s->t[i])) {
				sbuf_printf(body, "tunnel %s is not listening\n",
				    tunnel_cfg(s->t[i])->name);
				return 503;
			}
		}
		sbuf_printf(body, "ok\n");
		return 200;
	}
	sbuf_printf(body, "not found: try /metrics or /healthz\n");
	return 404;
}
