#include "audit.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define TCP_LISTEN 0x0A
#define PROC_TCP "/proc/net/tcp"
#define PROC_TCP6 "/proc/net/tcp6"
/* Bounds for the best-effort pid lookup: processes, and fds per process. */
#define PIDS_MAX 65536
#define FDS_MAX 65536

void audit_result_init(struct audit_result *r, unsigned port)
{
	memset(r, 0, sizeof *r);
	r->verdict = AUDIT_NOT_LISTENING;
	r->port = port;
}

/* Kernel hex (8 or 32 digits, 32-bit words in host order) into raw. */
static int decode_hex_addr(const char *hex, int family, unsigned char *raw)
{
	size_t words = family == AF_INET ? 1 : 4;

	if (strlen(hex) != words * 8)
		return -1;
	for (size_t i = 0; i < words; i++) {
		char w[9];
		char *end;

		memcpy(w, hex + i * 8, 8);
		w[8] = '\0';
		uint32_t v = (uint32_t)strtoul(w, &end, 16);
		if (*end != '\0')
			return -1;
		memcpy(raw + i * 4, &v, sizeof v);
	}
	return 0;
}

static bool raw_is_loopback(int family, const unsigned char *raw)
{
	if (family == AF_INET)
		return raw[0] == 127;
	struct in6_addr a;
	memcpy(&a, raw, sizeof a);
	return IN6_IS_ADDR_LOOPBACK(&a) ||
	    (IN6_IS_ADDR_V4MAPPED(&a) && raw[12] == 127);
}

static bool raw_is_wildcard(int family, const unsigned char *raw)
{
	size_t n = family == AF_INET ? 4 : 16;
	for (size_t i = 0; i < n; i++)
		if (raw[i] != 0)
			return false;
	return true;
}

/* Record one LISTEN socket on the port (deduplicated by address). */
static void add_listener(struct audit_result *r, int family,
    const unsigned char *raw, unsigned uid, unsigned long inode)
{
	size_t n = family == AF_INET ? 4 : 16;
	bool loopback = raw_is_loopback(family, raw);

	r->nsockets++;
	if (!loopback)
		r->nexposed++;
	for (size_t i = 0; i < r->nlisteners; i++) {
		const struct audit_listener *l = &r->listeners[i];
		if (l->family == family && memcmp(l->raw, raw, n) == 0)
			return;
	}
	if (r->nlisteners == AUDIT_LISTENERS_MAX)
		return;
	struct audit_listener *l = &r->listeners[r->nlisteners++];
	memset(l, 0, sizeof *l);
	l->family = family;
	memcpy(l->raw, raw, n);
	if (inet_ntop(family, raw, l->ip, sizeof l->ip) == NULL)
		snprintf(l->ip, sizeof l->ip, "?");
	l->loopback = loopback;
	l->wildcard = raw_is_wildcard(family, raw);
	l->uid = uid;
	l->inode = inode;
}

int audit_parse(FILE *f, int family, struct audit_result *r)
{
	char *line = NULL;
	size_t cap = 0;
	int rc = 0;

	errno = 0;
	while (getline(&line, &cap, f) != -1) {
		unsigned sl, port, state, uid;
		unsigned long inode;
		char hex[40];
		unsigned char raw[16];

		/* sl local rem st tx:rx tr:when retrnsmt uid timeout inode */
		if (sscanf(line, " %u: %39[0-9A-Fa-f]:%x %*[0-9A-Fa-f]:%*x "
		    "%x %*x:%*x %*x:%*x %*x %u %*d %lu", &sl, hex, &port,
		    &state, &uid, &inode) != 6)
			continue;	/* the header, or not an entry */
		if (state != TCP_LISTEN || port != r->port)
			continue;
		if (decode_hex_addr(hex, family, raw) != 0)
			continue;
		add_listener(r, family, raw, uid, inode);
	}
	if (ferror(f))
		rc = -1;
	free(line);
	return rc;
}

/* Is the listener bound to exactly the backend's IP address? */
static bool listener_is(const struct audit_listener *l, const struct addr *b)
{
	if (!b->numeric)
		return false;
	if (b->sa.ss_family == AF_INET) {
		const struct sockaddr_in *sin =
		    (const struct sockaddr_in *)&b->sa;
		const unsigned char *ip =
		    (const unsigned char *)&sin->sin_addr;
		if (l->family == AF_INET)
			return memcmp(l->raw, ip, 4) == 0;
		struct in6_addr a;
		memcpy(&a, l->raw, sizeof a);
		return IN6_IS_ADDR_V4MAPPED(&a) &&
		    memcmp(l->raw + 12, ip, 4) == 0;
	}
	const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&b->sa;
	return l->family == AF_INET6 &&
	    memcmp(l->raw, &sin6->sin6_addr, 16) == 0;
}

void audit_decide(const struct addr *backend, struct audit_result *r)
{
	if (backend != NULL && backend->kind == ADDR_UNIX) {
		r->verdict = AUDIT_UNIX;
	} else if (backend != NULL && !addr_is_loopback(backend)) {
		/* allow_remote: only ours to audit if it is this host. */
		bool here = false;
		for (size_t i = 0; i < r->nlisteners; i++) {
			const struct audit_listener *l = &r->listeners[i];
			if (listener_is(l, backend) ||
			    (l->wildcard && r->backend_is_local))
				here = true;
		}
		r->verdict = here ? AUDIT_EXPOSED : AUDIT_REMOTE;
	} else if (r->nsockets == 0) {
		r->verdict = AUDIT_NOT_LISTENING;
	} else {
		r->verdict = r->nexposed > 0 ? AUDIT_EXPOSED :
		    AUDIT_LOOPBACK_ONLY;
	}
	r->exposed = r->verdict == AUDIT_EXPOSED;
}

/* Is the backend's numeric address one of this host's interfaces? */
static bool ip_is_local(const struct addr *b)
{
	struct ifaddrs *ifs, *i;
	bool found = false;

	if (!b->numeric || getifaddrs(&ifs) != 0)
		return false;
	for (i = ifs; i != NULL && !found; i = i->ifa_next) {
		const struct sockaddr *sa = i->ifa_addr;
		if (sa == NULL || sa->sa_family != b->sa.ss_family)
			continue;
		if (sa->sa_family == AF_INET)
			found = memcmp(&((const struct sockaddr_in *)sa)->sin_addr,
			    &((const struct sockaddr_in *)&b->sa)->sin_addr,
			    4) == 0;
		else if (sa->sa_family == AF_INET6)
			found = memcmp(
			    &((const struct sockaddr_in6 *)sa)->sin6_addr,
			    &((const struct sockaddr_in6 *)&b->sa)->sin6_addr,
			    16) == 0;
	}
	freeifaddrs(ifs);
	return found;
}

/* Read the process name of pid into l->comm (best effort). */
static void read_comm(struct audit_listener *l)
{
	char path[64];
	snprintf(path, sizeof path, "/proc/%ld/comm", (long)l->pid);
	FILE *f = fopen(path, "r");
	if (f == NULL)
		return;
	if (fgets(l->comm, sizeof l->comm, f) != NULL)
		l->comm[strcspn(l->comm, "\n")] = '\0';
	else
		l->comm[0] = '\0';
	fclose(f);
}

/* Match one fd link ("socket:[INODE]") against the listeners; true when
 * every listener with an inode has its pid. */
static bool match_fd(struct audit_result *r, pid_t pid, const char *link)
{
	unsigned long inode;
	char tail;
	bool all = true;

	if (sscanf(link, "socket:[%lu%c", &inode, &tail) != 2 || tail != ']')
		return false;
	for (size_t i = 0; i < r->nlisteners; i++) {
		struct audit_listener *l = &r->listeners[i];
		if (l->pid == 0 && l->inode != 0 && l->inode == inode) {
			l->pid = pid;
			read_comm(l);
		}
		if (l->pid == 0 && l->inode != 0)
			all = false;
	}
	return all;
}

/* Scan /proc/PID/fd of every process this one may read; bounded. */
static void find_owners(struct audit_result *r)
{
	DIR *proc = opendir("/proc");
	struct dirent *pe;
	size_t npids = 0;
	bool done = false;

	if (proc == NULL)
		return;
	while (!done && npids < PIDS_MAX && (pe = readdir(proc)) != NULL) {
		char *end;
		long pid = strtol(pe->d_name, &end, 10);
		if (*end != '\0' || pid <= 0)
			continue;
		npids++;
		char dir[64];
		snprintf(dir, sizeof dir, "/proc/%ld/fd", pid);
		DIR *fds = opendir(dir);
		if (fds == NULL)
			continue;	/* gone, or not ours to read */
		struct dirent *fe;
		size_t nfds = 0;
		while (!done && nfds < FDS_MAX && (fe = readdir(fds)) != NULL) {
			char link[64];
			nfds++;
			if (fe->d_name[0] == '.')
				continue;
			ssize_t n = readlinkat(dirfd(fds), fe->d_name, link,
			    sizeof link - 1);
			if (n <= 0)
				continue;
			link[n] = '\0';
			done = match_fd(r, (pid_t)pid, link);
		}
		closedir(fds);
	}
	closedir(proc);
}

/* Feed one /proc file; a missing tcp6 (no IPv6) is fine. 0 or -1. */
static int parse_file(const char *path, int family, bool optional,
    struct audit_result *r)
{
	FILE *f = fopen(path, "r");
	if (f == NULL) {
		if (optional && errno == ENOENT)
			return 0;
		r->error = errno;
		r->error_path = path;
		return -1;
	}
	int rc = audit_parse(f, family, r);
	if (rc != 0) {
		r->error = errno != 0 ? errno : EIO;
		r->error_path = path;
	}
	fclose(f);
	return rc;
}

int audit_backend(const struct addr *backend, struct audit_result *out)
{
	audit_result_init(out, backend->kind == ADDR_TCP ? backend->port : 0);
	if (backend->kind == ADDR_UNIX) {
		audit_decide(backend, out);
		return 0;
	}
	if (parse_file(PROC_TCP, AF_INET, false, out) != 0 ||
	    parse_file(PROC_TCP6, AF_INET6, true, out) != 0) {
		out->verdict = AUDIT_ERROR;
		out->exposed = false;
		return -1;
	}
	if (!addr_is_loopback(backend))
		out->backend_is_local = ip_is_local(backend);
	audit_decide(backend, out);
	if (out->nlisteners > 0)
		find_owners(out);
	return 0;
}

const char *audit_verdict_name(enum audit_verdict v)
{
	switch (v) {
	case AUDIT_LOOPBACK_ONLY: return "loopback_only";
	case AUDIT_EXPOSED: return "exposed";
	case AUDIT_NOT_LISTENING: return "not_listening";
	case AUDIT_UNIX: return "unix";
	case AUDIT_REMOTE: return "remote";
	case AUDIT_ERROR: return "error";
	}
	return "error";
}

/* "1.2.3.4:80" or "[::]:80". */
static void format_listener(const struct audit_listener *l, unsigned port,
    char *buf, size_t len)
{
	if (l->family == AF_INET6)
		snprintf(buf, len, "[%s]:%u", l->ip, port);
	else
		snprintf(buf, len, "%s:%u", l->ip, port);
}

void audit_exposed_list(const struct audit_result *r, char *buf, size_t len)
{
	size_t used = 0;

	if (len == 0)
		return;
	buf[0] = '\0';
	for (size_t i = 0; i < r->nlisteners; i++) {
		const struct audit_listener *l = &r->listeners[i];
		char one[AUDIT_IP_MAX + 16];
		if (l->loopback)
			continue;
		format_listener(l, r->port, one, sizeof one);
		int n = snprintf(buf + used, len - used, "%s%s",
		    used > 0 ? "," : "", one);
		if (n < 0 || (size_t)n >= len - used) {
			buf[used] = '\0';	/* drop the one that did not fit */
			return;
		}
		used += (size_t)n;
	}
}

static void report_listeners(FILE *f, const struct audit_result *r)
{
	for (size_t i = 0; i < r->nlisteners; i++) {
		const struct audit_listener *l = &r->listeners[i];
		char where[AUDIT_IP_MAX + 16];

		format_listener(l, r->port, where, sizeof where);
		fprintf(f, "    %-24s %s", where,
		    l->loopback ? "loopback: this host only" :
		    l->wildcard ? "EVERY address: reachable from the network" :
		    "a network address: reachable from the network");
		if (l->pid != 0)
			fprintf(f, ", pid %ld (%s)", (long)l->pid,
			    l->comm[0] != '\0' ? l->comm : "?");
		else
			fprintf(f, ", uid %u", l->uid);
		fputc('\n', f);
	}
	if (r->nsockets > r->nlisteners)
		fprintf(f, "    (%zu listening sockets in all on port %u)\n",
		    r->nsockets, r->port);
}

/* The exposed addresses in words, for the verdict line. */
static void exposed_words(const struct audit_result *r, char *buf,
    size_t len)
{
	size_t used = 0;

	buf[0] = '\0';
	for (size_t i = 0; i < r->nlisteners && used < len; i++) {
		const struct audit_listener *l = &r->listeners[i];
		if (l->loopback)
			continue;
		int n = snprintf(buf + used, len - used, "%s%s%s",
		    used > 0 ? " and " : "", l->ip,
		    l->wildcard ? " (every address of this host)" : "");
		if (n < 0)
			return;
		used += (size_t)n;
	}
}

void audit_report(FILE *f, const char *tunnel, const struct addr *backend,
    const struct audit_result *r)
{
	char b[ADDR_TEXT_MAX];
	char words[512];

	addr_format(backend, b, sizeof b);
	switch (r->verdict) {
	case AUDIT_UNIX:
		fprintf(f, "[%s] backend %s: a unix socket, not reachable "
		    "over TCP: nothing to audit for this tunnel.\n", tunnel, b);
		return;
	case AUDIT_ERROR:
		fprintf(f, "[%s] backend %s: cannot audit: %s: %s\n", tunnel,
		    b, r->error_path ? r->error_path : "/proc/net/tcp",
		    strerror(r->error));
		return;
	case AUDIT_REMOTE:
		fprintf(f, "[%s] backend %s: not on this host (allow_remote "
		    "= yes): nothing to audit here; run upseal-server --audit "
		    "where the backend runs, or audit that host's firewall.\n"
		    "  Note: the hop from upseal-server to this backend "
		    "crosses the network in plaintext.\n", tunnel, b);
		if (r->nlisteners > 0) {
			fprintf(f, "  On this host, TCP port %u listens on:\n",
			    r->port);
			report_listeners(f, r);
		}
		return;
	case AUDIT_NOT_LISTENING:
		fprintf(f, "[%s] backend %s: nothing listens on TCP port %u "
		    "in this network namespace (is the backend down, or in "
		    "another namespace or container?): nothing is exposed "
		    "now; run the audit again once the backend is up.\n",
		    tunnel, b, r->port);
		return;
	case AUDIT_LOOPBACK_ONLY:
		fprintf(f, "[%s] backend %s: ok: TCP port %u listens on "
		    "loopback only; the network reaches the backend only "
		    "through upseal.\n", tunnel, b, r->port);
		report_listeners(f, r);
		return;
	case AUDIT_EXPOSED:
		exposed_words(r, words, sizeof words);
		fprintf(f, "[%s] backend %s: EXPOSED: TCP port %u also listens "
		    "on %s, not only on loopback.\n", tunnel, b, r->port,
		    words);
		report_listeners(f, r);
		fprintf(f, "  Anyone who can reach this host on port %u talks "
		    "to the backend directly, with no certificate: the tunnel "
		    "is bypassed.\n"
		    "  Fix: bind the backend to 127.0.0.1 only (or [::1], or "
		    "a unix socket with connect = unix:/PATH), so that it "
		    "listens on loopback only; until then, drop port %u from "
		    "the network in the host's firewall. Then run "
		    "upseal-server --audit again.\n", r->port, r->port);
		return;
	}
}
