#include "tlsio.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compat.h"
#include "log.h"

static void detail(struct tlsio *io, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void detail(struct tlsio *io, const char *fmt, ...)
{
	va_list ap;
	if (io->error == NULL || io->errlen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(io->error, io->errlen, fmt, ap);
	va_end(ap);
}

static void detail_tls(struct tlsio *io, const char *what, int err)
{
	char msg[160];
	detail(io, "%s: %s", what, log_tlserr(err, msg, sizeof msg));
}

/*
 * The BIO. Output is never refused for lack of room: the owner takes it
 * after each operation, so it holds one operation's records (a read's
 * worth of plaintext fits the standard chunk); a bigger burst grows it.
 */
static int bio_send(void *arg, const unsigned char *buf, size_t len)
{
	struct tlsio *io = arg;
	/*
	 * A fatal alert in the clear (7 bytes: header, level, description)
	 * can only come before the keys are in use, in the handshake: keep
	 * its description so the log can say why (no_application_protocol).
	 */
	if (len == 7 && buf[0] == MBEDTLS_SSL_MSG_ALERT &&
	    buf[5] == MBEDTLS_SSL_ALERT_LEVEL_FATAL)
		io->alert_sent = buf[6];
	/* Encrypted too, a TLS 1.2 record still shows its type. */
	if (len > 0 && buf[0] == MBEDTLS_SSL_MSG_ALERT)
		io->alert_out = true;
	struct chunk *out = io->out;
	if (out == NULL || out->cap - out->len < len) {
		size_t have = out != NULL ? out->len : 0;
		struct chunk *bigger = chunk_new(have + len);
		if (bigger == NULL)
			return MBEDTLS_ERR_SSL_ALLOC_FAILED;
		if (have > 0)
			memcpy(bigger->data, out->data, have);
		bigger->len = have;
		chunk_free(out);
		io->out = out = bigger;
	}
	memcpy(out->data + out->len, buf, len);
	out->len += len;
	return (int)len;
}

static int bio_recv(void *arg, unsigned char *buf, size_t len)
{
	struct tlsio *io = arg;
	if (io->in_len == 0)
		return io->in_eof ? 0 : MBEDTLS_ERR_SSL_WANT_READ;
	size_t n = len < io->in_len ? len : io->in_len;
	memcpy(buf, io->in, n);
	io->in += n;
	io->in_len -= n;
	return (int)n;
}

int tlsio_init(struct tlsio *io, struct tls_ctx *ctx, bool preamble,
    char *error, size_t errlen)
{
	memset(io, 0, sizeof *io);
	io->ctx = ctx;
	io->error = error;
	io->errlen = errlen;
	mbedtls_ssl_init(&io->ssl);
	io->ssl_init = true;
	int rc = preamble ?
	    tls_session_setup_preamble(ctx, &io->ssl, &io->peer) :
	    tls_session_setup(ctx, &io->ssl, &io->peer);
	if (rc != 0)
		return rc;
	mbedtls_ssl_set_bio(&io->ssl, io, bio_send, bio_recv, NULL);
	tls_session_resume(ctx, &io->ssl);
	return 0;
}

void tlsio_free(struct tlsio *io)
{
	tlsio_ktls_forget(io);
	if (io->ssl_init)
		mbedtls_ssl_free(&io->ssl);	/* zeroizes keys and buffers */
	io->ssl_init = false;
	free(io->in_saved);
	io->in_saved = NULL;
	io->in = NULL;
	io->in_len = 0;
	chunk_free(io->out);
	io->out = NULL;
}

/* Follow the record boundaries through len more bytes of the stream. */
static void track_records(struct tlsio *io, const unsigned char *buf,
    size_t len)
{
	while (len > 0) {
		size_t n;
		if (io->rec_body_left > 0) {
			n = len < io->rec_body_left ? len : io->rec_body_left;
			io->rec_body_left -= n;
		} else {
			n = sizeof io->rec_hdr - io->rec_hdr_have;
			n = len < n ? len : n;
			memcpy(io->rec_hdr + io->rec_hdr_have, buf, n);
			io->rec_hdr_have += (unsigned)n;
			if (io->rec_hdr_have == sizeof io->rec_hdr) {
				io->rec_body_left = (size_t)io->rec_hdr[3] << 8 |
				    io->rec_hdr[4];
				io->rec_hdr_have = 0;
			}
		}
		buf += n;
		len -= n;
	}
}

size_t tlsio_record_need(const struct tlsio *io)
{
	if (io->rec_hdr_have > 0)
		return sizeof io->rec_hdr - io->rec_hdr_have;
	return io->rec_body_left;
}

bool tlsio_drained(const struct tlsio *io)
{
	return io->in_len == 0 && !io->in_eof &&
	    (io->out == NULL || io->out->len == 0) &&
	    mbedtls_ssl_check_pending(&io->ssl) == 0;
}

void tlsio_ktls_want(struct tlsio *io)
{
	io->ktls_want = true;
	ktls_ssl_capture(&io->ssl, &io->ktls);
}

void tlsio_ktls_forget(struct tlsio *io)
{
	ktls_secrets_free(io->ktls);
	io->ktls = NULL;
}

void tlsio_input(struct tlsio *io, const unsigned char *buf, size_t len)
{
	if (len == 0) {
		io->in_eof = true;
		return;
	}
	track_records(io, buf, len);
	if (!io->saw_bytes) {
		io->saw_bytes = true;
		io->first_byte = buf[0];
	}
	if (io->in_len == 0) {
		free(io->in_saved);
		io->in_saved = NULL;
		io->in = buf;
		io->in_len = len;
		return;
	}
	/* Input left from before: the new bytes go after it, in our copy. */
	unsigned char *both = malloc(io->in_len + len);
	if (both == NULL) {
		io->in_eof = true;	/* cannot take it: as if cut here */
		return;
	}
	memcpy(both, io->in, io->in_len);
	memcpy(both + io->in_len, buf, len);
	free(io->in_saved);
	io->in_saved = both;
	io->in = both;
	io->in_len += len;
}

int tlsio_settle(struct tlsio *io)
{
	if (io->in_len == 0) {
		free(io->in_saved);
		io->in_saved = NULL;
		io->in = NULL;
		return 0;
	}
	if (io->in_saved != NULL)
		return 0;	/* already ours; in points into it */
	io->in_saved = malloc(io->in_len);
	if (io->in_saved == NULL) {
		io->in_len = 0;
		return -1;
	}
	memcpy(io->in_saved, io->in, io->in_len);
	io->in = io->in_saved;
	return 0;
}

bool tlsio_wants_input(const struct tlsio *io)
{
	return !io->in_eof && io->in_len == 0;
}

struct chunk *tlsio_take_out(struct tlsio *io)
{
	struct chunk *out = io->out;
	io->out = NULL;
	if (out != NULL && out->len == 0) {
		chunk_free(out);
		return NULL;
	}
	return out;
}

int tlsio_handshake(struct tlsio *io)
{
	if (!io->ktls_want)
		return compat_ssl_handshake(&io->ssl);
	ktls_capture_begin(&io->ktls);
	int rc = compat_ssl_handshake(&io->ssl);
	ktls_capture_end();
	return rc;
}

/* Drop what mbedTLS queued on the way to an error we do not answer. */
static void drop_out(struct tlsio *io)
{
	chunk_free(io->out);
	io->out = NULL;
}

/*
 * What mbedtls_ssl_read's result rc means once buf is filled as far as it
 * goes. *stalled_at: in_len when a WANT_READ last left input.
 */
static enum tlsio_status classify(struct tlsio *io, int rc, size_t out_before,
    size_t *stalled_at, enum reason *why)
{
	if (rc == MBEDTLS_ERR_SSL_INVALID_MAC) {
		/* mbedTLS queued the bad_record_mac alert: it is sent. */
		detail(io, "a record failed its integrity check "
		    "(tampered or corrupted)");
		*why = REASON_BAD_RECORD;
		return TLSIO_FAIL;
	}
	if (rc == MBEDTLS_ERR_SSL_BAD_INPUT_DATA) {
		/*
		 * The only way a read of ours gets this (2.28 and 3.6): a
		 * record header whose length does not fit mbedTLS's input
		 * buffer, over what the protocol allows. mbedTLS sends
		 * nothing; RFC 5246 6.2.3 says record_overflow.
		 */
		tlsio_alert(io, MBEDTLS_SSL_ALERT_MSG_RECORD_OVERFLOW);
		detail(io, "record too large: the peer announced a record "
		    "longer than TLS allows");
		*why = REASON_RECORD_TOO_LARGE;
		return TLSIO_FAIL;
	}
	size_t out_now = io->out != NULL ? io->out->len : 0;
	if (out_now > out_before && compat_is_tls12(&io->ssl)) {
		/*
		 * Reading made mbedTLS answer: in TLS 1.2 with renegotiation
		 * off, the only answer it gives is the no_renegotiation alert
		 * to a peer that asked for a new handshake. Send it and end: a
		 * peer that tries this is not ours. (TLS 1.3 servers send
		 * tickets from here.)
		 */
		detail(io, "the peer tried to renegotiate (refused)");
		*why = REASON_RENEGOTIATION;
		return TLSIO_FAIL;
	}
	if (rc > 0)
		return TLSIO_MORE;
	if (rc == MBEDTLS_ERR_SSL_WANT_READ) {
		/*
		 * Usually: our input is used up. But mbedTLS 3.6 also says
		 * WANT_READ after a post-handshake message (a TLS 1.3 ticket)
		 * with records still waiting: go on while that makes progress.
		 */
		if ((io->in_len > 0 || mbedtls_ssl_check_pending(&io->ssl)) &&
		    io->in_len != *stalled_at) {
			*stalled_at = io->in_len;
			return TLSIO_MORE;
		}
		return TLSIO_WANT;
	}
	if (compat_is_new_ticket(rc)) {
		/* TLS 1.3: the ticket comes after the handshake. */
		tls_session_save(io->ctx, &io->ssl);
		return TLSIO_MORE;
	}
	if (rc == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY)
		return TLSIO_CLOSED;
	drop_out(io);
	if (rc == 0 || rc == MBEDTLS_ERR_SSL_CONN_EOF) {
		detail(io, "the TLS peer closed the connection without "
		    "close_notify");
		*why = REASON_TRUNCATED;
		return TLSIO_FAIL;
	}
	detail_tls(io, "TLS read", rc);
	*why = REASON_TLS_ERROR;
	return TLSIO_FAIL;
}

enum tlsio_status tlsio_read(struct tlsio *io, unsigned char *buf,
    size_t cap, size_t *len, enum reason *why)
{
	size_t stalled_at = SIZE_MAX;
	*len = 0;
	for (;;) {
		size_t out_before = io->out != NULL ? io->out->len : 0;
		int rc = MBEDTLS_ERR_SSL_WANT_READ;
		while (*len < cap) {
			rc = mbedtls_ssl_read(&io->ssl, buf + *len, cap - *len);
			if (rc <= 0)
				break;
			*len += (size_t)rc;
		}
		enum tlsio_status st = classify(io, rc, out_before,
		    &stalled_at, why);
		if (st != TLSIO_MORE)
			return st;
		if (*len == cap)
			return TLSIO_MORE;
	}
}

enum tlsio_status tlsio_write(struct tlsio *io, const unsigned char *buf,
    size_t len, enum reason *why)
{
	while (len > 0) {
		int rc = mbedtls_ssl_write(&io->ssl, buf, len);
		if (compat_is_new_ticket(rc)) {
			/* TLS 1.3: a ticket was processed on the way. */
			tls_session_save(io->ctx, &io->ssl);
			continue;
		}
		if (rc < 0) {
			detail_tls(io, "TLS write", rc);
			*why = rc == MBEDTLS_ERR_SSL_ALLOC_FAILED ?
			    REASON_NOMEM : REASON_TLS_ERROR;
			return TLSIO_FAIL;
		}
		buf += rc;
		len -= (size_t)rc;
	}
	return TLSIO_WANT;
}

int tlsio_close_notify(struct tlsio *io)
{
	int rc = mbedtls_ssl_close_notify(&io->ssl);
	if (rc == MBEDTLS_ERR_SSL_WANT_WRITE)
		rc = 0;
	if (rc != 0)
		detail_tls(io, "close_notify", rc);
	return rc;
}

void tlsio_alert(struct tlsio *io, unsigned char desc)
{
	(void)mbedtls_ssl_send_alert_message(&io->ssl,
	    MBEDTLS_SSL_ALERT_LEVEL_FATAL, desc);
}
