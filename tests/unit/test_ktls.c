/*
 * kTLS without a kernel that has it: the crypto_info each side would hand
 * the kernel (ktls_crypto_info) must hold the keys, IVs and sequence
 * numbers mbedTLS itself uses. Checked by opening a record mbedTLS sealed
 * with the sender's TX info, by the receiver's RX info being the same
 * bytes, and by the counters moving by one record. And tlsio's record
 * boundary: where the switch may happen.
 */
#include "test.h"

#include <errno.h>
#include <stdlib.h>

#include <mbedtls/chachapoly.h>
#include <mbedtls/gcm.h>
#include <mbedtls/platform_util.h>
#include <mbedtls/ssl.h>

#include "compat.h"
#include "config.h"
#include "ktls.h"
#include "tls.h"
#include "tlsio.h"
#include "unit_ids.h"

struct kpair {
	struct tls_ctx *sctx, *cctx;
	struct tlsio cli, srv;
	char err[160];
};

static void kmove(struct tlsio *from, struct tlsio *to)
{
	CHECK_INT(tlsio_settle(from), 0);
	struct chunk *out = tlsio_take_out(from);
	if (out == NULL)
		return;
	tlsio_input(to, out->data, out->len);
	CHECK_INT(tlsio_settle(to), 0);
	chunk_free(out);
}

/* Contexts offering only cipher, both sides keeping the secrets. */
static int kpair_open(struct kpair *p, enum cfg_cipher cipher)
{
	struct cfg_tunnel s, c;
	char err[512];
	struct unit_ids *ids = unit_ids();
	memset(p, 0, sizeof *p);
	if (ids == NULL || unit_tunnel(&s, ids, CFG_SERVER) != 0 ||
	    unit_tunnel(&c, ids, CFG_CLIENT) != 0)
		return -1;
	s.ciphers[0] = c.ciphers[0] = (unsigned char)cipher;
	s.nciphers = c.nciphers = 1;
	if (tls_ctx_new(&s, CFG_SERVER, (uid_t)-1, &p->sctx, err,
	    sizeof err) != 0 ||
	    tls_ctx_new(&c, CFG_CLIENT, (uid_t)-1, &p->cctx, err,
	    sizeof err) != 0) {
		printf("  tls_ctx_new: %s\n", err);
		return -1;
	}
	CHECK_INT(tlsio_init(&p->cli, p->cctx, false, p->err, sizeof p->err), 0);
	CHECK_INT(tlsio_init(&p->srv, p->sctx, false, p->err, sizeof p->err), 0);
	tlsio_ktls_want(&p->cli);
	tlsio_ktls_want(&p->srv);
	int rc_c = -1, rc_s = -1;
	for (int i = 0; i < 32 && (rc_c != 0 || rc_s != 0); i++) {
		if (rc_c != 0)
			rc_c = tlsio_handshake(&p->cli);
		kmove(&p->cli, &p->srv);
		if (rc_s != 0)
			rc_s = tlsio_handshake(&p->srv);
		kmove(&p->srv, &p->cli);
	}
	CHECK_INT(rc_c, 0);
	CHECK_INT(rc_s, 0);
	return rc_c == 0 && rc_s == 0 ? 0 : -1;
}

static void kpair_close(struct kpair *p)
{
	tlsio_free(&p->cli);
	tlsio_free(&p->srv);
	tls_ctx_free(p->sctx);
	tls_ctx_free(p->cctx);
}

/*
 * Open one TLS record (header included) with what the kernel would have
 * been given: the plaintext into out (its length in *olen). 0 or -1.
 */
static int open_record(const union ktls_crypto_info *ci, bool tls13,
    const unsigned char *rec, size_t len, unsigned char *out, size_t *olen)
{
	unsigned char nonce[12], aad[13];
	const unsigned char *seq, *body = rec + 5;
	size_t blen = len - 5, aadlen;
	int rc;
	switch (ci->info.cipher_type) {
	case TLS_CIPHER_AES_GCM_128:
		seq = ci->g128.rec_seq;
		memcpy(nonce, ci->g128.salt, 4);
		memcpy(nonce + 4, tls13 ? ci->g128.iv : body, 8);
		break;
	case TLS_CIPHER_AES_GCM_256:
		seq = ci->g256.rec_seq;
		memcpy(nonce, ci->g256.salt, 4);
		memcpy(nonce + 4, tls13 ? ci->g256.iv : body, 8);
		break;
	default:
		seq = ci->cc.rec_seq;
		memcpy(nonce, ci->cc.iv, 12);
		break;
	}
	if (tls13 || ci->info.cipher_type == TLS_CIPHER_CHACHA20_POLY1305)
		for (int i = 0; i < 8; i++)
			nonce[4 + i] ^= seq[i];
	else {
		body += 8;	/* TLS 1.2 GCM: the explicit nonce */
		blen -= 8;
	}
	if (blen < 16)
		return -1;
	*olen = blen - 16;
	if (tls13) {
		memcpy(aad, rec, 5);
		aadlen = 5;
	} else {
		memcpy(aad, seq, 8);
		aad[8] = rec[0];
		aad[9] = rec[1];
		aad[10] = rec[2];
		aad[11] = (unsigned char)(*olen >> 8);
		aad[12] = (unsigned char)*olen;
		aadlen = 13;
	}
	if (ci->info.cipher_type == TLS_CIPHER_CHACHA20_POLY1305) {
		mbedtls_chachapoly_context cp;
		mbedtls_chachapoly_init(&cp);
		rc = mbedtls_chachapoly_setkey(&cp, ci->cc.key);
		if (rc == 0)
			rc = mbedtls_chachapoly_auth_decrypt(&cp, *olen, nonce,
			    aad, aadlen, body + *olen, body, out);
		mbedtls_chachapoly_free(&cp);
	} else {
		bool big = ci->info.cipher_type == TLS_CIPHER_AES_GCM_256;
		mbedtls_gcm_context g;
		mbedtls_gcm_init(&g);
		rc = mbedtls_gcm_setkey(&g, MBEDTLS_CIPHER_ID_AES,
		    big ? ci->g256.key : ci->g128.key, big ? 256 : 128);
		if (rc == 0)
			rc = mbedtls_gcm_auth_decrypt(&g, *olen, nonce, 12, aad,
			    aadlen, body + *olen, 16, body, out);
		mbedtls_gcm_free(&g);
	}
	return rc == 0 ? 0 : -1;
}

static void keys_match(enum cfg_cipher cipher)
{
	struct kpair p;
	union ktls_crypto_info ctx_, srx, ctx2, srx2;
	socklen_t l1 = 0, l2 = 0, l3 = 0, l4 = 0;
	unsigned char plain[64];
	size_t plen = 0, len = 0;
	enum reason why;
	if (kpair_open(&p, cipher) != 0)
		goto out;
	bool tls13 = !compat_is_tls12(&p.cli.ssl);
	CHECK(p.cli.ktls != NULL);
	CHECK(p.srv.ktls != NULL);
	CHECK_INT(ktls_crypto_info(&p.cli.ssl, p.cli.ktls, true, &ctx_, &l1), 0);
	CHECK_INT(ktls_crypto_info(&p.srv.ssl, p.srv.ktls, false, &srx, &l2), 0);
	CHECK_INT(l1, l2);
	CHECK(memcmp(&ctx_, &srx, l1) == 0);	/* our TX is their RX */

	CHECK_INT(tlsio_write(&p.cli, (const unsigned char *)"to the kernel",
	    13, &why), TLSIO_WANT);
	struct chunk *rec = tlsio_take_out(&p.cli);
	if (rec == NULL)
		goto out;
	CHECK_INT(open_record(&ctx_, tls13, rec->data, rec->len, plain, &plen),
	    0);
	if (tls13) {	/* the inner type follows, then padding (3.6: to 16) */
		while (plen > 13 && plain[plen - 1] == 0)
			plen--;
		CHECK_INT(plen, 14);
		CHECK_INT(plain[13], MBEDTLS_SSL_MSG_APPLICATION_DATA);
	} else {
		CHECK_INT(plen, 13);
	}
	CHECK(memcmp(plain, "to the kernel", 13) == 0);

	/* The record read: both counters moved on by one, still equal. */
	tlsio_input(&p.srv, rec->data, rec->len);
	chunk_free(rec);
	CHECK_INT(tlsio_read(&p.srv, plain, sizeof plain, &len, &why),
	    TLSIO_WANT);
	CHECK_INT(len, 13);
	CHECK_INT(ktls_crypto_info(&p.cli.ssl, p.cli.ktls, true, &ctx2, &l3), 0);
	CHECK_INT(ktls_crypto_info(&p.srv.ssl, p.srv.ktls, false, &srx2, &l4),
	    0);
	CHECK(memcmp(&ctx2, &srx2, l3) == 0);
	CHECK(memcmp(&ctx_, &ctx2, l1) != 0);

	/* The other way too. */
	CHECK_INT(ktls_crypto_info(&p.srv.ssl, p.srv.ktls, true, &ctx_, &l1), 0);
	CHECK_INT(ktls_crypto_info(&p.cli.ssl, p.cli.ktls, false, &srx, &l2), 0);
	CHECK(memcmp(&ctx_, &srx, l1) == 0);
	CHECK_INT(tlsio_write(&p.srv, (const unsigned char *)"and back", 8,
	    &why), TLSIO_WANT);
	rec = tlsio_take_out(&p.srv);
	if (rec == NULL)
		goto out;
	CHECK_INT(open_record(&ctx_, tls13, rec->data, rec->len, plain, &plen),
	    0);
	CHECK(memcmp(plain, "and back", 8) == 0);
	chunk_free(rec);

	tlsio_ktls_forget(&p.cli);
	CHECK(p.cli.ktls == NULL);
	CHECK_INT(ktls_crypto_info(&p.cli.ssl, p.cli.ktls, true, &ctx_, &l1),
	    -EINVAL);
out:
	mbedtls_platform_zeroize(&ctx_, sizeof ctx_);
	kpair_close(&p);
}

TEST(ktls_aes128gcm_info_opens_mbedtls_records)
{
	keys_match(CFG_CIPHER_AES128GCM);
}

TEST(ktls_aes256gcm_info_opens_mbedtls_records)
{
	keys_match(CFG_CIPHER_AES256GCM);
}

TEST(ktls_chacha20_info_opens_mbedtls_records)
{
	keys_match(CFG_CIPHER_CHACHA20);
}

TEST(ktls_no_secrets_without_asking)
{
	struct kpair p;
	if (kpair_open(&p, CFG_CIPHER_AES128GCM) != 0)
		goto out;
	CHECK(p.cli.ktls != NULL);
	/* A second pair whose ends did not ask keeps nothing. */
	struct tlsio a;
	char err[160];
	CHECK_INT(tlsio_init(&a, p.cctx, false, err, sizeof err), 0);
	(void)tlsio_handshake(&a);	/* a ClientHello: no keys yet anyway */
	CHECK(a.ktls == NULL);
	tlsio_free(&a);
out:
	kpair_close(&p);
}

TEST(tlsio_record_need_follows_the_boundaries)
{
	struct kpair p;
	unsigned char big[3000], buf[4096];
	size_t len = 0;
	enum reason why;
	if (kpair_open(&p, CFG_CIPHER_AES128GCM) != 0)
		goto out;
	CHECK_INT(tlsio_record_need(&p.srv), 0);
	CHECK(tlsio_drained(&p.srv));
	memset(big, 'k', sizeof big);
	CHECK_INT(tlsio_write(&p.cli, big, sizeof big, &why), TLSIO_WANT);
	CHECK_INT(tlsio_write(&p.cli, big, 10, &why), TLSIO_WANT);
	struct chunk *out = tlsio_take_out(&p.cli);
	if (out == NULL)
		goto out;
	size_t rec1 = 5 + ((size_t)out->data[3] << 8 | out->data[4]);
	/* Three bytes of a header: two to go, then the body. */
	tlsio_input(&p.srv, out->data, 3);
	CHECK_INT(tlsio_record_need(&p.srv), 2);
	CHECK(!tlsio_drained(&p.srv));
	CHECK_INT(tlsio_read(&p.srv, buf, sizeof buf, &len, &why), TLSIO_WANT);
	CHECK_INT(tlsio_settle(&p.srv), 0);
	tlsio_input(&p.srv, out->data + 3, 2);
	CHECK_INT(tlsio_record_need(&p.srv), rec1 - 5);
	/* The first record and 7 bytes of the second. */
	tlsio_input(&p.srv, out->data + 5, rec1 - 5 + 7);
	CHECK_INT(tlsio_record_need(&p.srv), out->len - rec1 - 7);
	CHECK_INT(tlsio_read(&p.srv, buf, sizeof buf, &len, &why), TLSIO_WANT);
	CHECK_INT(len, sizeof big);
	CHECK_INT(tlsio_settle(&p.srv), 0);
	CHECK(!tlsio_drained(&p.srv) || tlsio_record_need(&p.srv) > 0);
	/* The rest, exactly: at a boundary, and nothing left inside. */
	tlsio_input(&p.srv, out->data + rec1 + 7, out->len - rec1 - 7);
	CHECK_INT(tlsio_record_need(&p.srv), 0);
	CHECK_INT(tlsio_read(&p.srv, buf, sizeof buf, &len, &why), TLSIO_WANT);
	CHECK_INT(len, 10);
	CHECK_INT(tlsio_settle(&p.srv), 0);
	CHECK(tlsio_drained(&p.srv));
	chunk_free(out);
out:
	kpair_close(&p);
}
