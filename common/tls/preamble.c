#include "preamble.h"

#include <string.h>

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

enum preamble_result preamble_recv(mbedtls_ssl_context *ssl,
    unsigned char *byte, int *rc)
{
	*byte = 0;
	*rc = mbedtls_ssl_read(ssl, byte, 1);
	if (*rc == 1)
		return *byte == PREAMBLE_DIAL ? PREAMBLE_GO : PREAMBLE_BAD;
	switch (*rc) {
	case MBEDTLS_ERR_SSL_WANT_READ:
	case MBEDTLS_ERR_SSL_WANT_WRITE:
#if defined(MBEDTLS_ERR_SSL_RECEIVED_NEW_SESSION_TICKET)
	case MBEDTLS_ERR_SSL_RECEIVED_NEW_SESSION_TICKET:
#endif
		return PREAMBLE_WAIT;
	case 0:
	case MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY:
	case MBEDTLS_ERR_SSL_CONN_EOF:
		return PREAMBLE_CLOSED;
	default:
		return PREAMBLE_ERROR;
	}
}

int preamble_send(mbedtls_ssl_context *ssl)
{
	static const unsigned char dial = PREAMBLE_DIAL;
	for (;;) {
		int rc = mbedtls_ssl_write(ssl, &dial, 1);
#if defined(MBEDTLS_ERR_SSL_RECEIVED_NEW_SESSION_TICKET)
		if (rc == MBEDTLS_ERR_SSL_RECEIVED_NEW_SESSION_TICKET)
			continue;	/* TLS 1.3: a ticket on the way; again */
#endif
		return rc == 1 ? 0 : rc < 0 ? rc : MBEDTLS_ERR_SSL_INTERNAL_ERROR;
	}
}
