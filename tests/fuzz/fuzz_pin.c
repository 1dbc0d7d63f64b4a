/*
 * libFuzzer target: pin_parse on arbitrary text. Oracle: a pin that parses
 * formats back to text that parses to the same hash, and never overflows
 * the PIN_TEXT_MAX buffers.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "pin.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *text = fuzz_text(data, size);
	if (text == NULL)
		return 0;
	struct pin p, q;
	char err[256];
	if (pin_parse(text, &p, err, sizeof err) == 0) {
		char out[PIN_TEXT_MAX], shorter[PIN_TEXT_MAX];
		pin_format(&p, out);
		pin_format_short(&p, shorter);
		if (pin_parse(out, &q, err, sizeof err) != 0 ||
		    memcmp(p.hash, q.hash, sizeof p.hash) != 0)
			abort();
		if (!pin_in(&p, &q, 1))
			abort();
	} else if (memchr(err, '\0', sizeof err) == NULL) {
		abort();	/* the error must be a terminated string */
	}
	free(text);
	return 0;
}
