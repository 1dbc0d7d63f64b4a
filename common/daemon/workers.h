/*
 * workers: the event-loop threads. Each worker runs its own copy of every
 * tunnel (its own listening socket, its own connections). Worker 0 runs on
 * the main thread's loop, next to the signals and the status endpoint, and
 * is called directly; the others run on threads of their own and are told
 * what to do through their mailbox.
 */
#ifndef UPSEAL_WORKERS_H
#define UPSEAL_WORKERS_H

#include <stdbool.h>

#include <uv.h>

#include "plan.h"
#include "tset.h"

struct workers;

/*
 * Set up n workers (1 to CFG_WORKERS_MAX), worker 0 on loop (the main
 * thread's), none of the others started yet. on_idle(arg) is called on
 * the main thread whenever the workers may have finished stopping: ask
 * workers_done. counters (conn.h; it must outlive the workers) goes to
 * every tunnel they start. Returns 0 and *out, or -1 with err set,
 * nothing left.
 */
int workers_new(uv_loop_t *loop, unsigned n, void (*on_idle)(void *arg),
    void *arg, struct conn_counters *counters, struct workers **out,
    char *err, size_t errlen);

/*
 * Start workers 1..n-1, each on its own thread and loop, each applying
 * plan p (run worker 0's with workers_apply first) before this returns:
 * then every worker listens. p stays the caller's. On error returns -1
 * with err set; those started still run (workers_stop ends them).
 */
int workers_spawn(struct workers *ws, struct plan *p, char *err,
    size_t errlen);

/* Run p on every worker: worker 0 now, the others when they wake. */
void workers_apply(struct workers *ws, struct plan *p);
/* Stop accepting everywhere and let every tunnel drain. */
void workers_stop(struct workers *ws);
/* Drop every connection on every worker (the drain timed out). */
void workers_drop_all(struct workers *ws);

/*
 * Worker 0's running tunnels, in config order, which stand for every
 * worker's; the pointer stays valid until workers_free.
 */
const struct tset *workers_running(const struct workers *ws);

/*
 * Stopping, and every worker is done: true once workers_stop was called,
 * worker 0 has no tunnel left and every thread has finished. Then
 * workers_join ends what is left.
 */
bool workers_done(const struct workers *ws);
/* Join the finished threads and close worker 0's handle on the loop. */
void workers_join(struct workers *ws);

/* After the loop has ended: free everything. workers_free(NULL): no-op. */
void workers_free(struct workers *ws);

#endif
