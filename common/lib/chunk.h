/*
 * chunk: a byte buffer that remembers its length and capacity, the unit in
 * which the relay moves bytes (a read's worth of plaintext, the records it
 * became). Chunks of the standard capacity are recycled per thread.
 */
#ifndef UPSEAL_CHUNK_H
#define UPSEAL_CHUNK_H

#include <stddef.h>

/* What one read takes from a socket. */
#define CHUNK_READ (64 * 1024)
/* The standard capacity: a read's plaintext as at most four records. */
#define CHUNK_CAP (CHUNK_READ + 4 * 64)

struct chunk {
	size_t len;			/* bytes in data */
	size_t cap;			/* bytes data can hold */
	unsigned char data[];
};

/* An empty chunk that holds at least cap bytes; NULL: no memory. */
struct chunk *chunk_new(size_t cap);

/* Give a chunk back (to this thread's spares); NULL is a no-op. */
void chunk_free(struct chunk *ch);

/* Free this thread's spare chunks (at exit, for leak checks). */
void chunk_release_spares(void);

#endif
