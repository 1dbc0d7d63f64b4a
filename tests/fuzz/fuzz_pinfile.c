/*
 * libFuzzer target: pin_list_parse on arbitrary bytes (a pin_file).
 * Oracle: on success every pin formats to text that parses back to it,
 * pin_set_sort leaves a sorted set without duplicates in which each pin
 * is found; on failure the count is unchanged and the error is a
 * terminated string naming the file and a line.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "pin.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct pin *pins = NULL;
	size_t n = 0;
	char err[512];
	/* Not NUL-terminated on purpose: the parser takes a length. */
	char *text = malloc(size ? size : 1);
	if (text == NULL)
		return 0;
	memcpy(text, data, size);
	if (pin_list_parse(text, size, "f.pins", &pins, &n, err,
	    sizeof err) == 0) {
		for (size_t i = 0; i < n; i++) {
			char out[PIN_TEXT_MAX];
			struct pin q;
			pin_format(&pins[i], out);
			if (pin_parse(out, &q, err, sizeof err) != 0 ||
			    memcmp(q.hash, pins[i].hash, sizeof q.hash) != 0)
				abort();
		}
		size_t k = pin_set_sort(pins, n);
		for (size_t i = 0; i < k; i++) {
			if (i > 0 && memcmp(pins[i - 1].hash, pins[i].hash,
			    PIN_HASH_LEN) >= 0)
				abort();
			if (!pin_set_has(&pins[i], pins, k))
				abort();
		}
	} else {
		if (n != 0 || memchr(err, '\0', sizeof err) == NULL ||
		    strncmp(err, "f.pins:", 7) != 0)
			abort();
	}
	free(pins);
	free(text);
	return 0;
}
