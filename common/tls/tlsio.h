/*
 * tlsio: the TLS end of a connection without the socket. It holds the
 * mbedTLS context, the BIO (the ciphertext the socket read and mbedTLS has
 * not taken yet; the records mbedTLS produced and the socket has not been
 * given yet) and the one loop around mbedtls_ssl_read and mbedtls_ssl_write
 * that classifies what comes back. No libuv here: the relay, the pool, the
 * fuzz targets and the unit tests drive the same code, the owner moving
 * bytes between tlsio and its socket (or another tlsio).
 *
 * The owner's rhythm: tlsio_input what the socket read, call one
 * operation, hand tlsio_take_out to the socket, tlsio_settle. Reads of the
 * socket stop while tlsio_wants_input is false.
 */
#ifndef UPSEAL_TLSIO_H
#define UPSEAL_TLSIO_H

#include <stdbool.h>
#include <stddef.h>

#include <mbedtls/ssl.h>

#include "chunk.h"
#include "ktls.h"
#include "reason.h"
#include "tls.h"

struct tlsio {
	mbedtls_ssl_context ssl;
	bool ssl_init;
	struct tls_ctx *ctx;		/* tickets that arrive are saved in it */
	struct tls_peer peer;		/* what the handshake learned */

	/* Ciphertext in: the socket's bytes (not ours), or in_saved (ours). */
	const unsigned char *in;
	size_t in_len;
	unsigned char *in_saved;
	bool in_eof;			/* the socket's EOF came */
	bool saw_bytes;			/* any byte came */
	unsigned char first_byte;	/* the first one (not_tls) */

	struct chunk *out;		/* records not yet taken */
	unsigned char alert_sent;	/* last plaintext fatal alert we sent */
	bool alert_out;			/* an alert record went out (TLS 1.2) */

	char *error;			/* the owner's, for an end's detail */
	size_t errlen;

	/*
	 * kTLS (ktls.h): the secrets the handshake exported (when wanted),
	 * and where the socket's byte stream stands against the record
	 * boundaries, so that the kernel can take over exactly at one.
	 */
	bool ktls_want;
	struct ktls_secrets *ktls;
	unsigned char rec_hdr[5];	/* the header being read */
	unsigned rec_hdr_have;		/* bytes of it so far (0..4) */
	size_t rec_body_left;		/* bytes of the current record to come */
};

/*
 * What a read or a write came to. TLSIO_FAIL: the connection must end for
 * *why, the detail is in the owner's error buffer, and any alert that end
 * sends (bad_record_mac, record_overflow, no_renegotiation) is in the
 * output: take it out and send it before closing.
 */
enum tlsio_status {
	TLSIO_MORE,	/* read: buf is full; more may be there */
	TLSIO_WANT,	/* read: input used up; write: all written */
	TLSIO_CLOSED,	/* read: close_notify came; read no more */
	TLSIO_FAIL,
};

/*
 * Set up io for one connection under ctx (which must outlive io):
 * tls_session_setup, or tls_session_setup_preamble when preamble, the
 * BIO, and for a client the cached session to resume. error (errlen bytes) receives
 * the detail of every end io reports. 0 or an mbedTLS error code; io is
 * to be tlsio_free'd either way.
 */
int tlsio_init(struct tlsio *io, struct tls_ctx *ctx, bool preamble,
    char *error, size_t errlen);

/* Free everything io holds (the context zeroizes its keys). */
void tlsio_free(struct tlsio *io);

/*
 * The socket read len bytes into buf: mbedTLS takes them from there in the
 * next operation. buf is the caller's until tlsio_settle, which copies
 * what is left. len 0: the socket's EOF.
 */
void tlsio_input(struct tlsio *io, const unsigned char *buf, size_t len);

/* After an operation: keep the input mbedTLS left. -1: no memory. */
int tlsio_settle(struct tlsio *io);

/* Whether io has taken all its input and no EOF came: read the socket. */
bool tlsio_wants_input(const struct tlsio *io);

/* The records produced since the last call, now the caller's; or NULL. */
struct chunk *tlsio_take_out(struct tlsio *io);

/* One step of the handshake: 0 done, WANT_READ/WANT_WRITE, or an error. */
int tlsio_handshake(struct tlsio *io);

/*
 * Decrypt into buf (cap bytes) as much as io's input gives; *len gets the
 * bytes read, also when the status is TLSIO_CLOSED or TLSIO_FAIL (hand
 * them on first). A TLS 1.3 ticket is saved and reading goes on; a
 * WANT_READ that leaves input (3.6, after a post-handshake message) is
 * retried while it makes progress. Ends (*why): bad_record (a record
 * failed its integrity check; mbedTLS queued bad_record_mac),
 * record_too_large (a header over what TLS allows; we queue
 * record_overflow), renegotiation (TLS 1.2: the peer asked for a new
 * handshake; mbedTLS queued no_renegotiation), truncated (EOF without
 * close_notify), tls_error (anything else; nothing queued is sent).
 */
enum tlsio_status tlsio_read(struct tlsio *io, unsigned char *buf,
    size_t cap, size_t *len, enum reason *why);

/*
 * Encrypt all len bytes into the output (as many records as it takes).
 * TLSIO_WANT when done, or TLSIO_FAIL with nomem or tls_error.
 */
enum tlsio_status tlsio_write(struct tlsio *io, const unsigned char *buf,
    size_t len, enum reason *why);

/*
 * Queue close_notify. Only after every write completed (mbedTLS flushes
 * pending output instead of queuing the alert otherwise). 0, or the
 * mbedTLS error (detail written).
 */
int tlsio_close_notify(struct tlsio *io);

/* Queue a fatal alert (desc: MBEDTLS_SSL_ALERT_MSG_*). */
void tlsio_alert(struct tlsio *io, unsigned char desc);

/*
 * Keep the secrets the handshake exports, for kTLS (call after
 * tlsio_init, before the handshake). They stay in io->ktls until
 * tlsio_ktls_forget or tlsio_free, which wipe them.
 */
void tlsio_ktls_want(struct tlsio *io);
void tlsio_ktls_forget(struct tlsio *io);

/*
 * How many more bytes the socket must give before what it gave ends on
 * a record boundary (0: it does). When it is not 0 and the header of
 * the record is incomplete, reading that many bytes and asking again
 * gives the rest.
 */
size_t tlsio_record_need(const struct tlsio *io);

/*
 * Nothing is left inside io: every byte the socket gave was taken by
 * mbedTLS and every record it made was processed and read out, and no
 * output waits. With tlsio_record_need 0, the record layer can move.
 */
bool tlsio_drained(const struct tlsio *io);

#endif
