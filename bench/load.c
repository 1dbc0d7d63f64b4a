/*
 * bench/load.c: the benchmark's load tool. One thread; blocking sockets for
 * the single-connection modes, one epoll loop for the many-connection ones.
 * Talks the protocol of bench/backend.c. Prints one JSON object on stdout.
 *
 *   load bulk     --addr IP:PORT --bytes N
 *       one connection, 'S' then N bytes, half-close, wait for the count.
 *   load rate     --addr IP:PORT --conc C [--seconds S] [--max N] [--gap-ms G]
 *       C connections at a time, each fresh: connect, 64-byte request,
 *       64-byte echo, close. conn/s and connect-to-first-byte p50/p99.
 *   load pingpong --addr IP:PORT [--count N]
 *       one connection, N round trips of 64 bytes; RTT p50/p99.
 *   load idle     --addr IP:PORT --conns N [--conc C]
 *       opens N connections (C in flight), each verified with one 64-byte
 *       echo, prints the JSON line, holds them until stdin reaches EOF,
 *       then closes them and exits.
 * Every mode is bounded: per-connection deadline 30 s, rate by --seconds and
 * --max. The JSON carries the tool's own CPU seconds (load_cpu_s).
 * --proxy-v2 (any mode): every connection first sends a PROXY protocol v2
 * header (TCP4 192.0.2.1:PORT -> the target), as haproxy's send-proxy-v2
 * does, for a tunnel with proxy_protocol = accept (bench row upseal+pp).
 */
#include <arpa/inet.h>
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
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MSG 64
#define DEADLINE_S 30.0

static struct sockaddr_in target;
static bool proxy_v2;

/* The PROXY v2 header of a new connection: 28 bytes. */
static size_t proxy_header(unsigned char *h, unsigned seed)
{
	static const unsigned char sig[12] = { 0x0D, 0x0A, 0x0D, 0x0A, 0x00,
		0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A };
	unsigned port = 1024 + seed % 60000;
	memcpy(h, sig, 12);
	h[12] = 0x21;			/* version 2, PROXY */
	h[13] = 0x11;			/* TCP over IPv4 */
	h[14] = 0;
	h[15] = 12;
	h[16] = 192, h[17] = 0, h[18] = 2, h[19] = 1;
	memcpy(h + 20, &target.sin_addr, 4);
	h[24] = (unsigned char)(port >> 8);
	h[25] = (unsigned char)port;
	memcpy(h + 26, &target.sin_port, 2);
	return 28;
}

/* --proxy-v2: send the header on a new connection (blocking or not). */
static int send_proxy(int fd, unsigned seed)
{
	unsigned char h[28];
	if (!proxy_v2)
		return 0;
	size_t n = proxy_header(h, seed);
	return send(fd, h, n, MSG_NOSIGNAL) == (ssize_t)n ? 0 : -1;
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu_self(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
	       (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* Percentile (0..100) of a sorted array, nearest rank. */
static double pct(const double *v, size_t n, double p)
{
	if (n == 0)
		return -1;
	size_t k = (size_t)(p / 100.0 * (double)n + 0.999999);
	if (k < 1)
		k = 1;
	if (k > n)
		k = n;
	return v[k - 1];
}

static void fill_msg(unsigned char *m, unsigned seed)
{
	m[0] = 'E';
	for (int i = 1; i < MSG; i++)
		m[i] = (unsigned char)('a' + (seed + (unsigned)i) % 26);
}

static int dial_blocking(void)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	struct timeval tv = { .tv_sec = (time_t)DEADLINE_S };
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
	if (connect(fd, (struct sockaddr *)&target, sizeof target) < 0 ||
	    send_proxy(fd, (unsigned)fd) != 0) {
		close(fd);
		return -1;
	}
	return fd;
}

static int write_all(int fd, const void *p, size_t n)
{
	const char *c = p;
	while (n > 0) {
		ssize_t w = send(fd, c, n, MSG_NOSIGNAL);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		c += w;
		n -= (size_t)w;
	}
	return 0;
}

static int read_all(int fd, void *p, size_t n)
{
	char *c = p;
	while (n > 0) {
		ssize_t r = recv(fd, c, n, 0);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		c += r;
		n -= (size_t)r;
	}
	return 0;
}

static int mode_bulk(unsigned long long bytes)
{
	static unsigned char buf[256 * 1024];
	for (size_t i = 0; i < sizeof buf; i++)
		buf[i] = (unsigned char)(i * 7 + 3);
	double c0 = cpu_self(), t0 = now();
	int fd = dial_blocking();
	if (fd < 0) {
		printf("{\"mode\":\"bulk\",\"error\":\"connect: %s\"}\n", strerror(errno));
		return 1;
	}
	const char *err = NULL;
	if (write_all(fd, "S", 1) < 0)
		err = "send";
	unsigned long long left = bytes;
	while (err == NULL && left > 0) {
		size_t n = left < sizeof buf ? (size_t)left : sizeof buf;
		if (write_all(fd, buf, n) < 0)
			err = "send";
		left -= n;
	}
	unsigned char cnt[8];
	uint64_t got = 0;
	if (err == NULL) {
		shutdown(fd, SHUT_WR);
		if (read_all(fd, cnt, sizeof cnt) < 0)
			err = "no count from backend";
	}
	double dt = now() - t0;
	close(fd);
	if (err == NULL) {
		for (int i = 0; i < 8; i++)
			got |= (uint64_t)cnt[i] << (8 * i);
		if (got != bytes)
			err = "count mismatch";
	}
	printf("{\"mode\":\"bulk\",\"bytes\":%llu,\"received\":%llu,\"seconds\":%.6f,"
	       "\"mbps\":%.2f,\"load_cpu_s\":%.3f,\"error\":%s%s%s}\n",
	       bytes, (unsigned long long)got, dt, (double)bytes / dt / 1e6,
	       cpu_self() - c0, err ? "\"" : "", err ? err : "null", err ? "\"" : "");
	return err ? 1 : 0;
}

static int mode_pingpong(long count)
{
	unsigned char m[MSG], r[MSG];
	double *rtt = calloc((size_t)count, sizeof *rtt);
	double c0 = cpu_self();
	int fd = dial_blocking();
	if (fd < 0 || rtt == NULL) {
		printf("{\"mode\":\"pingpong\",\"error\":\"connect\"}\n");
		return 1;
	}
	const char *err = NULL;
	long warm = count / 20 + 1, done = 0;
	for (long i = -warm; i < count && err == NULL; i++) {
		fill_msg(m, (unsigned)(i + warm));
		double t = now();
		if (write_all(fd, m, MSG) < 0 || read_all(fd, r, MSG) < 0)
			err = "io";
		else if (memcmp(m, r, MSG) != 0)
			err = "echo mismatch";
		else if (i >= 0)
			rtt[done++] = (now() - t) * 1e6;
	}
	close(fd);
	qsort(rtt, (size_t)done, sizeof *rtt, cmp_double);
	printf("{\"mode\":\"pingpong\",\"count\":%ld,\"p50_us\":%.1f,\"p99_us\":%.1f,"
	       "\"load_cpu_s\":%.3f,\"error\":%s%s%s}\n",
	       done, pct(rtt, (size_t)done, 50), pct(rtt, (size_t)done, 99),
	       cpu_self() - c0, err ? "\"" : "", err ? err : "null", err ? "\"" : "");
	free(rtt);
	return err ? 1 : 0;
}

/* ---- many connections: one epoll loop ---------------------------------- */

enum phase { P_FREE, P_CONNECTING, P_READING, P_HELD };

struct slot {
	int fd;
	enum phase ph;
	double t0;
	double first;       /* time of the first answer byte, 0 before */
	double next_at;     /* rate --gap-ms: the slot's next start, not before */
	unsigned char msg[MSG];
	int got;
};

struct many {
	int ep;
	struct slot *s;
	long nslots;
	long ok, errors;
	double *lat;        /* connect-to-first-byte, microseconds */
	long nlat, caplat;
	const char *first_error;
};

static void note_error(struct many *m, const char *what)
{
	m->errors++;
	if (m->first_error == NULL)
		m->first_error = what;
}

static void slot_close(struct many *m, struct slot *s)
{
	if (s->fd >= 0) {
		epoll_ctl(m->ep, EPOLL_CTL_DEL, s->fd, NULL);
		close(s->fd);
	}
	s->fd = -1;
	s->ph = P_FREE;
}

static int slot_start(struct many *m, struct slot *s, unsigned seed)
{
	s->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (s->fd < 0) {
		note_error(m, "socket");
		return -1;
	}
	int one = 1;
	setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	s->t0 = now();
	s->first = 0;
	s->got = 0;
	fill_msg(s->msg, seed);
	int r = connect(s->fd, (struct sockaddr *)&target, sizeof target);
	if (r < 0 && errno != EINPROGRESS) {
		note_error(m, "connect");
		close(s->fd);
		s->fd = -1;
		return -1;
	}
	s->ph = P_CONNECTING;
	struct epoll_event e = { .events = EPOLLOUT, .data.ptr = s };
	epoll_ctl(m->ep, EPOLL_CTL_ADD, s->fd, &e);
	return 0;
}

/* One event on a slot. Returns 1 when the slot finished its echo. */
static int slot_event(struct many *m, struct slot *s, uint32_t ev)
{
	if (s->ph == P_CONNECTING) {
		int err = 0;
		socklen_t l = sizeof err;
		getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &l);
		if (err != 0 || (ev & EPOLLERR)) {
			note_error(m, "connect refused");
			slot_close(m, s);
			return -1;
		}
		/* 64 bytes into an empty socket buffer: one send. */
		if (send_proxy(s->fd, (unsigned)s->fd) != 0 ||
		    send(s->fd, s->msg, MSG, MSG_NOSIGNAL) != MSG) {
			note_error(m, "send");
			slot_close(m, s);
			return -1;
		}
		s->ph = P_READING;
		struct epoll_event e = { .events = EPOLLIN, .data.ptr = s };
		epoll_ctl(m->ep, EPOLL_CTL_MOD, s->fd, &e);
		return 0;
	}
	unsigned char r[MSG];
	ssize_t n = recv(s->fd, r, (size_t)(MSG - s->got), 0);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return 0;
	if (n <= 0) {
		note_error(m, n == 0 ? "eof before answer" : "recv");
		slot_close(m, s);
		return -1;
	}
	if (s->first == 0)
		s->first = now();
	if (memcmp(r, s->msg + s->got, (size_t)n) != 0) {
		note_error(m, "echo mismatch");
		slot_close(m, s);
		return -1;
	}
	s->got += (int)n;
	if (s->got < MSG)
		return 0;
	if (m->nlat < m->caplat)
		m->lat[m->nlat++] = (s->first - s->t0) * 1e6;
	m->ok++;
	return 1;
}

static void check_deadlines(struct many *m, double t)
{
	for (long i = 0; i < m->nslots; i++) {
		struct slot *s = &m->s[i];
		if ((s->ph == P_CONNECTING || s->ph == P_READING) &&
		    t - s->t0 > DEADLINE_S) {
			note_error(m, "timeout");
			slot_close(m, s);
		}
	}
}

/*
 * rate: each of conc slots opens a connection, sends 64 bytes, reads the
 * echo, closes, and starts over; with gap_ms > 0 a slot waits that long
 * between two connections (paced arrivals instead of back to back).
 */
static int mode_rate(long conc, double seconds, long max, double gap_ms)
{
	struct many m = { .ep = epoll_create1(EPOLL_CLOEXEC), .nslots = conc,
	                  .caplat = max };
	m.s = calloc((size_t)conc, sizeof *m.s);
	m.lat = calloc((size_t)max, sizeof *m.lat);
	if (m.s == NULL || m.lat == NULL)
		return 1;
	for (long i = 0; i < conc; i++)
		m.s[i].fd = -1;
	double c0 = cpu_self(), t0 = now(), tend = t0 + seconds;
	long started = 0;
	unsigned seed = 1;
	struct epoll_event evs[256];
	for (;;) {
		double t = now();
		bool open_more = t < tend && started < max;
		long active = 0;
		for (long i = 0; i < conc; i++) {
			struct slot *s = &m.s[i];
			if (s->ph == P_FREE && open_more && started < max &&
			    t >= s->next_at) {
				started++;
				slot_start(&m, s, seed++);
			}
			if (s->ph != P_FREE)
				active++;
		}
		if (active == 0 && (!open_more || m.errors > max))
			break;
		if (t > tend + DEADLINE_S)
			break;
		int wait_ms = 100;
		if (gap_ms > 0 && open_more)
			wait_ms = gap_ms < 1 ? 1 : (int)gap_ms;
		int n = epoll_wait(m.ep, evs, 256, active < conc ? wait_ms : 100);
		for (int i = 0; i < n; i++) {
			struct slot *s = evs[i].data.ptr;
			if (slot_event(&m, s, evs[i].events) == 1) {
				slot_close(&m, s);
				s->next_at = now() + gap_ms / 1000.0;
			}
		}
		check_deadlines(&m, now());
	}
	double dt = now() - t0;
	qsort(m.lat, (size_t)m.nlat, sizeof *m.lat, cmp_double);
	printf("{\"mode\":\"rate\",\"conc\":%ld,\"ok\":%ld,\"errors\":%ld,\"seconds\":%.4f,"
	       "\"conn_per_s\":%.1f,\"p50_us\":%.1f,\"p99_us\":%.1f,\"load_cpu_s\":%.3f,"
	       "\"error\":%s%s%s}\n",
	       conc, m.ok, m.errors, dt, (double)m.ok / dt, pct(m.lat, (size_t)m.nlat, 50),
	       pct(m.lat, (size_t)m.nlat, 99), cpu_self() - c0,
	       m.first_error ? "\"" : "", m.first_error ? m.first_error : "null",
	       m.first_error ? "\"" : "");
	return m.ok > 0 ? 0 : 1;
}

static int mode_idle(long conns, long conc)
{
	struct many m = { .ep = epoll_create1(EPOLL_CLOEXEC), .nslots = conns,
	                  .caplat = conns };
	m.s = calloc((size_t)conns, sizeof *m.s);
	m.lat = calloc((size_t)conns, sizeof *m.lat);
	if (m.s == NULL || m.lat == NULL)
		return 1;
	for (long i = 0; i < conns; i++)
		m.s[i].fd = -1;
	double c0 = cpu_self(), t0 = now();
	long next = 0, inflight = 0;
	struct epoll_event evs[256];
	while (m.ok + m.errors < conns && now() - t0 < 600) {
		while (inflight < conc && next < conns) {
			if (slot_start(&m, &m.s[next], (unsigned)next) == 0)
				inflight++;
			next++;
		}
		int n = epoll_wait(m.ep, evs, 256, 100);
		for (int i = 0; i < n; i++) {
			struct slot *s = evs[i].data.ptr;
			int r = slot_event(&m, s, evs[i].events);
			if (r == 1) {
				/* hold it: out of the loop, still open */
				epoll_ctl(m.ep, EPOLL_CTL_DEL, s->fd, NULL);
				s->ph = P_HELD;
			}
			if (r != 0)
				inflight--;
		}
		long before = m.errors;
		check_deadlines(&m, now());
		inflight -= m.errors - before;
	}
	double dt = now() - t0;
	qsort(m.lat, (size_t)m.nlat, sizeof *m.lat, cmp_double);
	printf("{\"mode\":\"idle\",\"conns\":%ld,\"ok\":%ld,\"errors\":%ld,\"seconds\":%.3f,"
	       "\"p50_us\":%.1f,\"p99_us\":%.1f,\"load_cpu_s\":%.3f,\"error\":%s%s%s}\n",
	       conns, m.ok, m.errors, dt, pct(m.lat, (size_t)m.nlat, 50),
	       pct(m.lat, (size_t)m.nlat, 99), cpu_self() - c0,
	       m.first_error ? "\"" : "", m.first_error ? m.first_error : "null",
	       m.first_error ? "\"" : "");
	fflush(stdout);
	/* Hold until the runner closes our stdin (bounded: 10 minutes). */
	struct timeval tv = { .tv_sec = 600 };
	fd_set rs;
	FD_ZERO(&rs);
	FD_SET(0, &rs);
	char b[64];
	while (select(1, &rs, NULL, NULL, &tv) > 0 && read(0, b, sizeof b) > 0)
		FD_SET(0, &rs);
	for (long i = 0; i < conns; i++)
		if (m.s[i].fd >= 0)
			close(m.s[i].fd);
	return m.errors == 0 ? 0 : 1;
}

static void usage(void)
{
	fprintf(stderr,
	        "usage: load bulk|rate|pingpong|idle --addr IP:PORT [--bytes N] "
	        "[--conc C] [--seconds S] [--max N] [--count N] [--conns N] "
	        "[--gap-ms G] [--proxy-v2]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	if (argc < 2)
		usage();
	const char *mode = argv[1], *addr = NULL;
	unsigned long long bytes = 1ULL << 30;
	long conc = 1, max = 200000, count = 2000, conns = 100;
	double seconds = 2.0, gap_ms = 0;
	bool conc_set = false;
	for (int i = 2; i < argc; i++) {
		const char *k = argv[i];
		if (strcmp(k, "--proxy-v2") == 0) {
			proxy_v2 = true;
			continue;
		}
		if (i + 1 >= argc)
			usage();
		const char *v = argv[++i];
		if (strcmp(k, "--addr") == 0)
			addr = v;
		else if (strcmp(k, "--bytes") == 0)
			bytes = strtoull(v, NULL, 10);
		else if (strcmp(k, "--conc") == 0) {
			conc = atol(v);
			conc_set = true;
		} else if (strcmp(k, "--seconds") == 0)
			seconds = atof(v);
		else if (strcmp(k, "--max") == 0)
			max = atol(v);
		else if (strcmp(k, "--count") == 0)
			count = atol(v);
		else if (strcmp(k, "--conns") == 0)
			conns = atol(v);
		else if (strcmp(k, "--gap-ms") == 0)
			gap_ms = atof(v);
		else
			usage();
	}
	if (addr == NULL || conc < 1 || max < 1 || count < 1 || conns < 1)
		usage();
	char host[64];
	const char *colon = strrchr(addr, ':');
	if (colon == NULL || (size_t)(colon - addr) >= sizeof host)
		usage();
	memcpy(host, addr, (size_t)(colon - addr));
	host[colon - addr] = '\0';
	target.sin_family = AF_INET;
	target.sin_port = htons((uint16_t)atoi(colon + 1));
	if (inet_pton(AF_INET, host, &target.sin_addr) != 1)
		usage();
	signal(SIGPIPE, SIG_IGN);

	if (strcmp(mode, "bulk") == 0)
		return mode_bulk(bytes);
	if (strcmp(mode, "pingpong") == 0)
		return mode_pingpong(count);
	if (strcmp(mode, "rate") == 0)
		return mode_rate(conc, seconds, max, gap_ms);
	if (strcmp(mode, "idle") == 0)
		return mode_idle(conns, conc_set ? conc : 32);
	usage();
	return 2;
}
