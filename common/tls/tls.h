/*
 * tls: one mbedTLS configuration per tunnel and role (own certificate and
 * key, pins, optional CA), and the per-connection peer check: the verify
 * callback that rejects an unpinned or unchained peer inside the
 * handshake, and the check after the handshake that a certificate was
 * presented at all and is pinned (resumed sessions included).
 */
#ifndef UPSEAL_TLS_H
#define UPSEAL_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <mbedtls/ssl.h>

#include "config.h"
#include "pin.h"
#include "reason.h"

struct tls_ctx;

enum tls_verdict {
	TLS_PEER_OK = 0,
	TLS_PEER_PIN_MISMATCH,	/* key not among the pins */
	TLS_PEER_CHAIN_INVALID,	/* ca set: chain does not verify (or expired) */
	TLS_PEER_NAME_MISMATCH,	/* ca set, client role: server name not in cert */
	TLS_PEER_NO_CERT,	/* the peer presented no certificate */
	TLS_PEER_REVOKED,	/* ca set: a crl of the tunnel revokes it */
	TLS_PEER_NAME_NOT_ALLOWED,	/* ca set: no allow_* rule matches */
};

/* A DNS name is at most 253 bytes; a longer SNI is kept cut short. */
#define TLS_SNI_MAX 256
/* The room for a peer's names or the rule it matched, in a log line. */
#define TLS_PEER_NAMES_MAX 192

/* What one connection learned about its peer during the handshake. */
struct tls_peer {
	const struct tls_ctx *ctx;
	uint32_t chain_flags;	/* mbedTLS verify flags, all depths */
	enum tls_verdict verdict;
	bool verified;		/* the verify callback passed it, under ctx */
	bool has_pin;
	struct pin pin;		/* the peer's key, once seen */
	/* Server: the server name (SNI) the client sent, or "". */
	char sni[TLS_SNI_MAX];
	/* ca set: its certificate was refused for its dates (expired or not yet valid). */
	bool out_of_dates;
	/*
	 * With allow_* rules: the rule that let it in ("allow_dns=*.x"),
	 * or, refused for its names, the names it carried ("dns=a,cn=b").
	 */
	char names[TLS_PEER_NAMES_MAX];
};

/*
 * Build the configuration for tunnel t in role: loads cert, key (and
 * checks they are a pair) and ca. The key and the ticket_key_file are
 * read under secret.h's rule; run_as is the uid of `user =` (a secret it
 * owns is fine while root reads it at start), or (uid_t)-1. A server's configuration lists the ALPN
 * protocols upseal/2 and upseal/1 (preamble.h); a client's gets a second
 * configuration that offers them (tls_session_setup_preamble). On error returns -1 and err names the
 * tunnel, the file and what is wrong. *out is owned by the caller
 * (tls_ctx_free); it keeps no pointer into t.
 */
int tls_ctx_new(const struct cfg_tunnel *t, enum cfg_role role,
    uid_t run_as, struct tls_ctx **out, char *err, size_t errlen);

/*
 * The dates an operator watches, seconds since the epoch (0: none): the
 * own certificate's notAfter, the earliest notAfter of the CA file's
 * certificates, the earliest nextUpdate of the CRLs.
 */
struct tls_dates {
	int64_t cert_not_after;
	int64_t ca_not_after;
	int64_t crl_next_update;
};
void tls_ctx_dates(const struct tls_ctx *ctx, struct tls_dates *out);

/* Free a context; NULL is a no-op. No session may still use it. */
void tls_ctx_free(struct tls_ctx *ctx);

/*
 * Set up ssl for one connection: mbedtls_ssl_setup with ctx's
 * configuration, the per-connection verify callback writing into *peer,
 * and (client role) the server name. peer must outlive ssl. The caller
 * sets the BIO. Returns 0 or an mbedTLS error code.
 */
int tls_session_setup(const struct tls_ctx *ctx, mbedtls_ssl_context *ssl,
    struct tls_peer *peer);

/*
 * The same for a client's connection that will send a preamble (a pool
 * connection, or one that carries its client's address): its ClientHello
 * also offers the ALPN protocols upseal/2 and upseal/1 (preamble.h).
 */
int tls_session_setup_preamble(const struct tls_ctx *ctx,
    mbedtls_ssl_context *ssl, struct tls_peer *peer);

/*
 * After a completed handshake (full or resumed), and again whenever the
 * tunnel's settings change before the peer reaches the backend: judge the
 * peer against now, the tunnel's current context. It must have presented
 * a certificate; if the verify callback passed it under now, that
 * verdict stands. A session resumed under now was judged under now
 * already (the server's ticket callback, the client's cache of sessions
 * that passed): its pin and, with a CA, its expiry are checked again.
 * With settings reloaded since the connection began, its certificate is
 * judged from scratch: pins, and with a CA the chain and name again,
 * never a stored verdict.
 * Fills peer->pin (has_pin) and returns the verdict (also peer->verdict).
 */
enum tls_verdict tls_check_peer(const struct tls_ctx *now,
    const mbedtls_ssl_context *ssl, struct tls_peer *peer);

/*
 * Session resumption (resumption = yes): the server issues tickets under
 * keys that rotate and are bound to the tunnel's name, role, pins and CA
 * (ticket.h); the client keeps the last session per tunnel and offers
 * it. A resumed handshake skips the verify callback: the server judges
 * the certificate a ticket carries as it opens it (a failing one gets a
 * full handshake instead), and tls_check_peer judges it again.
 *
 * tls_session_resume: before the handshake (client role), offer the
 * cached session if there is one. tls_session_save: after a handshake
 * whose peer passed (client role), keep its session for the next one.
 * tls_resumed: whether the handshake just completed was a resumption
 * (the verify callback did not pass a certificate; call it before
 * tls_check_peer).
 */
void tls_session_resume(struct tls_ctx *ctx, mbedtls_ssl_context *ssl);
void tls_session_save(struct tls_ctx *ctx, const mbedtls_ssl_context *ssl);
bool tls_resumed(const struct tls_peer *peer_before_check);

/* Why a connection ends for verdict v (not TLS_PEER_OK): pin_mismatch, ... */
enum reason tls_verdict_reason(enum tls_verdict v);

/* The negotiated protocol and suite, for the log ("TLSv1.2", "TLS-ECDHE-..."). */
const char *tls_version_name(const mbedtls_ssl_context *ssl);
const char *tls_suite_name(const mbedtls_ssl_context *ssl);

#endif
