/*
 * ticket: session tickets sealed with keys derived from a secret shared by
 * several upseal-server sidecars (ticket_key_file), so that a client can
 * resume with any of them. The key for each hour is
 * HMAC-SHA256(SHA-256(file), "upseal-ticket-v1" || hour), so every server
 * holding the same file rotates in step without talking to the others;
 * a ticket is accepted during the hour it was sealed in and the next one
 * (and the one before, for clocks that differ a little).
 *
 * Ticket: 'U' 1 | hour (4, big-endian) | IV (12) | AES-256-GCM of the
 * session as mbedtls_ssl_session_save writes it | tag (16). The first six
 * bytes are authenticated as additional data.
 */
#ifndef UPSEAL_TICKET_H
#define UPSEAL_TICKET_H

#include <stddef.h>
#include <stdint.h>

#include <mbedtls/ssl.h>

struct ticket_keys;

/*
 * Read the secret (32 to 4096 bytes of any content; e.g. 48 bytes from
 * /dev/urandom). On error returns -1 and err names the file and says why.
 */
int ticket_keys_load(const char *path, struct ticket_keys **out, char *err,
    size_t errlen);

/*
 * A random secret that lives as long as the keys (one server, no file):
 * the tickets are sealed statelessly, so any thread may use the keys.
 */
int ticket_keys_random(struct ticket_keys **out, char *err, size_t errlen);

/* Wipe and free; NULL is a no-op. */
void ticket_keys_free(struct ticket_keys *k);

/* mbedtls_ssl_ticket_write_t and mbedtls_ssl_ticket_parse_t; p is the keys. */
int ticket_write(void *p, const mbedtls_ssl_session *session,
    unsigned char *start, const unsigned char *end, size_t *tlen,
    uint32_t *lifetime);
int ticket_parse(void *p, mbedtls_ssl_session *session, unsigned char *buf,
    size_t len);

#endif
