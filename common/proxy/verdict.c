/*
 * verdict: what a connection's end means, in words for the peer and for
 * the operator: the reason a failed handshake ends on, the alert that
 * tells a refused peer why, and the one conn_end line. Pure functions of
 * the connection's state; conn.c decides when (conn_int.h).
 */
#include <stdarg.h>
#include <stdio.h>

#include <mbedtls/error.h>

#include "compat.h"
#include "conn_int.h"
#include "log.h"
#include "preamble.h"

/*
 * The one line a connection leaves. A refused peer's carries, besides the
 * short peer_pin, the full presented_pin of the key it showed, so that an
 * operator can add it on purpose.
 */
void verdict_log_end(struct conn *c, enum reason why, bool refused)
{
	struct log_line l;
	char pin[PIN_TEXT_MAX] = "";
	log_begin(&l, reason_info(why)->level, "conn_end");
	if (!l.on)
		return;
	if (c->io.peer.has_pin)
		pin_format_short(&c->io.peer.pin, pin);
	log_str(&l, "tunnel", conn_cfg(c)->name);
	log_u64(&l, "id", c->id);
	log_u64(&l, "worker", tunnel_worker(c->tun));
	log_str(&l, "peer", c->peer_text);
	if (c->carried.family != PP_NONE) {
		char client[ADDR_TEXT_MAX];
		pp_addrs_format_src(&c->carried, client, sizeof client);
		log_str(&l, "client", client);	/* the carried address */
	}
	log_str(&l, "peer_pin", pin[0] ? pin : "-");
	log_u64(&l, "plain_in", c->p2t.bytes);
	log_u64(&l, "plain_out", c->t2p.bytes);
	log_u64(&l, "duration_ms", uv_now(conn_loop(c)) - c->started);
	log_str(&l, "reason", reason_name(why));
	if (refused && c->io.peer.has_pin) {
		pin_format(&c->io.peer.pin, pin);
		log_str(&l, "presented_pin", pin);
	}
	/* With allow_* rules: the rule that let it in, or the names refused. */
	if (!refused && c->io.peer.verdict == TLS_PEER_OK && c->io.peer.names[0])
		log_str(&l, "peer_rule", c->io.peer.names);
	else if (refused && c->io.peer.verdict == TLS_PEER_NAME_NOT_ALLOWED)
		log_str(&l, "peer_names", c->io.peer.names);
	if (c->error[0])
		log_str(&l, "error", c->error);
	log_end(&l);
}

enum reason verdict_handshake(struct conn *c, int rc)
{
	if (c->io.peer.verdict != TLS_PEER_OK)
		return tls_verdict_reason(c->io.peer.verdict);
	if (c->io.alert_sent == MBEDTLS_SSL_ALERT_MSG_NO_APPLICATION_PROTOCOL &&
	    tunnel_role(c->tun) == CFG_SERVER) {
		conn_errorf(c, "the client offered ALPN protocols but not "
		    PREAMBLE_ALPN2 " or " PREAMBLE_ALPN1 "; connect without ALPN (openssl s_client "
		    "without -alpn, curl --no-alpn) or through upseal-client");
		return REASON_NO_APPLICATION_PROTOCOL;
	}
	if (c->io.saw_bytes && c->io.first_byte != 0x16 &&
	    tunnel_role(c->tun) == CFG_SERVER) {
		snprintf(c->error, sizeof c->error,
		    "the peer did not speak TLS (first byte 0x%02x%s)",
		    c->io.first_byte, c->io.first_byte >= 'A' && c->io.first_byte <= 'Z' ?
		    ", looks like plaintext" : "");
		return REASON_NOT_TLS;
	}
	switch (rc) {
	case MBEDTLS_ERR_SSL_CONN_EOF:
		conn_errorf(c, "the peer closed the "
		    "connection during the handshake");
		return REASON_HANDSHAKE_EOF;
	case COMPAT_ERR_PROTOCOL_VERSION:
		conn_error_tls(c, "handshake", rc);
		return REASON_PROTOCOL_VERSION;
	case MBEDTLS_ERR_SSL_FATAL_ALERT_MESSAGE:
		conn_errorf(c, "the peer sent a fatal "
		    "alert (it may not pin our key)");
		return REASON_PEER_ALERT;
	default:
		conn_error_tls(c, "handshake", rc);
		return REASON_HANDSHAKE_FAILED;
	}
}

/*
 * The fatal alert that tells a peer we refuse why, for the refusals
 * mbedTLS makes without sending one (it returns the error and leaves the
 * peer with a bare close), and for our own after the handshake. rc: the
 * handshake's error, or 0 when the peer check (v) refused a completed
 * handshake. 0: send nothing (the peer left, or already told us why).
 */
unsigned char verdict_alert(int rc, enum tls_verdict v)
{
	switch (rc) {
	case 0:
		/*
		 * RFC 5246 7.4.6: a server that requires a client certificate
		 * and gets none answers handshake_failure. A certificate that
		 * was presented (and, resumed, is not re-verified) but whose
		 * key the pins or the CA now refuse is 7.2.2's access_denied:
		 * "a valid certificate was received, but when access control
		 * was applied, the sender decided not to proceed".
		 */
		return v == TLS_PEER_NO_CERT ?
		    MBEDTLS_SSL_ALERT_MSG_HANDSHAKE_FAILURE :
		    MBEDTLS_SSL_ALERT_MSG_ACCESS_DENIED;
	case MBEDTLS_ERR_SSL_CONN_EOF:
	case MBEDTLS_ERR_SSL_FATAL_ALERT_MESSAGE:
		return 0;
	case MBEDTLS_ERR_SSL_UNEXPECTED_MESSAGE:
		return MBEDTLS_SSL_ALERT_MSG_UNEXPECTED_MESSAGE;
	/* A CertificateVerify whose signature does not verify (7.2.2). */
	case MBEDTLS_ERR_ECP_VERIFY_FAILED:
	case MBEDTLS_ERR_PK_SIG_LEN_MISMATCH:
		return MBEDTLS_SSL_ALERT_MSG_DECRYPT_ERROR;
	case COMPAT_ERR_ILLEGAL_PARAMETER:
		return MBEDTLS_SSL_ALERT_MSG_ILLEGAL_PARAMETER;
	case MBEDTLS_ERR_SSL_ALLOC_FAILED:
	case MBEDTLS_ERR_SSL_INTERNAL_ERROR:
		return MBEDTLS_SSL_ALERT_MSG_INTERNAL_ERROR;
	}
	/* An ECDSA signature whose DER does not parse: still decrypt_error. */
	if ((-rc & 0xff80) == -MBEDTLS_ERR_ECP_BAD_INPUT_DATA && (-rc & 0x7f))
		return MBEDTLS_SSL_ALERT_MSG_DECRYPT_ERROR;
	/* A handshake message that does not parse. */
	if (compat_err_is_decode(rc))
		return MBEDTLS_SSL_ALERT_MSG_DECODE_ERROR;
	return MBEDTLS_SSL_ALERT_MSG_HANDSHAKE_FAILURE;
}

/* Record the detail that the conn_end line will carry as error=. */
void conn_errorf(struct conn *c, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(c->error, sizeof c->error, fmt, ap);
	va_end(ap);
}

void conn_error_uv(struct conn *c, const char *what, int err)
{
	conn_errorf(c, "%s: %s", what, log_uverr(err));
}

void conn_error_tls(struct conn *c, const char *what, int err)
{
	char msg[160];
	conn_errorf(c, "%s: %s", what,
	    log_tlserr(err, msg, sizeof msg));
}

int conn_end_tls(struct conn *c, const char *what, int err)
{
	conn_error_tls(c, what, err);
	return CONN_END(err == MBEDTLS_ERR_SSL_ALLOC_FAILED ? REASON_NOMEM :
	    REASON_TLS_ERROR);
}

void verdict_describe_peer(struct conn *c, union stream *s)
{
	if (s->h.type != UV_TCP) {
		snprintf(c->peer_text, sizeof c->peer_text, "unix");
		return;
	}
	struct sockaddr_storage ss;
	int len = sizeof ss;
	if (uv_tcp_getpeername(&s->tcp, (struct sockaddr *)&ss, &len) == 0)
		addr_format_sockaddr((struct sockaddr *)&ss, c->peer_text,
		    sizeof c->peer_text);
	else
		snprintf(c->peer_text, sizeof c->peer_text, "unknown");
}
