/*
 * kt: the backend and the load tool of the kTLS guest test (run.sh).
 * Plain blocking sockets and poll; libc only, so the guest needs nothing
 * but this binary.
 *
 *   kt backend PORT            serve each connection in a child process:
 *                              the first line says what to do
 *   kt client PORT MODE N M    run one connection; exit 0 if every byte
 *                              and the end came as expected
 *   kt flip LPORT TPORT OFF    relay one connection, flipping a bit of the
 *                              byte at offset OFF of what TPORT sends
 *
 * Modes (N: bytes client -> backend, M: backend -> client, each a
 * pseudo-random stream, so a lost, repeated or reordered record shows):
 *   U  client sends N and its FIN first; then the backend sends M, FIN
 *   D  backend sends M and its FIN first; then the client sends N, FIN
 *   E  echo: the client sends N while reading the echo; FIN; EOF
 *   R  the backend sends M and resets: the client must see a reset
 * The backend prints one line per connection: "ok MODE ..." or
 * "bad MODE ...".
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define SEED_UP 0x9e3779b97f4a7c15ULL	/* client -> backend */
#define SEED_DOWN 0xd1b54a32d192ed03ULL	/* backend -> client */

struct stream {
	uint64_t s;
	uint64_t word;
	unsigned used;
	uint64_t pos;
};

static void stream_init(struct stream *st, uint64_t seed)
{
	st->s = seed;
	st->used = 8;
	st->pos = 0;
}

static unsigned char stream_byte(struct stream *st)
{
	if (st->used == 8) {
		st->s ^= st->s << 13;
		st->s ^= st->s >> 7;
		st->s ^= st->s << 17;
		st->word = st->s;
		st->used = 0;
	}
	st->pos++;
	return (unsigned char)(st->word >> (8 * st->used++));
}

static void fill(struct stream *st, unsigned char *b, size_t n)
{
	for (size_t i = 0; i < n; i++)
		b[i] = stream_byte(st);
}

/* Check n received bytes against the stream; -1 at the first mismatch. */
static int check(struct stream *st, const unsigned char *b, size_t n,
    uint64_t *bad_at)
{
	for (size_t i = 0; i < n; i++) {
		if (b[i] != stream_byte(st)) {
			*bad_at = st->pos - 1;
			return -1;
		}
	}
	return 0;
}

static int send_all(int fd, struct stream *st, uint64_t n)
{
	unsigned char b[65536];
	while (n > 0) {
		size_t k = n < sizeof b ? (size_t)n : sizeof b;
		fill(st, b, k);
		size_t off = 0;
		while (off < k) {
			ssize_t w = write(fd, b + off, k - off);
			if (w < 0) {
				if (errno == EINTR)
					continue;
				return -errno;
			}
			off += (size_t)w;
		}
		n -= k;
	}
	return 0;
}

/*
 * Read until EOF, checking against st. 0 when exactly n bytes came and
 * then EOF; otherwise -1 with why.
 */
static int recv_all(int fd, struct stream *st, uint64_t n, char *why,
    size_t wlen)
{
	unsigned char b[65536];
	uint64_t got = 0, bad_at = 0;
	for (;;) {
		ssize_t r = read(fd, b, sizeof b);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			snprintf(why, wlen, "read after %llu bytes: %s",
			    (unsigned long long)got, strerror(errno));
			return -1;
		}
		if (r == 0)
			break;
		if (got + (uint64_t)r > n) {
			snprintf(why, wlen, "more than %llu bytes",
			    (unsigned long long)n);
			return -1;
		}
		if (check(st, b, (size_t)r, &bad_at) != 0) {
			snprintf(why, wlen, "byte %llu differs",
			    (unsigned long long)bad_at);
			return -1;
		}
		got += (uint64_t)r;
	}
	if (got != n) {
		snprintf(why, wlen, "EOF after %llu of %llu bytes",
		    (unsigned long long)got, (unsigned long long)n);
		return -1;
	}
	return 0;
}

static int read_line(int fd, char *line, size_t cap)
{
	size_t n = 0;
	while (n + 1 < cap) {
		char ch;
		ssize_t r = read(fd, &ch, 1);
		if (r <= 0)
			return -1;
		if (ch == '\n') {
			line[n] = '\0';
			return 0;
		}
		line[n++] = ch;
	}
	return -1;
}

/* Echo until EOF; 0 and the count, or -1. */
static int echo(int fd, uint64_t *count)
{
	unsigned char b[65536];
	*count = 0;
	for (;;) {
		ssize_t r = read(fd, b, sizeof b);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -1;
		if (r == 0)
			return shutdown(fd, SHUT_WR);
		for (ssize_t off = 0; off < r;) {
			ssize_t w = write(fd, b + off, (size_t)(r - off));
			if (w < 0)
				return -1;
			off += w;
		}
		*count += (uint64_t)r;
	}
}

static void serve(int fd)
{
	char line[128], why[160] = "";
	char mode = '?';
	unsigned long long n = 0, m = 0;
	struct stream up, down;
	int rc = -1;
	stream_init(&up, SEED_UP);
	stream_init(&down, SEED_DOWN);
	if (read_line(fd, line, sizeof line) != 0 ||
	    sscanf(line, "%c %llu %llu", &mode, &n, &m) != 3) {
		printf("bad ? no request line\n");
		return;
	}
	switch (mode) {
	case 'U':
		rc = recv_all(fd, &up, n, why, sizeof why);
		if (rc == 0 && send_all(fd, &down, m) != 0) {
			snprintf(why, sizeof why, "send failed");
			rc = -1;
		}
		break;
	case 'D':
		rc = send_all(fd, &down, m);
		if (rc == 0)
			rc = shutdown(fd, SHUT_WR);
		if (rc == 0)
			rc = recv_all(fd, &up, n, why, sizeof why);
		break;
	case 'E': {
		uint64_t count;
		rc = echo(fd, &count);
		if (rc == 0 && count != n) {
			snprintf(why, sizeof why, "echoed %llu of %llu",
			    (unsigned long long)count, n);
			rc = -1;
		}
		break;
	}
	case 'R': {
		struct linger lg = { .l_onoff = 1, .l_linger = 0 };
		rc = send_all(fd, &down, m);
		setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
		break;
	}
	default:
		snprintf(why, sizeof why, "unknown mode");
	}
	printf("%s %c %llu %llu %s\n", rc == 0 ? "ok" : "bad", mode, n, m,
	    why);
	fflush(stdout);
}

static int backend(int port)
{
	int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
	struct sockaddr_in a = { .sin_family = AF_INET,
		.sin_port = htons((uint16_t)port),
		.sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (ls < 0 || bind(ls, (struct sockaddr *)&a, sizeof a) != 0 ||
	    listen(ls, 64) != 0) {
		perror("kt backend");
		return 1;
	}
	signal(SIGCHLD, SIG_IGN);
	printf("ready\n");
	fflush(stdout);
	for (;;) {
		int fd = accept(ls, NULL, NULL);
		if (fd < 0)
			continue;
		if (fork() == 0) {
			close(ls);
			serve(fd);
			close(fd);
			_exit(0);
		}
		close(fd);
	}
}

static int connect_to(int port)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = { .sin_family = AF_INET,
		.sin_port = htons((uint16_t)port),
		.sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0)
		return -1;
	return fd;
}

/* E: write N while reading the echo, then FIN, then EOF. */
static int client_echo(int fd, uint64_t n, char *why, size_t wlen)
{
	struct stream out, in;
	unsigned char b[65536];
	uint64_t sent = 0, got = 0, bad_at = 0;
	size_t have = 0, off = 0;
	int shut = 0;
	stream_init(&out, SEED_UP);
	stream_init(&in, SEED_UP);
	for (;;) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		if (!shut)
			p.events |= POLLOUT;
		if (poll(&p, 1, 60000) <= 0) {
			snprintf(why, wlen, "stalled at %llu sent, %llu back",
			    (unsigned long long)sent, (unsigned long long)got);
			return -1;
		}
		if ((p.revents & POLLOUT) && !shut) {
			static unsigned char ob[16384];
			if (off == have) {
				uint64_t left = n - sent;
				have = left < sizeof ob ? (size_t)left : sizeof ob;
				fill(&out, ob, have);
				off = 0;
			}
			if (have > 0) {
				ssize_t w = write(fd, ob + off, have - off);
				if (w > 0) {
					off += (size_t)w;
					sent += (uint64_t)w;
				}
			}
			if (sent == n) {
				shutdown(fd, SHUT_WR);
				shut = 1;
			}
		}
		if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
			ssize_t r = read(fd, b, sizeof b);
			if (r < 0) {
				snprintf(why, wlen, "read: %s", strerror(errno));
				return -1;
			}
			if (r == 0)
				break;
			if (check(&in, b, (size_t)r, &bad_at) != 0) {
				snprintf(why, wlen, "echo byte %llu differs",
				    (unsigned long long)bad_at);
				return -1;
			}
			got += (uint64_t)r;
		}
	}
	if (got != n || sent != n) {
		snprintf(why, wlen, "EOF after %llu of %llu echoed",
		    (unsigned long long)got, (unsigned long long)n);
		return -1;
	}
	return 0;
}

static int client(int port, char mode, uint64_t n, uint64_t m)
{
	char why[160] = "", line[64];
	struct stream up, down;
	int fd = connect_to(port), rc = -1;
	stream_init(&up, SEED_UP);
	stream_init(&down, SEED_DOWN);
	if (fd < 0) {
		printf("bad %c connect: %s\n", mode, strerror(errno));
		return 1;
	}
	int len = snprintf(line, sizeof line, "%c %llu %llu\n", mode,
	    (unsigned long long)n, (unsigned long long)m);
	if (write(fd, line, (size_t)len) != len) {
		printf("bad %c request\n", mode);
		return 1;
	}
	switch (mode) {
	case 'U':
		rc = send_all(fd, &up, n);
		if (rc == 0)
			rc = shutdown(fd, SHUT_WR);
		if (rc == 0)
			rc = recv_all(fd, &down, m, why, sizeof why);
		break;
	case 'D':
		rc = recv_all(fd, &down, m, why, sizeof why);
		if (rc == 0)
			rc = send_all(fd, &up, n);
		if (rc == 0)
			rc = shutdown(fd, SHUT_WR);
		if (rc == 0) {	/* the backend has nothing more: EOF again */
			unsigned char b[16];
			ssize_t r = read(fd, b, sizeof b);
			if (r != 0) {
				snprintf(why, sizeof why, "no clean end: %zd %s",
				    r, r < 0 ? strerror(errno) : "");
				rc = -1;
			}
		}
		break;
	case 'E':
		rc = client_echo(fd, n, why, sizeof why);
		break;
	case 'R':
		rc = recv_all(fd, &down, UINT64_MAX, why, sizeof why);
		/* Must end in a reset, not an EOF. */
		rc = strstr(why, "Connection reset") != NULL ? 0 : -1;
		if (rc != 0 && why[0] == '\0')
			snprintf(why, sizeof why, "clean EOF instead of reset");
		break;
	default:
		snprintf(why, sizeof why, "unknown mode");
	}
	printf("%s %c %llu %llu %s\n", rc == 0 ? "ok" : "bad", mode,
	    (unsigned long long)n, (unsigned long long)m, why);
	close(fd);
	return rc == 0 ? 0 : 1;
}

/*
 * One connection from LPORT relayed to TPORT, both ways, with the byte at
 * offset flip_at of what TPORT sends flipped (one bit): a record the
 * receiver must refuse.
 */
static int flip(int lport, int tport, unsigned long long flip_at)
{
	int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
	struct sockaddr_in a = { .sin_family = AF_INET,
		.sin_port = htons((uint16_t)lport),
		.sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (ls < 0 || bind(ls, (struct sockaddr *)&a, sizeof a) != 0 ||
	    listen(ls, 4) != 0) {
		perror("kt flip");
		return 1;
	}
	printf("ready\n");
	fflush(stdout);
	int c = accept(ls, NULL, NULL), t = connect_to(tport);
	if (c < 0 || t < 0)
		return 1;
	unsigned long long down = 0;
	unsigned char b[65536];
	for (;;) {
		struct pollfd p[2] = { { .fd = c, .events = POLLIN },
			{ .fd = t, .events = POLLIN } };
		if (poll(p, 2, -1) < 0)
			return 1;
		for (int i = 0; i < 2; i++) {
			if (!(p[i].revents & (POLLIN | POLLHUP | POLLERR)))
				continue;
			ssize_t n = read(p[i].fd, b, sizeof b);
			if (n <= 0)
				return 0;	/* either end gone: done */
			if (i == 1) {
				if (flip_at >= down && flip_at < down + (uint64_t)n)
					b[flip_at - down] ^= 1;
				down += (uint64_t)n;
			}
			if (write(p[1 - i].fd, b, (size_t)n) != n)
				return 0;
		}
	}
}

int main(int argc, char **argv)
{
	signal(SIGPIPE, SIG_IGN);
	if (argc == 3 && strcmp(argv[1], "backend") == 0)
		return backend(atoi(argv[2]));
	if (argc == 5 && strcmp(argv[1], "flip") == 0)
		return flip(atoi(argv[2]), atoi(argv[3]),
		    strtoull(argv[4], NULL, 10));
	if (argc == 6 && strcmp(argv[1], "client") == 0)
		return client(atoi(argv[2]), argv[3][0],
		    strtoull(argv[4], NULL, 10), strtoull(argv[5], NULL, 10));
	fprintf(stderr, "usage: kt backend PORT | kt client PORT MODE N M | "
	    "kt flip LPORT TPORT OFFSET\n");
	return 2;
}
