/*
 * cli: the command line of upseal-client and upseal-server: usage, the
 * arguments, and the two modes that exit without running (--check and,
 * for the server, --audit).
 */
#ifndef UPSEAL_CLI_H
#define UPSEAL_CLI_H

#include <stdbool.h>

#include "config.h"

struct cli {
	const char *prog;		/* upseal-client or upseal-server */
	const char *path;		/* -c FILE (points into argv) */
	bool check;			/* --check */
	bool audit;			/* --audit (server only) */
};

/*
 * Read argv for role into *c. Returns -1 when the program should go on,
 * else the exit status: 0 after --version or --help (printed to stdout),
 * 2 after a usage error (said on stderr, with the usage).
 */
int cli_parse(int argc, char **argv, enum cfg_role role, struct cli *c);

/*
 * --check, on the loaded cfg: load every tunnel's certificate, key and CA
 * without binding anything, print the result and return the exit status.
 */
int cli_check(const struct cli *c, struct cfg *cfg, enum cfg_role role);

/*
 * --audit: for each tunnel, does its backend also listen where the
 * network can reach it? Prints a report; returns 1 if any does (or cannot
 * be told), else 0.
 */
int cli_audit(const struct cfg *cfg);

#endif
