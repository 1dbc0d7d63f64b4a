/*
 * config_keys: the keys of an upseal config file, internal to config.c:
 * for each key, its name, the setter that parses and checks its value
 * into its field, the form its value takes and its bounds. config.c reads
 * the file and checks what spans keys; the tables here are constant.
 */
#ifndef UPSEAL_CONFIG_KEYS_H
#define UPSEAL_CONFIG_KEYS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"

/* The size of a setter's why buffer. */
#define CFG_WHY_MAX 512

/* The keys of a tunnel section, in the order of tunnel_keys[]. */
enum { K_LISTEN, K_CONNECT, K_CERT, K_KEY, K_CA, K_PIN, K_SERVER_NAME,
    K_CONNECT_TIMEOUT, K_HANDSHAKE_TIMEOUT, K_IDLE_TIMEOUT,
    K_MAX_CONNECTIONS, K_ALLOW_REMOTE, K_RESUMPTION, K_TICKET_KEY_FILE,
    K_CIPHERS, K_POOL, K_POOL_IDLE, K_MAX_HANDSHAKES, K_PROXY_PROTOCOL,
    K_PROXY_HEADER_TIMEOUT, K_TRUST_CLIENT_ADDRESS, K_PIN_FILE,
    K_ALLOW_DNS, K_ALLOW_URI, K_ALLOW_CN, K_CRL, K_EXPIRY_WARNING, K_KTLS,
    K_TUNNEL_KEYS };

/*
 * One key: its name, how its value is parsed into the field at off, and
 * the form its value takes (for "expected key = FORM" messages). A setter
 * returns 0, or -1 with "what is wrong; expected ..." in why.
 */
struct cfg_key {
	const char *name;
	int (*set)(const struct cfg_key *k, void *field, const char *v,
	    char *why);
	size_t off;
	const char *form;
	uint64_t min, max;	/* durations (ms) and counts */
	bool repeat;		/* may appear more than once (pin) */
	int kind;		/* allow_*: its enum name_kind */
	bool client_only;	/* only in the client role (server_name) */
	bool server_only;	/* only in the server role (ticket_key_file) */
};

/* The keys of a tunnel section, indexed by K_*. */
extern const struct cfg_key cfg_tunnel_keys[K_TUNNEL_KEYS];
/* The keys of [upseal]: cfg_nupseal_keys of them. */
extern const struct cfg_key cfg_upseal_keys[];
extern const size_t cfg_nupseal_keys;

/* The key of keys[0..n) named name, or NULL. */
const struct cfg_key *cfg_find_key(const struct cfg_key *keys, size_t n,
    const char *name);

#endif
