#include "mailbox.h"

int mailbox_init(struct mailbox *mb, unsigned worker)
{
	*mb = (struct mailbox){ .worker = worker };
	return uv_mutex_init(&mb->lock);
}

void mailbox_destroy(struct mailbox *mb)
{
	uv_mutex_destroy(&mb->lock);
}

int mailbox_open(struct mailbox *mb, uv_loop_t *loop, uv_async_cb cb,
    void *data)
{
	int rc = uv_async_init(loop, &mb->async, cb);
	if (rc != 0)
		return rc;
	mb->async.data = data;
	uv_mutex_lock(&mb->lock);
	mb->open = true;
	uv_mutex_unlock(&mb->lock);
	return 0;
}

bool mailbox_post(struct mailbox *mb, unsigned flags, struct plan *p)
{
	struct plan *older = NULL;
	uv_mutex_lock(&mb->lock);
	bool open = mb->open;
	if (open) {
		if (p != NULL) {
			older = mb->plan;
			if (older != NULL)
				plan_carry(p, older, mb->worker);
			mb->plan = plan_hold(p);
		}
		mb->flags |= flags;
		uv_async_send(&mb->async);
	}
	uv_mutex_unlock(&mb->lock);
	plan_release(older);
	return open;
}

unsigned mailbox_take(struct mailbox *mb, struct plan **p)
{
	uv_mutex_lock(&mb->lock);
	unsigned flags = mb->flags;
	*p = mb->plan;
	mb->flags = 0;
	mb->plan = NULL;
	uv_mutex_unlock(&mb->lock);
	return flags;
}

void mailbox_close(struct mailbox *mb)
{
	uv_mutex_lock(&mb->lock);
	bool open = mb->open;
	struct plan *p = mb->plan;
	mb->open = false;
	mb->plan = NULL;
	mb->flags = 0;
	uv_mutex_unlock(&mb->lock);
	plan_release(p);
	if (open)
		uv_close((uv_handle_t *)&mb->async, NULL);
}
