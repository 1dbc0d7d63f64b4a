/*
 * ticket: session tickets sealed with keys derived from a secret shared by
 * several upseal-server sidecars (ticket_key_file), so that a client can
 * resume with any of them. The key for each hour is
 * HMAC-SHA256(SHA-256(file), "upseal-ticket-v2" || binding || hour), so
 * every server holding the same file rotates in step without talking to
 * the others; a ticket is accepted during the hour it was sealed in and
 * the next one (and the one before, for clocks that differ a little).
 * The binding (tls.c) is a hash of the tunnel's name, role, pins and CA:
 * a ticket sealed for one tunnel, or under settings since changed, does
 * not open, and the client falls back to a full handshake. That is
 * defence in depth: tls.c judges every resumed session's certificate
 * against the current settings as well.
 *
 * Ticket: 'U' 2 | hour (4, big-endian) | IV (12) | AES-256-GCM of the
 * session as mbedtls_ssl_session_save writes it | tag (16). The first six
 * bytes are authenticated as additional data. Version 1 tickets (upseal
 * before the binding) are not accepted: such a client does one full
 * handshake and gets a version 2 ticket.
 */
#ifndef UPSEAL_TICKET_H
#define UPSEAL_TICKET_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <mbedtls/ssl.h>

struct ticket_keys;

#define TICKET_BINDING_LEN 32

/*
 * Read the secret (32 to 4096 bytes of any content; e.g. 48 bytes from
 * /dev/urandom) with secret_read's rule: a file that group or others may
 * read is refused (run_as: as for secret_read). binding (copied) is mixed
 * into every key. On error
 * returns -1 and err names the file and says why.
 */
int ticket_keys_load(const char *path, uid_t run_as,
    const unsigned char binding[TICKET_BINDING_LEN], struct ticket_keys **out,
    char *err, size_t errlen);

/*
 * A random secret that lives as long as the keys (one server, no file):
 * the tickets are sealed statelessly, so any thread may use the keys.
 */
int ticket_keys_random(const unsigned char binding[TICKET_BINDING_LEN],
    struct ticket_keys **out, char *err, size_t errlen);

/* Wipe and free; NULL is a no-op. */
void ticket_keys_free(struct ticket_keys *k);

/* mbedtls_ssl_ticket_write_t and mbedtls_ssl_ticket_parse_t; p is the keys. */
int ticket_write(void *p, const mbedtls_ssl_session *session,
    unsigned char *start, const unsigned char *end, size_t *tlen,
    uint32_t *lifetime);
int ticket_parse(void *p, mbedtls_ssl_session *session, unsigned char *buf,
    size_t len);

#endif
