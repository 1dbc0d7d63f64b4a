/*
 * tlsio between two mbedTLS contexts over memory: a client and a server
 * tlsio built as the daemons build them (tls_ctx_new, identities made at
 * run time), the test moving each one's output into the other's input.
 * The same loop the relay and the pool run, with no socket.
 */
#include "test.h"

#include <stdlib.h>

#include <mbedtls/ssl.h>

#include "compat.h"
#include "config.h"
#include "log.h"
#include "reason.h"
#include "tls.h"
#include "tlsio.h"
#include "unit_ids.h"

static struct tls_ctx *srv_ctx, *cli_ctx;

/* Make both contexts once (two P-256 identities, each pinning the other). */
static int contexts(void)
{
	static struct cfg_tunnel s, c;
	char err[512];
	if (srv_ctx != NULL)
		return 0;
	struct unit_ids *ids = unit_ids();
	if (ids == NULL || unit_tunnel(&s, ids, CFG_SERVER) != 0 ||
	    unit_tunnel(&c, ids, CFG_CLIENT) != 0)
		return -1;
	if (tls_ctx_new(&s, CFG_SERVER, (uid_t)-1, &srv_ctx, err,
	    sizeof err) != 0 ||
	    tls_ctx_new(&c, CFG_CLIENT, (uid_t)-1, &cli_ctx, err,
	    sizeof err) != 0) {
		printf("  tls_ctx_new: %s\n", err);
		return -1;
	}
	return 0;
}

__attribute__((destructor)) static void contexts_free(void)
{
	tls_ctx_free(srv_ctx);
	tls_ctx_free(cli_ctx);
}

struct pair {
	struct tlsio cli, srv;
	char cli_err[160], srv_err[160];
};

/* After an operation of from: keep its input, move its output to "to". */
static void move(struct tlsio *from, struct tlsio *to)
{
	CHECK_INT(tlsio_settle(from), 0);
	struct chunk *out = tlsio_take_out(from);
	if (out == NULL)
		return;
	tlsio_input(to, out->data, out->len);
	CHECK_INT(tlsio_settle(to), 0);	/* to keeps its own copy */
	chunk_free(out);
}

static int handshake(struct pair *p)
{
	if (contexts() != 0)
		return -1;
	CHECK_INT(tlsio_init(&p->cli, cli_ctx, false, p->cli_err,
	    sizeof p->cli_err), 0);
	CHECK_INT(tlsio_init(&p->srv, srv_ctx, false, p->srv_err,
	    sizeof p->srv_err), 0);
	int rc_c = -1, rc_s = -1;
	for (int i = 0; i < 32 && (rc_c != 0 || rc_s != 0); i++) {
		if (rc_c != 0)
			rc_c = tlsio_handshake(&p->cli);
		move(&p->cli, &p->srv);
		if (rc_s != 0)
			rc_s = tlsio_handshake(&p->srv);
		move(&p->srv, &p->cli);
	}
	CHECK_INT(rc_c, 0);
	CHECK_INT(rc_s, 0);
	CHECK_INT(tls_check_peer(srv_ctx, &p->srv.ssl, &p->srv.peer),
	    TLS_PEER_OK);
	CHECK_INT(tls_check_peer(cli_ctx, &p->cli.ssl, &p->cli.peer),
	    TLS_PEER_OK);
	return rc_c == 0 && rc_s == 0 ? 0 : -1;
}

static void pair_free(struct pair *p)
{
	tlsio_free(&p->cli);
	tlsio_free(&p->srv);
}

TEST(tlsio_relays_both_ways_and_close_notify_ends_reading)
{
	struct pair p = { 0 };
	unsigned char buf[256];
	size_t len = 0;
	enum reason why = REASON_OTHER;
	if (handshake(&p) != 0)
		goto out;
	CHECK_INT(tlsio_write(&p.cli, (const unsigned char *)"ping", 4, &why),
	    TLSIO_WANT);
	move(&p.cli, &p.srv);
	CHECK_INT(tlsio_read(&p.srv, buf, sizeof buf, &len, &why), TLSIO_WANT);
	CHECK_INT(len, 4);
	CHECK(memcmp(buf, "ping", 4) == 0);
	CHECK(tlsio_wants_input(&p.srv));
	CHECK_INT(tlsio_write(&p.srv, (const unsigned char *)"pong!", 5, &why),
	    TLSIO_WANT);
	CHECK_INT(tlsio_close_notify(&p.srv), 0);
	move(&p.srv, &p.cli);
	/* The data, then close_notify: both from one read. */
	CHECK_INT(tlsio_read(&p.cli, buf, sizeof buf, &len, &why),
	    TLSIO_CLOSED);
	CHECK_INT(len, 5);
	CHECK(memcmp(buf, "pong!", 5) == 0);
out:
	pair_free(&p);
}

TEST(tlsio_read_stops_when_the_buffer_is_full)
{
	struct pair p = { 0 };
	unsigned char big[3000], buf[1000];
	size_t len = 0, total = 0;
	enum reason why;
	if (handshake(&p) != 0)
		goto out;
	memset(big, 'x', sizeof big);
	CHECK_INT(tlsio_write(&p.cli, big, sizeof big, &why), TLSIO_WANT);
	move(&p.cli, &p.srv);
	CHECK_INT(tlsio_read(&p.srv, buf, sizeof buf, &len, &why), TLSIO_MORE);
	CHECK_INT(len, sizeof buf);
	total += len;
	while (tlsio_read(&p.srv, buf, sizeof buf, &len, &why) == TLSIO_MORE)
		total += len;
	total += len;
	CHECK_INT(total, sizeof big);
out:
	pair_free(&p);
}

TEST(tlsio_eof_without_close_notify_is_truncated)
{
	struct pair p = { 0 };
	unsigned char buf[64];
	size_t len = 0;
	enum reason why = REASON_OTHER;
	if (handshake(&p) != 0)
		goto out;
	CHECK_INT(tlsio_write(&p.cli, (const unsigned char *)"last", 4, &why),
	    TLSIO_WANT);
	move(&p.cli, &p.srv);
	tlsio_input(&p.srv, NULL, 0);	/* the socket's EOF */
	CHECK(!tlsio_wants_input(&p.srv));
	CHECK_INT(tlsio_read(&p.srv, buf, sizeof buf, &len, &why), TLSIO_FAIL);
	CHECK_INT(len, 4);	/* what came before the cut is handed on */
	CHECK_STR(reason_name(why), "truncated");
	CHECK_CONTAINS(p.srv_err, "without close_notify");
	CHECK(tlsio_take_out(&p.srv) == NULL);	/* nothing is answered */
out:
	pair_free(&p);
}

/*
 * The record type an alert goes out in: alert in TLS 1.2; in TLS 1.3 (the
 * 3.6 build) every record after the handshake is application_data outside.
 */
static unsigned alert_record_type(struct tlsio *t)
{
	return compat_is_tls12(&t->ssl) ? MBEDTLS_SSL_MSG_ALERT :
	    MBEDTLS_SSL_MSG_APPLICATION_DATA;
}

TEST(tlsio_flipped_tag_is_bad_record_with_an_alert)
{
	struct pair p = { 0 };
	unsigned char buf[64];
	size_t len = 0;
	enum reason why = REASON_OTHER;
	if (handshake(&p) != 0)
		goto out;
	CHECK_INT(tlsio_write(&p.cli, (const unsigned char *)"secret", 6, &why),
	    TLSIO_WANT);
	struct chunk *rec = tlsio_take_out(&p.cli);
	CHECK(rec != NULL);
	if (rec == NULL)
		goto out;
	rec->data[rec->len - 1] ^= 1;	/* the last byte of the AEAD tag */
	tlsio_input(&p.srv, rec->data, rec->len);
	CHECK_INT(tlsio_read(&p.srv, buf, sizeof buf, &len, &why), TLSIO_FAIL);
	chunk_free(rec);
	CHECK_INT(len, 0);
	CHECK_STR(reason_name(why), "bad_record");
	CHECK_CONTAINS(p.srv_err, "integrity check");
	struct chunk *alert = tlsio_take_out(&p.srv);
	CHECK(alert != NULL);	/* bad_record_mac goes out */
	CHECK(alert != NULL && alert->data[0] == alert_record_type(&p.srv));
	chunk_free(alert);
out:
	pair_free(&p);
}

TEST(tlsio_oversized_record_is_record_too_large_with_an_alert)
{
	struct pair p = { 0 };
	unsigned char buf[64];
	/* Application data, TLS 1.2, announcing 65 000 bytes. */
	const unsigned char hdr[5] = { 0x17, 0x03, 0x03, 0xfd, 0xe8 };
	size_t len = 0;
	enum reason why = REASON_OTHER;
	if (handshake(&p) != 0)
		goto out;
	tlsio_input(&p.srv, hdr, sizeof hdr);
	CHECK_INT(tlsio_read(&p.srv, buf, sizeof buf, &len, &why), TLSIO_FAIL);
	CHECK_STR(reason_name(why), "record_too_large");
	struct chunk *alert = tlsio_take_out(&p.srv);
	CHECK(alert != NULL && alert->data[0] == alert_record_type(&p.srv));
	chunk_free(alert);
out:
	pair_free(&p);
}

TEST(tlsio_keeps_input_left_between_reads)
{
	struct pair p = { 0 };
	unsigned char buf[64];
	size_t len = 0;
	enum reason why;
	if (handshake(&p) != 0)
		goto out;
	CHECK_INT(tlsio_write(&p.cli, (const unsigned char *)"split", 5, &why),
	    TLSIO_WANT);
	struct chunk *rec = tlsio_take_out(&p.cli);
	if (rec == NULL)
		goto out;
	/* Half a record, then the rest: one read gives nothing, the next all. */
	tlsio_input(&p.srv, rec->data, 7);
	CHECK_INT(tlsio_read(&p.srv, buf, sizeof buf, &len, &why), TLSIO_WANT);
	CHECK_INT(len, 0);
	CHECK_INT(tlsio_settle(&p.srv), 0);
	tlsio_input(&p.srv, rec->data + 7, rec->len - 7);
	chunk_free(rec);
	CHECK_INT(tlsio_read(&p.srv, buf, sizeof buf, &len, &why), TLSIO_WANT);
	CHECK_INT(len, 5);
	CHECK(memcmp(buf, "split", 5) == 0);
out:
	pair_free(&p);
}

TEST(reason_table_names_levels_and_resets)
{
	CHECK_STR(reason_name(REASON_CLOSED), "closed");
	CHECK_STR(reason_name(REASON_RECORD_TOO_LARGE), "record_too_large");
	CHECK_STR(reason_name(REASON_POOL_FLUSH), "pool_flush");
	CHECK_INT(reason_parse("drain"), REASON_DRAIN);
	CHECK_INT(reason_parse("no such reason"), REASON_OTHER);
	CHECK_INT(reason_metric(REASON_POOL_IDLE), REASON_OTHER);
	CHECK_INT(reason_info(REASON_IDLE_TIMEOUT)->level, LOG_INFO);
	CHECK_INT(reason_info(REASON_TRUNCATED)->level, LOG_WARN);
	CHECK(reason_info(REASON_PIN_MISMATCH)->reset_plain);
	CHECK(!reason_info(REASON_HANDSHAKE_TIMEOUT)->reset_plain);
	CHECK(reason_info(REASON_CONNECT_TIMEOUT)->connect_failure);
	for (unsigned r = 0; r < REASON_COUNT; r++) {
		CHECK(reason_name((enum reason)r) != NULL);
		CHECK_INT(reason_parse(reason_name((enum reason)r)), r);
	}
}
