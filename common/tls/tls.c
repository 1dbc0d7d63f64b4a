#include "tls.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <mbedtls/error.h>
#include <mbedtls/md.h>
#include <mbedtls/platform_util.h>
#include <mbedtls/ssl_ticket.h>
#include <mbedtls/x509.h>

#include <uv.h>

#include "compat.h"
#include "ktls.h"
#include "log.h"
#include "policy.h"
#include "preamble.h"
#include "rng.h"
#include "secret.h"
#include "ticket.h"

struct tls_ctx {
	char *name;		/* the tunnel's, for log lines */
	enum cfg_role role;
	mbedtls_ssl_config conf;
	mbedtls_ssl_config alpn_conf;	/* client: conf + ALPN, for preambles */
	bool has_alpn_conf;
	mbedtls_x509_crt own_crt;
	mbedtls_pk_context own_key;
	mbedtls_x509_crt ca;
	bool has_ca;
	struct pin *pins;	/* inline and pin_file pins: sorted, unique */
	size_t npins;
	bool pinned;		/* pin or pin_file given: the key must be one */
	struct policy policy;	/* ca set: name rules and CRLs */
	char *server_name;	/* client role with a CA: the name to check */
	char *sni;		/* client role: the name sent, or NULL */
	int suites[2 * CFG_CIPHERS_MAX + 1];	/* offered, 0-terminated */
	bool resumption;
	/* What a ticket is bound to: hash of name, role, pins, CA (ticket.h). */
	unsigned char binding[TICKET_BINDING_LEN];
	mbedtls_ssl_ticket_context ticket;	/* server role, own keys */
	struct ticket_keys *shared_keys;	/* server role, ticket_key_file */
	/* Client role: the last session; workers share it under the lock. */
	uv_mutex_t cache_lock;
	bool lock_init;
	mbedtls_ssl_session cached;
	bool has_cached;
};

/* Ticket keys rotate after this long; a ticket lives at most this long. */
#define TICKET_LIFETIME_S 3600

/* Say why a file cannot be used, preferring the OS's reason. */
static void file_error(char *err, size_t errlen, const char *tunnel,
    const char *key, const char *path, const char *what, int tlsrc)
{
	struct stat st;
	char tlsmsg[200];
	if (stat(path, &st) != 0) {
		snprintf(err, errlen, "[%s] %s: %s: cannot read: %s", tunnel,
		    key, path, strerror(errno));
		return;
	}
	snprintf(err, errlen, "[%s] %s: %s: %s: %s", tunnel, key, path, what,
	    log_tlserr(tlsrc, tlsmsg, sizeof tlsmsg));
}

/* Keys are small; a file past this is not one. */
#define KEY_FILE_MAX (64 * 1024)

/*
 * Load the private key with secret_read's rule (secret.h): a key that
 * others may read, or that another user owns, is refused, and one that
 * this process may not read says so (not "not a key").
 */
static int load_key(mbedtls_pk_context *pk, const struct cfg_tunnel *t,
    uid_t run_as, char *err, size_t errlen)
{
	unsigned char *buf;
	size_t len;
	char why[300];
	if (secret_read(t->key, KEY_FILE_MAX, run_as, &buf, &len, why, sizeof why) != 0) {
		snprintf(err, errlen, "[%s] key: %s", t->name, why);
		return -1;
	}
	/* PEM is parsed with its terminating NUL, DER without. */
	bool pem = strstr((const char *)buf, "-----BEGIN ") != NULL;
	int rc = compat_pk_parse_key(pk, buf, pem ? len + 1 : len, rng_get());
	secret_free(buf, len);
	if (rc != 0) {
		char msg[200];
		snprintf(err, errlen, "[%s] key: %s: not a PEM or DER private key "
		    "(encrypted keys are not supported): %s", t->name, t->key,
		    log_tlserr(rc, msg, sizeof msg));
		return -1;
	}
	return 0;
}

static int load_crt(mbedtls_x509_crt *crt, const struct cfg_tunnel *t,
    const char *key, const char *path, char *err, size_t errlen)
{
	int rc = mbedtls_x509_crt_parse_file(crt, path);
	if (rc < 0) {
		file_error(err, errlen, t->name, key, path,
		    "not a PEM or DER certificate", rc);
		return -1;
	}
	if (rc > 0) {
		snprintf(err, errlen, "[%s] %s: %s: %d certificate(s) in the "
		    "file could not be parsed", t->name, key, path, rc);
		return -1;
	}
	return 0;
}

static bool is_ip_literal(const char *host)
{
	return strchr(host, ':') != NULL ||
	    strspn(host, "0123456789.") == strlen(host);
}

/*
 * Judge a peer's certificate from scratch against ctx's settings: its
 * key among the pins (if any), and with a CA its chain and (client role)
 * the server's name. This is the verify callback's decision made outside
 * a handshake, for a certificate that the callback did not see under
 * these settings: one a resumed session carries (a ticket or the
 * client's cache kept the certificate, and its verdict would be the one
 * of the day it was issued), and one a connection presented while its
 * tunnel was reloaded. A session carries the peer's certificate alone,
 * without intermediates: a chain that needs them fails here, and the
 * peer falls back to a full handshake (tickets) or is refused.
 */
/*
 * A chain that failed with flags: revoked (the CRL), the server's name,
 * or the chain itself; leaf_dates: the peer's own certificate is expired
 * or not yet valid (counted apart: upseal_peer_cert_expired_total).
 */
static enum tls_verdict chain_verdict(struct tls_peer *peer, uint32_t flags,
    bool leaf_dates)
{
	if (flags & MBEDTLS_X509_BADCERT_REVOKED)
		return TLS_PEER_REVOKED;
	if (flags == MBEDTLS_X509_BADCERT_CN_MISMATCH)
		return TLS_PEER_NAME_MISMATCH;
	peer->out_of_dates = leaf_dates;
	return TLS_PEER_CHAIN_INVALID;
}

/*
 * What follows a chain that verified (or no CA), the same in the verify
 * callback, in judge and after a resumption: with a CA the policy (CRLs,
 * then name rules), then the pins. peer->pin is filled in.
 */
static enum tls_verdict after_chain(const struct tls_ctx *ctx,
    const mbedtls_x509_crt *crt, struct tls_peer *peer)
{
	if (ctx->has_ca) {
		switch (policy_check(&ctx->policy, crt, peer->names,
		    sizeof peer->names)) {
		case POLICY_OK:
			break;
		case POLICY_REVOKED:
			return TLS_PEER_REVOKED;
		case POLICY_NAME:
			return TLS_PEER_NAME_NOT_ALLOWED;
		}
	}
	if (ctx->pinned && (!peer->has_pin ||
	    !pin_set_has(&peer->pin, ctx->pins, ctx->npins)))
		return TLS_PEER_PIN_MISMATCH;
	return TLS_PEER_OK;
}

static enum tls_verdict judge(const struct tls_ctx *ctx,
    const mbedtls_x509_crt *crt, struct tls_peer *peer)
{
	if (crt == NULL)
		return TLS_PEER_NO_CERT;
	if (pin_of_crt(crt, &peer->pin) != 0)
		return TLS_PEER_PIN_MISMATCH;
	peer->has_pin = true;
	if (ctx->has_ca) {
		uint32_t flags = 0;
		(void)mbedtls_x509_crt_verify_with_profile(
		    (mbedtls_x509_crt *)crt, (mbedtls_x509_crt *)&ctx->ca,
		    ctx->policy.has_crl ? (mbedtls_x509_crl *)&ctx->policy.crl :
		    NULL, &mbedtls_x509_crt_profile_default, ctx->server_name,
		    &flags, NULL, NULL);
		flags &= ~(uint32_t)POLICY_CRL_STALE_FLAGS;
		peer->chain_flags |= flags;
		if (flags != 0)
			return chain_verdict(peer, flags, policy_out_of_dates(crt));
	}
	return after_chain(ctx, crt, peer);
}

/* ---- tickets (server role) ---- */

/* Hash a length (4 bytes, big-endian) and then the bytes. */
static int md_field(mbedtls_md_context_t *h, const void *p, size_t len)
{
	unsigned char n[4] = { (unsigned char)(len >> 24),
		(unsigned char)(len >> 16), (unsigned char)(len >> 8),
		(unsigned char)len };
	int rc = mbedtls_md_update(h, n, sizeof n);
	return rc != 0 || len == 0 ? rc : mbedtls_md_update(h, p, len);
}

/*
 * ctx->binding: SHA-256 over the tunnel's name, the role, its pins (in
 * sorted order, tls_ctx_new sorts them: the order they are listed in does
 * not matter) and its CA
 * certificates, each field length-prefixed. Sealed into every ticket key
 * (ticket.h), so a ticket opens only in the tunnel, and under the trust
 * settings, that issued it.
 */
static int binding_compute(struct tls_ctx *ctx, const struct cfg_tunnel *t)
{
	static const char label[] = "upseal-ticket-binding-v1";
	unsigned char role = ctx->role == CFG_SERVER ? 's' : 'c';
	mbedtls_md_context_t h;
	mbedtls_md_init(&h);
	int rc = mbedtls_md_setup(&h,
	    mbedtls_md_info_from_type(MBEDTLS_MD_SHA256), 0);
	if (rc == 0)
		rc = mbedtls_md_starts(&h);
	if (rc == 0)
		rc = md_field(&h, label, sizeof label - 1);
	if (rc == 0)
		rc = md_field(&h, t->name, strlen(t->name));
	if (rc == 0)
		rc = md_field(&h, &role, 1);
	if (rc == 0)
		rc = md_field(&h, ctx->pins, ctx->npins * sizeof *ctx->pins);
	for (const mbedtls_x509_crt *c = &ctx->ca; rc == 0 && ctx->has_ca &&
	    c != NULL && c->raw.len > 0; c = c->next)
		rc = md_field(&h, c->raw.p, c->raw.len);
	if (rc == 0)
		rc = mbedtls_md_finish(&h, ctx->binding);
	mbedtls_md_free(&h);
	return rc;
}

/* mbedtls_ssl_ticket_write_t over this tunnel's keys (p is the tls_ctx). */
static int ticket_seal(void *p, const mbedtls_ssl_session *session,
    unsigned char *start, const unsigned char *end, size_t *tlen,
    uint32_t *lifetime)
{
	struct tls_ctx *ctx = p;
	if (ctx->shared_keys != NULL)
		return ticket_write(ctx->shared_keys, session, start, end, tlen,
		    lifetime);
	return mbedtls_ssl_ticket_write(&ctx->ticket, session, start, end,
	    tlen, lifetime);
}

/*
 * mbedtls_ssl_ticket_parse_t: open the ticket, then judge the certificate
 * it carries against the tunnel's settings as they are now (judge). A
 * ticket whose peer would not pass a full handshake is refused as not
 * authentic, and mbedTLS then runs a full handshake, in which the verify
 * callback decides: the session's stored verify_result is never used.
 */
static int ticket_open(void *p, mbedtls_ssl_session *session,
    unsigned char *buf, size_t len)
{
	struct tls_ctx *ctx = p;
	int rc = ctx->shared_keys != NULL ?
	    ticket_parse(ctx->shared_keys, session, buf, len) :
	    mbedtls_ssl_ticket_parse(&ctx->ticket, session, buf, len);
	if (rc != 0)
		return rc;
	struct tls_peer peer = { .ctx = ctx };
	enum tls_verdict v = judge(ctx, compat_session_peer_cert(session),
	    &peer);
	if (v == TLS_PEER_OK)
		return 0;
	struct log_line l;
	char pin[PIN_TEXT_MAX];
	log_begin(&l, LOG_INFO, "ticket_refused");
	log_str(&l, "tunnel", ctx->name);
	log_str(&l, "reason", reason_name(tls_verdict_reason(v)));
	if (peer.has_pin) {
		pin_format(&peer.pin, pin);
		log_str(&l, "presented_pin", pin);
	}
	if (v == TLS_PEER_NAME_NOT_ALLOWED)
		log_str(&l, "peer_names", peer.names);
	log_str(&l, "msg", "the certificate in the session ticket does not "
	    "pass the tunnel's current settings; a full handshake decides");
	log_end(&l);
	return MBEDTLS_ERR_SSL_INVALID_MAC;
}

/*
 * Set up conf for ctx's role and tunnel t: versions, groups, suites, peer
 * checks, own certificate, tickets. A client's pool configuration is a
 * second conf set up the same way (plus ALPN), so the two cannot drift.
 */
static int sni_cb(void *arg, mbedtls_ssl_context *ssl,
    const unsigned char *name, size_t len);

static int conf_setup(struct tls_ctx *ctx, mbedtls_ssl_config *conf,
    const struct cfg_tunnel *t, char *err, size_t errlen)
{
	char msg[200];
	int endpoint = ctx->role == CFG_SERVER ? MBEDTLS_SSL_IS_SERVER :
	    MBEDTLS_SSL_IS_CLIENT;
	int rc = mbedtls_ssl_config_defaults(conf, endpoint,
	    MBEDTLS_SSL_TRANSPORT_STREAM, MBEDTLS_SSL_PRESET_DEFAULT);
	if (rc != 0) {
		snprintf(err, errlen, "[%s] TLS set-up failed: %s", t->name,
		    log_tlserr(rc, msg, sizeof msg));
		return -1;
	}
	compat_conf_versions(conf);
	compat_conf_groups(conf);
	/*
	 * Default order: ChaCha20-Poly1305 first: with Debian's mbedTLS 2.28
	 * it measured ~380 MB/s on one core here against ~230 MB/s for
	 * AES-128-GCM (docs/PERFORMANCE.md). But where this kernel can take
	 * the record layer over (kTLS, ktls = auto), AES-128-GCM first: the
	 * kernel's AES-NI GCM is the fastest suite of all, and the server's
	 * order decides (PERFORMANCE.md, "Which suite with kTLS"). `ciphers`
	 * changes the order.
	 */
	static const unsigned char dflt[] = { CFG_CIPHER_CHACHA20,
		CFG_CIPHER_AES128GCM, CFG_CIPHER_AES256GCM };
	static const unsigned char dflt_ktls[] = { CFG_CIPHER_AES128GCM,
		CFG_CIPHER_AES256GCM, CFG_CIPHER_CHACHA20 };
	const unsigned char *order = t->nciphers ? t->ciphers :
	    !t->ktls_off && ktls_probe(NULL, 0) == 0 ? dflt_ktls : dflt;
	size_t norder = t->nciphers ? t->nciphers : sizeof dflt;
	size_t n = 0;
	for (size_t i = 0; i < norder; i++)
		n += compat_suites_for(order[i], &ctx->suites[n]);
	ctx->suites[n] = 0;
	mbedtls_ssl_conf_ciphersuites(conf, ctx->suites);
	mbedtls_ssl_conf_rng(conf, rng_random, NULL);
	ktls_conf_capture(conf);	/* 2.28: kept only where wanted */
#if defined(MBEDTLS_SSL_RENEGOTIATION)
	mbedtls_ssl_conf_renegotiation(conf,
	    MBEDTLS_SSL_RENEGOTIATION_DISABLED);
#endif
	mbedtls_ssl_conf_legacy_renegotiation(conf,
	    MBEDTLS_SSL_LEGACY_NO_RENEGOTIATION);
	/*
	 * OPTIONAL, not REQUIRED: with pins and no CA a self-signed peer must
	 * reach the verify callback, which is where the decision is made;
	 * a peer without a certificate is refused by tls_check_peer.
	 */
	mbedtls_ssl_conf_authmode(conf, MBEDTLS_SSL_VERIFY_OPTIONAL);
	if (ctx->has_ca)
		mbedtls_ssl_conf_ca_chain(conf, &ctx->ca, ctx->policy.has_crl ?
		    &ctx->policy.crl : NULL);
	if (ctx->role == CFG_SERVER)
		mbedtls_ssl_conf_sni(conf, sni_cb, NULL);
	rc = mbedtls_ssl_conf_own_cert(conf, &ctx->own_crt, &ctx->own_key);
	if (rc != 0) {
		snprintf(err, errlen, "[%s] cert: %s: cannot be used: %s",
		    t->name, t->cert, log_tlserr(rc, msg, sizeof msg));
		return -1;
	}
	ctx->resumption = t->resumption;
	if (!ctx->resumption) {
		mbedtls_ssl_conf_session_tickets(conf,
		    MBEDTLS_SSL_SESSION_TICKETS_DISABLED);
		return 0;
	}
	if (ctx->role == CFG_CLIENT)
		compat_conf_client_tickets(conf);
	else
		compat_conf_server_tls13_tickets_off(conf);
	if (ctx->role == CFG_SERVER && ctx->shared_keys != NULL) {
		/* ticket_key_file, loaded by tls_ctx_new. */
		mbedtls_ssl_conf_session_tickets_cb(conf, ticket_seal,
		    ticket_open, ctx);
	} else if (ctx->role == CFG_SERVER) {
#if defined(MBEDTLS_THREADING_C)
		/*
		 * mbedTLS's own ticket keys: random, rotated and forgotten
		 * after two lifetimes; its mutex makes them safe for workers.
		 */
		rc = mbedtls_ssl_ticket_setup(&ctx->ticket, rng_random, NULL,
		    MBEDTLS_CIPHER_AES_256_GCM, TICKET_LIFETIME_S);
		if (rc != 0) {
			snprintf(err, errlen, "[%s] session tickets: %s", t->name,
			    log_tlserr(rc, msg, sizeof msg));
			return -1;
		}
		mbedtls_ssl_conf_session_tickets_cb(conf, ticket_seal,
		    ticket_open, ctx);
#else
		/*
		 * Without MBEDTLS_THREADING_C mbedtls_ssl_ticket has no lock:
		 * seal with ticket.c's stateless keys from a random secret.
		 */
		char why[200];
		if (ticket_keys_random(ctx->binding, &ctx->shared_keys, why,
		    sizeof why) != 0) {
			snprintf(err, errlen, "[%s] session tickets: %s", t->name,
			    why);
			return -1;
		}
		mbedtls_ssl_conf_session_tickets_cb(conf, ticket_seal,
		    ticket_open, ctx);
#endif
	}
	return 0;
}

/*
 * mbedTLS builds an elliptic curve's table of base-point multiples the
 * first time a key's group needs it and stores it in the group: two
 * workers signing with the shared key at once would both write it. One
 * verification (of a dummy signature: the outcome does not matter) builds
 * it now, before any worker runs.
 */
static void ec_warm(mbedtls_pk_context *pk)
{
	static const unsigned char dummy_sig[] = {
		0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01 };
	unsigned char hash[32] = { 1 };
	if (!mbedtls_pk_can_do(pk, MBEDTLS_PK_ECDSA))
		return;
	(void)mbedtls_pk_verify(pk, MBEDTLS_MD_SHA256, hash, sizeof hash,
	    dummy_sig, sizeof dummy_sig);
}

/*
 * ALPN, for the preamble (see preamble.h). The server always lists
 * upseal/2 and upseal/1, in that order of preference: a client offering
 * them gets the newest both know, a client offering no ALPN gets the
 * plain behaviour (mbedTLS refuses a client that offers only other
 * protocols, with no_application_protocol). The client offers them only
 * on connections that send a preamble (pool connections, and those that
 * carry their client's address), from a second configuration (mbedTLS
 * sets ALPN per configuration, not per connection): any other
 * connection's ClientHello stays as it was.
 */
static int alpn_setup(struct tls_ctx *ctx, const struct cfg_tunnel *t,
    char *err, size_t errlen)
{
	char msg[200];
	mbedtls_ssl_config *conf = &ctx->conf;
	if (ctx->role == CFG_CLIENT) {
		if (conf_setup(ctx, &ctx->alpn_conf, t, err, errlen) != 0)
			return -1;
		ctx->has_alpn_conf = true;
		conf = &ctx->alpn_conf;
	}
	int rc = mbedtls_ssl_conf_alpn_protocols(conf, preamble_alpn_list());
	if (rc != 0) {
		snprintf(err, errlen, "[%s] TLS set-up failed (ALPN): %s",
		    t->name, log_tlserr(rc, msg, sizeof msg));
		return -1;
	}
	return 0;
}

/*
 * The pins of t, inline then from each pin_file, sorted and unique for
 * pin_set_has. A pin file that holds no pin (and no other) is an error:
 * the tunnel would let nobody in, or, with a CA, everybody it signed.
 */
static int load_pins(struct tls_ctx *ctx, const struct cfg_tunnel *t,
    char *err, size_t errlen)
{
	ctx->pinned = t->npins > 0 || t->npin_files > 0;
	if (t->npins > 0) {
		ctx->pins = calloc(t->npins, sizeof *ctx->pins);
		if (ctx->pins == NULL) {
			snprintf(err, errlen, "[%s] out of memory", t->name);
			return -1;
		}
		memcpy(ctx->pins, t->pins, t->npins * sizeof *ctx->pins);
		ctx->npins = t->npins;
	}
	for (size_t i = 0; i < t->npin_files; i++) {
		char why[600];
		if (pin_list_read(t->pin_files[i], &ctx->pins, &ctx->npins, why,
		    sizeof why) != 0) {
			snprintf(err, errlen, "[%s] pin_file: %s", t->name, why);
			return -1;
		}
	}
	if (ctx->pinned && ctx->npins == 0) {
		snprintf(err, errlen, "[%s] pin_file: %s: no pin in the file; "
		    "expected one sha256//BASE64 per line (upseal-certs pin)",
		    t->name, t->pin_files[0]);
		return -1;
	}
	ctx->npins = pin_set_sort(ctx->pins, ctx->npins);
	return 0;
}

void tls_ctx_dates(const struct tls_ctx *ctx, struct tls_dates *out)
{
	out->cert_not_after = policy_chain_not_after(&ctx->own_crt);
	out->ca_not_after = ctx->has_ca ? policy_chain_not_after(&ctx->ca) : 0;
	out->crl_next_update = ctx->policy.crl_next_update;
}

int tls_ctx_new(const struct cfg_tunnel *t, enum cfg_role role,
    uid_t run_as, struct tls_ctx **out, char *err, size_t errlen)
{
	char msg[200];
	*out = NULL;
	if (rng_init() != 0) {
		snprintf(err, errlen, "cannot seed the random generator");
		return -1;
	}
	struct tls_ctx *ctx = calloc(1, sizeof *ctx);
	if (ctx == NULL)
		goto fail_nomem;
	ctx->role = role;
	if ((ctx->name = strdup(t->name)) == NULL)
		goto fail_nomem;
	mbedtls_ssl_config_init(&ctx->conf);
	mbedtls_ssl_config_init(&ctx->alpn_conf);
	mbedtls_x509_crt_init(&ctx->own_crt);
	mbedtls_pk_init(&ctx->own_key);
	mbedtls_x509_crt_init(&ctx->ca);
	mbedtls_ssl_ticket_init(&ctx->ticket);
	mbedtls_ssl_session_init(&ctx->cached);
	if (uv_mutex_init(&ctx->cache_lock) != 0)
		goto fail_nomem;
	ctx->lock_init = true;

	if (load_crt(&ctx->own_crt, t, "cert", t->cert, err, errlen) != 0)
		goto fail;
	if (load_key(&ctx->own_key, t, run_as, err, errlen) != 0)
		goto fail;
	int rc = compat_pk_check_pair(&ctx->own_crt.pk, &ctx->own_key, rng_get());
	if (rc != 0) {
		snprintf(err, errlen, "[%s] key: %s does not match the "
		    "certificate %s (%s)", t->name, t->key, t->cert,
		    log_tlserr(rc, msg, sizeof msg));
		goto fail;
	}
	if (t->ca != NULL) {
		if (load_crt(&ctx->ca, t, "ca", t->ca, err, errlen) != 0)
			goto fail;
		ctx->has_ca = true;
		if (policy_load(&ctx->policy, t, &ctx->ca, err, errlen) != 0)
			goto fail;
	}
	if (load_pins(ctx, t, err, errlen) != 0)
		goto fail;
	if (role == CFG_CLIENT) {
		const char *name = t->server_name;
		if (name == NULL && t->connect.kind == ADDR_TCP &&
		    !is_ip_literal(t->connect.host))
			name = t->connect.host;
		if (name != NULL && (ctx->sni = strdup(name)) == NULL)
			goto fail_nomem;
		if (ctx->has_ca && name != NULL &&
		    (ctx->server_name = strdup(name)) == NULL)
			goto fail_nomem;
	}
	if (binding_compute(ctx, t) != 0)
		goto fail_nomem;
	if (role == CFG_SERVER && t->resumption && t->ticket_key_file != NULL) {
		char why[600];
		if (ticket_keys_load(t->ticket_key_file, run_as, ctx->binding,
		    &ctx->shared_keys, why, sizeof why) != 0) {
			snprintf(err, errlen, "[%s] ticket_key_file: %s", t->name,
			    why);
			goto fail;
		}
	}
	if (conf_setup(ctx, &ctx->conf, t, err, errlen) != 0)
		goto fail;
	if (alpn_setup(ctx, t, err, errlen) != 0)
		goto fail;
	ec_warm(&ctx->own_key);
	for (mbedtls_x509_crt *c = &ctx->ca; ctx->has_ca && c != NULL;
	    c = c->next)
		ec_warm(&c->pk);
	*out = ctx;
	return 0;

fail_nomem:
	snprintf(err, errlen, "[%s] out of memory", t->name);
fail:
	tls_ctx_free(ctx);
	return -1;
}

void tls_ctx_free(struct tls_ctx *ctx)
{
	if (ctx == NULL)
		return;
	mbedtls_ssl_config_free(&ctx->conf);
	mbedtls_ssl_config_free(&ctx->alpn_conf);
	mbedtls_x509_crt_free(&ctx->own_crt);
	mbedtls_pk_free(&ctx->own_key);	/* zeroizes the key */
	mbedtls_x509_crt_free(&ctx->ca);
	policy_free(&ctx->policy);
	mbedtls_ssl_ticket_free(&ctx->ticket);	/* zeroizes the ticket keys */
	ticket_keys_free(ctx->shared_keys);
	mbedtls_ssl_session_free(&ctx->cached);
	if (ctx->lock_init)
		uv_mutex_destroy(&ctx->cache_lock);
	free(ctx->pins);
	free(ctx->server_name);
	free(ctx->sni);
	free(ctx->name);
	free(ctx);
}

/*
 * Called by mbedTLS for each certificate of the peer's chain, the root
 * first and the peer's own certificate (depth 0) last. Returning non-zero
 * aborts the handshake with a fatal alert: a rejected peer never gets to
 * send or receive application data.
 */
static int verify_cb(void *arg, mbedtls_x509_crt *crt, int depth,
    uint32_t *flags)
{
	struct tls_peer *peer = arg;
	const struct tls_ctx *ctx = peer->ctx;

	/* A stale CRL still applies; it does not fail the chain (policy.h). */
	if (ctx->has_ca)
		*flags &= ~(uint32_t)POLICY_CRL_STALE_FLAGS;
	peer->chain_flags |= *flags;
	if (depth != 0) {
		if (!ctx->has_ca)
			*flags = 0;
		return 0;
	}
	if (pin_of_crt(crt, &peer->pin) == 0)
		peer->has_pin = true;
	if (ctx->has_ca && peer->chain_flags != 0) {
		peer->verdict = chain_verdict(peer, peer->chain_flags,
		    (*flags & (MBEDTLS_X509_BADCERT_EXPIRED |
		    MBEDTLS_X509_BADCERT_FUTURE)) != 0);
		return MBEDTLS_ERR_X509_CERT_VERIFY_FAILED;
	}
	peer->verdict = after_chain(ctx, crt, peer);
	if (peer->verdict != TLS_PEER_OK)
		return MBEDTLS_ERR_X509_CERT_VERIFY_FAILED;
	/* Pinned (and chained, with a CA): nothing left to object to. */
	peer->verified = true;
	*flags = 0;
	return 0;
}

/*
 * Server: keep the server name the client sent (the backend's PROXY
 * header carries it as PP2_TYPE_AUTHORITY). The connection's peer is the
 * verify callback's argument. Any name is accepted: the certificate is
 * the tunnel's either way.
 */
static int sni_cb(void *arg, mbedtls_ssl_context *ssl,
    const unsigned char *name, size_t len)
{
	struct tls_peer *peer = compat_ssl_verify_arg(ssl);
	(void)arg;
	if (peer == NULL)
		return 0;
	if (len >= sizeof peer->sni)
		len = sizeof peer->sni - 1;
	memcpy(peer->sni, name, len);
	peer->sni[len] = 0;
	return 0;
}

static int session_setup(const struct tls_ctx *ctx,
    const mbedtls_ssl_config *conf, mbedtls_ssl_context *ssl,
    struct tls_peer *peer)
{
	memset(peer, 0, sizeof *peer);
	peer->ctx = ctx;
	int rc = mbedtls_ssl_setup(ssl, conf);
	if (rc != 0)
		return rc;
	mbedtls_ssl_set_verify(ssl, verify_cb, peer);
	if (ctx->role == CFG_CLIENT) {
		/* 3.6 requires the call even without a name (NULL). */
		rc = mbedtls_ssl_set_hostname(ssl,
		    ctx->server_name ? ctx->server_name : ctx->sni);
		if (rc != 0)
			return rc;
	}
	return 0;
}

int tls_session_setup(const struct tls_ctx *ctx, mbedtls_ssl_context *ssl,
    struct tls_peer *peer)
{
	return session_setup(ctx, &ctx->conf, ssl, peer);
}

int tls_session_setup_preamble(const struct tls_ctx *ctx,
    mbedtls_ssl_context *ssl, struct tls_peer *peer)
{
	return session_setup(ctx, ctx->has_alpn_conf ? &ctx->alpn_conf :
	    &ctx->conf, ssl, peer);
}

enum tls_verdict tls_check_peer(const struct tls_ctx *now,
    const mbedtls_ssl_context *ssl, struct tls_peer *peer)
{
	const mbedtls_x509_crt *crt = mbedtls_ssl_get_peer_cert(ssl);
	if (crt == NULL)
		return peer->verdict = TLS_PEER_NO_CERT;
	if (now != peer->ctx)		/* reloaded since it began */
		return peer->verdict = judge(now, crt, peer);
	/* The verify callback passed this very chain under these settings. */
	if (peer->verified)
		return peer->verdict = TLS_PEER_OK;
	/*
	 * Resumed under the settings that judged the session: the server's
	 * ticket_open judged the ticket's certificate in this handshake, and
	 * the client's cache (in this context) keeps only sessions that
	 * passed under it. The chain is not verified a second time on the
	 * resumption path; what time can change since, expiry, is checked.
	 */
	if (pin_of_crt(crt, &peer->pin) != 0)
		return peer->verdict = TLS_PEER_PIN_MISMATCH;
	peer->has_pin = true;
	if (now->has_ca && policy_out_of_dates(crt)) {
		peer->out_of_dates = true;
		return peer->verdict = TLS_PEER_CHAIN_INVALID;
	}
	/* The same policy and pins as in a full handshake (after_chain). */
	return peer->verdict = after_chain(now, crt, peer);
}

void tls_session_resume(struct tls_ctx *ctx, mbedtls_ssl_context *ssl)
{
	if (ctx->role != CFG_CLIENT || !ctx->resumption)
		return;
	uv_mutex_lock(&ctx->cache_lock);
	if (ctx->has_cached)
		mbedtls_ssl_set_session(ssl, &ctx->cached);	/* a copy */
	uv_mutex_unlock(&ctx->cache_lock);
}

void tls_session_save(struct tls_ctx *ctx, const mbedtls_ssl_context *ssl)
{
	if (ctx->role != CFG_CLIENT || !ctx->resumption)
		return;
	mbedtls_ssl_session s;
	mbedtls_ssl_session_init(&s);
	if (mbedtls_ssl_get_session(ssl, &s) != 0) {
		mbedtls_ssl_session_free(&s);
		return;
	}
	uv_mutex_lock(&ctx->cache_lock);
	mbedtls_ssl_session_free(&ctx->cached);
	ctx->cached = s;	/* the struct owns its heap parts: moved */
	ctx->has_cached = true;
	uv_mutex_unlock(&ctx->cache_lock);
}

bool tls_resumed(const struct tls_peer *peer)
{
	return !peer->verified;
}

enum reason tls_verdict_reason(enum tls_verdict v)
{
	switch (v) {
	case TLS_PEER_OK:
		break;
	case TLS_PEER_PIN_MISMATCH:
		return REASON_PIN_MISMATCH;
	case TLS_PEER_CHAIN_INVALID:
		return REASON_CHAIN_INVALID;
	case TLS_PEER_NAME_MISMATCH:
		return REASON_NAME_MISMATCH;
	case TLS_PEER_NO_CERT:
		return REASON_NO_CERT;
	case TLS_PEER_REVOKED:
		return REASON_REVOKED;
	case TLS_PEER_NAME_NOT_ALLOWED:
		return REASON_NAME_NOT_ALLOWED;
	}
	return REASON_OTHER;
}

const char *tls_version_name(const mbedtls_ssl_context *ssl)
{
	return mbedtls_ssl_get_version(ssl);
}

const char *tls_suite_name(const mbedtls_ssl_context *ssl)
{
	return mbedtls_ssl_get_ciphersuite(ssl);
}
