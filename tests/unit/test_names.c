#include "test.h"

#include <stdlib.h>

#include <mbedtls/x509_crt.h>

#include "names.h"
#include "pin.h"
#include "rng.h"
#include "../../certs/x509gen.h"

/* Parse text as a rule of kind; 0 or -1 (the reason in why). */
static char why[512];

static int parse(enum name_kind kind, const char *text, struct name_rule *r)
{
	why[0] = '\0';
	return name_rule_parse(kind, text, r, why, sizeof why);
}

static bool matches(enum name_kind kind, const char *rule, const char *name)
{
	struct name_rule r;
	if (parse(kind, rule, &r) != 0) {
		test_fail(__FILE__, __LINE__, "rule %s refused: %s", rule, why);
		return false;
	}
	bool m = name_rule_match(&r, name, strlen(name));
	free(r.text);
	return m;
}

TEST(names_dns_rules)
{
	static const struct {
		const char *rule, *name;
		bool match;
	} table[] = {
		{ "a.proxies.internal", "a.proxies.internal", true },
		{ "a.proxies.internal", "A.Proxies.Internal", true },
		{ "a.proxies.internal", "b.proxies.internal", false },
		{ "a.proxies.internal", "a.proxies.internal.", false },
		{ "a.proxies.internal", "xa.proxies.internal", false },
		{ "*.proxies.internal", "a.proxies.internal", true },
		{ "*.proxies.internal", "host-7.PROXIES.internal", true },
		{ "*.proxies.internal", "proxies.internal", false },
		{ "*.proxies.internal", "a.b.proxies.internal", false },
		{ "*.proxies.internal", ".proxies.internal", false },
		{ "*.proxies.internal", "*.proxies.internal", false },
		{ "*.proxies.internal", "a.proxies.internal.evil", false },
		{ "*.proxies.internal", "a.xproxies.internal", false },
		{ "*.proxies.internal", "aproxies.internal", false },
	};
	for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
		bool got = matches(NAME_DNS, table[i].rule, table[i].name);
		if (got != table[i].match)
			test_fail(__FILE__, __LINE__, "allow_dns = %s, name %s: "
			    "got %d, want %d", table[i].rule, table[i].name, got,
			    table[i].match);
	}
}

TEST(names_uri_rules)
{
	static const struct {
		const char *rule, *name;
		bool match;
	} table[] = {
		{ "spiffe://prod.example/ns/web/sa/a",
		    "spiffe://prod.example/ns/web/sa/a", true },
		{ "spiffe://prod.example/ns/web/sa/a",
		    "spiffe://prod.example/ns/web/sa/ab", false },
		{ "spiffe://prod.example/ns/web/sa/a",
		    "spiffe://prod.example/ns/web/sa/A", false },
		{ "spiffe://prod.example/ns/web/*",
		    "spiffe://prod.example/ns/web/sa/a", true },
		{ "spiffe://prod.example/ns/web/*",
		    "spiffe://prod.example/ns/web/x", true },
		{ "spiffe://prod.example/ns/web/*",
		    "spiffe://prod.example/ns/web/", false },
		{ "spiffe://prod.example/ns/web/*",
		    "spiffe://prod.example/ns/web", false },
		{ "spiffe://prod.example/ns/web/*",
		    "spiffe://prod.example/ns/webx/a", false },
		{ "spiffe://prod.example/ns/web/*",
		    "spiffe://other.example/ns/web/a", false },
		{ "spiffe://prod.example/*", "spiffe://prod.example/a", true },
	};
	for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
		bool got = matches(NAME_URI, table[i].rule, table[i].name);
		if (got != table[i].match)
			test_fail(__FILE__, __LINE__, "allow_uri = %s, name %s: "
			    "got %d, want %d", table[i].rule, table[i].name, got,
			    table[i].match);
	}
	CHECK(matches(NAME_CN, "proxy-1", "proxy-1"));
	CHECK(!matches(NAME_CN, "proxy-1", "Proxy-1"));
	CHECK(!matches(NAME_CN, "proxy-1", "proxy-10"));
}

TEST(names_invalid_rules)
{
	static const struct {
		enum name_kind kind;
		const char *rule, *why;
	} table[] = {
		{ NAME_DNS, "a.*.internal", "not the whole leftmost label" },
		{ NAME_DNS, "*a.internal", "not the whole leftmost label" },
		{ NAME_DNS, "*.*.internal", "not the whole leftmost label" },
		{ NAME_DNS, "*", "not the whole leftmost label" },
		{ NAME_DNS, "*.internal", "every name of one label" },
		{ NAME_DNS, "a..internal", "is not a DNS name" },
		{ NAME_DNS, "a b.internal", "is not a DNS name" },
		{ NAME_DNS, "-a.internal", "is not a DNS name" },
		{ NAME_DNS, "", "is empty" },
		{ NAME_URI, "prod.example/ns", "no scheme://authority" },
		{ NAME_URI, "spiffe:prod", "no scheme://authority" },
		{ NAME_URI, "spiffe://", "no scheme://authority" },
		{ NAME_URI, "spiffe:///path", "no scheme://authority" },
		{ NAME_URI, "spiffe://td/a b", "a space" },
		{ NAME_URI, "spiffe://td/*/a", "trailing /*" },
		{ NAME_URI, "spiffe://td/a*", "trailing /*" },
		{ NAME_URI, "spiffe://*", "trailing /*" },
		{ NAME_CN, "0123456789012345678901234567890123456789"
		    "01234567890123456789012345", "longer than a commonName" },
	};
	for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
		struct name_rule r;
		if (parse(table[i].kind, table[i].rule, &r) == 0) {
			test_fail(__FILE__, __LINE__, "%s = %s was accepted",
			    name_kind_key(table[i].kind), table[i].rule);
			free(r.text);
			continue;
		}
		CHECK_CONTAINS(why, table[i].why);
	}
}

/* A self-signed certificate with these names, parsed into crt. */
static int make_crt(mbedtls_x509_crt *crt, const char *cn,
    const char *const *dns, size_t ndns, const char *const *uri, size_t nuri)
{
	char err[300];
	mbedtls_pk_context key;
	unsigned char *pem = NULL;
	size_t len;
	mbedtls_pk_init(&key);
	struct x509gen_opts o = { .name = cn, .days = 1, .dns = dns,
		.ndns = ndns, .uri = uri, .nuri = nuri };
	int rc = rng_init() != 0 || x509gen_key(&key, err, sizeof err) != 0 ||
	    x509gen_crt_pem(&o, &key, &pem, &len, err, sizeof err) != 0 ? -1 :
	    mbedtls_x509_crt_parse(crt, pem, len + 1);
	if (rc != 0)
		test_fail(__FILE__, __LINE__, "making a certificate: %d %s", rc,
		    err);
	free(pem);
	mbedtls_pk_free(&key);
	return rc;
}

TEST(names_of_a_certificate)
{
	static const char *const dns[] = { "a.proxies.internal", "alt.example" };
	static const char *const uri[] = { "spiffe://prod.example/ns/web/sa/a" };
	mbedtls_x509_crt crt;
	mbedtls_x509_crt_init(&crt);
	if (make_crt(&crt, "proxy-a", dns, 2, uri, 1) != 0)
		return;
	char out[192];
	names_of_crt(&crt, out, sizeof out);
	CHECK_STR(out, "dns=a.proxies.internal,dns=alt.example,"
	    "uri=spiffe://prod.example/ns/web/sa/a,cn=proxy-a");
	names_of_crt(&crt, out, 40);
	CHECK_STR(out, "dns=a.proxies.internal,...");
	CHECK(strlen(out) < 40);

	struct name_rule rules[4];
	CHECK_INT(parse(NAME_DNS, "*.other.internal", &rules[0]), 0);
	CHECK_INT(parse(NAME_URI, "spiffe://prod.example/ns/web/*", &rules[1]), 0);
	CHECK_INT(parse(NAME_DNS, "*.proxies.internal", &rules[2]), 0);
	CHECK_INT(parse(NAME_CN, "proxy-a", &rules[3]), 0);
	/* The first rule in the order written that matches: */
	CHECK_INT(names_match_crt(rules, 4, &crt), 1);
	CHECK_INT(names_match_crt(rules, 1, &crt), -1);
	CHECK_INT(names_match_crt(&rules[2], 2, &crt), 0);
	CHECK_INT(names_match_crt(&rules[3], 1, &crt), 0);
	struct name_rule *copy = name_rules_copy(rules, 4);
	CHECK(copy != NULL && strcmp(copy[3].text, "proxy-a") == 0);
	name_rules_free(copy, 4);
	for (size_t i = 0; i < 4; i++)
		free(rules[i].text);
	mbedtls_x509_crt_free(&crt);

	/* Without subjectAltName entries of these kinds, the CN alone. */
	mbedtls_x509_crt_init(&crt);
	if (make_crt(&crt, "only-cn", NULL, 0, NULL, 0) != 0)
		return;
	names_of_crt(&crt, out, sizeof out);
	CHECK_STR(out, "dns=only-cn,cn=only-cn");
	mbedtls_x509_crt_free(&crt);
}

TEST(pin_list_files)
{
	static const char good[] =
	    "# proxies\n"
	    "\n"
	    "sha256//AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n"
	    "   sha256//O9hN2JLFx3BnqtJ6rEEWIr6CWfFpxvkWmIgBh868w+I=  # host b\r\n"
	    "\t# indented comment\n"
	    "sha256//AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
	char err[600];
	struct pin *pins = NULL;
	size_t n = 0;
	CHECK_INT(pin_list_parse(good, strlen(good), "p.pins", &pins, &n, err,
	    sizeof err), 0);
	CHECK_INT(n, 3);
	CHECK_INT(pin_set_sort(pins, n), 2);
	struct pin want;
	CHECK_INT(pin_parse("sha256//O9hN2JLFx3BnqtJ6rEEWIr6CWfFpxvkWmIgBh868w+I=",
	    &want, err, sizeof err), 0);
	CHECK(pin_set_has(&want, pins, 2));
	want.hash[0] ^= 1;
	CHECK(!pin_set_has(&want, pins, 2));

	static const struct {
		const char *text, *err;
	} bad[] = {
		{ "sha256//AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\nnope\n",
		    "p.pins:2: \"nope\": expected sha256//BASE64" },
		{ "\n\n\nsha256//AAECAwQF\n", "p.pins:4: \"sha256//AAECAwQF\": "
		    "decodes to 6 bytes" },
		{ "sha256//AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8= x\n",
		    "p.pins:1: \"sha256//AAECAwQFBgcI...\" is too long" },
		{ "sha256//AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=AAAAAAAA\n",
		    "p.pins:1: \"sha256//AAECAwQFBgcI...\" is too long" },
		{ "x\0y\n", "p.pins:1: NUL byte" },
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		size_t len = i == 4 ? 4 : strlen(bad[i].text);
		size_t before = n;
		CHECK_INT(pin_list_parse(bad[i].text, len, "p.pins", &pins, &n,
		    err, sizeof err), -1);
		CHECK_CONTAINS(err, bad[i].err);
		CHECK_INT(n, before);
	}
	free(pins);

	/* A file of 10,000 pins: read, sorted, each found. */
	char *path = malloc(strlen(test_tmpdir()) + 16);
	sprintf(path, "%s/big.pins", test_tmpdir());
	FILE *f = fopen(path, "w");
	CHECK(f != NULL);
	struct pin p;
	for (unsigned i = 0; f != NULL && i < 10000; i++) {
		memset(p.hash, 0, sizeof p.hash);
		p.hash[0] = (unsigned char)(i >> 8);
		p.hash[1] = (unsigned char)i;
		p.hash[31] = 7;
		char text[PIN_TEXT_MAX];
		pin_format(&p, text);
		fprintf(f, "%s\n", text);
	}
	if (f != NULL)
		fclose(f);
	pins = NULL;
	n = 0;
	CHECK_INT(pin_list_read(path, &pins, &n, err, sizeof err), 0);
	CHECK_INT(pin_set_sort(pins, n), 10000);
	memset(p.hash, 0, sizeof p.hash);
	p.hash[0] = 9999 >> 8;
	p.hash[1] = 9999 & 0xff;
	p.hash[31] = 7;
	CHECK(pin_set_has(&p, pins, n));
	p.hash[31] = 8;
	CHECK(!pin_set_has(&p, pins, n));
	free(pins);
	CHECK_INT(pin_list_read("/nonexistent/x.pins", &pins, &n, err,
	    sizeof err), -1);
	CHECK_CONTAINS(err, "/nonexistent/x.pins: cannot read: No such file");
	free(path);
}
