#include "daemon.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "conn.h"
#include "log.h"
#include "rng.h"
#include "tls.h"
#include "tunnel.h"

struct daemon {
	const char *prog;
	enum cfg_role role;
	struct cfg *cfg;
	uv_loop_t loop;
	struct tunnel **tunnels;	/* cfg->ntunnels entries, some NULL */
	size_t running;			/* tunnels not yet empty after stop */
	uv_signal_t sig_term, sig_int, sig_hup;
	uv_timer_t drain_timer;
	bool handles_open;
	bool stopping;
	int exit_code;
};

static void usage(FILE *f, const char *prog)
{
	fprintf(f,
	    "usage: %s -c FILE [--check]\n"
	    "       %s --version | --help\n"
	    "\n"
	    "  -c, --config FILE  the ini file with the tunnels to run\n"
	    "      --check        validate the file (and its certificates and\n"
	    "                     keys), print the result and exit 0 or 1\n"
	    "  -V, --version      print the version and exit\n"
	    "  -h, --help         print this help and exit\n"
	    "\n"
	    "Signals: TERM or INT stop accepting, let open connections finish\n"
	    "(up to drain_timeout) and exit 0.\n", prog, prog);
}

static void close_daemon_handles(struct daemon *d)
{
	if (!d->handles_open)
		return;
	d->handles_open = false;
	uv_close((uv_handle_t *)&d->sig_term, NULL);
	uv_close((uv_handle_t *)&d->sig_int, NULL);
	uv_close((uv_handle_t *)&d->sig_hup, NULL);
	uv_close((uv_handle_t *)&d->drain_timer, NULL);
}

static void on_tunnel_empty(struct tunnel *t)
{
	struct daemon *d = t->data;
	if (--d->running == 0)
		close_daemon_handles(d);
}

static void on_drain_timeout(uv_timer_t *timer)
{
	struct daemon *d = timer->data;
	unsigned left = 0;
	for (size_t i = 0; i < d->cfg->ntunnels; i++)
		if (d->tunnels[i] != NULL)
			left += d->tunnels[i]->live;
	struct log_line l;
	log_begin(&l, LOG_WARN, "drain_timeout");
	log_u64(&l, "connections", left);
	log_str(&l, "msg", "closing the connections still open");
	log_end(&l);
	for (size_t i = 0; i < d->cfg->ntunnels; i++)
		if (d->tunnels[i] != NULL)
			tunnel_drop_all(d->tunnels[i], "drain");
}

/* Stop accepting everywhere; the loop ends when every tunnel is empty. */
static void daemon_stop(struct daemon *d)
{
	d->stopping = true;
	d->running = 0;
	for (size_t i = 0; i < d->cfg->ntunnels; i++)
		if (d->tunnels[i] != NULL)
			d->running++;
	if (d->running == 0) {
		close_daemon_handles(d);
		return;
	}
	if (d->handles_open)
		uv_timer_start(&d->drain_timer, on_drain_timeout,
		    d->cfg->drain_timeout_ms, 0);
	for (size_t i = 0; i < d->cfg->ntunnels; i++)
		if (d->tunnels[i] != NULL)
			tunnel_stop(d->tunnels[i], on_tunnel_empty);
}

static void on_signal(uv_signal_t *s, int signum)
{
	struct daemon *d = s->data;
	if (signum == SIGHUP) {
		log_msg(LOG_WARN, "sighup", "configuration reload is not "
		    "supported by this version; SIGHUP ignored");
		return;
	}
	if (d->stopping) {
		log_msg(LOG_WARN, "stopping", "second %s: closing every "
		    "connection now", strsignal(signum));
		uv_timer_stop(&d->drain_timer);
		on_drain_timeout(&d->drain_timer);
		return;
	}
	struct log_line l;
	log_begin(&l, LOG_INFO, "stopping");
	log_str(&l, "signal", signum == SIGTERM ? "SIGTERM" : "SIGINT");
	log_u64(&l, "drain_timeout_ms", d->cfg->drain_timeout_ms);
	log_end(&l);
	daemon_stop(d);
}

static int start_handles(struct daemon *d)
{
	uv_signal_init(&d->loop, &d->sig_term);
	uv_signal_init(&d->loop, &d->sig_int);
	uv_signal_init(&d->loop, &d->sig_hup);
	uv_timer_init(&d->loop, &d->drain_timer);
	d->sig_term.data = d->sig_int.data = d->sig_hup.data = d;
	d->drain_timer.data = d;
	d->handles_open = true;
	if (uv_signal_start(&d->sig_term, on_signal, SIGTERM) != 0 ||
	    uv_signal_start(&d->sig_int, on_signal, SIGINT) != 0 ||
	    uv_signal_start(&d->sig_hup, on_signal, SIGHUP) != 0)
		return -1;
	return 0;
}

/* Load every tunnel's certificate and key without binding anything. */
static int check_tls(struct daemon *d)
{
	char err[1024];
	for (size_t i = 0; i < d->cfg->ntunnels; i++) {
		struct tls_ctx *ctx;
		if (tls_ctx_new(&d->cfg->tunnels[i], d->role, &ctx, err,
		    sizeof err) != 0) {
			fprintf(stderr, "%s: %s: %s\n", d->prog, d->cfg->path, err);
			return -1;
		}
		tls_ctx_free(ctx);
	}
	return 0;
}

static int run(struct daemon *d)
{
	char err[1024];
	d->tunnels = calloc(d->cfg->ntunnels, sizeof *d->tunnels);
	if (d->tunnels == NULL || uv_loop_init(&d->loop) != 0) {
		fprintf(stderr, "%s: cannot set up the event loop\n", d->prog);
		free(d->tunnels);
		return 1;
	}
	if (start_handles(d) != 0) {
		log_msg(LOG_ERROR, "start_failed", "cannot install signal handlers");
		d->exit_code = 1;
		daemon_stop(d);
	}
	for (size_t i = 0; i < d->cfg->ntunnels && !d->stopping; i++) {
		struct tunnel *t;
		if (tunnel_start(&d->loop, &d->cfg->tunnels[i], d->role, &t,
		    err, sizeof err) != 0) {
			struct log_line l;
			log_begin(&l, LOG_ERROR, "start_failed");
			log_str(&l, "file", d->cfg->path);
			log_str(&l, "msg", err);
			log_end(&l);
			d->exit_code = 1;
			daemon_stop(d);
			break;
		}
		t->data = d;
		d->tunnels[i] = t;
	}
	if (!d->stopping) {
		struct log_line l;
		log_begin(&l, LOG_INFO, "ready");
		log_str(&l, "role", d->role == CFG_CLIENT ? "client" : "server");
		log_u64(&l, "tunnels", d->cfg->ntunnels);
		log_str(&l, "version", UPSEAL_VERSION);
		log_end(&l);
	}

	uv_run(&d->loop, UV_RUN_DEFAULT);

	for (size_t i = 0; i < d->cfg->ntunnels; i++)
		tunnel_free(d->tunnels[i]);
	free(d->tunnels);
	conn_release_buffers();
	int rc = uv_loop_close(&d->loop);
	if (rc != 0) {
		log_msg(LOG_ERROR, "internal", "event loop closed with handles "
		    "still open: %s", log_uverr(rc));
		d->exit_code = 1;
	}
	if (d->exit_code == 0)
		log_msg(LOG_INFO, "stopped", "all connections closed");
	return d->exit_code;
}

int daemon_main(int argc, char **argv, enum cfg_role role)
{
	struct daemon d = { .prog = role == CFG_CLIENT ? "upseal-client" :
	    "upseal-server", .role = role };
	const char *path = NULL;
	bool check = false;

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if ((strcmp(a, "-c") == 0 || strcmp(a, "--config") == 0) &&
		    i + 1 < argc) {
			path = argv[++i];
		} else if (strncmp(a, "--config=", 9) == 0) {
			path = a + 9;
		} else if (strcmp(a, "--check") == 0) {
			check = true;
		} else if (strcmp(a, "-V") == 0 || strcmp(a, "--version") == 0) {
			printf("%s %s\n", d.prog, UPSEAL_VERSION);
			return 0;
		} else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
			usage(stdout, d.prog);
			return 0;
		} else {
			fprintf(stderr, "%s: unexpected argument \"%s\"\n", d.prog, a);
			usage(stderr, d.prog);
			return 2;
		}
	}
	if (path == NULL) {
		fprintf(stderr, "%s: no configuration: use -c FILE\n", d.prog);
		usage(stderr, d.prog);
		return 2;
	}

	char err[1024];
	if (cfg_load(path, role, &d.cfg, err, sizeof err) != 0) {
		fprintf(stderr, "%s: %s\n", d.prog, err);
		return 1;
	}
	if (check) {
		int rc = check_tls(&d);
		if (rc == 0)
			printf("%s: ok, %zu tunnel(s)\n", path, d.cfg->ntunnels);
		cfg_free(d.cfg);
		return rc == 0 ? 0 : 1;
	}

	log_setup(d.cfg->log_level, d.cfg->log_json);
	signal(SIGPIPE, SIG_IGN);	/* libuv does not; a write error is enough */
	int rc = run(&d);
	cfg_free(d.cfg);
	return rc;
}
