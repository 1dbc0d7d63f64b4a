#include "workers.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include "conn.h"
#include "log.h"
#include "mailbox.h"
#include "rng.h"

struct worker {
	struct workers *ws;
	unsigned idx;
	uv_loop_t *loop;
	uv_loop_t own_loop;		/* workers 1..: their thread's */
	struct tset active;		/* running, in config order */
	struct tset retiring;		/* stopped by a reload, draining */
	bool stopping;
	uv_thread_t thread;
	uv_sem_t ready;
	struct plan *first;		/* the start plan, applied before ready */
	int start_err;
	struct mailbox mb;
};

struct workers {
	struct worker *w;
	unsigned n;			/* configured */
	unsigned nstarted;		/* running (worker 0 included) */
	_Atomic unsigned running;	/* worker threads not yet finished */
	struct tunnel_waker waker;	/* every tunnel's, for wake_worker */
	struct conn_counters *counters;	/* the daemon's, every tunnel's */
	void (*on_idle)(void *arg);
	void *arg;
};

static void worker_maybe_done(struct worker *w);

/* A stopped tunnel has no connection left: free it. */
static void on_tunnel_empty(struct tunnel *t)
{
	struct worker *w = tunnel_data(t);
	if (!tset_remove(&w->retiring, t))
		tset_remove(&w->active, t);
	tunnel_free(t);
	worker_maybe_done(w);
}

/* plan_worker.stop: t drains, tracked in retiring. */
static void stop_tunnel(void *arg, struct tunnel *t)
{
	struct worker *w = arg;
	if (tset_add(&w->retiring, t) != 0)
		tunnel_drop_all(t, REASON_NOMEM);
	tunnel_stop(t, on_tunnel_empty);
}

static void worker_apply(struct worker *w, struct plan *p)
{
	struct plan_worker pw = { .idx = w->idx, .loop = w->loop,
		.waker = &w->ws->waker, .counters = w->ws->counters,
		.active = &w->active,
		.stop = stop_tunnel, .arg = w };
	plan_apply(p, &pw);
}

static void worker_stop(struct worker *w)
{
	if (w->stopping)
		return;
	w->stopping = true;
	/* tunnel_stop may call back at once: iterate over a copy. */
	struct tset all = { 0 };
	for (size_t i = 0; i < w->active.n; i++)
		if (tset_add(&all, w->active.t[i]) != 0)
			tunnel_drop_all(w->active.t[i], REASON_NOMEM);
	for (size_t i = 0; i < all.n; i++)
		tunnel_stop(all.t[i], on_tunnel_empty);
	tset_clear(&all);
	worker_maybe_done(w);
}

static void worker_drop_all(struct worker *w, enum reason why)
{
	for (size_t i = 0; i < w->active.n; i++)
		tunnel_drop_all(w->active.t[i], why);
	for (size_t i = 0; i < w->retiring.n; i++)
		tunnel_drop_all(w->retiring.t[i], why);
}

/* A place was freed: let held-back accepts try again. */
static void worker_resume(struct worker *w)
{
	for (size_t i = 0; i < w->active.n; i++)
		tunnel_resume_accept(w->active.t[i]);
}

/* The worker's mailbox: the order is that of posting (apply, stop, drop). */
static void on_mail(uv_async_t *a)
{
	struct worker *w = a->data;
	struct plan *p;
	unsigned flags = mailbox_take(&w->mb, &p);
	if (flags & MAIL_RESUME)
		worker_resume(w);
	if (p != NULL) {
		worker_apply(w, p);
		plan_release(p);
	}
	if (flags & MAIL_STOP)
		worker_stop(w);
	if (flags & MAIL_DROP)
		worker_drop_all(w, REASON_DRAIN);
	if (w->idx == 0)
		w->ws->on_idle(w->ws->arg);
}

/* tunnel.c, from any worker: a place was freed; worker i may accept again. */
static void wake_worker(void *arg, unsigned i)
{
	struct workers *ws = arg;
	if (i < ws->n)
		mailbox_post(&ws->w[i].mb, MAIL_RESUME, NULL);
}

/* A stopping worker without tunnels is done: its loop may end. */
static void worker_maybe_done(struct worker *w)
{
	if (!w->stopping || w->active.n != 0 || w->retiring.n != 0)
		return;
	if (w->idx == 0)
		w->ws->on_idle(w->ws->arg);
	else
		mailbox_close(&w->mb);
}

static void worker_thread(void *arg)
{
	struct worker *w = arg;
	int rc = uv_loop_init(&w->own_loop);
	if (rc == 0) {
		rc = mailbox_open(&w->mb, &w->own_loop, on_mail, w);
		if (rc != 0)
			uv_loop_close(&w->own_loop);
	}
	if (rc != 0) {
		w->start_err = rc;
		uv_sem_post(&w->ready);
		return;
	}
	w->loop = &w->own_loop;
	char name[16];	/* for top -H and /proc/PID/task/TID/comm */
	snprintf(name, sizeof name, "worker-%u", w->idx);
	pthread_setname_np(pthread_self(), name);
	/*
	 * The start plan is applied before the spawning thread goes on, so
	 * that `ready` is logged once every worker listens (and holds every
	 * descriptor it will keep), not while some are still setting up.
	 */
	worker_apply(w, w->first);
	uv_sem_post(&w->ready);

	uv_run(&w->own_loop, UV_RUN_DEFAULT);

	tset_clear(&w->active);
	tset_clear(&w->retiring);
	conn_release_buffers();
	rng_thread_free();
	if (uv_loop_close(&w->own_loop) != 0)
		log_msg(LOG_ERROR, "internal", "worker %u: event loop closed "
		    "with handles still open", w->idx);
	atomic_fetch_sub(&w->ws->running, 1);
	/* Joined by the main thread before it closes worker 0's mailbox. */
	mailbox_post(&w->ws->w[0].mb, 0, NULL);
}

int workers_new(uv_loop_t *loop, unsigned n, void (*on_idle)(void *arg),
    void *arg, struct conn_counters *counters, struct workers **out,
    char *err, size_t errlen)
{
	const char *why = "cannot set up the event loop";
	unsigned ninit = 0;
	*out = NULL;
	struct workers *ws = calloc(1, sizeof *ws);
	if (ws == NULL)
		goto fail_0;
	ws->w = calloc(n, sizeof *ws->w);
	if (ws->w == NULL)
		goto fail_1;
	for (; ninit < n; ninit++) {
		struct worker *w = &ws->w[ninit];
		w->ws = ws;
		w->idx = ninit;
		w->loop = ninit == 0 ? loop : NULL;
		if (mailbox_init(&w->mb, ninit) != 0) {
			why = "cannot create a lock";
			goto fail_2;
		}
	}
	if (mailbox_open(&ws->w[0].mb, loop, on_mail, &ws->w[0]) != 0)
		goto fail_2;
	ws->n = n;
	ws->nstarted = 1;
	ws->waker = (struct tunnel_waker){ .wake = wake_worker, .arg = ws };
	ws->on_idle = on_idle;
	ws->arg = arg;
	ws->counters = counters;
	*out = ws;
	return 0;

fail_2:
	while (ninit > 0)
		mailbox_destroy(&ws->w[--ninit].mb);
	free(ws->w);
fail_1:
	free(ws);
fail_0:
	snprintf(err, errlen, "%s", why);
	return -1;
}

int workers_spawn(struct workers *ws, struct plan *p, char *err,
    size_t errlen)
{
	for (unsigned i = 1; i < ws->n; i++) {
		struct worker *w = &ws->w[i];
		if (uv_sem_init(&w->ready, 0) != 0) {
			snprintf(err, errlen, "worker %u: cannot create a "
			    "semaphore", i);
			return -1;
		}
		atomic_fetch_add(&ws->running, 1);
		w->first = p;	/* held by the caller until we return */
		int rc = uv_thread_create(&w->thread, worker_thread, w);
		if (rc == 0)
			uv_sem_wait(&w->ready);
		uv_sem_destroy(&w->ready);
		w->first = NULL;
		if (rc == 0 && w->start_err == 0) {
			ws->nstarted = i + 1;
			continue;
		}
		if (rc == 0)
			uv_thread_join(&w->thread);
		atomic_fetch_sub(&ws->running, 1);
		snprintf(err, errlen, "worker %u: cannot start: %s", i,
		    log_uverr(rc != 0 ? rc : w->start_err));
		return -1;
	}
	return 0;
}

void workers_apply(struct workers *ws, struct plan *p)
{
	worker_apply(&ws->w[0], p);
	for (unsigned i = 1; i < ws->nstarted; i++)
		mailbox_post(&ws->w[i].mb, 0, p);
}

void workers_stop(struct workers *ws)
{
	worker_stop(&ws->w[0]);
	for (unsigned i = 1; i < ws->nstarted; i++)
		mailbox_post(&ws->w[i].mb, MAIL_STOP, NULL);
}

void workers_drop_all(struct workers *ws)
{
	worker_drop_all(&ws->w[0], REASON_DRAIN);
	for (unsigned i = 1; i < ws->nstarted; i++)
		mailbox_post(&ws->w[i].mb, MAIL_DROP, NULL);
}

const struct tset *workers_running(const struct workers *ws)
{
	return &ws->w[0].active;
}

bool workers_done(const struct workers *ws)
{
	const struct worker *w0 = &ws->w[0];
	return w0->stopping && w0->active.n == 0 && w0->retiring.n == 0 &&
	    atomic_load(&ws->running) == 0;
}

void workers_join(struct workers *ws)
{
	for (unsigned i = 1; i < ws->nstarted; i++)
		uv_thread_join(&ws->w[i].thread);
	ws->nstarted = 1;
	mailbox_close(&ws->w[0].mb);
}

void workers_free(struct workers *ws)
{
	if (ws == NULL)
		return;
	tset_clear(&ws->w[0].active);
	tset_clear(&ws->w[0].retiring);
	for (unsigned i = 0; i < ws->n; i++)
		mailbox_destroy(&ws->w[i].mb);
	free(ws->w);
	free(ws);
}
