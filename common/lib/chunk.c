#include "chunk.h"

#include <stdlib.h>

/*
 * Per-thread spares: a 64 KiB malloc/free per chunk makes glibc grow and
 * trim the heap with brk(2) on every chunk, which measured as most of the
 * relay's system time. Per thread, so no lock: a chunk freed on another
 * thread than it was made on simply joins that thread's spares.
 */
#define SPARES_MAX 32
static _Thread_local struct chunk *spares[SPARES_MAX];
static _Thread_local unsigned nspares;

struct chunk *chunk_new(size_t cap)
{
	struct chunk *ch;
	if (cap <= CHUNK_CAP && nspares > 0) {
		ch = spares[--nspares];
	} else {
		if (cap < CHUNK_CAP)
			cap = CHUNK_CAP;
		ch = malloc(sizeof *ch + cap);
		if (ch == NULL)
			return NULL;
		ch->cap = cap;
	}
	ch->len = 0;
	return ch;
}

void chunk_free(struct chunk *ch)
{
	if (ch == NULL)
		return;
	if (ch->cap == CHUNK_CAP && nspares < SPARES_MAX)
		spares[nspares++] = ch;
	else
		free(ch);
}

void chunk_release_spares(void)
{
	while (nspares > 0)
		free(spares[--nspares]);
}
