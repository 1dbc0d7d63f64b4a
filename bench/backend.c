/*
 * bench/backend.c: the benchmark's backend, one epoll loop on loopback.
 *
 *   backend [--port N]
 *
 * Listens on 127.0.0.1 (port 0 by default), prints `port N` on stdout once
 * it listens, and serves until SIGTERM/SIGINT. The first byte a connection
 * sends picks its mode:
 *   'S'  sink: every further byte is counted; at EOF the backend answers
 *        with the count (8 bytes, little endian) and closes.
 *   any other byte: echo, the first byte included, until EOF, then close.
 * A connection that begins with a PROXY protocol v2 header (as upseal-server
 * with proxy_protocol = v2 sends it: bench row upseal+pp) has the header
 * skipped first; its first byte after the header picks the mode.
 * A connection whose echo cannot be written stops being read until the
 * kernel takes the rest (EPOLLOUT), so memory per connection stays bounded.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define RBUF (256 * 1024)

struct bconn {
	int fd;
	int mode;          /* 0 before the first byte, 'S' or 'E' after */
	size_t skip;       /* PROXY v2 header bytes still to skip */
	unsigned char head[16];	/* its fixed part, as it comes */
	size_t head_len;
	bool eof;
	uint64_t count;
	char *pend;        /* echo bytes the kernel did not take yet */
	size_t pend_len;
	size_t pend_off;
};

static volatile sig_atomic_t stop;
static char rbuf[RBUF];

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

static void bconn_free(int ep, struct bconn *c)
{
	epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	free(c->pend);
	free(c);
}

static void set_events(int ep, struct bconn *c, uint32_t ev)
{
	struct epoll_event e = { .events = ev, .data.ptr = c };
	epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e);
}

/* Write what is pending; returns -1 on a fatal error, 0 otherwise. */
static int flush_pending(struct bconn *c)
{
	while (c->pend_off < c->pend_len) {
		ssize_t n = send(c->fd, c->pend + c->pend_off,
		                 c->pend_len - c->pend_off, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EAGAIN || errno == EINTR)
				return 0;
			return -1;
		}
		c->pend_off += (size_t)n;
	}
	c->pend_len = c->pend_off = 0;
	return 0;
}

/*
 * Skip a PROXY v2 header at the start of a connection (0x0D: where its
 * signature begins; the load tool's first byte is 'S' or 'E'). Advances
 * *p and *len past the header bytes of this read; false while the header
 * is not over.
 */
static bool skip_proxy(struct bconn *c, const char **p, size_t *len)
{
	if (c->head_len == 0 && c->skip == 0 && (*len == 0 || **p != 0x0D))
		return true;
	while (c->head_len < 16 && *len > 0) {
		c->head[c->head_len++] = (unsigned char)**p;
		(*p)++;
		(*len)--;
		if (c->head_len == 16)
			c->skip = (size_t)c->head[14] << 8 | c->head[15];
	}
	if (c->head_len < 16)
		return false;
	size_t k = *len < c->skip ? *len : c->skip;
	*p += k;
	*len -= k;
	c->skip -= k;
	return c->skip == 0;
}

/* Returns false when the connection is finished and was freed. */
static bool on_readable(int ep, struct bconn *c)
{
	for (int loops = 0; loops < 16; loops++) {
		ssize_t n = recv(c->fd, rbuf, sizeof rbuf, 0);
		if (n < 0) {
			if (errno == EAGAIN || errno == EINTR)
				return true;
			bconn_free(ep, c);
			return false;
		}
		if (n == 0) {
			c->eof = true;
			if (c->mode == 'S') {
				uint64_t v = c->count;
				unsigned char out[8];
				for (int i = 0; i < 8; i++)
					out[i] = (unsigned char)(v >> (8 * i));
				/* 8 bytes into an empty socket buffer: one send. */
				(void)send(c->fd, out, sizeof out, MSG_NOSIGNAL);
			}
			if (c->pend_len == 0) {
				shutdown(c->fd, SHUT_WR);
				bconn_free(ep, c);
				return false;
			}
			set_events(ep, c, EPOLLOUT);
			return true;
		}
		const char *p = rbuf;
		size_t len = (size_t)n;
		if (c->mode == 0 && !skip_proxy(c, &p, &len))
			continue;
		if (len == 0)
			continue;
		if (c->mode == 0) {
			c->mode = p[0] == 'S' ? 'S' : 'E';
			if (c->mode == 'S') {
				p++;
				len--;
			}
		}
		if (c->mode == 'S') {
			c->count += len;
			continue;
		}
		/* echo */
		size_t off = 0;
		while (off < len) {
			ssize_t w = send(c->fd, p + off, len - off, MSG_NOSIGNAL);
			if (w < 0) {
				if (errno == EAGAIN || errno == EINTR)
					break;
				bconn_free(ep, c);
				return false;
			}
			off += (size_t)w;
		}
		if (off < len) {
			char *np = realloc(c->pend, len - off);
			if (np == NULL) {
				bconn_free(ep, c);
				return false;
			}
			c->pend = np;
			memcpy(c->pend, p + off, len - off);
			c->pend_len = len - off;
			c->pend_off = 0;
			set_events(ep, c, EPOLLOUT);
			return true;
		}
	}
	return true;
}

int main(int argc, char **argv)
{
	int port = 0;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--port") == 0 && i + 1 < argc) {
			port = atoi(argv[++i]);
		} else {
			fprintf(stderr, "usage: backend [--port N]\n");
			return 2;
		}
	}
	signal(SIGPIPE, SIG_IGN);
	struct sigaction sa = { .sa_handler = on_signal };
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);

	int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int one = 1;
	setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	struct sockaddr_in a = { .sin_family = AF_INET,
	                         .sin_port = htons((uint16_t)port),
	                         .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	if (bind(ls, (struct sockaddr *)&a, sizeof a) < 0 || listen(ls, 4096) < 0) {
		perror("backend: bind/listen");
		return 1;
	}
	socklen_t al = sizeof a;
	getsockname(ls, (struct sockaddr *)&a, &al);
	printf("port %d\n", ntohs(a.sin_port));
	fflush(stdout);

	int ep = epoll_create1(EPOLL_CLOEXEC);
	struct epoll_event le = { .events = EPOLLIN, .data.ptr = NULL };
	epoll_ctl(ep, EPOLL_CTL_ADD, ls, &le);
	struct epoll_event evs[256];
	while (!stop) {
		int n = epoll_wait(ep, evs, 256, 500);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			perror("backend: epoll_wait");
			return 1;
		}
		for (int i = 0; i < n; i++) {
			struct bconn *c = evs[i].data.ptr;
			if (c == NULL) {
				for (int k = 0; k < 256; k++) {
					int fd = accept4(ls, NULL, NULL,
					                 SOCK_NONBLOCK | SOCK_CLOEXEC);
					if (fd < 0)
						break;
					setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one,
					           sizeof one);
					c = calloc(1, sizeof *c);
					if (c == NULL) {
						close(fd);
						continue;
					}
					c->fd = fd;
					struct epoll_event e = { .events = EPOLLIN,
					                         .data.ptr = c };
					epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
				}
				continue;
			}
			if (evs[i].events & EPOLLOUT) {
				if (flush_pending(c) < 0) {
					bconn_free(ep, c);
					continue;
				}
				if (c->pend_len != 0)
					continue;
				if (c->eof) {
					shutdown(c->fd, SHUT_WR);
					bconn_free(ep, c);
					continue;
				}
				set_events(ep, c, EPOLLIN);
				continue;
			}
			if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))
				on_readable(ep, c);
		}
	}
	close(ep);
	close(ls);
	return 0;
}
