/*
 * ktls: handing an established TLS connection's record layer to the
 * kernel (Linux kTLS, TCP_ULP "tls") once mbedTLS has done the handshake.
 * No libuv here: the secrets mbedTLS exports during the handshake, the
 * crypto_info structs built from them and the record sequence numbers,
 * and the socket calls kTLS needs (the ULP, TLS_TX/TLS_RX, a record with
 * its type in and out). The relay (proxy layer) decides when to switch.
 *
 * Secrets: what the handshake exports is kept in one heap struct per
 * connection (struct ktls_secrets), wiped with mbedtls_platform_zeroize
 * and freed as soon as both directions are switched or the connection
 * ends; the kernel then holds the session keys. Nothing here logs them.
 */
#ifndef UPSEAL_KTLS_H
#define UPSEAL_KTLS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/types.h>

#include <linux/tls.h>
#include <mbedtls/ssl.h>

/* TLS record content types (RFC 8446 5.1). */
#define KTLS_TYPE_ALERT 21
#define KTLS_TYPE_HANDSHAKE 22
#define KTLS_TYPE_DATA 23

struct ktls_secrets;

/*
 * Whether this kernel has the TLS ULP: 0, or a negative errno (ENOENT:
 * no tls module) with a short text in why. Probed once per process (a
 * socket that is not connected: the kernel answers ENOTCONN when it has
 * the ULP) and cached.
 */
int ktls_probe(char *why, size_t len);

/*
 * Capturing the handshake's secrets into *slot (allocated on the first
 * export; NULL stays NULL if mbedTLS exports nothing). mbedTLS 2.28 has
 * the callback on the configuration: ktls_conf_capture registers it
 * once, and ktls_capture_begin/end bracket each handshake step of a
 * connection that wants kTLS (a per-thread slot: the step runs on one
 * thread). mbedTLS 3.6 has it on the context: ktls_ssl_capture.
 */
void ktls_conf_capture(mbedtls_ssl_config *conf);
void ktls_ssl_capture(mbedtls_ssl_context *ssl, struct ktls_secrets **slot);
void ktls_capture_begin(struct ktls_secrets **slot);
void ktls_capture_end(void);

/* Wipe and free (NULL is fine). */
void ktls_secrets_free(struct ktls_secrets *s);

/*
 * Whether kTLS can carry ssl's negotiated version and suite: 0, or -1
 * with why ("suite ...", "no secrets exported").
 */
int ktls_suite_ok(const mbedtls_ssl_context *ssl,
    const struct ktls_secrets *s, char *why, size_t len);

/* Set TCP_ULP "tls" on the connected socket fd. 0 or -errno. */
int ktls_ulp(int fd);

/* What TLS_TX / TLS_RX take, for each cipher kTLS carries. */
union ktls_crypto_info {
	struct tls_crypto_info info;
	struct tls12_crypto_info_aes_gcm_128 g128;
	struct tls12_crypto_info_aes_gcm_256 g256;
	struct tls12_crypto_info_chacha20_poly1305 cc;
};

/*
 * Fill *ci (and *len, the size of the struct used) for one direction of
 * ssl (tx: what we send) from s and mbedTLS's record counter as it stands.
 * The caller wipes *ci. 0, or -EINVAL when the suite or s do not fit.
 */
int ktls_crypto_info(const mbedtls_ssl_context *ssl,
    const struct ktls_secrets *s, bool tx, union ktls_crypto_info *ci,
    socklen_t *len);

/*
 * Give the kernel one direction of ssl (tx: what we send) on fd, whose
 * ULP is set: keys from s, the sequence number from mbedTLS's record
 * counter as it stands (every record mbedTLS wrote must be on the
 * socket, every record it was given must be processed). The crypto_info
 * is wiped after the call. 0 or -errno.
 */
int ktls_enable(int fd, const mbedtls_ssl_context *ssl,
    const struct ktls_secrets *s, bool tx);

/*
 * Receive from a kTLS RX socket: at most cap bytes of one record type
 * into buf, *type the record's type. A control record (alert, handshake)
 * comes alone. >= 0 bytes (0: EOF), or -errno (EAGAIN: nothing now;
 * EBADMSG: a record failed its check; EMSGSIZE: a record too large).
 */
ssize_t ktls_recv(int fd, void *buf, size_t cap, unsigned char *type);

/*
 * Send one record of type (not application data: an alert) on a kTLS TX
 * socket, without blocking. len bytes, or -errno (EAGAIN: try again when
 * writable).
 */
ssize_t ktls_send_record(int fd, unsigned char type, const void *buf,
    size_t len);

#endif
