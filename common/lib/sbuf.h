/*
 * sbuf: a growable text buffer for building responses (metrics). An
 * allocation failure marks the buffer failed; later appends do nothing.
 */
#ifndef UPSEAL_SBUF_H
#define UPSEAL_SBUF_H

#include <stdbool.h>
#include <stddef.h>

struct sbuf {
	char *data;
	size_t len, cap;
	bool failed;
};

void sbuf_printf(struct sbuf *b, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* Free the text; the buffer is empty again. */
void sbuf_free(struct sbuf *b);

#endif
