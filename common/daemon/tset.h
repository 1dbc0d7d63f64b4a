/*
 * tset: a set of one worker's running tunnels, such as the ones it runs
 * now (in config order) or those a reload retired that still drain. The
 * set holds pointers, not the tunnels; it is used on one thread only.
 */
#ifndef UPSEAL_TSET_H
#define UPSEAL_TSET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tunnel.h"

struct tset {
	struct tunnel **t;
	size_t n;
};

/* Append t. Returns -1 (the set unchanged) when out of memory. */
int tset_add(struct tset *s, struct tunnel *t);
/* Remove t, keeping the order of the rest; false if t was not in s. */
bool tset_remove(struct tset *s, struct tunnel *t);
/* The tunnel of s whose tunnel_id is id, or NULL. */
struct tunnel *tset_find(const struct tset *s, uint64_t id);
/* Free the array (not the tunnels) and leave s empty. */
void tset_clear(struct tset *s);

#endif
