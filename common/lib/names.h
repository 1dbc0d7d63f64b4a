/*
 * names: who a certificate says its holder is, and the rules a tunnel in
 * CA mode lets in by name (allow_dns, allow_uri, allow_cn). A rule is
 * parsed and checked once, where the config is read; matching is exact
 * except for two wildcards:
 *   allow_dns = *.proxies.internal  one leftmost label: a.proxies.internal,
 *                                   not proxies.internal nor
 *                                   a.b.proxies.internal (DNS names compare
 *                                   without regard to case)
 *   allow_uri = spiffe://td/ns/STAR  (STAR: a trailing '*' after a '/')
 *                                   any non-empty rest after
 *                                   "spiffe://td/ns/", one path segment or
 *                                   more (compared byte for byte)
 *   allow_cn  = NAME                the subject's commonName, exactly
 * A certificate's names are its subjectAltName dNSName and
 * uniformResourceIdentifier entries and its subject's commonName(s).
 */
#ifndef UPSEAL_NAMES_H
#define UPSEAL_NAMES_H

#include <stdbool.h>
#include <stddef.h>

#include <mbedtls/x509_crt.h>

enum name_kind { NAME_DNS, NAME_URI, NAME_CN };

struct name_rule {
	enum name_kind kind;
	char *text;		/* as written (heap) */
};

/* The config key of a kind: "allow_dns", "allow_uri", "allow_cn". */
const char *name_kind_key(enum name_kind kind);

/*
 * Check text as a rule of kind and fill out (out->text is a heap copy:
 * name_rules_free). On error returns -1 and why says what is wrong and
 * what is expected.
 */
int name_rule_parse(enum name_kind kind, const char *text,
    struct name_rule *out, char *why, size_t whylen);

/* Whether the name (len bytes, not NUL-terminated) of rule r's kind matches r. */
bool name_rule_match(const struct name_rule *r, const char *name, size_t len);

/*
 * The first of the n rules that one of crt's names matches (its index),
 * or -1 if none does.
 */
int names_match_crt(const struct name_rule *rules, size_t n,
    const mbedtls_x509_crt *crt);

/*
 * The names crt carries, for a log line: "dns=a.example,uri=spiffe://x/y,
 * cn=a", cut short with "..." to fit out (size bytes); "none" if it has none.
 * Bytes that are not printable ASCII are written as '?'.
 */
void names_of_crt(const mbedtls_x509_crt *crt, char *out, size_t size);

/* Copy n rules (deep); NULL with n > 0: out of memory. */
struct name_rule *name_rules_copy(const struct name_rule *rules, size_t n);

/* Free n rules and the array. */
void name_rules_free(struct name_rule *rules, size_t n);

#endif
