/*
 * pin: the SHA-256 of a public key's SubjectPublicKeyInfo (DER), written as
 * curl writes it: `sha256//` followed by standard base64 (44 characters).
 */
#ifndef UPSEAL_PIN_H
#define UPSEAL_PIN_H

#include <stdbool.h>
#include <stddef.h>

#include <mbedtls/pk.h>
#include <mbedtls/x509_crt.h>

#define PIN_HASH_LEN 32
/* "sha256//" + 44 base64 characters + NUL */
#define PIN_TEXT_MAX 53

struct pin {
	unsigned char hash[PIN_HASH_LEN];
};

/*
 * Parse `sha256//BASE64`. On error returns -1 and says why in err
 * (wrong prefix, bad base64, wrong length).
 */
int pin_parse(const char *text, struct pin *out, char *err, size_t errlen);

/* Write the text form into out (PIN_TEXT_MAX bytes). */
void pin_format(const struct pin *p, char out[PIN_TEXT_MAX]);

/* The first 12 base64 characters after the prefix, for log lines. */
void pin_format_short(const struct pin *p, char out[PIN_TEXT_MAX]);

/* The pin of a parsed certificate's key (hashes crt->pk_raw). 0 or -1. */
int pin_of_crt(const mbedtls_x509_crt *crt, struct pin *out);

/* The pin of a public or private key. 0 or -1. */
int pin_of_pk(mbedtls_pk_context *pk, struct pin *out);

/*
 * The pin of a file holding a certificate, a private key (EC or RSA) or a
 * public key, PEM or DER, tried in that order. For a certificate chain, the
 * first certificate. On error returns -1 and says, naming the file, what is
 * wrong. Buffers that held the file are wiped.
 */
int pin_of_file(const char *path, struct pin *out, char *err, size_t errlen);

/* True if p is one of the n pins in set (constant time per pin). */
bool pin_in(const struct pin *p, const struct pin *set, size_t n);

/*
 * A set of any size, for the handshake: pin_set_sort sorts set in place
 * and drops duplicates (returns the new count); pin_set_has then finds p
 * by binary search, O(log n). Pins are hashes of public keys, not secrets:
 * the search may take a time that depends on where p falls.
 */
size_t pin_set_sort(struct pin *set, size_t n);
bool pin_set_has(const struct pin *p, const struct pin *set, size_t n);

/* A pin file (pin_file = PATH) larger than this is refused: ~300,000 pins. */
#define PIN_LIST_MAX (16 * 1024 * 1024)

/*
 * Parse the text of a pin file (len bytes, no NUL needed): one
 * sha256//BASE64 per line, blanks around it ignored, `#` to the end of
 * the line a comment, blank lines skipped, CRLF accepted. The pins are
 * appended to *pins (realloc'd; *n of them), in file order. On error
 * returns -1, *pins and *n keep what came before, and err reads
 * `NAME:LINE: what is wrong; expected ...` (name is the file's path).
 */
int pin_list_parse(const char *text, size_t len, const char *name,
    struct pin **pins, size_t *n, char *err, size_t errlen);

/* Read the pin file path and pin_list_parse it (errors name the file). */
int pin_list_read(const char *path, struct pin **pins, size_t *n, char *err,
    size_t errlen);

#endif
