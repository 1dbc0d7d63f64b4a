#include "listeners.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "log.h"

static int sock_error(char *err, size_t errlen, const struct cfg_tunnel *cfg,
    const char *text, int fd)
{
	int e = errno;
	snprintf(err, errlen, "[%s] listen %s: %s", cfg->name, text,
	    log_uverr(-e));
	if (fd >= 0)
		close(fd);
	return -1;
}

static int listen_unix(const struct cfg_tunnel *cfg, unsigned n,
    struct listen_fds *out, char *err, size_t errlen)
{
	const char *path = cfg->listen.path;
	char text[ADDR_TEXT_MAX];
	snprintf(text, sizeof text, "unix:%s", path);
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof sun.sun_path) {
		snprintf(err, errlen, "[%s] listen %s: the path is too long",
		    cfg->name, text);
		return -1;
	}
	char why[64];
	if (addr_unix_path_free(path, why, sizeof why) != 0) {
		snprintf(err, errlen, "[%s] listen %s: %s", cfg->name, text, why);
		return -1;
	}
	memcpy(sun.sun_path, path, strlen(path) + 1);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return sock_error(err, errlen, cfg, text, -1);
	if (bind(fd, (struct sockaddr *)&sun, sizeof sun) != 0)
		return sock_error(err, errlen, cfg, text, fd);
	if (listen(fd, LISTEN_BACKLOG) != 0) {
		sock_error(err, errlen, cfg, text, fd);
		unlink(path);
		return -1;
	}
	/* One socket: every worker polls a duplicate of it. */
	out->fd[0] = fd;
	snprintf(out->text, sizeof out->text, "%s", text);
	for (unsigned w = 1; w < n; w++) {
		out->fd[w] = fcntl(fd, F_DUPFD_CLOEXEC, 0);
		if (out->fd[w] < 0) {
			sock_error(err, errlen, cfg, text, -1);
			listen_close(out, cfg);
			return -1;
		}
	}
	return 0;
}

static int tcp_socket(const struct sockaddr *sa, socklen_t len,
    bool reuseport, bool do_listen)
{
	int on = 1;
	int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) != 0 ||
	    (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on,
	    sizeof on) != 0) ||
	    bind(fd, sa, len) != 0 ||
	    (do_listen && listen(fd, LISTEN_BACKLOG) != 0)) {
		int e = errno;
		close(fd);
		errno = e;
		return -1;
	}
	return fd;
}

/*
 * The first address of res this tunnel may listen on: for the client,
 * whose listen is the plaintext end, a loopback one unless allow_remote.
 * NULL, with the reason in err, if there is none.
 */
static const struct addrinfo *listen_pick(const struct cfg_tunnel *cfg,
    enum cfg_role role, const struct addrinfo *res, const char *text,
    char *err, size_t errlen)
{
	char why[ADDR_TEXT_MAX + 80];
	if (role == CFG_SERVER || cfg->allow_remote)
		return res;
	for (const struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next)
		if (addr_sockaddr_is_loopback(ai->ai_addr))
			return ai;
	addr_check_resolved(cfg->listen.host, res->ai_addr, why, sizeof why);
	snprintf(err, errlen, "[%s] listen %s: %s", cfg->name, text, why);
	return NULL;
}

static int listen_tcp(const struct cfg_tunnel *cfg, enum cfg_role role,
    unsigned n, struct listen_fds *out, char *err, size_t errlen)
{
	const struct addr *a = &cfg->listen;
	char text[ADDR_TEXT_MAX];
	struct addrinfo *res = NULL;
	struct sockaddr_storage ss;
	socklen_t len;

	addr_format(a, text, sizeof text);
	if (a->numeric) {
		memcpy(&ss, &a->sa, sizeof ss);
	} else {
		char port[8];
		struct addrinfo hints = { .ai_family = AF_UNSPEC,
			.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE };
		snprintf(port, sizeof port, "%u", a->port);
		int gai = getaddrinfo(a->host, port, &hints, &res);
		if (gai != 0) {
			snprintf(err, errlen, "[%s] listen %s: cannot resolve: %s",
			    cfg->name, text, gai_strerror(gai));
			return -1;
		}
		const struct addrinfo *ai = listen_pick(cfg, role, res, text,
		    err, errlen);
		if (ai != NULL)
			memcpy(&ss, ai->ai_addr, ai->ai_addrlen);
		freeaddrinfo(res);
		if (ai == NULL)
			return -1;
	}
	len = ss.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) :
	    sizeof(struct sockaddr_in);
	if (n > 1) {
		/*
		 * SO_REUSEPORT would let us join a socket another process
		 * (of the same user) listens on. A plain bind first finds out
		 * whether the address is taken, and which port 0 becomes.
		 */
		int probe = tcp_socket((struct sockaddr *)&ss, len, false, false);
		if (probe < 0)
			return sock_error(err, errlen, cfg, text, -1);
		socklen_t blen = sizeof ss;
		int rc = getsockname(probe, (struct sockaddr *)&ss, &blen);
		close(probe);
		if (rc != 0)
			return sock_error(err, errlen, cfg, text, -1);
	}
	for (unsigned w = 0; w < n; w++) {
		out->fd[w] = tcp_socket((struct sockaddr *)&ss, len, n > 1, true);
		if (out->fd[w] < 0) {
			sock_error(err, errlen, cfg, text, -1);
			listen_close(out, cfg);
			return -1;
		}
	}
	/* The bound address, port 0 resolved, for the `listening` line. */
	socklen_t blen = sizeof ss;
	if (getsockname(out->fd[0], (struct sockaddr *)&ss, &blen) != 0) {
		sock_error(err, errlen, cfg, text, -1);
		listen_close(out, cfg);
		return -1;
	}
	addr_format_sockaddr((struct sockaddr *)&ss, out->text, sizeof out->text);
	return 0;
}

int listen_open(const struct cfg_tunnel *cfg, enum cfg_role role, unsigned n,
    struct listen_fds *out, char *err, size_t errlen)
{
	out->n = n;
	for (unsigned w = 0; w < CFG_WORKERS_MAX; w++)
		out->fd[w] = -1;
	out->text[0] = 0;
	return cfg->listen.kind == ADDR_UNIX ?
	    listen_unix(cfg, n, out, err, errlen) :
	    listen_tcp(cfg, role, n, out, err, errlen);
}

void listen_close(struct listen_fds *l, const struct cfg_tunnel *cfg)
{
	bool any = false;
	for (unsigned w = 0; w < l->n; w++) {
		if (l->fd[w] >= 0) {
			close(l->fd[w]);
			l->fd[w] = -1;
			any = true;
		}
	}
	if (any && cfg->listen.kind == ADDR_UNIX && l->text[0])
		unlink(cfg->listen.path);
}
