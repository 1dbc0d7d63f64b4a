#include "metrics.h"

#include <stddef.h>

static const double hs_bounds[METRICS_HS_BUCKETS] = {
	0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5,
};

void metrics_handshake(struct tunnel_stats *s, double seconds, bool resumed)
{
	unsigned i = 0;
	while (i < METRICS_HS_BUCKETS && seconds > hs_bounds[i])
		i++;
	STAT_ADD(s->hs_bucket[i], 1);
	STAT_ADD(s->hs_micros, (uint64_t)(seconds * 1e6 + 0.5));
	STAT_ADD(*(resumed ? &s->hs_resumed : &s->hs_full), 1);
}

static void header(struct sbuf *b, const char *name, const char *type,
    const char *help)
{
	sbuf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static uint64_t field(const struct tunnel_stats *s, size_t off)
{
	return atomic_load_explicit((const stat_counter *)((const char *)s +
	    off), memory_order_relaxed);
}

/* Tunnel names are [A-Za-z0-9_.-]: no label escaping is needed. */
static void per_tunnel(struct sbuf *b, const struct metrics_tunnel *t,
    size_t n, const char *name, const char *type, const char *help,
    size_t field_off)
{
	header(b, name, type, help);
	for (size_t i = 0; i < n; i++) {
		sbuf_printf(b, "%s{tunnel=\"%s\"} %llu\n", name, t[i].name,
		    (unsigned long long)field(t[i].stats, field_off));
	}
}

/* A counter whose one extra label takes two values, per tunnel. */
static void two_ways(struct sbuf *b, const struct metrics_tunnel *t, size_t n,
    const char *name, const char *help, const char *label, const char *v1,
    size_t off1, const char *v2, size_t off2)
{
	header(b, name, "counter", help);
	for (size_t i = 0; i < n; i++) {
		sbuf_printf(b, "%s{tunnel=\"%s\",%s=\"%s\"} %llu\n", name,
		    t[i].name, label, v1,
		    (unsigned long long)field(t[i].stats, off1));
		sbuf_printf(b, "%s{tunnel=\"%s\",%s=\"%s\"} %llu\n", name,
		    t[i].name, label, v2,
		    (unsigned long long)field(t[i].stats, off2));
	}
}

static void by_reason(struct sbuf *b, const struct metrics_tunnel *t,
    size_t n, const char *name, const char *help, bool failed)
{
	header(b, name, "counter", help);
	for (size_t i = 0; i < n; i++) {
		const stat_counter *v = failed ? t[i].stats->hs_failed :
		    t[i].stats->closed;
		for (unsigned r = 0; r < METRICS_REASONS; r++) {
			uint64_t x = atomic_load_explicit(&v[r],
			    memory_order_relaxed);
			if (x != 0)
				sbuf_printf(b, "%s{tunnel=\"%s\",reason=\"%s\"} "
				    "%llu\n", name, t[i].name, reason_name(r),
				    (unsigned long long)x);
		}
	}
}

static void histogram(struct sbuf *b, const struct metrics_tunnel *t, size_t n)
{
	const char *name = "upseal_handshake_duration_seconds";
	header(b, name, "histogram", "Time from the first TLS byte to a "
	    "pinned, completed handshake.");
	for (size_t i = 0; i < n; i++) {
		const struct tunnel_stats *s = t[i].stats;
		uint64_t sum = 0;
		for (unsigned k = 0; k <= METRICS_HS_BUCKETS; k++) {
			sum += atomic_load_explicit(&s->hs_bucket[k],
			    memory_order_relaxed);
			if (k < METRICS_HS_BUCKETS)
				sbuf_printf(b, "%s_bucket{tunnel=\"%s\",le=\"%g\"} "
				    "%llu\n", name, t[i].name, hs_bounds[k],
				    (unsigned long long)sum);
			else
				sbuf_printf(b, "%s_bucket{tunnel=\"%s\",le=\"+Inf\"} "
				    "%llu\n", name, t[i].name,
				    (unsigned long long)sum);
		}
		sbuf_printf(b, "%s_sum{tunnel=\"%s\"} %.6f\n", name, t[i].name,
		    (double)atomic_load_explicit(&s->hs_micros,
		    memory_order_relaxed) / 1e6);
		sbuf_printf(b, "%s_count{tunnel=\"%s\"} %llu\n", name, t[i].name,
		    (unsigned long long)sum);
	}
}

/*
 * The dates of each tunnel's own certificate, CA and CRLs, as gauges in
 * seconds since the epoch (what `time()` compares with in an alert rule).
 * A tunnel without a CA (or CRL) has no series of that name.
 */
static void dates(struct sbuf *b, const struct metrics_tunnel *t, size_t n)
{
	static const struct {
		const char *name, *help;
		size_t off;
	} g[] = {
		{ "upseal_cert_not_after_seconds", "The notAfter time of the "
		    "tunnel's own certificate (cert), seconds since the epoch.",
		    offsetof(struct metrics_tunnel, cert_not_after) },
		{ "upseal_ca_not_after_seconds", "The earliest notAfter time "
		    "among the certificates of the tunnel's ca file, seconds "
		    "since the epoch.",
		    offsetof(struct metrics_tunnel, ca_not_after) },
		{ "upseal_crl_next_update_seconds", "The earliest nextUpdate "
		    "time of the tunnel's CRLs, seconds since the epoch.",
		    offsetof(struct metrics_tunnel, crl_next_update) },
	};
	for (size_t k = 0; k < sizeof g / sizeof g[0]; k++) {
		header(b, g[k].name, "gauge", g[k].help);
		for (size_t i = 0; i < n; i++) {
			int64_t v = *(const int64_t *)((const char *)&t[i] +
			    g[k].off);
			if (v != 0)
				sbuf_printf(b, "%s{tunnel=\"%s\"} %lld\n",
				    g[k].name, t[i].name, (long long)v);
		}
	}
}

#define FIELD(f) offsetof(struct tunnel_stats, f)

void metrics_render(struct sbuf *b, const struct metrics_tunnel *t, size_t n,
    const struct metrics_process *p)
{
	header(b, "upseal_build_info", "gauge", "Version and role of this "
	    "process.");
	sbuf_printf(b, "upseal_build_info{version=\"%s\",role=\"%s\"} 1\n",
	    p->version, p->role);
	header(b, "upseal_draining", "gauge", "1 while stopping: not "
	    "accepting, letting connections finish.");
	sbuf_printf(b, "upseal_draining %d\n", p->draining ? 1 : 0);
	header(b, "upseal_config_reloads_total", "counter", "Configuration "
	    "reloads (SIGHUP) by result.");
	sbuf_printf(b, "upseal_config_reloads_total{result=\"success\"} %llu\n",
	    (unsigned long long)p->reloads_ok);
	sbuf_printf(b, "upseal_config_reloads_total{result=\"failure\"} %llu\n",
	    (unsigned long long)p->reloads_failed);

	header(b, "upseal_tunnel_listening", "gauge", "1 if the tunnel "
	    "accepts connections.");
	for (size_t i = 0; i < n; i++)
		sbuf_printf(b, "upseal_tunnel_listening{tunnel=\"%s\"} %d\n",
		    t[i].name, t[i].listening ? 1 : 0);
	header(b, "upseal_connections_open", "gauge", "Connections open now.");
	for (size_t i = 0; i < n; i++)
		sbuf_printf(b, "upseal_connections_open{tunnel=\"%s\"} %u\n",
		    t[i].name, t[i].open);
	per_tunnel(b, t, n, "upseal_connections_accepted_total", "counter",
	    "Connections accepted.", FIELD(accepted));
	by_reason(b, t, n, "upseal_connections_closed_total", "Connections "
	    "ended, by the reason in the conn_end log line.", false);
	by_reason(b, t, n, "upseal_handshake_failures_total", "TLS "
	    "handshakes that failed or whose peer was refused, by reason.",
	    true);
	two_ways(b, t, n, "upseal_handshakes_total", "Completed, pinned "
	    "handshakes, full or resumed.", "kind", "full", FIELD(hs_full),
	    "resumed", FIELD(hs_resumed));
	two_ways(b, t, n, "upseal_bytes_total", "Plaintext bytes carried: "
	    "plain_in read from the plaintext end, plain_out written to it.",
	    "direction", "plain_in", FIELD(bytes_in), "plain_out",
	    FIELD(bytes_out));
	per_tunnel(b, t, n, "upseal_connect_failures_total", "counter",
	    "Dials of the next hop that failed or timed out.",
	    FIELD(connect_failures));
	histogram(b, t, n);
	per_tunnel(b, t, n, "upseal_handshakes_in_progress", "gauge", "Server: "
	    "connections accepted whose handshake has not finished (limited "
	    "by max_handshakes).", FIELD(handshaking));
	per_tunnel(b, t, n, "upseal_handshakes_shed_total", "counter", "Server: "
	    "unfinished handshakes dropped at max_handshakes to let a new "
	    "connection in.", FIELD(hs_shed));

	per_tunnel(b, t, n, "upseal_peer_cert_expired_total", "counter",
	    "CA mode: handshakes refused because the peer's certificate is "
	    "expired or not yet valid (also in "
	    "upseal_handshake_failures_total{reason=\"chain_invalid\"}).",
	    FIELD(peer_out_of_dates));
	dates(b, t, n);

	per_tunnel(b, t, n, "upseal_pool_ready", "gauge", "Client: pooled "
	    "connections handshaken and waiting for a client.",
	    FIELD(pool_ready));
	per_tunnel(b, t, n, "upseal_pool_handoffs_total", "counter", "Pooled "
	    "connections put to use: client, handed to an accepted client; "
	    "server, the preamble came (pooled or carrying an address) and "
	    "the backend was dialed.",
	    FIELD(pool_handoffs));
	per_tunnel(b, t, n, "upseal_pool_misses_total", "counter", "Client: "
	    "accepted connections that found no pooled one ready and dialed.",
	    FIELD(pool_misses));
	per_tunnel(b, t, n, "upseal_pool_failures_total", "counter", "Client: "
	    "pool connections that failed before they were ready.",
	    FIELD(pool_failures));
	per_tunnel(b, t, n, "upseal_pool_recycled_total", "counter", "Client: "
	    "pooled connections closed unused after pool_idle.",
	    FIELD(pool_recycled));

	per_tunnel(b, t, n, "upseal_proxy_headers_total", "counter", "PROXY "
	    "protocol headers: client, read from the plaintext peer "
	    "(proxy_protocol = accept; refused ones are in "
	    "upseal_connections_closed_total); server, sent to the backend.",
	    FIELD(proxy_headers));
	per_tunnel(b, t, n, "upseal_client_addresses_carried_total", "counter",
	    "The original client's address carried across the tunnel: "
	    "client, sent in the preamble; server, received and used.",
	    FIELD(carried));
	two_ways(b, t, n, "upseal_ktls_connections_total", "Connections whose "
	    "TLS records the kernel took over (kTLS), by direction: tx, what "
	    "we send; rx, what we receive.", "direction", "tx",
	    FIELD(ktls_tx), "rx", FIELD(ktls_rx));
}
