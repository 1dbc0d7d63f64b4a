#include "tset.h"

#include <stdlib.h>
#include <string.h>

int tset_add(struct tset *s, struct tunnel *t)
{
	struct tunnel **p = realloc(s->t, (s->n + 1) * sizeof *p);
	if (p == NULL)
		return -1;
	s->t = p;
	s->t[s->n++] = t;
	return 0;
}

bool tset_remove(struct tset *s, struct tunnel *t)
{
	for (size_t i = 0; i < s->n; i++) {
		if (s->t[i] == t) {
			memmove(&s->t[i], &s->t[i + 1], (s->n - i - 1) * sizeof *s->t);
			s->n--;
			return true;
		}
	}
	return false;
}

struct tunnel *tset_find(const struct tset *s, uint64_t id)
{
	for (size_t i = 0; i < s->n; i++)
		if (tunnel_id(s->t[i]) == id)
			return s->t[i];
	return NULL;
}

void tset_clear(struct tset *s)
{
	free(s->t);
	s->t = NULL;
	s->n = 0;
}
