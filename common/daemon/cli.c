#include "cli.h"

#include <stdio.h>
#include <string.h>

#include <mbedtls/version.h>

#include "audit.h"
#include "daemon.h"	/* UPSEAL_VERSION */
#include "expiry.h"
#include "tunnel.h"

static void usage(FILE *f, const char *prog, enum cfg_role role)
{
	bool server = role == CFG_SERVER;
	fprintf(f,
	    "usage: %s -c FILE [--check%s]\n"
	    "       %s --version | --help\n"
	    "\n"
	    "  -c, --config FILE  the ini file with the tunnels to run\n"
	    "      --check        validate the file (and its certificates and\n"
	    "                     keys), print the result and exit 0 or 1\n"
	    "%s"
	    "  -V, --version      print the version and exit\n"
	    "  -h, --help         print this help and exit\n"
	    "\n"
	    "Signals: HUP re-reads the file and every certificate and key it\n"
	    "names (open connections keep their settings; a file that fails\n"
	    "to load changes nothing). TERM or INT stop accepting, let open\n"
	    "connections finish (up to drain_timeout) and exit 0.\n",
	    prog, server ? " | --audit" : "", prog, server ?
	    "      --audit        tell whether each tunnel's backend also\n"
	    "                     listens where the network can reach it;\n"
	    "                     exit 1 if one does\n" : "");
}

int cli_parse(int argc, char **argv, enum cfg_role role, struct cli *c)
{
	*c = (struct cli){ .prog = role == CFG_CLIENT ? "upseal-client" :
	    "upseal-server" };
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if ((strcmp(a, "-c") == 0 || strcmp(a, "--config") == 0) &&
		    i + 1 < argc) {
			c->path = argv[++i];
		} else if (strncmp(a, "--config=", 9) == 0) {
			c->path = a + 9;
		} else if (strcmp(a, "--check") == 0) {
			c->check = true;
		} else if (strcmp(a, "--audit") == 0 && role == CFG_SERVER) {
			c->audit = true;
		} else if (strcmp(a, "-V") == 0 || strcmp(a, "--version") == 0) {
			printf("%s %s (mbedTLS %s)\n", c->prog, UPSEAL_VERSION,
			    MBEDTLS_VERSION_STRING);
			return 0;
		} else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
			usage(stdout, c->prog, role);
			return 0;
		} else {
			fprintf(stderr, "%s: unexpected argument \"%s\"\n",
			    c->prog, a);
			usage(stderr, c->prog, role);
			return 2;
		}
	}
	if (c->path == NULL) {
		fprintf(stderr, "%s: no configuration: use -c FILE\n", c->prog);
		usage(stderr, c->prog, role);
		return 2;
	}
	return -1;
}

int cli_check(const struct cli *c, struct cfg *cfg, enum cfg_role role)
{
	char err[1024];
	for (size_t i = 0; i < cfg->ntunnels; i++) {
		struct tunnel_conf *tc = tunnel_conf_new(cfg, &cfg->tunnels[i],
		    role, err, sizeof err);
		if (tc == NULL) {
			fprintf(stderr, "%s: %s: %s\n", c->prog, cfg->path, err);
			return 1;
		}
		expiry_print(stdout, cfg->tunnels[i].name, tc->tls);
		tunnel_conf_release(tc);
	}
	printf("%s: ok, %zu tunnel(s)\n", c->path, cfg->ntunnels);
	return 0;
}

int cli_audit(const struct cfg *cfg)
{
	int rc = 0;
	for (size_t i = 0; i < cfg->ntunnels; i++) {
		const struct cfg_tunnel *t = &cfg->tunnels[i];
		struct audit_result r;
		if (audit_backend(&t->connect, &r) != 0 || r.exposed)
			rc = 1;
		audit_report(stdout, t->name, &t->connect, &r);
	}
	return rc;
}
