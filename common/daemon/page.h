/*
 * page: what the status endpoint renders, kept on the main thread (the
 * workers' copies of the tunnels come and go on their own threads): one
 * series per tunnel, with its id, name and counters, and the process's
 * state. A tunnel a reload removed (or every tunnel, while stopping) stays
 * listed, not listening, while connections are open under its counters on
 * any worker. status.c serves it; page_render is its render callback.
 */
#ifndef UPSEAL_PAGE_H
#define UPSEAL_PAGE_H

#include <stdbool.h>

#include "config.h"
#include "plan.h"
#include "sbuf.h"
#include "tset.h"

struct page;

/*
 * A page for role, which reads running (worker 0's tunnels, which must
 * outlive it) to tell which tunnels listen. NULL: out of memory.
 */
struct page *page_new(enum cfg_role role, const struct tset *running);
/* Free the page and release its counters. page_free(NULL): no-op. */
void page_free(struct page *pg);

/*
 * List plan p's sections, in order, then the series p retires. Out of
 * memory, a new tunnel is just not listed.
 */
void page_apply(struct page *pg, const struct plan *p);
/* Count a reload that succeeded (ok) or failed. */
void page_reloaded(struct page *pg, bool ok);
/* The process is stopping: /healthz says draining from now on. */
void page_draining(struct page *pg);

/*
 * status_render_fn with arg a struct page: /metrics (Prometheus text) and
 * /healthz (200 ok, or 503 draining or naming a tunnel not listening).
 */
int page_render(void *arg, const char *path, struct sbuf *body,
    const char **content_type);

#endif
