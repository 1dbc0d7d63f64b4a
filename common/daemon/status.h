/*
 * status: a small HTTP/1.1 endpoint (GET only, one request per
 * connection) for /metrics and /healthz. Requests are read into a bounded
 * buffer with a deadline of their own (2 s for the head), then answered
 * under a second one; anything odd gets an error status and a close. When
 * all 32 client slots are taken, a new client takes the slot of the
 * oldest one still sending its head, so idle connections cannot keep a
 * readiness probe out.
 */
#ifndef UPSEAL_STATUS_H
#define UPSEAL_STATUS_H

#include <stddef.h>

#include <uv.h>

#include "addr.h"
#include "sbuf.h"

struct status;

/*
 * Renders the response body for path into body and returns the HTTP
 * status code (200, 404, 503...). content_type is set to a static string.
 */
typedef int (*status_render_fn)(void *arg, const char *path,
    struct sbuf *body, const char **content_type);

/*
 * Listen on a (TCP or unix) and answer with render. A unix socket left at
 * the path by a process that is gone is replaced; one a live process
 * accepts on, or a file that is no socket, is an error. On error returns
 * -1 with what went wrong in err. Logs `status_listening` with the address.
 */
int status_start(uv_loop_t *loop, const struct addr *a, status_render_fn render,
    void *arg, struct status **out, char *err, size_t errlen);

/* Stop listening, close open requests, free once closed. NULL: no-op. */
void status_stop(struct status *s);

#endif
