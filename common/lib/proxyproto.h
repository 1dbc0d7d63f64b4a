/*
 * proxyproto: HAProxy's PROXY protocol, versions 1 and 2 (haproxy's
 * doc/proxy-protocol.txt), the header a proxy sends before the first byte
 * of a connection to say whom the connection is for. Parsing (untrusted
 * input: a client tunnel with proxy_protocol = accept, and the carried
 * address inside the tunnel) and building (a server tunnel with
 * proxy_protocol = v1 | v2). Pure code: no I/O; tests/fuzz/fuzz_proxy.c
 * drives the parser.
 */
#ifndef UPSEAL_PROXYPROTO_H
#define UPSEAL_PROXYPROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* A v1 line is at most 107 bytes, CRLF included (the specification). */
#define PP_V1_MAX 107
/* A v2 header's fixed part: signature, version/command, family, length. */
#define PP_V2_FIXED 16
/* The largest header accepted: a v2 header with up to 2032 bytes after
 * its fixed part (addresses and TLVs); a longer one is refused. */
#define PP_MAX 2048

/* v2 TLV types (the specification's registry). */
#define PP2_TYPE_ALPN 0x01
#define PP2_TYPE_AUTHORITY 0x02
#define PP2_TYPE_CRC32C 0x03
#define PP2_TYPE_NOOP 0x04
#define PP2_TYPE_UNIQUE_ID 0x05
#define PP2_TYPE_SSL 0x20
#define PP2_SUBTYPE_SSL_VERSION 0x21
#define PP2_SUBTYPE_SSL_CN 0x22
#define PP2_SUBTYPE_SSL_CIPHER 0x23
#define PP2_SUBTYPE_SSL_SIG_ALG 0x24
#define PP2_SUBTYPE_SSL_KEY_ALG 0x25
#define PP2_TYPE_NETNS 0x30
#define PP2_TYPE_MIN_CUSTOM 0xE0
#define PP2_TYPE_MAX_CUSTOM 0xEF
/* upseal's own: the 32-byte SHA-256 of the client's SubjectPublicKeyInfo. */
#define PP2_TYPE_UPSEAL_PIN 0xE0
/* PP2_TYPE_SSL's client field. */
#define PP2_CLIENT_SSL 0x01
#define PP2_CLIENT_CERT_CONN 0x02
#define PP2_CLIENT_CERT_SESS 0x04
/* PP2_TYPE_UNIQUE_ID's value is at most this long. */
#define PP2_UNIQUE_ID_MAX 128

enum pp_family {
	PP_NONE,	/* LOCAL, UNKNOWN, UNSPEC: no address given */
	PP_INET,
	PP_INET6,
	PP_UNIX,
};

#define PP_UNIX_PATH 108	/* a v2 UNIX address, NUL padded */

/* The two ends of a connection as a PROXY header states them. */
struct pp_addrs {
	enum pp_family family;
	unsigned char src[16], dst[16];	/* network order: 4 or 16 bytes */
	uint16_t src_port, dst_port;	/* host order */
	/* PP_UNIX, building only: the paths (NULL: empty); not parsed. */
	const char *src_path, *dst_path;
};

struct pp_header {
	int version;			/* 1 or 2 */
	bool local;			/* v2 LOCAL (a health check of the sender) */
	struct pp_addrs addrs;		/* PP_NONE for LOCAL, UNKNOWN, UNSPEC */
	size_t len;			/* bytes the whole header took */
	const unsigned char *tlv;	/* v2: the TLVs (in the parsed buffer) */
	size_t tlv_len;
};

enum pp_result {
	PP_MORE,	/* a header's beginning: read more (len < PP_MAX) */
	PP_DONE,	/* a complete, valid header of out->len bytes */
	PP_BAD,		/* not a header, or a malformed one: why says how */
};

/*
 * Judge the first len bytes read from a connection. PP_MORE while they
 * are a proper beginning of a header; PP_DONE with *out filled (out->tlv
 * points into buf) once a whole header is there (bytes past out->len are
 * the connection's data); PP_BAD as soon as the bytes cannot begin a
 * valid header, with what is wrong in why (e.g. `v2: the TLVs overrun
 * the header (a TLV of 40 bytes at offset 12 of 20)`). A v2 header with a
 * PP2_TYPE_CRC32C TLV must carry the right checksum. v2 families other
 * than UNSPEC, TCP over IPv4 or IPv6 and UNIX stream are refused.
 */
enum pp_result pp_parse(const unsigned char *buf, size_t len,
    struct pp_header *out, char *why, size_t whylen);

/*
 * Fill a from a connection's two socket addresses (AF_INET, AF_INET6,
 * IPv4-mapped IPv6 taken as IPv4 when both ends are). 0, or -1 when they
 * are of other or different families (a stays PP_NONE).
 */
int pp_addrs_from_sockaddr(struct pp_addrs *a, const struct sockaddr *src,
    const struct sockaddr *dst);

/* The source address as text, `1.2.3.4:5` or `[::1]:5` ("-" for none). */
void pp_addrs_format_src(const struct pp_addrs *a, char *out, size_t outlen);

/*
 * The v1 line for a (`PROXY UNKNOWN` for PP_NONE and PP_UNIX) into out,
 * which holds PP_V1_MAX bytes: its length.
 */
size_t pp_build_v1(const struct pp_addrs *a, unsigned char *out);

/*
 * Building a v2 header in a caller's buffer: begin (signature, PROXY or,
 * for PP_NONE, LOCAL, the addresses), TLVs, then finish, which writes the
 * length. A buffer too small is remembered, and finish says so.
 */
struct pp_v2 {
	unsigned char *buf;
	size_t cap, len;
	size_t ssl_at;		/* the open PP2_TYPE_SSL TLV's offset, or 0 */
	bool overflow;
};

void pp_v2_begin(struct pp_v2 *w, unsigned char *buf, size_t cap,
    const struct pp_addrs *a);
/* Add a TLV (inside the open PP2_TYPE_SSL one, if any). len < 65536. */
void pp_v2_tlv(struct pp_v2 *w, uint8_t type, const void *value, size_t len);
/* Open PP2_TYPE_SSL: client flags, verify result; sub-TLVs follow. */
void pp_v2_ssl_begin(struct pp_v2 *w, uint8_t client, uint32_t verify);
void pp_v2_ssl_end(struct pp_v2 *w);
/* The header's total length, or 0 if it did not fit. */
size_t pp_v2_finish(struct pp_v2 *w);

/* CRC-32C (Castagnoli) of buf, as PP2_TYPE_CRC32C uses it. */
uint32_t pp_crc32c(const unsigned char *buf, size_t len);

#endif
