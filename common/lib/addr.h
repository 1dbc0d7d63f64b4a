/*
 * addr: the text forms of an endpoint, `HOST:PORT`, `[V6]:PORT` and
 * `unix:/path`, parsed into something libuv can bind or dial.
 */
#ifndef UPSEAL_ADDR_H
#define UPSEAL_ADDR_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>

enum addr_kind { ADDR_TCP, ADDR_UNIX };

#define ADDR_HOST_MAX 256
#define ADDR_PATH_MAX sizeof(((struct sockaddr_un *)0)->sun_path)
#define ADDR_TEXT_MAX (ADDR_HOST_MAX + 16)

struct addr {
	enum addr_kind kind;
	/* ADDR_TCP: the host as written (without brackets) and the port. */
	char host[ADDR_HOST_MAX];
	unsigned port;
	/* ADDR_TCP: true when host is an IP literal; then sa holds it. */
	bool numeric;
	struct sockaddr_storage sa;
	/* ADDR_UNIX: the path, NUL-terminated, shorter than sun_path. */
	char path[ADDR_PATH_MAX];
};

/*
 * Parse text into *out. Port 0 is accepted (bind to any free port).
 * On error returns -1 and writes what is wrong and what is expected into
 * err (e.g. `port "99999" is out of range 0..65535`).
 */
int addr_parse(const char *text, struct addr *out, char *err, size_t errlen);

/*
 * True if the address can only be reached from this host: a unix socket,
 * 127.0.0.0/8, ::1, ::ffff:127.x, or the name "localhost". A name that
 * is not an IP literal is not loopback.
 */
bool addr_is_loopback(const struct addr *a);

/* True if sa is 127.0.0.0/8, ::1 or ::ffff:127.x (any other family: false). */
bool addr_sockaddr_is_loopback(const struct sockaddr *sa);

/*
 * The rule for a plaintext end given as a name (the client's listen, the
 * server's connect), applied to each address the name resolved to: 0 if
 * sa is loopback; otherwise -1 with "HOST resolved to IP, which is not
 * loopback (allow_remote = no)" in err. Callers skip such an address
 * unless the tunnel says allow_remote = yes.
 */
int addr_check_resolved(const char *host, const struct sockaddr *sa,
    char *err, size_t errlen);

/*
 * True if name is a DNS host name: labels of 1..63 letters, digits and '-'
 * (not at either end of a label), joined by '.', 253 bytes at most.
 */
bool addr_is_dns_name(const char *name);

/*
 * Make path free for a unix socket to be bound there: a socket left by a
 * process that is gone is removed (nothing accepts on it), and no path is
 * fine. A socket a live process accepts on, or any other kind of file, is
 * an error: returns -1 with the reason in err ("another process is
 * listening there"), for the caller to prefix with what it was binding.
 */
int addr_unix_path_free(const char *path, char *err, size_t errlen);

/* Write the address back in its text form (`[::1]:80`, `unix:/x`). */
void addr_format(const struct addr *a, char *buf, size_t len);

/* Format a socket address as `1.2.3.4:80` or `[::1]:80`. */
void addr_format_sockaddr(const struct sockaddr *sa, char *buf, size_t len);

#endif
