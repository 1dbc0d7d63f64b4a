#include "config_keys.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define PINS_MAX 16
#define ARRAY_LEN(a) (sizeof (a) / sizeof (a)[0])
#define HOUR_MS (3600ULL * 1000)
#define DAY_MS (24 * HOUR_MS)
#define DURATION_FORM "a duration such as 500ms, 10s, 5m"


/* Parse a duration; NULL on success, or what is wrong with it. */
static const char *duration_why(const char *text, uint64_t *ms)
{
	static const struct { const char *name; uint64_t ms; } units[] = {
		{ "ms", 1 }, { "s", 1000 }, { "m", 60 * 1000 },
		{ "h", HOUR_MS }, { "d", DAY_MS },
	};
	unsigned long long n;
	char *unit;

	if (strpbrk(text, " \t") != NULL)
		return "has a space inside";
	if (*text == '-')
		return "is negative";
	if (*text < '0' || *text > '9')
		return "is not a duration";
	errno = 0;
	n = strtoull(text, &unit, 10);
	if (errno == ERANGE)
		return "is too large";
	if (*unit == '\0') {
		*ms = 0;
		return strcmp(text, "0") == 0 ? NULL : "has no unit";
	}
	for (size_t i = 0; i < ARRAY_LEN(units); i++) {
		if (strcmp(unit, units[i].name) != 0)
			continue;
		if (n > UINT64_MAX / units[i].ms)
			return "is too large";
		*ms = n * units[i].ms;
		return NULL;
	}
	return "has an unknown unit (ms, s, m, h or d)";
}

int cfg_parse_duration(const char *text, uint64_t *ms)
{
	return duration_why(text, ms) == NULL ? 0 : -1;
}

/* Write what is wrong with a value into why (CFG_WHY_MAX bytes); -1. */
__attribute__((format(printf, 2, 3)))
static int whyf(char *why, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, CFG_WHY_MAX, fmt, ap);
	va_end(ap);
	return -1;
}

static int set_addr(const struct cfg_key *k, void *field, const char *v,
    char *why)
{
	char e[256];

	(void)k;
	if (addr_parse(v, field, e, sizeof e) != 0)
		return whyf(why, "\"%s\": %s", v, e);
	return 0;
}

static int set_path(const struct cfg_key *k, void *field, const char *v,
    char *why)
{
	char **path = field;

	(void)k;
	*path = strdup(v);
	return *path != NULL ? 0 : whyf(why, "out of memory");
}

/* The field is the tunnel itself: pins and npins go together. */
static int set_pin(const struct cfg_key *k, void *field, const char *v,
    char *why)
{
	struct cfg_tunnel *t = field;
	struct pin *pins;
	char e[200];

	(void)k;
	if (t->npins == PINS_MAX)
		return whyf(why, "too many pins; expected at most %d",
		    PINS_MAX);
	pins = realloc(t->pins, (t->npins + 1) * sizeof *pins);
	if (pins == NULL)
		return whyf(why, "out of memory");
	t->pins = pins;
	if (pin_parse(v, &pins[t->npins], e, sizeof e) != 0)
		return whyf(why, "%s; expected sha256//BASE64 "
		    "(see upseal-certs pin)", e);
	t->npins++;
	return 0;
}

/* Append a copy of v to a list of paths (the field is the list's head). */
static int add_path(char ***list, size_t *n, const char *v, char *why)
{
	char **more = realloc(*list, (*n + 1) * sizeof *more);
	if (more == NULL)
		return whyf(why, "out of memory");
	*list = more;
	if ((more[*n] = strdup(v)) == NULL)
		return whyf(why, "out of memory");
	(*n)++;
	return 0;
}

/* The field is the tunnel itself: pin_files and npin_files go together. */
static int set_pin_file(const struct cfg_key *k, void *field, const char *v,
    char *why)
{
	struct cfg_tunnel *t = field;

	(void)k;
	return add_path(&t->pin_files, &t->npin_files, v, why);
}

static int set_crl(const struct cfg_key *k, void *field, const char *v,
    char *why)
{
	struct cfg_tunnel *t = field;

	(void)k;
	return add_path(&t->crl_files, &t->ncrl_files, v, why);
}

/* allow_dns, allow_uri, allow_cn: k->kind says which (names.h). */
static int set_allow(const struct cfg_key *k, void *field, const char *v,
    char *why)
{
	struct cfg_tunnel *t = field;
	struct name_rule *more = realloc(t->allow, (t->nallow + 1) *
	    sizeof *more);

	if (more == NULL)
		return whyf(why, "out of memory");
	t->allow = more;
	if (name_rule_parse((enum name_kind)k->kind, v, &more[t->nallow], why,
	    CFG_WHY_MAX) != 0)
		return -1;
	t->nallow++;
	return 0;
}

static int set_server_name(const struct cfg_key *k, void *field, const char *v,
    char *why)
{
	struct in6_addr ip;

	if (inet_pton(AF_INET, v, &ip) == 1 || inet_pton(AF_INET6, v, &ip) == 1)
		return whyf(why, "\"%s\" is an IP address; expected a DNS "
		    "name (mbedTLS 2.28 cannot match IP addresses in "
		    "certificates)", v);
	if (!addr_is_dns_name(v))
		return whyf(why, "\"%s\" is not a DNS name; expected letters, "
		    "digits, '-' and '.', such as backend.internal", v);
	return set_path(k, field, v, why);
}

static int set_duration(const struct cfg_key *k, void *field, const char *v,
    char *why)
{
	uint64_t ms;
	const char *wrong = duration_why(v, &ms);

	if (wrong != NULL)
		return whyf(why, "\"%s\" %s; expected " DURATION_FORM, v,
		    wrong);
	if (ms < k->min || ms > k->max) {
		char top[32] = "1h";
		if (k->max != HOUR_MS && k->max % DAY_MS == 0)
			snprintf(top, sizeof top, "%llud",
			    (unsigned long long)(k->max / DAY_MS));
		return whyf(why, "\"%s\" is out of range; expected a duration "
		    "from %s to %s", v, k->min == 0 ? "0" : "1ms", top);
	}
	*(uint64_t *)field = ms;
	return 0;
}

static int set_count(const struct cfg_key *k, void *field, const char *v,
    char *why)
{
	unsigned long long n;

	if (strspn(v, "0123456789") != strlen(v))
		return whyf(why, "\"%s\" is not a number; expected %s", v,
		    k->form);
	errno = 0;
	n = strtoull(v, NULL, 10);
	if (errno == ERANGE || n < k->min || n > k->max)
		return whyf(why, "\"%s\" is out of range; expected %s", v,
		    k->form);
	*(unsigned *)field = (unsigned)n;
	return 0;
}

static int set_bool(const struct cfg_key *k, void *field, const char *v,
    char *why)
{
	static const char *const words[] = {
		"no", "false", "off", "0", "yes", "true", "on", "1",
	};

	(void)k;
	for (size_t i = 0; i < ARRAY_LEN(words); i++) {
		if (strcasecmp(v, words[i]) == 0) {
			*(bool *)field = i >= 4;
			return 0;
		}
	}
	return whyf(why, "\"%s\" is not yes or no; expected yes, no, true, "
	    "false, on, off, 1 or 0", v);
}

static int set_log_level(const struct cfg_key *k, void *field, const char *v,
    char *why)
{
	if (log_level_parse(v, field) != 0)
		return whyf(why, "\"%s\" is not a log level; expected %s", v,
		    k->form);
	return 0;
}

static int set_log_format(const struct cfg_key *k, void *field, const char *v,
    char *why)
{
	if (strcmp(v, "text") != 0 && strcmp(v, "json") != 0)
		return whyf(why, "\"%s\" is not a log format; expected %s", v,
		    k->form);
	*(bool *)field = strcmp(v, "json") == 0;
	return 0;
}

#define ADDR_FORM "HOST:PORT, [V6]:PORT or unix:/path"
#define CIPHERS_FORM "a list of ECDHE-ECDSA-CHACHA20-POLY1305, " \
	"ECDHE-ECDSA-AES128-GCM-SHA256, ECDHE-ECDSA-AES256-GCM-SHA384 " \
	"separated by ':' or ','"

/* The field is the tunnel itself: ciphers and nciphers go together. */
static int set_ciphers(const struct cfg_key *k, void *field, const char *v,
    char *why)
{
	static const struct {
		const char *name;
		enum cfg_cipher id;
	} known[] = {
		{ "ECDHE-ECDSA-CHACHA20-POLY1305", CFG_CIPHER_CHACHA20 },
		{ "ECDHE-ECDSA-AES128-GCM-SHA256", CFG_CIPHER_AES128GCM },
		{ "ECDHE-ECDSA-AES256-GCM-SHA384", CFG_CIPHER_AES256GCM },
	};
	struct cfg_tunnel *t = field;
	const char *p = v;

	t->nciphers = 0;
	while (*p != '\0') {
		size_t n = strcspn(p, ":, ");
		size_t i = 0;
		while (i < ARRAY_LEN(known) && (strlen(known[i].name) != n ||
		    strncasecmp(known[i].name, p, n) != 0))
			i++;
		if (n == 0) {
			p++;
			continue;
		}
		if (i == ARRAY_LEN(known))
			return whyf(why, "\"%.*s\" is not an offered suite; "
			    "expected %s", (int)n, p, k->form);
		for (size_t j = 0; j < t->nciphers; j++)
			if (t->ciphers[j] == known[i].id)
				return whyf(why, "\"%.*s\" is listed twice", (int)n, p);
		t->ciphers[t->nciphers++] = (unsigned char)known[i].id;
		p += n;
	}
	if (t->nciphers == 0)
		return whyf(why, "no suite; expected %s", k->form);
	return 0;
}
/* Either role's values; config.c checks that the role has this one. */
static int set_proxy_protocol(const struct cfg_key *k, void *field,
    const char *v, char *why)
{
	static const char *const names[] = { [CFG_PP_OFF] = "off",
		[CFG_PP_ACCEPT] = "accept", [CFG_PP_V1] = "v1",
		[CFG_PP_V2] = "v2" };
	for (size_t i = 0; i < ARRAY_LEN(names); i++) {
		if (strcmp(v, names[i]) == 0) {
			*(enum cfg_proxy *)field = (enum cfg_proxy)i;
			return 0;
		}
	}
	return whyf(why, "\"%s\" is not a PROXY protocol setting; expected "
	    "%s", v, k->form);
}

/* ktls = auto | off: the field is bool ktls_off. */
static int set_ktls(const struct cfg_key *k, void *field, const char *v,
    char *why)
{
	if (strcmp(v, "auto") != 0 && strcmp(v, "off") != 0)
		return whyf(why, "\"%s\" is not a kTLS mode; expected %s", v,
		    k->form);
	*(bool *)field = strcmp(v, "off") == 0;
	return 0;
}

#define T(m) offsetof(struct cfg_tunnel, m)

#define KEY(n, fn, o, f, ...) \
	{ .name = n, .set = fn, .off = o, .form = f, __VA_ARGS__ }

const struct cfg_key cfg_tunnel_keys[K_TUNNEL_KEYS] = {
	[K_LISTEN] = KEY("listen", set_addr, T(listen), ADDR_FORM),
	[K_CONNECT] = KEY("connect", set_addr, T(connect), ADDR_FORM),
	[K_CERT] = KEY("cert", set_path, T(cert), "FILE"),
	[K_KEY] = KEY("key", set_path, T(key), "FILE"),
	[K_CA] = KEY("ca", set_path, T(ca), "FILE"),
	[K_PIN] = KEY("pin", set_pin, 0, "sha256//BASE64", .repeat = true),
	[K_SERVER_NAME] = KEY("server_name", set_server_name, T(server_name),
	    "a DNS name", .client_only = true),
	[K_CONNECT_TIMEOUT] = KEY("connect_timeout", set_duration,
	    T(connect_timeout_ms), DURATION_FORM, .min = 1, .max = HOUR_MS),
	[K_HANDSHAKE_TIMEOUT] = KEY("handshake_timeout", set_duration,
	    T(handshake_timeout_ms), DURATION_FORM, .min = 1, .max = HOUR_MS),
	[K_IDLE_TIMEOUT] = KEY("idle_timeout", set_duration, T(idle_timeout_ms),
	    DURATION_FORM, .min = 0, .max = UINT64_MAX),
	[K_MAX_CONNECTIONS] = KEY("max_connections", set_count,
	    T(max_connections), "a number from 1 to 1000000",
	    .min = 1, .max = 1000000),
	[K_ALLOW_REMOTE] = KEY("allow_remote", set_bool, T(allow_remote),
	    "yes or no"),
	[K_RESUMPTION] = KEY("resumption", set_bool, T(resumption),
	    "yes or no"),
	[K_TICKET_KEY_FILE] = KEY("ticket_key_file", set_path,
	    T(ticket_key_file), "FILE", .server_only = true),
	[K_CIPHERS] = KEY("ciphers", set_ciphers, 0, CIPHERS_FORM),
	[K_POOL] = KEY("pool", set_count, T(pool), "a number from 0 to 1000",
	    .min = 0, .max = CFG_POOL_MAX, .client_only = true),
	[K_POOL_IDLE] = KEY("pool_idle", set_duration, T(pool_idle_ms),
	    DURATION_FORM, .min = 1, .max = HOUR_MS, .client_only = true),
	[K_MAX_HANDSHAKES] = KEY("max_handshakes", set_count,
	    T(max_handshakes), "a number from 1 to max_connections",
	    .min = 1, .max = 1000000, .server_only = true),
	[K_PROXY_PROTOCOL] = KEY("proxy_protocol", set_proxy_protocol,
	    T(proxy_protocol), "v2, v1 or off (server); accept or off "
	    "(client)"),
	[K_PROXY_HEADER_TIMEOUT] = KEY("proxy_header_timeout", set_duration,
	    T(proxy_header_timeout_ms), DURATION_FORM, .min = 1,
	    .max = HOUR_MS, .client_only = true),
	[K_TRUST_CLIENT_ADDRESS] = KEY("trust_client_address", set_bool,
	    T(trust_client_address), "yes or no", .server_only = true),
	[K_PIN_FILE] = KEY("pin_file", set_pin_file, 0, "FILE",
	    .repeat = true),
	[K_ALLOW_DNS] = KEY("allow_dns", set_allow, 0,
	    "a DNS name, or *.DOMAIN for one leftmost label", .repeat = true,
	    .kind = NAME_DNS),
	[K_ALLOW_URI] = KEY("allow_uri", set_allow, 0,
	    "a URI such as spiffe://trust-domain/path, or one ending in /*",
	    .repeat = true, .kind = NAME_URI),
	[K_ALLOW_CN] = KEY("allow_cn", set_allow, 0, "a commonName",
	    .repeat = true, .kind = NAME_CN),
	[K_CRL] = KEY("crl", set_crl, 0, "FILE", .repeat = true),
	[K_EXPIRY_WARNING] = KEY("expiry_warning", set_duration,
	    T(expiry_warning_ms), "a duration such as 14d or 72h",
	    .min = 0, .max = 3650 * DAY_MS),
	[K_KTLS] = KEY("ktls", set_ktls, T(ktls_off), "auto or off"),
};

/* The field is the cfg itself: status and has_status go together. */
static int set_status(const struct cfg_key *k, void *field, const char *v,
    char *why)
{
	struct cfg *c = field;
	if (set_addr(k, &c->status, v, why) != 0)
		return -1;
	c->has_status = true;
	return 0;
}

static int set_user(const struct cfg_key *k, void *field, const char *v,
    char *why)
{
	size_t n = strlen(v);
	if (n > 32 || strspn(v, "abcdefghijklmnopqrstuvwxyz"
	    "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-") != n || v[0] == '-')
		return whyf(why, "\"%s\" is not a user name; expected %s", v,
		    k->form);
	return set_path(k, field, v, why);
}

/* workers = auto | N: auto (0) is the number of cores, found at start. */
static int set_workers(const struct cfg_key *k, void *field, const char *v,
    char *why)
{
	if (strcmp(v, "auto") == 0) {
		*(unsigned *)field = 0;
		return 0;
	}
	return set_count(k, field, v, why);
}

const struct cfg_key cfg_upseal_keys[] = {
	KEY("log_level", set_log_level, offsetof(struct cfg, log_level),
	    "error, warn, info or debug"),
	KEY("log_format", set_log_format, offsetof(struct cfg, log_json),
	    "text or json"),
	KEY("drain_timeout", set_duration,
	    offsetof(struct cfg, drain_timeout_ms), DURATION_FORM,
	    .min = 0, .max = HOUR_MS),
	KEY("status", set_status, 0, ADDR_FORM),
	KEY("status_allow_remote", set_bool,
	    offsetof(struct cfg, status_allow_remote), "yes or no"),
	KEY("user", set_user, offsetof(struct cfg, user),
	    "a user name such as upseal"),
	KEY("workers", set_workers, offsetof(struct cfg, workers),
	    "auto or a number from 1 to " CFG_WORKERS_MAX_TEXT,
	    .min = 1, .max = CFG_WORKERS_MAX),
	KEY("watch", set_bool, offsetof(struct cfg, watch), "yes or no"),
	KEY("reload_interval", set_duration,
	    offsetof(struct cfg, reload_interval_ms), DURATION_FORM,
	    .min = 0, .max = HOUR_MS),
};

const size_t cfg_nupseal_keys = ARRAY_LEN(cfg_upseal_keys);

const struct cfg_key *cfg_find_key(const struct cfg_key *keys, size_t n,
    const char *name)
{
	for (size_t i = 0; i < n; i++) {
		if (strcmp(keys[i].name, name) == 0)
			return &keys[i];
	}
	return NULL;
}
