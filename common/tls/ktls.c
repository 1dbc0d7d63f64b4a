#include "ktls.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <mbedtls/md.h>
#include <mbedtls/platform_util.h>

#include "compat.h"

#ifndef SOL_TLS
#define SOL_TLS 282
#endif
#ifndef TCP_ULP
#define TCP_ULP 31
#endif

/*
 * What the handshake exported. mbedTLS 2.28 (TLS 1.2) gives the key
 * block itself; 3.6 gives the master secret (TLS 1.2: the key block is
 * derived here with the same PRF) or the application traffic secrets
 * (TLS 1.3: key and IV by HKDF-Expand-Label).
 */
enum secrets_kind { SK_KEYBLOCK = 1, SK_MASTER, SK_TLS13 };

struct ktls_secrets {
	enum secrets_kind kind;
	/* SK_KEYBLOCK: client key, server key, client IV, server IV. */
	unsigned char kb[2 * 32 + 2 * 12];
	size_t keylen, ivlen;
	/* SK_MASTER */
	unsigned char master[48];
	unsigned char randbytes[64];	/* server_random, client_random */
	mbedtls_tls_prf_types prf;
	/* SK_TLS13: application traffic secrets. */
	unsigned char c_ap[64], s_ap[64];
	size_t ap_len;
	bool have_c, have_s;
};

/* ---- the probe ---- */

static _Atomic int probe_rc = 1;	/* 1: not probed yet */

int ktls_probe(char *why, size_t len)
{
	int rc = atomic_load(&probe_rc);
	if (rc == 1) {
		int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0) {
			rc = -errno;
		} else {
			/* Not connected: with the ULP there, ENOTCONN. */
			if (setsockopt(fd, IPPROTO_TCP, TCP_ULP, "tls",
			    sizeof "tls") == 0 || errno == ENOTCONN)
				rc = 0;
			else
				rc = -errno;
			close(fd);
		}
		atomic_store(&probe_rc, rc);
	}
	if (rc != 0 && why != NULL)
		snprintf(why, len, rc == -ENOENT ?
		    "the kernel has no TLS ULP (module tls not available)" :
		    "the kernel refused TCP_ULP tls: %s", strerror(-rc));
	return rc;
}

/* ---- capturing the secrets ---- */

static struct ktls_secrets *slot_get(struct ktls_secrets **slot)
{
	if (*slot == NULL)
		*slot = calloc(1, sizeof **slot);
	return *slot;
}

void ktls_secrets_free(struct ktls_secrets *s)
{
	if (s == NULL)
		return;
	mbedtls_platform_zeroize(s, sizeof *s);
	free(s);
}

static _Thread_local struct ktls_secrets **cur_slot;

void ktls_capture_begin(struct ktls_secrets **slot)
{
	cur_slot = slot;
}

void ktls_capture_end(void)
{
	cur_slot = NULL;
}

#if UPSEAL_MBEDTLS3

static void export_cb(void *p, mbedtls_ssl_key_export_type type,
    const unsigned char *secret, size_t slen,
    const unsigned char client_random[32],
    const unsigned char server_random[32], mbedtls_tls_prf_types prf)
{
	struct ktls_secrets **slot = p;
	struct ktls_secrets *s;
	switch (type) {
	case MBEDTLS_SSL_KEY_EXPORT_TLS12_MASTER_SECRET:
		if (slen != sizeof s->master || (s = slot_get(slot)) == NULL)
			return;
		s->kind = SK_MASTER;
		memcpy(s->master, secret, slen);
		memcpy(s->randbytes, server_random, 32);
		memcpy(s->randbytes + 32, client_random, 32);
		s->prf = prf;
		return;
#if defined(MBEDTLS_SSL_PROTO_TLS1_3)
	case MBEDTLS_SSL_KEY_EXPORT_TLS1_3_CLIENT_APPLICATION_TRAFFIC_SECRET:
	case MBEDTLS_SSL_KEY_EXPORT_TLS1_3_SERVER_APPLICATION_TRAFFIC_SECRET:
		if (slen > sizeof s->c_ap || (s = slot_get(slot)) == NULL)
			return;
		s->kind = SK_TLS13;
		s->ap_len = slen;
		if (type == MBEDTLS_SSL_KEY_EXPORT_TLS1_3_CLIENT_APPLICATION_TRAFFIC_SECRET) {
			memcpy(s->c_ap, secret, slen);
			s->have_c = true;
		} else {
			memcpy(s->s_ap, secret, slen);
			s->have_s = true;
		}
		return;
#endif
	default:
		return;	/* handshake and early secrets: not ours */
	}
}

void ktls_conf_capture(mbedtls_ssl_config *conf)
{
	(void)conf;	/* 3.6: per context */
}

void ktls_ssl_capture(mbedtls_ssl_context *ssl, struct ktls_secrets **slot)
{
	mbedtls_ssl_set_export_keys_cb(ssl, export_cb, slot);
}

#else

static int export_ext_cb(void *p, const unsigned char *ms,
    const unsigned char *kb, size_t maclen, size_t keylen, size_t ivlen,
    const unsigned char client_random[32],
    const unsigned char server_random[32], mbedtls_tls_prf_types prf)
{
	(void)p;
	(void)ms;
	(void)client_random;
	(void)server_random;
	(void)prf;
	struct ktls_secrets *s;
	/* AEAD suites only (no MAC keys); anything else is not for kTLS. */
	if (cur_slot == NULL || maclen != 0 || keylen > 32 || ivlen > 12)
		return 0;
	if ((s = slot_get(cur_slot)) == NULL)
		return 0;
	s->kind = SK_KEYBLOCK;
	s->keylen = keylen;
	s->ivlen = ivlen;
	memcpy(s->kb, kb, 2 * keylen + 2 * ivlen);
	return 0;
}

void ktls_conf_capture(mbedtls_ssl_config *conf)
{
	mbedtls_ssl_conf_export_keys_ext_cb(conf, export_ext_cb, NULL);
}

void ktls_ssl_capture(mbedtls_ssl_context *ssl, struct ktls_secrets **slot)
{
	(void)ssl;	/* 2.28: per configuration, ktls_capture_begin */
	(void)slot;
}

#endif

/* ---- the suites kTLS carries ---- */

struct suite {
	int id;
	bool tls13;
	int cipher;		/* TLS_CIPHER_* */
	size_t keylen;
	size_t ivlen;		/* TLS 1.2: the fixed IV; TLS 1.3: the whole IV */
	mbedtls_md_type_t md;	/* TLS 1.3: the HKDF hash */
};

static const struct suite suites[] = {
	{ 0xC02B, false, TLS_CIPHER_AES_GCM_128, 16, 4, MBEDTLS_MD_NONE },
	{ 0xC02C, false, TLS_CIPHER_AES_GCM_256, 32, 4, MBEDTLS_MD_NONE },
	{ 0xCCA9, false, TLS_CIPHER_CHACHA20_POLY1305, 32, 12, MBEDTLS_MD_NONE },
	{ 0x1301, true, TLS_CIPHER_AES_GCM_128, 16, 12, MBEDTLS_MD_SHA256 },
	{ 0x1302, true, TLS_CIPHER_AES_GCM_256, 32, 12, MBEDTLS_MD_SHA384 },
	{ 0x1303, true, TLS_CIPHER_CHACHA20_POLY1305, 32, 12, MBEDTLS_MD_SHA256 },
};

static const struct suite *suite_of(const mbedtls_ssl_context *ssl)
{
	const char *name = mbedtls_ssl_get_ciphersuite(ssl);
	int id = name != NULL ? mbedtls_ssl_get_ciphersuite_id(name) : 0;
	bool tls13 = !compat_is_tls12(ssl);
	for (size_t i = 0; i < sizeof suites / sizeof suites[0]; i++)
		if (suites[i].id == id && suites[i].tls13 == tls13)
			return &suites[i];
	return NULL;
}

int ktls_suite_ok(const mbedtls_ssl_context *ssl,
    const struct ktls_secrets *s, char *why, size_t len)
{
	const struct suite *su = suite_of(ssl);
	if (su == NULL) {
		snprintf(why, len, "suite %s is not one kTLS carries",
		    mbedtls_ssl_get_ciphersuite(ssl));
		return -1;
	}
	bool ok = s != NULL && ((s->kind == SK_KEYBLOCK && !su->tls13 &&
	    s->keylen == su->keylen && s->ivlen == su->ivlen) ||
	    (s->kind == SK_MASTER && !su->tls13) ||
	    (s->kind == SK_TLS13 && su->tls13 && s->have_c && s->have_s));
	if (!ok) {
		snprintf(why, len, "mbedTLS exported no usable secrets");
		return -1;
	}
	return 0;
}

/* HKDF-Expand-Label(secret, label, "", out_len), out_len <= hash size. */
static int expand_label(mbedtls_md_type_t md, const unsigned char *secret,
    size_t slen, const char *label, unsigned char *out, size_t out_len)
{
	const mbedtls_md_info_t *info = mbedtls_md_info_from_type(md);
	unsigned char in[64], t[64];
	size_t llen = strlen(label), n = 0;
	if (info == NULL || out_len > mbedtls_md_get_size(info) ||
	    10 + llen + 1 > sizeof in)
		return -1;
	in[n++] = (unsigned char)(out_len >> 8);
	in[n++] = (unsigned char)out_len;
	in[n++] = (unsigned char)(6 + llen);
	memcpy(in + n, "tls13 ", 6);
	n += 6;
	memcpy(in + n, label, llen);
	n += llen;
	in[n++] = 0;		/* empty context */
	in[n++] = 1;		/* HKDF-Expand: T(1) */
	int rc = mbedtls_md_hmac(info, secret, slen, in, n, t);
	if (rc == 0)
		memcpy(out, t, out_len);
	mbedtls_platform_zeroize(t, sizeof t);
	return rc;
}

/* The key and IV of one direction: client's when client. */
static int dir_keys(const struct ktls_secrets *s, const struct suite *su,
    bool client, unsigned char key[32], unsigned char iv[12])
{
	if (su->tls13) {
		const unsigned char *sec = client ? s->c_ap : s->s_ap;
		if (expand_label(su->md, sec, s->ap_len, "key", key,
		    su->keylen) != 0 ||
		    expand_label(su->md, sec, s->ap_len, "iv", iv, 12) != 0)
			return -1;
		return 0;
	}
	unsigned char kb[2 * 32 + 2 * 12];
	const unsigned char *blk = s->kb;
	if (s->kind == SK_MASTER) {
#if UPSEAL_MBEDTLS3
		if (mbedtls_ssl_tls_prf(s->prf, s->master, sizeof s->master,
		    "key expansion", s->randbytes, sizeof s->randbytes, kb,
		    2 * su->keylen + 2 * su->ivlen) != 0)
			return -1;
		blk = kb;
#else
		return -1;
#endif
	}
	memcpy(key, blk + (client ? 0 : su->keylen), su->keylen);
	memcpy(iv, blk + 2 * su->keylen + (client ? 0 : su->ivlen), su->ivlen);
	mbedtls_platform_zeroize(kb, sizeof kb);
	return 0;
}

static const unsigned char *seq_of(const mbedtls_ssl_context *ssl, bool tx)
{
#if UPSEAL_MBEDTLS3
	return tx ? ssl->MBEDTLS_PRIVATE(cur_out_ctr) :
	    ssl->MBEDTLS_PRIVATE(in_ctr);
#else
	return tx ? ssl->cur_out_ctr : ssl->in_ctr;
#endif
}

static bool is_client(const mbedtls_ssl_context *ssl)
{
#if UPSEAL_MBEDTLS3
	return ssl->MBEDTLS_PRIVATE(conf)->MBEDTLS_PRIVATE(endpoint) ==
	    MBEDTLS_SSL_IS_CLIENT;
#else
	return ssl->conf->endpoint == MBEDTLS_SSL_IS_CLIENT;
#endif
}

int ktls_ulp(int fd)
{
	if (setsockopt(fd, IPPROTO_TCP, TCP_ULP, "tls", sizeof "tls") != 0)
		return -errno;
	return 0;
}

int ktls_crypto_info(const mbedtls_ssl_context *ssl,
    const struct ktls_secrets *s, bool tx, union ktls_crypto_info *ci,
    socklen_t *len)
{
	const struct suite *su = suite_of(ssl);
	char why[8];
	if (su == NULL || ktls_suite_ok(ssl, s, why, sizeof why) != 0)
		return -EINVAL;
	unsigned char key[32], iv[12];
	/* Our TX is the client's write keys when we are the client. */
	if (dir_keys(s, su, is_client(ssl) == tx, key, iv) != 0)
		return -EINVAL;
	const unsigned char *seq = seq_of(ssl, tx);
	memset(ci, 0, sizeof *ci);
	ci->info.version = su->tls13 ? TLS_1_3_VERSION : TLS_1_2_VERSION;
	ci->info.cipher_type = (unsigned short)su->cipher;
	/*
	 * AES-GCM: salt is the fixed IV (TLS 1.2) or the first 4 bytes of
	 * the IV (TLS 1.3); iv is the explicit nonce to start from (TLS 1.2:
	 * the sequence number, as mbedTLS sends it) or the IV's other 8
	 * bytes. ChaCha20-Poly1305: the 12-byte IV.
	 */
	switch (su->cipher) {
	case TLS_CIPHER_AES_GCM_128:
		memcpy(ci->g128.key, key, 16);
		memcpy(ci->g128.salt, iv, 4);
		memcpy(ci->g128.iv, su->tls13 ? iv + 4 : seq, 8);
		memcpy(ci->g128.rec_seq, seq, 8);
		*len = sizeof ci->g128;
		break;
	case TLS_CIPHER_AES_GCM_256:
		memcpy(ci->g256.key, key, 32);
		memcpy(ci->g256.salt, iv, 4);
		memcpy(ci->g256.iv, su->tls13 ? iv + 4 : seq, 8);
		memcpy(ci->g256.rec_seq, seq, 8);
		*len = sizeof ci->g256;
		break;
	default:
		memcpy(ci->cc.key, key, 32);
		memcpy(ci->cc.iv, iv, 12);
		memcpy(ci->cc.rec_seq, seq, 8);
		*len = sizeof ci->cc;
		break;
	}
	mbedtls_platform_zeroize(key, sizeof key);
	mbedtls_platform_zeroize(iv, sizeof iv);
	return 0;
}

int ktls_enable(int fd, const mbedtls_ssl_context *ssl,
    const struct ktls_secrets *s, bool tx)
{
	union ktls_crypto_info ci;
	socklen_t len;
	int rc = ktls_crypto_info(ssl, s, tx, &ci, &len);
	if (rc == 0 && setsockopt(fd, SOL_TLS, tx ? TLS_TX : TLS_RX, &ci,
	    len) != 0)
		rc = -errno;
	mbedtls_platform_zeroize(&ci, sizeof ci);
	return rc;
}

ssize_t ktls_recv(int fd, void *buf, size_t cap, unsigned char *type)
{
	union {
		char buf[CMSG_SPACE(sizeof(unsigned char))];
		struct cmsghdr align;
	} cb;
	struct iovec iov = { .iov_base = buf, .iov_len = cap };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1,
		.msg_control = cb.buf, .msg_controllen = sizeof cb.buf };
	ssize_t n = recvmsg(fd, &msg, MSG_DONTWAIT);
	if (n < 0)
		return -errno;
	*type = KTLS_TYPE_DATA;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL;
	    c = CMSG_NXTHDR(&msg, c))
		if (c->cmsg_level == SOL_TLS &&
		    c->cmsg_type == TLS_GET_RECORD_TYPE)
			*type = *CMSG_DATA(c);
	return n;
}

ssize_t ktls_send_record(int fd, unsigned char type, const void *buf,
    size_t len)
{
	union {
		char buf[CMSG_SPACE(sizeof(unsigned char))];
		struct cmsghdr align;
	} cb;
	memset(&cb, 0, sizeof cb);
	struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1,
		.msg_control = cb.buf, .msg_controllen = sizeof cb.buf };
	struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
	c->cmsg_level = SOL_TLS;
	c->cmsg_type = TLS_SET_RECORD_TYPE;
	c->cmsg_len = CMSG_LEN(sizeof(unsigned char));
	*CMSG_DATA(c) = type;
	ssize_t n = sendmsg(fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
	return n < 0 ? -errno : n;
}
