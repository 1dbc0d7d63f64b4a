#include "ticket.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mbedtls/gcm.h>
#include <mbedtls/md.h>
#include <mbedtls/platform_util.h>

#include "compat.h"
#include "rng.h"

#define SECRET_MIN 32
#define SECRET_MAX 4096
#define HOUR_S 3600
#define AAD_LEN 6	/* magic, version, hour: authenticated */
#define HEADER_LEN 18	/* AAD_LEN + IV_LEN */
#define IV_LEN 12
#define TAG_LEN 16

struct ticket_keys {
	unsigned char master[32];
};

int ticket_keys_load(const char *path, struct ticket_keys **out, char *err,
    size_t errlen)
{
	unsigned char buf[SECRET_MAX + 1];
	*out = NULL;
	FILE *f = fopen(path, "rb");
	if (f == NULL) {
		snprintf(err, errlen, "%s: cannot read: %s", path, strerror(errno));
		return -1;
	}
	size_t n = fread(buf, 1, sizeof buf, f);
	fclose(f);
	int rc = -1;
	if (n < SECRET_MIN || n > SECRET_MAX) {
		snprintf(err, errlen, "%s: holds %zu bytes; expected %d to %d "
		    "bytes of secret (e.g. head -c 48 /dev/urandom > FILE)",
		    path, n, SECRET_MIN, SECRET_MAX);
		goto done;
	}
	struct ticket_keys *k = calloc(1, sizeof *k);
	if (k == NULL) {
		snprintf(err, errlen, "%s: out of memory", path);
		goto done;
	}
	compat_sha256(buf, n, k->master);
	*out = k;
	rc = 0;
done:
	mbedtls_platform_zeroize(buf, sizeof buf);
	return rc;
}

int ticket_keys_random(struct ticket_keys **out, char *err, size_t errlen)
{
	*out = NULL;
	struct ticket_keys *k = calloc(1, sizeof *k);
	if (k == NULL) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	if (rng_random(NULL, k->master, sizeof k->master) != 0) {
		snprintf(err, errlen, "the random generator failed");
		free(k);
		return -1;
	}
	*out = k;
	return 0;
}

void ticket_keys_free(struct ticket_keys *k)
{
	if (k == NULL)
		return;
	mbedtls_platform_zeroize(k, sizeof *k);
	free(k);
}

static uint32_t current_hour(void)
{
	return (uint32_t)(time(NULL) / HOUR_S);
}

/* The AES-256-GCM context for one hour's key. */
static int hour_key(const struct ticket_keys *k, uint32_t hour,
    mbedtls_gcm_context *gcm)
{
	static const char label[] = "upseal-ticket-v1";
	unsigned char msg[sizeof label - 1 + 4], key[32];
	memcpy(msg, label, sizeof label - 1);
	msg[sizeof label - 1] = (unsigned char)(hour >> 24);
	msg[sizeof label] = (unsigned char)(hour >> 16);
	msg[sizeof label + 1] = (unsigned char)(hour >> 8);
	msg[sizeof label + 2] = (unsigned char)hour;
	int rc = mbedtls_md_hmac(mbedtls_md_info_from_type(MBEDTLS_MD_SHA256),
	    k->master, sizeof k->master, msg, sizeof msg, key);
	if (rc == 0)
		rc = mbedtls_gcm_setkey(gcm, MBEDTLS_CIPHER_ID_AES, key, 256);
	mbedtls_platform_zeroize(key, sizeof key);
	return rc;
}

int ticket_write(void *p, const mbedtls_ssl_session *session,
    unsigned char *start, const unsigned char *end, size_t *tlen,
    uint32_t *lifetime)
{
	const struct ticket_keys *k = p;
	size_t room = (size_t)(end - start);
	if (room < HEADER_LEN + TAG_LEN)
		return MBEDTLS_ERR_SSL_BUFFER_TOO_SMALL;
	size_t plen;
	unsigned char *body = start + HEADER_LEN;
	int rc = mbedtls_ssl_session_save(session, body,
	    room - HEADER_LEN - TAG_LEN, &plen);
	if (rc != 0)
		return rc;
	uint32_t hour = current_hour();
	start[0] = 'U';
	start[1] = 1;
	start[2] = (unsigned char)(hour >> 24);
	start[3] = (unsigned char)(hour >> 16);
	start[4] = (unsigned char)(hour >> 8);
	start[5] = (unsigned char)hour;
	if ((rc = rng_random(NULL, start + AAD_LEN, IV_LEN)) != 0)
		return rc;
	mbedtls_gcm_context gcm;
	mbedtls_gcm_init(&gcm);
	rc = hour_key(k, hour, &gcm);
	if (rc == 0)
		rc = mbedtls_gcm_crypt_and_tag(&gcm, MBEDTLS_GCM_ENCRYPT, plen,
		    start + AAD_LEN, IV_LEN, start, AAD_LEN, body, body, TAG_LEN,
		    body + plen);
	mbedtls_gcm_free(&gcm);
	if (rc != 0) {
		mbedtls_platform_zeroize(body, plen);
		return rc;
	}
	*tlen = HEADER_LEN + plen + TAG_LEN;
	*lifetime = HOUR_S;
	return 0;
}

int ticket_parse(void *p, mbedtls_ssl_session *session, unsigned char *buf,
    size_t len)
{
	const struct ticket_keys *k = p;
	if (len < HEADER_LEN + TAG_LEN || buf[0] != 'U' || buf[1] != 1)
		return MBEDTLS_ERR_SSL_INVALID_MAC;
	uint32_t hour = (uint32_t)buf[2] << 24 | (uint32_t)buf[3] << 16 |
	    (uint32_t)buf[4] << 8 | buf[5];
	uint32_t now = current_hour();
	if (hour + 1 < now || hour > now + 1)
		return MBEDTLS_ERR_SSL_SESSION_TICKET_EXPIRED;
	size_t clen = len - HEADER_LEN - TAG_LEN;
	unsigned char *body = buf + HEADER_LEN;
	mbedtls_gcm_context gcm;
	mbedtls_gcm_init(&gcm);
	int rc = hour_key(k, hour, &gcm);
	if (rc == 0)
		rc = mbedtls_gcm_auth_decrypt(&gcm, clen, buf + AAD_LEN, IV_LEN,
		    buf, AAD_LEN,
		    body + clen, TAG_LEN, body, body);
	mbedtls_gcm_free(&gcm);
	if (rc != 0)
		return MBEDTLS_ERR_SSL_INVALID_MAC;
	rc = mbedtls_ssl_session_load(session, body, clen);
	mbedtls_platform_zeroize(body, clen);
	return rc;
}
