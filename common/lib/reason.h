/*
 * reason: why a connection ended, as one enum and one table. The table
 * gives each reason the word the conn_end line logs (and the metric label
 * of upseal_connections_closed_total), the level of that line, and what
 * the end does: reset the plaintext end (RST) rather than close it (FIN),
 * count as a failed dial of the next hop, count as a pool failure.
 *
 * The first REASON_METRICS reasons are the metric labels, in the order
 * the metrics list them; REASON_OTHER is the label of every reason after
 * it (the pool's own reasons, which a client's connection never ends on).
 */
#ifndef UPSEAL_REASON_H
#define UPSEAL_REASON_H

#include <stdbool.h>

#include "log.h"

enum reason {
	REASON_CLOSED,
	REASON_TRUNCATED,
	REASON_PLAIN_RESET,
	REASON_PLAIN_ERROR,
	REASON_TLS_RESET,
	REASON_TLS_ERROR,
	REASON_PIN_MISMATCH,
	REASON_NO_CERT,
	REASON_CHAIN_INVALID,
	REASON_NAME_MISMATCH,
	REASON_NOT_TLS,
	REASON_PROTOCOL_VERSION,
	REASON_PEER_ALERT,
	REASON_HANDSHAKE_TIMEOUT,
	REASON_HANDSHAKE_EOF,
	REASON_HANDSHAKE_FAILED,
	REASON_CONNECT_FAILED,
	REASON_CONNECT_TIMEOUT,
	REASON_RESOLVE_FAILED,
	REASON_IDLE_TIMEOUT,
	REASON_DRAIN,
	REASON_NOMEM,
	REASON_ACCEPT_FAILED,
	REASON_RENEGOTIATION,
	REASON_BAD_PREAMBLE,
	REASON_POOL_CLOSED,
	REASON_NO_APPLICATION_PROTOCOL,
	REASON_HANDSHAKE_SHED,
	REASON_BAD_RECORD,
	REASON_RECORD_TOO_LARGE,
	REASON_PROXY_HEADER_INVALID,
	REASON_PROXY_HEADER_TIMEOUT,
	REASON_PROXY_HEADER_TRUNCATED,
	REASON_REVOKED,
	REASON_NAME_NOT_ALLOWED,
	REASON_OTHER,
	/* Only a client's pool connection ends on these (pool_conn_end). */
	REASON_POOL_UNSUPPORTED,
	REASON_POOL_IDLE,
	REASON_POOL_FLUSH,
	REASON_COUNT
};

/* How many metric labels: closed .. other. */
#define REASON_METRICS (REASON_OTHER + 1)

struct reason_info {
	const char *name;	/* reason= in the log */
	enum log_level level;	/* of the conn_end line */
	bool reset_plain;	/* RST, not FIN, on the plaintext end */
	bool connect_failure;	/* in the dial phase: a failed dial */
	bool pool_ours;		/* a pool conn we closed: not a pool failure */
};

/* The row of r (r < REASON_COUNT). */
const struct reason_info *reason_info(enum reason r);

static inline const char *reason_name(enum reason r)
{
	return reason_info(r)->name;
}

/* The metric label index of r: r itself, or REASON_OTHER. */
static inline unsigned reason_metric(enum reason r)
{
	return r < REASON_METRICS ? (unsigned)r : REASON_OTHER;
}

/* The reason logged as name; REASON_OTHER for a word not in the table. */
enum reason reason_parse(const char *name);

#endif
