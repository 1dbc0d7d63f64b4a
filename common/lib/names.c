#include "names.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <mbedtls/asn1.h>
#include <mbedtls/oid.h>

#include "addr.h"

/* GeneralName tags: [2] dNSName, [6] uniformResourceIdentifier. */
#define GN_DNS 2
#define GN_URI 6
/* A URI rule or name longer than this is not one we take. */
#define URI_MAX 2048

static const char *const keys[] = { "allow_dns", "allow_uri", "allow_cn" };

const char *name_kind_key(enum name_kind kind)
{
	return keys[kind];
}

static int whyf(char *why, size_t whylen, const char *msg, const char *v)
{
	snprintf(why, whylen, "\"%s\" %s", v, msg);
	return -1;
}

static int dns_rule_ok(const char *v, char *why, size_t whylen)
{
	const char *rest = strncmp(v, "*.", 2) == 0 ? v + 2 : v;
	if (strchr(rest, '*') != NULL)
		return whyf(why, whylen, "has a '*' that is not the whole "
		    "leftmost label; expected a DNS name such as "
		    "a.proxies.internal, or *.proxies.internal for one label", v);
	if (!addr_is_dns_name(rest))
		return whyf(why, whylen, "is not a DNS name; expected letters, "
		    "digits, '-' and '.', such as a.proxies.internal or "
		    "*.proxies.internal", v);
	if (rest != v && strchr(rest, '.') == NULL)
		return whyf(why, whylen, "would match every name of one label; "
		    "expected *.DOMAIN with a dot in DOMAIN, such as "
		    "*.proxies.internal", v);
	return 0;
}

static bool uri_char_ok(unsigned char c)
{
	return c > 0x20 && c < 0x7f;
}

static int uri_rule_ok(const char *v, char *why, size_t whylen)
{
	static const char form[] = "; expected a URI such as "
	    "spiffe://trust-domain/path, optionally ending in /* for every "
	    "path below";
	char msg[300];
	size_t n = strlen(v), scheme = 0;
	if (n > URI_MAX)
		return whyf(why, whylen, "is too long for a URI rule", "...");
	while ((v[scheme] >= 'a' && v[scheme] <= 'z') ||
	    (v[scheme] >= 'A' && v[scheme] <= 'Z') ||
	    (scheme > 0 && ((v[scheme] >= '0' && v[scheme] <= '9') ||
	    v[scheme] == '+' || v[scheme] == '-' || v[scheme] == '.')))
		scheme++;
	if (scheme == 0 || strncmp(v + scheme, "://", 3) != 0 ||
	    v[scheme + 3] == '\0' || v[scheme + 3] == '/') {
		snprintf(msg, sizeof msg, "has no scheme://authority%s", form);
		return whyf(why, whylen, msg, v);
	}
	for (size_t i = 0; i < n; i++) {
		if (!uri_char_ok((unsigned char)v[i])) {
			snprintf(msg, sizeof msg, "has a space or a byte that "
			    "is not printable ASCII%s", form);
			return whyf(why, whylen, msg, v);
		}
		if (v[i] == '*' && (i + 1 != n || i == 0 || v[i - 1] != '/' ||
		    i < scheme + 4)) {
			snprintf(msg, sizeof msg, "has a '*' that is not a "
			    "trailing /* after the authority%s", form);
			return whyf(why, whylen, msg, v);
		}
	}
	return 0;
}

int name_rule_parse(enum name_kind kind, const char *text,
    struct name_rule *out, char *why, size_t whylen)
{
	int rc = 0;
	if (*text == '\0')
		return whyf(why, whylen, "is empty; expected a name", text);
	if (kind == NAME_DNS)
		rc = dns_rule_ok(text, why, whylen);
	else if (kind == NAME_URI)
		rc = uri_rule_ok(text, why, whylen);
	else if (strlen(text) > 64)
		rc = whyf(why, whylen, "is longer than a commonName may be "
		    "(64 characters)", text);
	if (rc != 0)
		return rc;
	out->kind = kind;
	out->text = strdup(text);
	if (out->text == NULL) {
		snprintf(why, whylen, "out of memory");
		return -1;
	}
	return 0;
}

/* A name of a certificate fit to be matched by a DNS wildcard's label. */
static bool is_label(const char *s, size_t n)
{
	if (n == 0)
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		    (c >= '0' && c <= '9') || c == '-' || c == '_'))
			return false;
	}
	return true;
}

bool name_rule_match(const struct name_rule *r, const char *name, size_t len)
{
	const char *t = r->text;
	size_t tn = strlen(t);
	switch (r->kind) {
	case NAME_DNS:
		if (strncmp(t, "*.", 2) == 0) {
			/* "*.d": one label, then ".d" exactly. */
			const char *dot = memchr(name, '.', len);
			if (dot == NULL || !is_label(name, (size_t)(dot - name)))
				return false;
			size_t rest = len - (size_t)(dot - name);
			return rest == tn - 1 &&
			    strncasecmp(dot, t + 1, rest) == 0;
		}
		return len == tn && strncasecmp(name, t, len) == 0;
	case NAME_URI:
		if (tn >= 2 && t[tn - 1] == '*') {
			/* "p/" and '*': the prefix "p/", then anything non-empty. */
			return len > tn - 1 && memcmp(name, t, tn - 1) == 0 &&
			    memchr(name, '\0', len) == NULL;
		}
		return len == tn && memcmp(name, t, len) == 0;
	case NAME_CN:
		return len == tn && memcmp(name, t, len) == 0;
	}
	return false;
}

/* Call fn for each name of crt until it returns true; true if one did. */
static bool each_name(const mbedtls_x509_crt *crt,
    bool (*fn)(void *arg, enum name_kind kind, const char *s, size_t n),
    void *arg)
{
	for (const mbedtls_x509_sequence *san = &crt->subject_alt_names;
	    san != NULL; san = san->next) {
		const mbedtls_x509_buf *b = &san->buf;
		if (b->p == NULL || b->len == 0 ||
		    (b->tag & MBEDTLS_ASN1_TAG_CLASS_MASK) !=
		    MBEDTLS_ASN1_CONTEXT_SPECIFIC)
			continue;
		int type = b->tag & MBEDTLS_ASN1_TAG_VALUE_MASK;
		if (type == GN_DNS && fn(arg, NAME_DNS, (const char *)b->p,
		    b->len))
			return true;
		if (type == GN_URI && fn(arg, NAME_URI, (const char *)b->p,
		    b->len))
			return true;
	}
	for (const mbedtls_x509_name *a = &crt->subject; a != NULL; a = a->next) {
		if (a->oid.p == NULL || MBEDTLS_OID_CMP(MBEDTLS_OID_AT_CN,
		    &a->oid) != 0)
			continue;
		if (fn(arg, NAME_CN, (const char *)a->val.p, a->val.len))
			return true;
	}
	return false;
}

struct matching {
	const struct name_rule *rule;
};

static bool match_one(void *arg, enum name_kind kind, const char *s, size_t n)
{
	struct matching *m = arg;
	return m->rule->kind == kind && name_rule_match(m->rule, s, n);
}

int names_match_crt(const struct name_rule *rules, size_t n,
    const mbedtls_x509_crt *crt)
{
	/* Rules in the order written: the first that matches is named. */
	for (size_t i = 0; i < n; i++) {
		struct matching m = { .rule = &rules[i] };
		if (each_name(crt, match_one, &m))
			return (int)i;
	}
	return -1;
}

struct listing {
	char *out;
	size_t size, used;
	bool full;
};

static bool list_one(void *arg, enum name_kind kind, const char *s, size_t n)
{
	static const char *const tags[] = { "dns=", "uri=", "cn=" };
	struct listing *l = arg;
	size_t need = (l->used ? 1 : 0) + strlen(tags[kind]) + n;
	/* Room for "..." and the NUL after whatever fits. */
	if (l->used + need + 4 > l->size) {
		l->full = true;
		return true;
	}
	if (l->used)
		l->out[l->used++] = ',';
	memcpy(l->out + l->used, tags[kind], strlen(tags[kind]));
	l->used += strlen(tags[kind]);
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		l->out[l->used++] = c > 0x20 && c < 0x7f && c != ',' ? (char)c :
		    '?';
	}
	l->out[l->used] = '\0';
	return false;
}

void names_of_crt(const mbedtls_x509_crt *crt, char *out, size_t size)
{
	if (size < 8) {
		if (size > 0)
			out[0] = '\0';
		return;
	}
	struct listing l = { .out = out, .size = size };
	out[0] = '\0';
	each_name(crt, list_one, &l);
	if (l.full)
		snprintf(out + l.used, size - l.used, "%s...", l.used ? "," : "");
	else if (l.used == 0)
		snprintf(out, size, "none");
}

struct name_rule *name_rules_copy(const struct name_rule *rules, size_t n)
{
	if (n == 0)
		return NULL;
	struct name_rule *c = calloc(n, sizeof *c);
	if (c == NULL)
		return NULL;
	for (size_t i = 0; i < n; i++) {
		c[i].kind = rules[i].kind;
		if ((c[i].text = strdup(rules[i].text)) == NULL) {
			name_rules_free(c, i);
			return NULL;
		}
	}
	return c;
}

void name_rules_free(struct name_rule *rules, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(rules[i].text);
	free(rules);
}
