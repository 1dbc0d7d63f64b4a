/*
 * libFuzzer target: addr_parse on arbitrary text. Oracle: an address that
 * parses formats back to text that parses again to the same kind, host,
 * port and path; addr_is_loopback and addr_is_dns_name never crash.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "addr.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *text = fuzz_text(data, size);
	if (text == NULL)
		return 0;
	struct addr a, b;
	char err[256];
	(void)addr_is_dns_name(text);
	if (addr_parse(text, &a, err, sizeof err) == 0) {
		char out[ADDR_TEXT_MAX];
		(void)addr_is_loopback(&a);
		addr_format(&a, out, sizeof out);
		if (addr_parse(out, &b, err, sizeof err) != 0)
			abort();	/* what we print must parse again */
		if (a.kind != b.kind || a.port != b.port)
			abort();
		if (a.kind == ADDR_TCP && strcmp(a.host, b.host) != 0)
			abort();
		if (a.kind == ADDR_UNIX && strcmp(a.path, b.path) != 0)
			abort();
		if (a.kind == ADDR_TCP && a.numeric)
			addr_format_sockaddr((const struct sockaddr *)&a.sa, out,
			    sizeof out);
	}
	free(text);
	return 0;
}
