/*
 * config: an ini file (parsed with inih) into a typed, validated,
 * read-only configuration. One section [upseal] for the process; every
 * other section is a tunnel named by the section, in the role of the
 * binary that reads the file.
 */
#ifndef UPSEAL_CONFIG_H
#define UPSEAL_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "addr.h"
#include "log.h"
#include "names.h"
#include "pin.h"

enum cfg_role { CFG_CLIENT, CFG_SERVER };

#define CFG_NAME_MAX 64
/* Event-loop threads at most (workers = N). */
#define CFG_WORKERS_MAX 64
#define CFG_WORKERS_MAX_TEXT "64"

/* The AEAD suites a tunnel may offer (ECDHE-ECDSA, TLS 1.2 names). */
enum cfg_cipher {
	CFG_CIPHER_CHACHA20 = 1,	/* ECDHE-ECDSA-CHACHA20-POLY1305 */
	CFG_CIPHER_AES128GCM,		/* ECDHE-ECDSA-AES128-GCM-SHA256 */
	CFG_CIPHER_AES256GCM,		/* ECDHE-ECDSA-AES256-GCM-SHA384 */
};
#define CFG_CIPHERS_MAX 3
/* max_handshakes when unset (or max_connections, if smaller). */
#define CFG_HANDSHAKES_DEFAULT 256
/*
 * proxy_protocol: a client tunnel reads a PROXY header from its plaintext
 * peer (accept); a server tunnel sends one to its backend (v1, v2).
 */
enum cfg_proxy { CFG_PP_OFF, CFG_PP_ACCEPT, CFG_PP_V1, CFG_PP_V2 };
/* pool = N per tunnel at most. */
#define CFG_POOL_MAX 1000

struct cfg_tunnel {
	char name[CFG_NAME_MAX];
	int line;			/* line of the [section] header */
	struct addr listen;
	struct addr connect;
	char *cert;			/* paths, as written (heap) */
	char *key;
	char *ca;			/* NULL if not set */
	char *server_name;		/* client role: NULL if not set */
	struct pin *pins;		/* npins entries (heap) */
	size_t npins;
	/* pin_file = PATH, repeatable: paths as written (heap); read by tls. */
	char **pin_files;
	size_t npin_files;
	/* allow_dns, allow_uri, allow_cn (ca only), in the order written. */
	struct name_rule *allow;
	size_t nallow;
	/* crl = FILE, repeatable (ca only): paths as written (heap). */
	char **crl_files;
	size_t ncrl_files;
	/* Warn while the own certificate expires within this; 0: never. */
	uint64_t expiry_warning_ms;	/* default 14 days */
	uint64_t connect_timeout_ms;	/* default 5s */
	uint64_t handshake_timeout_ms;	/* default 10s */
	uint64_t idle_timeout_ms;	/* default 5m; 0 = never */
	unsigned max_connections;	/* default 10000 */
	/* Server: connections still handshaking; <= max_connections. */
	unsigned max_handshakes;	/* default min(256, max_connections) */
	bool allow_remote;		/* default false */
	bool resumption;		/* session tickets; default true */
	char *ticket_key_file;		/* server: shared ticket secret, or NULL */
	/* Offered suites in order of preference (CFG_CIPHER_*); 0: default. */
	unsigned char ciphers[CFG_CIPHERS_MAX];
	size_t nciphers;
	/* Client: handshaken connections kept ready (0 = no pool). */
	unsigned pool;			/* default 0, at most CFG_POOL_MAX */
	uint64_t pool_idle_ms;		/* a ready one unused this long is replaced; 60s */
	enum cfg_proxy proxy_protocol;	/* default off */
	/* Client, accept: the whole header must come within this; 5s. */
	uint64_t proxy_header_timeout_ms;
	/* Server: use the client address a client sidecar carries; yes. */
	bool trust_client_address;
	/* ktls = off: never hand the record layer to the kernel (auto). */
	bool ktls_off;
};

struct cfg {
	char *path;
	enum log_level log_level;	/* default info */
	bool log_json;			/* log_format = json; default text */
	uint64_t drain_timeout_ms;	/* default 15s */
	bool has_status;		/* status = ADDR was given */
	struct addr status;		/* /metrics and /healthz */
	bool status_allow_remote;	/* default false: loopback or unix */
	char *user;			/* drop privileges to; NULL if not set */
	unsigned workers;		/* event-loop threads; 0 = auto (cores) */
	bool watch;			/* reload on file events; default true */
	uint64_t reload_interval_ms;	/* reload on content change; 0 = off */
	/* SHA-256 of the file's text as this load parsed it. */
	unsigned char text_sha256[32];
	_Atomic unsigned refs;			/* cfg_hold / cfg_release; 1 after load */
	struct cfg_tunnel *tunnels;	/* ntunnels entries (heap) */
	size_t ntunnels;
};

/*
 * Load and validate path for role. On success *out owns a new cfg (free
 * with cfg_free) and 0 is returned. On error returns -1, *out is NULL, and
 * err holds one line naming `FILE:LINE: [section] key: what is wrong,
 * what is expected`.
 */
int cfg_load(const char *path, enum cfg_role role, struct cfg **out,
    char *err, size_t errlen);

/* Free a cfg; cfg_free(NULL) is a no-op. */
void cfg_free(struct cfg *c);

/*
 * Shared ownership, for a running daemon whose connections outlive a
 * reload: cfg_hold adds a reference, cfg_release drops one and frees the
 * cfg with the last. cfg_load returns a cfg holding one reference.
 */
struct cfg *cfg_hold(struct cfg *c);
void cfg_release(struct cfg *c);

/*
 * Call fn(path, arg) for every file c names, in a stable order: the
 * config file itself first, then, for each tunnel in file order, its cert,
 * key, ca and ticket_key_file (those set), its pin files and its CRLs. A
 * path may come more than once.
 * The paths are c's: valid while c is. Every key that names a file is
 * listed here, and only here, so that what a reload reads and what the
 * daemon watches stay the same set.
 */
void cfg_files(const struct cfg *c, void (*fn)(const char *path, void *arg),
    void *arg);

/*
 * Parse a duration with a unit: `250ms`, `10s`, `5m`, `1h`; `0` alone is
 * accepted (zero needs no unit). 0 or -1.
 */
int cfg_parse_duration(const char *text, uint64_t *ms);

#endif
