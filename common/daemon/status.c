#include "status.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

#define REQUEST_MAX 4096
#define CLIENTS_MAX 32
#define HEAD_TIMEOUT_MS 2000	/* from accept to the end of the request head */
#define CLIENT_TIMEOUT_MS 5000	/* from the head to the response written */

union sstream {
	uv_handle_t h;
	uv_stream_t s;
	uv_tcp_t tcp;
	uv_pipe_t pipe;
};

struct client {
	struct status *st;
	struct client *prev, *next;
	union sstream io;
	uv_timer_t timer;
	uv_write_t write_req;
	uv_shutdown_t shut;
	int refs;		/* io + timer */
	bool closing;
	bool answered;		/* the head is in (or refused): writing */
	size_t len;
	char req[REQUEST_MAX];
	struct sbuf response;
};

struct status {
	uv_loop_t *loop;
	union sstream listener;
	status_render_fn render;
	void *arg;
	struct client *clients;	/* newest first */
	unsigned nclients;
	unsigned nopen;		/* of those, not closing */
	bool stopping;
	bool listener_closed;
	char path[ADDR_PATH_MAX];	/* unix socket to remove, or "" */
};

static void maybe_free(struct status *st)
{
	if (st->stopping && st->listener_closed && st->clients == NULL)
		free(st);
}

static void on_client_closed(uv_handle_t *h)
{
	struct client *c = h->data;
	if (--c->refs > 0)
		return;
	struct status *st = c->st;
	if (c->prev)
		c->prev->next = c->next;
	else
		st->clients = c->next;
	if (c->next)
		c->next->prev = c->prev;
	st->nclients--;
	sbuf_free(&c->response);
	free(c);
	maybe_free(st);
}

static void client_close(struct client *c)
{
	if (c->closing)
		return;
	c->closing = true;
	c->st->nopen--;
	uv_close((uv_handle_t *)&c->timer, on_client_closed);
	uv_close(&c->io.h, on_client_closed);
}

static void on_timeout(uv_timer_t *t)
{
	client_close(t->data);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
	(void)status;
	client_close(req->data);
}

static void on_written(uv_write_t *req, int status)
{
	struct client *c = req->data;
	if (status < 0 || c->closing) {
		client_close(c);
		return;
	}
	c->shut.data = c;
	if (uv_shutdown(&c->shut, &c->io.s, on_shutdown) != 0)
		client_close(c);
}

static const char *reason_phrase(int code)
{
	switch (code) {
	case 200: return "OK";
	case 400: return "Bad Request";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 431: return "Request Header Fields Too Large";
	case 503: return "Service Unavailable";
	default: return "Internal Server Error";
	}
}

static void respond(struct client *c, int code, const char *type,
    struct sbuf *body, bool head)
{
	uv_read_stop(&c->io.s);
	c->answered = true;
	uv_timer_start(&c->timer, on_timeout, CLIENT_TIMEOUT_MS, 0);
	sbuf_printf(&c->response, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\n"
	    "Content-Length: %zu\r\nCache-Control: no-store\r\n"
	    "Connection: close\r\n\r\n", code, reason_phrase(code), type,
	    body->len);
	if (!head && body->len > 0)
		sbuf_printf(&c->response, "%.*s", (int)body->len, body->data);
	sbuf_free(body);
	if (c->response.failed) {
		client_close(c);
		return;
	}
	uv_buf_t b = uv_buf_init(c->response.data, (unsigned)c->response.len);
	c->write_req.data = c;
	if (uv_write(&c->write_req, &c->io.s, &b, 1, on_written) != 0)
		client_close(c);
}

static void respond_text(struct client *c, int code, const char *text)
{
	struct sbuf body = { 0 };
	sbuf_printf(&body, "%s\n", text);
	respond(c, code, "text/plain; charset=utf-8", &body, false);
}

/* A complete request head is in c->req: answer it. */
static void handle(struct client *c)
{
	char method[8], path[256];
	if (sscanf(c->req, "%7s %255s HTTP/1.%*c", method, path) != 2) {
		respond_text(c, 400, "bad request");
		return;
	}
	bool head = strcmp(method, "HEAD") == 0;
	if (!head && strcmp(method, "GET") != 0) {
		respond_text(c, 405, "only GET and HEAD");
		return;
	}
	char *query = strchr(path, '?');
	if (query != NULL)
		*query = '\0';
	struct sbuf body = { 0 };
	const char *type = "text/plain; charset=utf-8";
	int code = c->st->render(c->st->arg, path, &body, &type);
	if (body.failed) {
		sbuf_free(&body);
		respond_text(c, 500, "out of memory");
		return;
	}
	respond(c, code, type, &body, head);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	struct client *c = h->data;
	(void)suggested;
	buf->base = c->req + c->len;
	buf->len = sizeof c->req - 1 - c->len;
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
	struct client *c = s->data;
	(void)buf;
	if (n == 0 || c->closing)
		return;
	if (n < 0) {
		client_close(c);
		return;
	}
	c->len += (size_t)n;
	c->req[c->len] = '\0';
	if (strstr(c->req, "\r\n\r\n") != NULL || strstr(c->req, "\n\n") != NULL)
		handle(c);
	else if (c->len == sizeof c->req - 1)
		respond_text(c, 431, "request too large");
}

/*
 * The table is full: close the oldest client that has not sent its whole
 * request head yet, so that idle connections cannot keep a new request
 * (a readiness probe) out. False if every client is being answered.
 */
static bool evict_one(struct status *st)
{
	struct client *oldest = NULL;
	for (struct client *c = st->clients; c != NULL; c = c->next)
		if (!c->closing && !c->answered)
			oldest = c;
	if (oldest == NULL)
		return false;
	client_close(oldest);
	return true;
}

static void on_connection(uv_stream_t *server, int status)
{
	struct status *st = server->data;
	if (status < 0 || st->stopping)
		return;
	bool full = st->nopen >= CLIENTS_MAX && !evict_one(st);
	struct client *c = calloc(1, sizeof *c);
	if (c == NULL)
		return;	/* libuv retries the accept when we next poll */
	c->st = st;
	int rc = server->type == UV_TCP ? uv_tcp_init(st->loop, &c->io.tcp) :
	    uv_pipe_init(st->loop, &c->io.pipe, 0);
	if (rc != 0) {
		free(c);
		return;
	}
	uv_timer_init(st->loop, &c->timer);
	c->io.h.data = c;
	c->timer.data = c;
	c->refs = 2;
	c->next = st->clients;
	if (st->clients)
		st->clients->prev = c;
	st->clients = c;
	st->nclients++;
	st->nopen++;
	if (uv_accept(server, &c->io.s) != 0 || full) {
		client_close(c);
		return;
	}
	uv_timer_start(&c->timer, on_timeout, HEAD_TIMEOUT_MS, 0);
	if (uv_read_start(&c->io.s, on_alloc, on_read) != 0)
		client_close(c);
}

static void on_listener_closed(uv_handle_t *h)
{
	struct status *st = h->data;
	st->listener_closed = true;
	maybe_free(st);
}

int status_start(uv_loop_t *loop, const struct addr *a, status_render_fn render,
    void *arg, struct status **out, char *err, size_t errlen)
{
	char text[ADDR_TEXT_MAX];
	*out = NULL;
	addr_format(a, text, sizeof text);
	struct status *st = calloc(1, sizeof *st);
	if (st == NULL) {
		snprintf(err, errlen, "status %s: out of memory", text);
		return -1;
	}
	st->loop = loop;
	st->render = render;
	st->arg = arg;
	int rc;
	bool inited = false;
	if (a->kind == ADDR_UNIX) {
		char why[64];
		if (addr_unix_path_free(a->path, why, sizeof why) != 0) {
			snprintf(err, errlen, "status %s: %s", text, why);
			free(st);
			return -1;
		}
		rc = uv_pipe_init(loop, &st->listener.pipe, 0);
		inited = rc == 0;
		if (rc == 0)
			rc = uv_pipe_bind(&st->listener.pipe, a->path);
		snprintf(st->path, sizeof st->path, "%s", a->path);
	} else {
		rc = uv_tcp_init(loop, &st->listener.tcp);
		inited = rc == 0;
		if (rc == 0 && !a->numeric)
			rc = UV_EINVAL;	/* config allows names; bind needs an IP */
		if (rc == 0)
			rc = uv_tcp_bind(&st->listener.tcp,
			    (const struct sockaddr *)&a->sa, 0);
	}
	st->listener.h.data = st;
	if (rc == 0)
		rc = uv_listen(&st->listener.s, 64, on_connection);
	if (rc != 0) {
		snprintf(err, errlen, "status %s: %s%s", text, log_uverr(rc),
		    rc == UV_EINVAL && a->kind == ADDR_TCP && !a->numeric ?
		    " (use an IP address)" : "");
		st->stopping = true;
		if (inited)
			uv_close(&st->listener.h, on_listener_closed);
		else
			free(st);
		return -1;
	}
	if (a->kind == ADDR_TCP) {
		struct sockaddr_storage ss;
		int len = sizeof ss;
		if (uv_tcp_getsockname(&st->listener.tcp, (struct sockaddr *)&ss,
		    &len) == 0)
			addr_format_sockaddr((struct sockaddr *)&ss, text, sizeof text);
	}
	struct log_line l;
	log_begin(&l, LOG_INFO, "status_listening");
	log_str(&l, "addr", text);
	log_end(&l);
	*out = st;
	return 0;
}

void status_stop(struct status *st)
{
	if (st == NULL || st->stopping)
		return;
	st->stopping = true;
	if (st->path[0])
		unlink(st->path);
	for (struct client *c = st->clients; c != NULL; c = c->next)
		client_close(c);
	uv_close(&st->listener.h, on_listener_closed);
}
