/*
 * The workers' message path (common/daemon/mailbox.c), on one loop and
 * one thread: what a worker sees when several posts land before its loop
 * runs.
 */
#include "test.h"

#include <stdlib.h>

#include <uv.h>

#include "config.h"
#include "mailbox.h"
#include "plan.h"
#include "tset.h"

struct box {
	struct mailbox mb;
	int calls;
	unsigned flags;
	const struct plan *want;	/* the plan the worker should see */
	bool got_want;
	bool got_plan;
};

/* A worker's mailbox callback: take, note, and close on stop. */
static void on_box(uv_async_t *a)
{
	struct box *b = a->data;
	struct plan *p;
	unsigned flags = mailbox_take(&b->mb, &p);
	b->calls++;
	b->flags |= flags;
	if (p != NULL) {
		b->got_plan = true;
		b->got_want = p == b->want;
		plan_release(p);
	}
	if (flags & MAIL_STOP)
		mailbox_close(&b->mb);
}

/* A config without tunnels: plans of it hold it and nothing else. */
static struct cfg *empty_cfg(void)
{
	struct cfg *c = calloc(1, sizeof *c);
	if (c != NULL)
		c->refs = 1;
	return c;
}

TEST(mailbox_newest_plan_once_then_stop)
{
	uv_loop_t loop;
	struct box b = { 0 };
	struct tset running = { 0 };
	struct plan_ctx ctx = { .role = CFG_CLIENT, .nworkers = 2,
		.running = &running };
	char err[256] = "";
	struct cfg *c = empty_cfg();
	CHECK(c != NULL);
	if (c == NULL)
		return;
	CHECK_INT(uv_loop_init(&loop), 0);
	CHECK_INT(mailbox_init(&b.mb, 1), 0);
	CHECK_INT(mailbox_open(&b.mb, &loop, on_box, &b), 0);

	struct plan *older = plan_new(&ctx, c, err, sizeof err);
	struct plan *newer = plan_new(&ctx, c, err, sizeof err);
	CHECK(older != NULL && newer != NULL);
	if (older == NULL || newer == NULL)
		return;
	CHECK_INT(c->refs, 3);
	b.want = newer;

	/* Two reloads and a stop, before the worker's loop runs. */
	CHECK(mailbox_post(&b.mb, 0, older));
	plan_release(older);
	CHECK(mailbox_post(&b.mb, 0, newer));
	plan_release(newer);
	CHECK_INT(c->refs, 2);		/* older: released when replaced */
	CHECK(mailbox_post(&b.mb, MAIL_STOP, NULL));

	CHECK_INT(uv_run(&loop, UV_RUN_DEFAULT), 0);
	CHECK_INT(b.calls, 1);
	CHECK(b.got_plan);
	CHECK(b.got_want);
	CHECK_INT(b.flags, MAIL_STOP);
	CHECK_INT(c->refs, 1);		/* newer: run once, then released */

	/* Closed: a post changes nothing and holds nothing. */
	struct plan *late = plan_new(&ctx, c, err, sizeof err);
	CHECK(late != NULL);
	if (late != NULL) {
		CHECK(!mailbox_post(&b.mb, MAIL_DROP, late));
		plan_release(late);
	}
	CHECK_INT(c->refs, 1);

	CHECK_INT(uv_loop_close(&loop), 0);
	mailbox_destroy(&b.mb);
	cfg_release(c);
}

TEST(mailbox_close_releases_an_untaken_plan)
{
	uv_loop_t loop;
	struct box b = { 0 };
	struct tset running = { 0 };
	struct plan_ctx ctx = { .role = CFG_SERVER, .nworkers = 1,
		.running = &running };
	char err[256] = "";
	struct cfg *c = empty_cfg();
	CHECK(c != NULL);
	if (c == NULL)
		return;
	CHECK_INT(uv_loop_init(&loop), 0);
	CHECK_INT(mailbox_init(&b.mb, 0), 0);
	CHECK_INT(mailbox_open(&b.mb, &loop, on_box, &b), 0);
	struct plan *p = plan_new(&ctx, c, err, sizeof err);
	CHECK(p != NULL);
	if (p == NULL)
		return;
	CHECK(mailbox_post(&b.mb, MAIL_RESUME, p));
	plan_release(p);
	CHECK_INT(c->refs, 2);
	mailbox_close(&b.mb);		/* the worker ended first */
	CHECK_INT(c->refs, 1);
	CHECK_INT(uv_run(&loop, UV_RUN_DEFAULT), 0);
	CHECK_INT(b.calls, 0);
	CHECK_INT(uv_loop_close(&loop), 0);
	mailbox_destroy(&b.mb);
	cfg_release(c);
}
