/*
 * mailbox: how other threads tell a worker what to do, without allocating
 * (so that no message, a stop least of all, can be lost to a failed
 * malloc): a word of flags and one plan slot, guarded by a mutex, then
 * uv_async_send to wake the worker's loop. A newer plan replaces one the
 * worker has not taken yet (plan_carry hands it that one's sockets; the
 * older is released), so the worker runs the newest plan once.
 */
#ifndef UPSEAL_MAILBOX_H
#define UPSEAL_MAILBOX_H

#include <stdbool.h>

#include <uv.h>

#include "plan.h"

enum {
	MAIL_STOP = 1 << 0,		/* stop accepting and drain */
	MAIL_DROP = 1 << 1,		/* drop every connection (drain timeout) */
	MAIL_RESUME = 1 << 2,		/* a place was freed: accept again */
};

struct mailbox {
	uv_async_t async;		/* wakes the worker's loop */
	uv_mutex_t lock;		/* guards open, plan and flags */
	bool open;			/* async initialised, not yet closed */
	unsigned worker;		/* whose: for plan_carry */
	struct plan *plan;		/* newest plan not yet taken (held) */
	unsigned flags;			/* MAIL_* posted, not yet taken */
};

/* Set up mb (closed) for worker `worker`. Returns 0 or a libuv error. */
int mailbox_init(struct mailbox *mb, unsigned worker);
/* Free mb's mutex: after mailbox_close and once no thread can post. */
void mailbox_destroy(struct mailbox *mb);

/*
 * Open mb on loop, the worker's, on the worker's thread: from now on a post
 * wakes the loop, which calls cb with mb->async.data == data. Returns 0 or
 * a libuv error (mb stays closed).
 */
int mailbox_open(struct mailbox *mb, uv_loop_t *loop, uv_async_cb cb,
    void *data);

/*
 * Add flags (0: just wake the loop) and, if p is not NULL, put p in the
 * slot (the mailbox holds a reference; an older plan still there is
 * released). Any thread may post. Returns false, changing nothing, if mb
 * is closed (the worker has ended or never started).
 */
bool mailbox_post(struct mailbox *mb, unsigned flags, struct plan *p);

/*
 * On the worker's thread, usually in cb: take what was posted. Returns the
 * flags and sets *p to the plan (the caller owns that reference) or NULL.
 */
unsigned mailbox_take(struct mailbox *mb, struct plan **p);

/*
 * On the worker's thread: stop taking posts, release a plan left in the
 * slot and uv_close the async handle (on the loop's next turn).
 */
void mailbox_close(struct mailbox *mb);

#endif
