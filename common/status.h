/*
 * status: a small HTTP/1.1 endpoint (GET only, one request per
 * connection) for /metrics and /healthz. Requests are read into a bounded
 * buffer with a deadline; anything odd gets an error status and a close.
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
 * Listen on a (TCP or unix) and answer with render. On error returns -1
 * with what went wrong in err. Logs `status_listening` with the address.
 */
int status_start(uv_loop_t *loop, const struct addr *a, status_render_fn render,
    void *arg, struct status **out, char *err, size_t errlen);

/* Stop listening, close open requests, free once closed. NULL: no-op. */
void status_stop(struct status *s);

#endif
