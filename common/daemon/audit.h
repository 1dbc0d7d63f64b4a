/*
 * audit: is the backend reachable without the tunnel? upseal-server's
 * plaintext end (a tunnel's `connect`) should listen on loopback only; if
 * the same TCP port also listens on a network address (0.0.0.0, ::, or a
 * host address), anyone who can reach this host on that port talks to the
 * backend with no certificate at all, which is the hole upseal exists to
 * close. The kernel's listening sockets are read from /proc/net/tcp and
 * /proc/net/tcp6 (state 0A = LISTEN) of the network namespace this process
 * runs in: run the audit where the backend runs (same host, same pod).
 *
 * No dependency beyond libc; nothing is bound, dialed or changed.
 */
#ifndef UPSEAL_AUDIT_H
#define UPSEAL_AUDIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/types.h>

#include "addr.h"

/* Listening sockets kept per port for the report; more are counted only. */
#define AUDIT_LISTENERS_MAX 16
/* "ffff:ffff:...:255.255.255.255" plus NUL (INET6_ADDRSTRLEN). */
#define AUDIT_IP_MAX 46
/* A process name as in /proc/PID/comm, NUL-terminated. */
#define AUDIT_COMM_MAX 17

enum audit_verdict {
	AUDIT_LOOPBACK_ONLY,	/* every listener on the port is loopback */
	AUDIT_EXPOSED,		/* one or more listen on a network address */
	AUDIT_NOT_LISTENING,	/* nothing listens on the port (here) */
	AUDIT_UNIX,		/* backend is a unix socket: nothing to audit */
	AUDIT_REMOTE,		/* backend is another host (allow_remote) */
	AUDIT_ERROR,		/* /proc/net/tcp{,6} could not be read */
};

/* One listening socket on the audited port. */
struct audit_listener {
	int family;			/* AF_INET or AF_INET6 */
	unsigned char raw[16];		/* the address: 4 or 16 bytes */
	char ip[AUDIT_IP_MAX];		/* "0.0.0.0", "::", "127.0.0.1", ... */
	bool loopback;			/* 127/8, ::1, ::ffff:127.x */
	bool wildcard;			/* 0.0.0.0 or :: (every address) */
	unsigned long inode;		/* the socket's inode, 0 if unknown */
	unsigned uid;			/* owner of the socket */
	pid_t pid;			/* a process holding it, 0 if unknown */
	char comm[AUDIT_COMM_MAX];	/* its name, "" if unknown */
};

struct audit_result {
	enum audit_verdict verdict;
	bool exposed;			/* verdict == AUDIT_EXPOSED */
	unsigned port;			/* the backend's TCP port */
	/* Listeners on the port, deduplicated by family and address (an
	 * SO_REUSEPORT group is one entry); nlisteners <= MAX. */
	struct audit_listener listeners[AUDIT_LISTENERS_MAX];
	size_t nlisteners;
	size_t nsockets;		/* LISTEN sockets on the port, all */
	size_t nexposed;		/* of those, not on loopback */
	/* Set by audit_backend for a non-loopback backend IP: it is one of
	 * this host's own addresses (getifaddrs). */
	bool backend_is_local;
	int error;			/* AUDIT_ERROR: the errno */
	const char *error_path;		/* AUDIT_ERROR: the file */
};

/*
 * Audit one tunnel's backend. A unix socket gives AUDIT_UNIX. For TCP,
 * reads /proc/net/tcp and /proc/net/tcp6 (a missing tcp6, IPv6 off, is
 * not an error) and fills *out with every listener on backend->port and
 * the verdict; the owning pid is looked up in /proc/PID/fd where this
 * process may read it (best effort). A backend that is not loopback
 * (allow_remote = yes) gives AUDIT_REMOTE unless a local listener is
 * bound to its address or to a wildcard (then it is this host: EXPOSED).
 * Returns 0, or -1 with out->verdict = AUDIT_ERROR and out->error set.
 * Nothing is allocated; *out is overwritten.
 */
int audit_backend(const struct addr *backend, struct audit_result *out);

/*
 * Write the human-readable verdict for one tunnel to f: what listens
 * where (with the process when known), and, when exposed, what to change.
 * tunnel is the section name; backend is the tunnel's `connect`.
 */
void audit_report(FILE *f, const char *tunnel, const struct addr *backend,
    const struct audit_result *r);

/*
 * The exposed listeners as "IP:PORT" joined by ',' (e.g.
 * "0.0.0.0:8080,[::]:8080"), for a log field. Truncated to len.
 */
void audit_exposed_list(const struct audit_result *r, char *buf, size_t len);

/* "loopback_only", "exposed", "not_listening", "unix", "remote", "error". */
const char *audit_verdict_name(enum audit_verdict v);

/*
 * Internal, exported for the unit tests: start an empty result for port,
 * then feed it the text of /proc/net/tcp (family AF_INET) or
 * /proc/net/tcp6 (AF_INET6). Lines that are not socket entries (the
 * header) are skipped; the addresses are the kernel's hex, each 32-bit
 * word in this host's byte order. audit_parse only gathers listeners;
 * audit_decide then sets verdict/exposed for backend (NULL: loopback).
 * audit_parse returns 0, or -1 if reading f failed (errno set).
 */
void audit_result_init(struct audit_result *r, unsigned port);
int audit_parse(FILE *f, int family, struct audit_result *r);
void audit_decide(const struct addr *backend, struct audit_result *r);

#endif
