/*
 * unit_ids: the two identities the TLS unit tests use (a server and a
 * client, P-256, each pinning the other), made once per run in a temp dir
 * (tests/fuzz/fuzz_ids.h makes them) and removed at exit, and the tunnel
 * section each side's tls_ctx is built from.
 */
#ifndef UPSEAL_UNIT_IDS_H
#define UPSEAL_UNIT_IDS_H

#include "config.h"
#include "pin.h"

struct unit_ids {
	char *srv_crt, *srv_key, *cli_crt, *cli_key;
	struct pin srv_pin, cli_pin;
};

/* The identities, made on the first call; NULL if that failed (said why). */
struct unit_ids *unit_ids(void);

/*
 * Fill *t as a tunnel section named "unit" for role: that side's
 * certificate and key, the other side's pin, listen 127.0.0.1:0 and connect
 * 127.0.0.1:1 (never used). t keeps pointers into the identities. 0 or -1.
 */
int unit_tunnel(struct cfg_tunnel *t, struct unit_ids *ids,
    enum cfg_role role);

#endif
