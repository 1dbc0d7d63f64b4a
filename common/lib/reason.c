#include "reason.h"

#include <string.h>

/*
 * Quiet (info) ends are the ones nothing went wrong in: a clean close, a
 * drain, an idle peer, a pool conn the server let go, and a shed
 * handshake (its burst is warned once, by the tunnel). Everything else
 * warns. An end that loses bytes in flight (the TLS side failed, or the
 * peer was refused) resets the plaintext end, so the application there
 * sees an error and not a clean close it would take for complete data.
 */
#define Q LOG_INFO
#define W LOG_WARN
static const struct reason_info table[REASON_COUNT] = {
	[REASON_CLOSED] = { "closed", Q, false, false, false },
	[REASON_TRUNCATED] = { "truncated", W, true, false, false },
	[REASON_PLAIN_RESET] = { "plain_reset", W, false, false, false },
	[REASON_PLAIN_ERROR] = { "plain_error", W, false, false, false },
	[REASON_TLS_RESET] = { "tls_reset", W, true, false, false },
	[REASON_TLS_ERROR] = { "tls_error", W, true, false, false },
	[REASON_PIN_MISMATCH] = { "pin_mismatch", W, true, false, false },
	[REASON_NO_CERT] = { "no_cert", W, true, false, false },
	[REASON_CHAIN_INVALID] = { "chain_invalid", W, true, false, false },
	[REASON_NAME_MISMATCH] = { "name_mismatch", W, true, false, false },
	[REASON_NOT_TLS] = { "not_tls", W, true, false, false },
	[REASON_PROTOCOL_VERSION] = { "protocol_version", W, true, false, false },
	[REASON_PEER_ALERT] = { "peer_alert", W, true, false, false },
	[REASON_HANDSHAKE_TIMEOUT] = { "handshake_timeout", W, false, false, false },
	[REASON_HANDSHAKE_EOF] = { "handshake_eof", W, true, false, false },
	[REASON_HANDSHAKE_FAILED] = { "handshake_failed", W, true, false, false },
	[REASON_CONNECT_FAILED] = { "connect_failed", W, true, true, false },
	[REASON_CONNECT_TIMEOUT] = { "connect_timeout", W, false, true, false },
	[REASON_RESOLVE_FAILED] = { "resolve_failed", W, true, true, false },
	[REASON_IDLE_TIMEOUT] = { "idle_timeout", Q, false, false, false },
	[REASON_DRAIN] = { "drain", Q, false, false, true },
	[REASON_NOMEM] = { "nomem", W, true, false, false },
	[REASON_ACCEPT_FAILED] = { "accept_failed", W, false, false, false },
	[REASON_RENEGOTIATION] = { "renegotiation", W, true, false, false },
	[REASON_BAD_PREAMBLE] = { "bad_preamble", W, false, false, false },
	[REASON_POOL_CLOSED] = { "pool_closed", Q, false, false, false },
	[REASON_NO_APPLICATION_PROTOCOL] = { "no_application_protocol", W, true,
	    false, false },
	[REASON_HANDSHAKE_SHED] = { "handshake_shed", Q, false, false, false },
	[REASON_BAD_RECORD] = { "bad_record", W, true, false, false },
	[REASON_RECORD_TOO_LARGE] = { "record_too_large", W, true, false, false },
	[REASON_PROXY_HEADER_INVALID] = { "proxy_header_invalid", W, true,
	    false, false },
	[REASON_PROXY_HEADER_TIMEOUT] = { "proxy_header_timeout", W, true,
	    false, false },
	[REASON_PROXY_HEADER_TRUNCATED] = { "proxy_header_truncated", W, false,
	    false, false },
	[REASON_REVOKED] = { "revoked", W, true, false, false },
	[REASON_NAME_NOT_ALLOWED] = { "name_not_allowed", W, true, false, false },
	[REASON_OTHER] = { "other", W, false, false, false },
	[REASON_POOL_UNSUPPORTED] = { "pool_unsupported", W, false, false, false },
	[REASON_POOL_IDLE] = { "pool_idle", Q, false, false, false },
	[REASON_POOL_FLUSH] = { "pool_flush", Q, false, false, true },
};
#undef Q
#undef W

const struct reason_info *reason_info(enum reason r)
{
	return &table[r < REASON_COUNT ? r : REASON_OTHER];
}

enum reason reason_parse(const char *name)
{
	for (unsigned r = 0; r < REASON_COUNT; r++)
		if (strcmp(table[r].name, name) == 0)
			return (enum reason)r;
	return REASON_OTHER;
}
