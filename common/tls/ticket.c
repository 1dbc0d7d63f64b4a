#include "ticket.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mbedtls/gcm.h>
#include <mbedtls/md.h>
#include <mbedtls/platform_util.h>

#include "compat.h"
#include "rng.h"
#include "secret.h"

#define SECRET_MIN 32
#define SECRET_MAX 4096
#define HOUR_S 3600
#define AAD_LEN 6	/* magic, version, hour: authenticated */
#define HEADER_LEN 18	/* AAD_LEN + IV_LEN */
#define IV_LEN 12
#define TAG_LEN 16
/* Version 1 tickets, sealed under keys not bound to a tunnel, are refused. */
#define TICKET_VERSION 2

struct ticket_keys {
	unsigned char master[32];
	unsigned char binding[TICKET_BINDING_LEN];
};

#define RECIPE "(umask 077; head -c 48 /dev/urandom > FILE)"

int ticket_keys_load(const char *path, uid_t run_as,
    const unsigned char binding[TICKET_BINDING_LEN], struct ticket_keys **out,
    char *err, size_t errlen)
{
	unsigned char *buf;
	size_t n;
	char why[300];
	*out = NULL;
	if (secret_read(path, SECRET_MAX, run_as, &buf, &n, why, sizeof why) != 0) {
		snprintf(err, errlen, "%s (a new one: " RECIPE ")", why);
		return -1;
	}
	int rc = -1;
	if (n < SECRET_MIN) {
		snprintf(err, errlen, "%s: holds %zu bytes; expected %d to %d "
		    "bytes of secret (e.g. " RECIPE ")", path, n, SECRET_MIN,
		    SECRET_MAX);
		goto done;
	}
	struct ticket_keys *k = calloc(1, sizeof *k);
	if (k == NULL) {
		snprintf(err, errlen, "%s: out of memory", path);
		goto done;
	}
	compat_sha256(buf, n, k->master);
	memcpy(k->binding, binding, sizeof k->binding);
	*out = k;
	rc = 0;
done:
	secret_free(buf, n);
	return rc;
}

int ticket_keys_random(const unsigned char binding[TICKET_BINDING_LEN],
    struct ticket_keys **out, char *err, size_t errlen)
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
	memcpy(k->binding, binding, sizeof k->binding);
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

/*
 * The AES-256-GCM context for one hour's key: HMAC-SHA256(master,
 * label || binding || hour), so a ticket opens only under the settings
 * that sealed it.
 */
static int hour_key(const struct ticket_keys *k, uint32_t hour,
    mbedtls_gcm_context *gcm)
{
	static const char label[] = "upseal-ticket-v2";
	unsigned char msg[sizeof label - 1 + TICKET_BINDING_LEN + 4], key[32];
	unsigned char *p = msg;
	memcpy(p, label, sizeof label - 1);
	p += sizeof label - 1;
	memcpy(p, k->binding, TICKET_BINDING_LEN);
	p += TICKET_BINDING_LEN;
	p[0] = (unsigned char)(hour >> 24);
	p[1] = (unsigned char)(hour >> 16);
	p[2] = (unsigned char)(hour >> 8);
	p[3] = (unsigned char)hour;
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
	start[1] = TICKET_VERSION;
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
	if (len < HEADER_LEN + TAG_LEN || buf[0] != 'U' ||
	    buf[1] != TICKET_VERSION)
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
