/*
 * plan: what every worker runs to switch to a config, at start and on
 * reload. Built on the main thread, where it binds the sockets of every
 * new tunnel; then shared (counted) by the workers, read-only but for each
 * worker taking its own sockets. The same plans run on every worker in the
 * same order, so their tunnels stay copies of each other, with the same ids.
 */
#ifndef UPSEAL_PLAN_H
#define UPSEAL_PLAN_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "config.h"
#include "tset.h"
#include "tunnel.h"

struct plan;

/* What plans are built against; the daemon keeps it for its life. */
struct plan_ctx {
	enum cfg_role role;
	unsigned nworkers;		/* each new tunnel gets a socket per worker */
	const struct tset *running;	/* worker 0's tunnels stand for all */
	uint64_t last_tid;		/* the last tunnel id given out */
};

/*
 * Plan the switch to cfg (which the plan holds a reference to): load every
 * tunnel's certificate and key, decide which running tunnel each section
 * keeps, and give each other section a fresh id, counters and listening
 * sockets, bound here and now. All or nothing: on error returns NULL, err
 * says what and where, and nothing is left bound. The caller owns the one
 * reference returned.
 */
struct plan *plan_new(struct plan_ctx *ctx, struct cfg *cfg, char *err,
    size_t errlen);
/* Add a reference (for a worker that will run p). */
struct plan *plan_hold(struct plan *p);
/*
 * Drop a reference; the last frees the plan, releasing its settings and
 * counters and closing the sockets no worker took. plan_release(NULL) is
 * a no-op.
 */
void plan_release(struct plan *p);
/*
 * A plan that is not going to run: close its sockets (removing a unix
 * socket file it made) and drop the caller's reference. Only before any
 * worker was handed p.
 */
void plan_discard(struct plan *p);

/* One worker, as plan_apply sees it; owned by the worker. */
struct plan_worker {
	unsigned idx;
	uv_loop_t *loop;
	const struct tunnel_waker *waker;	/* given to every new tunnel */
	struct conn_counters *counters;	/* likewise */
	struct tset *active;		/* the tunnels the worker runs */
	/* Stop t, which the worker no longer runs, and keep track of it. */
	void (*stop)(void *arg, struct tunnel *t);
	void *arg;			/* also each tunnel's tunnel_data */
};

/*
 * Run p on worker w, on w's thread: reconfigure the tunnels it keeps,
 * start the new ones on the sockets made for this worker, and hand the
 * rest to w->stop; *w->active is then p's tunnels in order. A section
 * whose tunnel cannot run on this worker is logged and left to the others.
 */
void plan_apply(struct plan *p, const struct plan_worker *w);

/*
 * Worker `worker` will run newer without having run older (a newer plan
 * replaced it before the worker got to it): move to newer the sockets
 * older made for this worker, for the tunnels newer keeps, so that the
 * worker starts them instead of missing them. Called with that worker's
 * message lock held, before the worker can see newer.
 */
void plan_carry(struct plan *newer, struct plan *older, unsigned worker);

/* Say where the new and renamed tunnels listen, once for all workers. */
void plan_log(const struct plan *p);

/* The number of sections, and of those, how many keep a running tunnel. */
size_t plan_size(const struct plan *p);
size_t plan_kept(const struct plan *p);

/* Section i as the status page lists it. */
struct plan_item {
	uint64_t tid;			/* its tunnel's id */
	const char *name;		/* its section's name (the plan's) */
	struct tunnel_stats *stats;	/* a new tunnel's counters, else NULL */
};
struct plan_item plan_item(const struct plan *p, size_t i);

#endif
