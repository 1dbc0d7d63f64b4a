#include "expiry.h"

#include <stdlib.h>
#include <time.h>

#include "log.h"

#define DAY_MS (24ULL * 3600 * 1000)

struct expiry {
	uv_timer_t timer;
	const struct tset *running;
};

static void when_text(int64_t t, char out[32])
{
	struct tm tm;
	time_t tt = (time_t)t;
	gmtime_r(&tt, &tm);
	strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* Whole days from now to t, rounded down (negative once past). */
static int64_t days_left(int64_t t, int64_t now)
{
	int64_t d = t - now;
	return d >= 0 ? d / 86400 : -((-d + 86399) / 86400);
}

static void check_tunnel(struct tunnel *t, bool daily)
{
	const struct cfg_tunnel *c = tunnel_cfg(t);
	struct tls_dates d;
	char when[32];
	int64_t now = (int64_t)time(NULL);
	tls_ctx_dates(tunnel_tls(t), &d);
	if (c->expiry_warning_ms > 0 && d.cert_not_after != 0 &&
	    (d.cert_not_after - now) * 1000 < (int64_t)c->expiry_warning_ms) {
		bool past = d.cert_not_after <= now;
		struct log_line l;
		when_text(d.cert_not_after, when);
		log_begin(&l, past ? LOG_ERROR : LOG_WARN, past ? "cert_expired" :
		    "cert_expiring");
		log_str(&l, "tunnel", c->name);
		log_str(&l, "cert", c->cert);
		log_str(&l, "not_after", when);
		log_i64(&l, "days_left", days_left(d.cert_not_after, now));
		log_str(&l, "msg", past ? "the tunnel's own certificate has "
		    "expired: peers that check dates refuse it" : "the tunnel's "
		    "own certificate expires soon: renew it (upseal-certs new) "
		    "and reload");
		log_end(&l);
	}
	if (daily && d.crl_next_update != 0 && d.crl_next_update <= now) {
		struct log_line l;
		when_text(d.crl_next_update, when);
		log_begin(&l, LOG_WARN, "crl_stale");
		log_str(&l, "tunnel", c->name);
		log_str(&l, "next_update", when);
		log_str(&l, "msg", "a CRL of the tunnel is past its nextUpdate: "
		    "it still revokes what it lists; publish a new one "
		    "(upseal-certs revoke --ca CA) and reload");
		log_end(&l);
	}
}

static void check_all(struct expiry *e, bool daily)
{
	for (size_t i = 0; i < e->running->n; i++)
		check_tunnel(e->running->t[i], daily);
}

static void on_timer(uv_timer_t *timer)
{
	check_all(timer->data, true);
}

struct expiry *expiry_start(uv_loop_t *loop, const struct tset *running)
{
	struct expiry *e = calloc(1, sizeof *e);
	if (e == NULL)
		return NULL;
	e->running = running;
	uv_timer_init(loop, &e->timer);
	e->timer.data = e;
	uv_timer_start(&e->timer, on_timer, DAY_MS, DAY_MS);
	return e;
}

void expiry_check(struct expiry *e)
{
	if (e != NULL)
		check_all(e, false);
}

static void on_closed(uv_handle_t *h)
{
	free(h->data);
}

void expiry_stop(struct expiry *e)
{
	if (e == NULL)
		return;
	uv_timer_stop(&e->timer);
	uv_close((uv_handle_t *)&e->timer, on_closed);
}

void expiry_print(FILE *f, const char *name, const struct tls_ctx *tls)
{
	struct tls_dates d;
	int64_t now = (int64_t)time(NULL);
	static const char *const what[] = { "cert notAfter", "ca notAfter",
		"crl nextUpdate" };
	tls_ctx_dates(tls, &d);
	int64_t v[3] = { d.cert_not_after, d.ca_not_after, d.crl_next_update };
	for (size_t i = 0; i < 3; i++) {
		char when[32];
		if (v[i] == 0)
			continue;
		when_text(v[i], when);
		int64_t left = days_left(v[i], now);
		if (left >= 0)
			fprintf(f, "[%s] %s %s (%lld days left)\n", name,
			    what[i], when, (long long)left);
		else
			fprintf(f, "[%s] %s %s (%lld days ago)\n", name,
			    what[i], when, (long long)-left);
	}
}
