#include "config.h"

#include <errno.h>
#include <ini.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compat.h"
#include "config_keys.h"

#define FILE_MAX (1024 * 1024)
#define ARRAY_LEN(a) (sizeof (a) / sizeof (a)[0])
#define NAME_CHARS \
	"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-"
#define SYNTAX "syntax error: expected [section] or key = value"
#define NO_TUNNELS "no tunnels: add a [name] section with listen, " \
	"connect, cert, key and pin"

/* Which kind of section the lines being read belong to. */
enum section { SEC_NONE, SEC_UPSEAL, SEC_TUNNEL };

/* Everything one cfg_load needs while inih walks the file. */
struct parser {
	const char *path;
	enum cfg_role role;
	struct cfg *cfg;
	char *text;		/* the whole file */
	size_t len, pos;	/* its size, and where the next line starts */
	int line;		/* the physical line inih is handling */
	enum section sec;
	size_t tunnel;		/* SEC_TUNNEL: index in cfg->tunnels */
	int upseal_line;	/* line of [upseal], 0 if none yet */
	int seen[K_TUNNEL_KEYS];	/* per key of the section: line or 0 */
	bool failed;		/* the first error is in err; stop reading */
	char *err;
	size_t errlen;
};

/* Every default, in one place. */
static const struct cfg cfg_defaults = {
	.refs = 1,
	.log_level = LOG_INFO,
	.drain_timeout_ms = 15 * 1000,
	.watch = true,
};

static const struct cfg_tunnel tunnel_defaults = {
	.connect_timeout_ms = 5 * 1000,
	.handshake_timeout_ms = 10 * 1000,
	.idle_timeout_ms = 5 * 60 * 1000,
	.max_connections = 10000,
	.resumption = true,
	.pool_idle_ms = 60 * 1000,
	.proxy_header_timeout_ms = 5 * 1000,
	.trust_client_address = true,
	.expiry_warning_ms = 14ULL * 24 * 3600 * 1000,
};

/*
 * Record the first error as `PATH:LINE: [SECTION] KEY: message`; line 0,
 * section NULL and key NULL leave their part out. Later errors are dropped.
 */
__attribute__((format(printf, 5, 6)))
static void fail(struct parser *p, int line, const char *section,
    const char *key, const char *fmt, ...)
{
	char at[16] = "", what[512] = "", msg[CFG_WHY_MAX + 256];
	va_list ap;

	if (p->failed)
		return;
	p->failed = true;
	if (line > 0)
		snprintf(at, sizeof at, ":%d", line);
	if (section != NULL && key != NULL)
		snprintf(what, sizeof what, "[%s] %s: ", section, key);
	else if (section != NULL || key != NULL)
		snprintf(what, sizeof what, section ? "[%s]: " : "%s: ",
		    section ? section : key);
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	if (p->errlen > 0)
		snprintf(p->err, p->errlen, "%s%s: %s%s", p->path, at, what,
		    msg);
}

static bool same_listen(const struct addr *a, const struct addr *b)
{
	char ta[ADDR_TEXT_MAX], tb[ADDR_TEXT_MAX];

	if (a->kind != b->kind)
		return false;
	if (a->kind == ADDR_UNIX)
		return strcmp(a->path, b->path) == 0;
	if (a->port != b->port || a->port == 0 || a->numeric != b->numeric)
		return false;
	if (!a->numeric)
		return strcasecmp(a->host, b->host) == 0;
	addr_format_sockaddr((const struct sockaddr *)&a->sa, ta, sizeof ta);
	addr_format_sockaddr((const struct sockaddr *)&b->sa, tb, sizeof tb);
	return strcmp(ta, tb) == 0;
}

static void check_required(struct parser *p, const struct cfg_tunnel *t)
{
	static const int required[] = { K_LISTEN, K_CONNECT, K_CERT, K_KEY };

	for (size_t i = 0; i < ARRAY_LEN(required); i++) {
		const struct cfg_key *k = &cfg_tunnel_keys[required[i]];
		if (p->seen[required[i]] == 0)
			fail(p, t->line, t->name, NULL,
			    "missing required key \"%s\"; expected %s = %s",
			    k->name, k->name, k->form);
	}
	if (t->npins == 0 && t->npin_files == 0 && t->ca == NULL)
		fail(p, t->line, t->name, NULL, "no pin and no ca: set pin = "
		    "sha256//... (see upseal-certs pin), pin_file = FILE or "
		    "ca = FILE");
}

/* Name rules and CRLs judge certificates a CA signed: they need the CA. */
static void check_ca_only(struct parser *p, const struct cfg_tunnel *t)
{
	static const int ca_only[] = { K_ALLOW_DNS, K_ALLOW_URI, K_ALLOW_CN,
		K_CRL };

	if (t->ca != NULL)
		return;
	for (size_t i = 0; i < ARRAY_LEN(ca_only); i++) {
		int k = ca_only[i];
		if (p->seen[k] == 0)
			continue;
		fail(p, p->seen[k], t->name, cfg_tunnel_keys[k].name,
		    "needs ca = FILE: %s", k == K_CRL ? "a CRL revokes "
		    "certificates of a CA" : "without a CA, the names in a "
		    "certificate are whatever its holder wrote; expected "
		    "ca = FILE in this section, or pins instead of names");
		return;
	}
}

/* The plaintext end (client: listen, server: connect) stays on this host. */
static void check_local(struct parser *p, const struct cfg_tunnel *t)
{
	int k = p->role == CFG_CLIENT ? K_LISTEN : K_CONNECT;
	const struct addr *a = k == K_LISTEN ? &t->listen : &t->connect;
	char text[ADDR_TEXT_MAX];

	if (t->allow_remote || addr_is_loopback(a))
		return;
	addr_format(a, text, sizeof text);
	fail(p, p->seen[k], t->name, cfg_tunnel_keys[k].name,
	    "%s is not a loopback address, but the plaintext end must stay "
	    "on this host; expected 127.0.0.1:PORT, [::1]:PORT, "
	    "localhost:PORT or unix:/path, or set allow_remote = yes if this "
	    "is intended", text);
}

/* Client with a CA: the server's certificate must carry a name to check. */
static void default_server_name(struct parser *p, struct cfg_tunnel *t)
{
	if (p->role != CFG_CLIENT || t->ca == NULL || t->server_name != NULL)
		return;
	if (t->connect.kind == ADDR_UNIX || t->connect.numeric) {
		fail(p, t->line, t->name, NULL, "ca is set and connect is %s, "
		    "so there is no name to check the server's certificate "
		    "against; set server_name = the DNS name in that "
		    "certificate (mbedTLS 2.28 cannot match IP addresses)",
		    t->connect.kind == ADDR_UNIX ? "a unix socket" :
		    "an IP address");
		return;
	}
	t->server_name = strdup(t->connect.host);
	if (t->server_name == NULL)
		fail(p, t->line, t->name, NULL, "out of memory");
}

/*
 * max_handshakes: at most max_connections (whichever line came first);
 * unset, CFG_HANDSHAKES_DEFAULT or max_connections if that is smaller.
 */
static void check_handshakes(struct parser *p, struct cfg_tunnel *t)
{
	if (p->seen[K_MAX_HANDSHAKES] == 0) {
		t->max_handshakes = t->max_connections < CFG_HANDSHAKES_DEFAULT ?
		    t->max_connections : CFG_HANDSHAKES_DEFAULT;
		return;
	}
	if (t->max_handshakes > t->max_connections)
		fail(p, p->seen[K_MAX_HANDSHAKES], t->name, "max_handshakes",
		    "%u is more than max_connections (%u); expected a number "
		    "from 1 to %u", t->max_handshakes, t->max_connections,
		    t->max_connections);
}

/* proxy_protocol: accept is the client's, v1 and v2 the server's. */
static void check_proxy(struct parser *p, const struct cfg_tunnel *t)
{
	bool client = p->role == CFG_CLIENT;
	if (t->proxy_protocol == CFG_PP_OFF ||
	    (t->proxy_protocol == CFG_PP_ACCEPT) == client)
		return;
	fail(p, p->seen[K_PROXY_PROTOCOL], t->name, "proxy_protocol", client ?
	    "a client tunnel reads a PROXY header from its plaintext peer; "
	    "expected accept or off (v1 and v2 are what upseal-server sends "
	    "its backend)" : "a server tunnel sends a PROXY header to its "
	    "backend; expected v2, v1 or off (accept is for upseal-client)");
}

static void check_unique_listen(struct parser *p, const struct cfg_tunnel *t)
{
	char text[ADDR_TEXT_MAX];

	for (size_t i = 0; i < p->tunnel; i++) {
		const struct cfg_tunnel *o = &p->cfg->tunnels[i];
		if (!same_listen(&o->listen, &t->listen))
			continue;
		addr_format(&t->listen, text, sizeof text);
		fail(p, p->seen[K_LISTEN], t->name, "listen",
		    "%s is already the listen address of [%s] (line %d); "
		    "expected a distinct address", text, o->name, o->line);
		return;
	}
}

/* Called when a section ends: at the next header and at the end of file. */
/* The status endpoint stays on this host unless said otherwise. */
static void check_status(struct parser *p)
{
	const struct cfg *c = p->cfg;
	char text[ADDR_TEXT_MAX];
	int line = 0;

	if (!c->has_status || c->status_allow_remote ||
	    addr_is_loopback(&c->status))
		return;
	for (size_t i = 0; i < cfg_nupseal_keys; i++)
		if (strcmp(cfg_upseal_keys[i].name, "status") == 0)
			line = p->seen[i];
	addr_format(&c->status, text, sizeof text);
	fail(p, line, "upseal", "status", "%s is not a loopback address; "
	    "expected 127.0.0.1:PORT, [::1]:PORT or unix:/path, or set "
	    "status_allow_remote = yes if this is intended", text);
}

static void finish_section(struct parser *p)
{
	struct cfg_tunnel *t;

	if (p->sec == SEC_UPSEAL)
		check_status(p);
	if (p->sec != SEC_TUNNEL)
		return;
	t = &p->cfg->tunnels[p->tunnel];
	check_required(p, t);
	if (p->failed)
		return;
	check_ca_only(p, t);
	check_local(p, t);
	check_handshakes(p, t);
	check_proxy(p, t);
	default_server_name(p, t);
	check_unique_listen(p, t);
}

static void open_tunnel(struct parser *p, const char *name)
{
	struct cfg *c = p->cfg;
	struct cfg_tunnel *t;

	for (size_t i = 0; i < c->ntunnels; i++) {
		if (strcmp(c->tunnels[i].name, name) == 0) {
			fail(p, p->line, name, NULL, "duplicate tunnel "
			    "section; first at line %d", c->tunnels[i].line);
			return;
		}
	}
	t = realloc(c->tunnels, (c->ntunnels + 1) * sizeof *t);
	if (t == NULL) {
		fail(p, p->line, name, NULL, "out of memory");
		return;
	}
	c->tunnels = t;
	t = &c->tunnels[c->ntunnels];
	*t = tunnel_defaults;
	memcpy(t->name, name, strlen(name) + 1);	/* fits: checked */
	t->line = p->line;
	p->tunnel = c->ntunnels++;
	p->sec = SEC_TUNNEL;
}

/* After "]": nothing, or a comment. */
static bool rest_is_blank(const char *s, const char *end)
{
	while (s < end && (*s == ' ' || *s == '\t'))
		s++;
	return s == end || *s == ';' || *s == '#';
}

/* A line starting with '[' (s, n bytes): end one section, start the next. */
static void on_header(struct parser *p, const char *s, size_t n)
{
	const char *close = memchr(s, ']', n);
	char name[256];
	size_t len;

	if (close == NULL || !rest_is_blank(close + 1, s + n)) {
		fail(p, p->line, NULL, NULL, SYNTAX);
		return;
	}
	len = (size_t)(close - s - 1);
	snprintf(name, sizeof name, "%.*s", (int)len, s + 1);
	finish_section(p);
	if (p->failed)
		return;
	memset(p->seen, 0, sizeof p->seen);
	if (len == 0 || len >= CFG_NAME_MAX || strspn(name, NAME_CHARS) != len)
		fail(p, p->line, name, NULL, "invalid section name; expected "
		    "1 to %d characters of A-Z a-z 0-9 _ . -",
		    CFG_NAME_MAX - 1);
	else if (strcmp(name, "upseal") != 0)
		open_tunnel(p, name);
	else if (p->upseal_line != 0)
		fail(p, p->line, name, NULL, "duplicate section; first at "
		    "line %d", p->upseal_line);
	else {
		p->upseal_line = p->line;
		p->sec = SEC_UPSEAL;
	}
}

/*
 * inih's reader: hand over one physical line per call, so p->line is the
 * line inih is on. Leading blanks are dropped so that inih never takes an
 * indented line for the continuation of the previous value. Returns NULL
 * (end of input) after the first error, so parsing stops there.
 */
static char *read_line(char *buf, int num, void *stream)
{
	struct parser *p = stream;
	const char *s = p->text + p->pos, *nl;
	size_t n, skip;

	if (p->failed || p->pos >= p->len)
		return NULL;
	nl = memchr(s, '\n', p->len - p->pos);
	n = nl != NULL ? (size_t)(nl - s) : p->len - p->pos;
	p->pos += nl != NULL ? n + 1 : n;
	p->line++;
	if (memchr(s, '\0', n) != NULL) {
		fail(p, p->line, NULL, NULL, "NUL byte in the file; "
		    "expected text");
		return NULL;
	}
	if (p->line == 1 && n >= 3 && memcmp(s, "\xEF\xBB\xBF", 3) == 0) {
		s += 3;		/* UTF-8 byte order mark */
		n -= 3;
	}
	if (n > 0 && s[n - 1] == '\r')
		n--;
	if (n > (size_t)num - 1) {
		fail(p, p->line, NULL, NULL, "line is longer than %d bytes; "
		    "expected at most %d bytes per line", num - 1, num - 1);
		return NULL;
	}
	for (skip = 0; skip < n && (s[skip] == ' ' || s[skip] == '\t'); skip++)
		;
	if (skip < n && s[skip] == '[')
		on_header(p, s + skip, n - skip);
	if (p->failed)
		return NULL;
	memcpy(buf, s + skip, n - skip);
	buf[n - skip] = '\0';
	return buf;
}

static void unknown_key(struct parser *p, const char *section,
    const char *name, const struct cfg_key *keys, size_t n)
{
	char list[512] = "";
	size_t used = 0;

	for (size_t i = 0; i < n && used < sizeof list; i++)
		used += (size_t)snprintf(list + used, sizeof list - used,
		    "%s%s", i == 0 ? "" : ", ", keys[i].name);
	fail(p, p->line, section, name, "unknown key; expected one of %s%s",
	    list, keys == cfg_upseal_keys &&
	    cfg_find_key(cfg_tunnel_keys, K_TUNNEL_KEYS, name) != NULL ?
	    " (tunnel keys go in a [name] section)" : "");
}

/*
 * inih's handler, once per `key = value` line: parse the value into the
 * section's struct. It always returns 1, so that a nonzero result from
 * inih means a syntax error inih found by itself.
 */
static int on_key(void *user, const char *section, const char *name,
    const char *value)
{
	struct parser *p = user;
	bool tunnel = p->sec == SEC_TUNNEL;
	const struct cfg_key *keys = tunnel ? cfg_tunnel_keys : cfg_upseal_keys;
	size_t n = tunnel ? K_TUNNEL_KEYS : cfg_nupseal_keys;
	void *base = tunnel ? (void *)&p->cfg->tunnels[p->tunnel] : p->cfg;
	/* The reader tracks sections itself; inih cuts long names short. */
	const char *sec = tunnel ? p->cfg->tunnels[p->tunnel].name : "upseal";
	const struct cfg_key *k = cfg_find_key(keys, n, name);
	char why[CFG_WHY_MAX];

	(void)section;
	if (p->failed)
		return 1;
	if (*name == '\0')
		fail(p, p->line, NULL, NULL, SYNTAX);
	else if (p->sec == SEC_NONE)
		fail(p, p->line, NULL, name, "key before any section; expected "
		    "an [upseal] or [name] header first");
	else if (k == NULL)
		unknown_key(p, sec, name, keys, n);
	else if (p->seen[k - keys] != 0 && !k->repeat)
		fail(p, p->line, sec, name, "duplicate key; first at line %d",
		    p->seen[k - keys]);
	else if (k->client_only && p->role != CFG_CLIENT)
		fail(p, p->line, sec, name, "only meaningful in client.ini; "
		    "expected no %s in the server's file", name);
	else if (k->server_only && p->role != CFG_SERVER)
		fail(p, p->line, sec, name, "only meaningful in server.ini; "
		    "expected no %s in the client's file", name);
	else if (*value == '\0')
		fail(p, p->line, sec, name, "empty value; expected %s = %s",
		    name, k->form);
	else if (k->set(k, (char *)base + k->off, value, why) != 0)
		fail(p, p->line, sec, name, "%s", why);
	else if (p->seen[k - keys] == 0)
		p->seen[k - keys] = p->line;
	return 1;
}

/* Read the whole file into p->text (not NUL-terminated), p->len bytes. */
static int read_file(struct parser *p)
{
	FILE *f = fopen(p->path, "rb");
	int e;

	if (f == NULL) {
		fail(p, 0, NULL, NULL, "cannot read: %s", strerror(errno));
		return -1;
	}
	p->text = malloc(FILE_MAX + 1);
	if (p->text != NULL)
		p->len = fread(p->text, 1, FILE_MAX + 1, f);
	e = ferror(f) ? errno : 0;
	fclose(f);
	if (p->text == NULL)
		fail(p, 0, NULL, NULL, "cannot read: out of memory");
	else if (e != 0)
		fail(p, 0, NULL, NULL, "cannot read: %s", strerror(e));
	else if (p->len > FILE_MAX)
		fail(p, 0, NULL, NULL, "cannot read: larger than %d bytes; "
		    "expected a config file", FILE_MAX);
	return p->failed ? -1 : 0;
}

static void parse(struct parser *p)
{
	int ret = ini_parse_stream(read_line, p, on_key, p);

	if (ret > 0) {
		/* inih kept going past its error; ours, if any, came later. */
		p->failed = false;
		fail(p, ret, NULL, NULL, SYNTAX);
	} else if (ret < 0) {
		fail(p, 0, NULL, NULL, "out of memory");
	}
	if (!p->failed)
		finish_section(p);
	if (!p->failed && p->cfg->ntunnels == 0)
		fail(p, 0, NULL, NULL, NO_TUNNELS);
}

int cfg_load(const char *path, enum cfg_role role, struct cfg **out,
    char *err, size_t errlen)
{
	struct parser p = {
		.path = path, .role = role, .err = err, .errlen = errlen,
	};

	*out = NULL;
	if (errlen > 0)
		err[0] = '\0';
	p.cfg = malloc(sizeof *p.cfg);
	if (p.cfg != NULL)
		*p.cfg = cfg_defaults;
	if (p.cfg == NULL || (p.cfg->path = strdup(path)) == NULL) {
		fail(&p, 0, NULL, NULL, "out of memory");
		free(p.cfg);
		return -1;
	}
	if (read_file(&p) == 0) {
		if (compat_sha256((const unsigned char *)p.text, p.len,
		    p.cfg->text_sha256) != 0)
			fail(&p, 0, NULL, NULL, "cannot hash the file");
		parse(&p);
	}
	free(p.text);
	if (p.failed) {
		cfg_free(p.cfg);
		return -1;
	}
	*out = p.cfg;
	return 0;
}

void cfg_free(struct cfg *c)
{
	if (c == NULL)
		return;
	for (size_t i = 0; i < c->ntunnels; i++) {
		struct cfg_tunnel *t = &c->tunnels[i];
		free(t->cert);
		free(t->key);
		free(t->ca);
		free(t->server_name);
		free(t->ticket_key_file);
		free(t->pins);
		for (size_t j = 0; j < t->npin_files; j++)
			free(t->pin_files[j]);
		free(t->pin_files);
		for (size_t j = 0; j < t->ncrl_files; j++)
			free(t->crl_files[j]);
		free(t->crl_files);
		name_rules_free(t->allow, t->nallow);
	}
	free(c->tunnels);
	free(c->path);
	free(c->user);
	free(c);
}

void cfg_files(const struct cfg *c, void (*fn)(const char *path, void *arg),
    void *arg)
{
	fn(c->path, arg);
	for (size_t i = 0; i < c->ntunnels; i++) {
		const struct cfg_tunnel *t = &c->tunnels[i];
		const char *const named[] = {
			t->cert, t->key, t->ca, t->ticket_key_file,
		};
		for (size_t j = 0; j < ARRAY_LEN(named); j++)
			if (named[j] != NULL)
				fn(named[j], arg);
		for (size_t j = 0; j < t->npin_files; j++)
			fn(t->pin_files[j], arg);
		for (size_t j = 0; j < t->ncrl_files; j++)
			fn(t->crl_files[j], arg);
	}
}

struct cfg *cfg_hold(struct cfg *c)
{
	c->refs++;
	return c;
}

void cfg_release(struct cfg *c)
{
	if (c != NULL && --c->refs == 0)
		cfg_free(c);
}
