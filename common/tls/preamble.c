#include "preamble.h"

#include <string.h>

#include "compat.h"

static const char *alpn_list[] = { PREAMBLE_ALPN, NULL };

const char **preamble_alpn_list(void)
{
	return alpn_list;
}

bool preamble_negotiated(const mbedtls_ssl_context *ssl)
{
	const char *p = mbedtls_ssl_get_alpn_protocol(ssl);
	return p != NULL && strcmp(p, PREAMBLE_ALPN) == 0;
}

enum preamble_result preamble_recv(struct tlsio *io, unsigned char *byte,
    enum reason *why)
{
	size_t len = 0;
	*byte = 0;
	switch (tlsio_read(io, byte, 1, &len, why)) {
	case TLSIO_FAIL:
		if (*why != REASON_TRUNCATED)
			return PREAMBLE_ERROR;
		if (io->error != NULL && io->errlen > 0)
			io->error[0] = 0;
		/* FALLTHROUGH */
	case TLSIO_CLOSED:
		if (len == 0)
			return PREAMBLE_CLOSED;
		break;
	case TLSIO_MORE:
	case TLSIO_WANT:
		if (len == 0)
			return PREAMBLE_WAIT;
		break;
	}
	return *byte == PREAMBLE_DIAL ? PREAMBLE_GO : PREAMBLE_BAD;
}

int preamble_send(mbedtls_ssl_context *ssl)
{
	static const unsigned char dial = PREAMBLE_DIAL;
	for (;;) {
		int rc = mbedtls_ssl_write(ssl, &dial, 1);
		if (compat_is_new_ticket(rc))
			continue;	/* TLS 1.3: a ticket on the way; again */
		return rc == 1 ? 0 : rc < 0 ? rc : MBEDTLS_ERR_SSL_INTERNAL_ERROR;
	}
}
