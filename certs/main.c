/*
 * upseal-certs: make upseal identities (keys and certificates, optionally
 * from a CA it also makes) and print pins, without the openssl command line.
 * The command line is read here; keys and certificates are made in x509gen,
 * files are written by outfile.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mbedtls/platform_util.h>

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include "crlgen.h"
#include "names.h"
#include "compat.h"
#include "outfile.h"
#include "pin.h"
#include "rng.h"
#include "x509gen.h"

#define VERSION "0.1.0"
#define SAN_MAX 64		/* of each kind, --dns and --ip */
#define DAYS_NEW 825
#define DAYS_CA 3650
#define ERR_MAX 4608		/* room for two paths */

static const char usage_text[] =
"usage: upseal-certs new NAME [--dir DIR] [--days N] [--dns HOST]... [--ip ADDR]...\n"
"                             [--uri URI]... [--ca DIR/CANAME] [--force]\n"
"       upseal-certs ca NAME [--dir DIR] [--days N] [--force]\n"
"       upseal-certs revoke --ca DIR/CANAME [--days N] [CERT]...\n"
"       upseal-certs pin FILE\n"
"       upseal-certs --help | --version\n"
"\n"
"Makes the keys and certificates upseal sidecars use, and prints their pins.\n"
"\n"
"  new NAME   an ECDSA P-256 key DIR/NAME.key (mode 0600) and a certificate\n"
"             DIR/NAME.crt (CN=NAME, for TLS server and client use),\n"
"             self-signed, or signed by the CA given with --ca\n"
"  ca NAME    a CA: key DIR/NAME.key and self-signed CA certificate DIR/NAME.crt\n"
"  revoke     add each CERT (a certificate the CA issued) to the CA's CRL,\n"
"             DIR/CANAME.crl, created or extended, signed with the CA's key,\n"
"             valid --days (default 30); with no CERT, sign it again with\n"
"             new dates (do that before nextUpdate)\n"
"  pin FILE   the pin of a certificate (the first of a chain), private key or\n"
"             public key, PEM or DER\n"
"\n"
"  --dir DIR        where to write (default .; made with mode 0700 if missing)\n"
"  --days N         validity, 1..36500 days (default 825 for new, 3650 for ca,\n"
"                   30 for revoke: the CRL's nextUpdate)\n"
"  --dns HOST       a DNS name for subjectAltName (repeatable)\n"
"  --ip ADDR        an IPv4 or IPv6 address for subjectAltName (repeatable);\n"
"                   with neither --dns nor --ip, subjectAltName is DNS:NAME\n"
"  --uri URI        a URI for subjectAltName, such as a SPIFFE ID\n"
"                   spiffe://trust-domain/path (repeatable)\n"
"  --ca DIR/CANAME  sign with DIR/CANAME.key and DIR/CANAME.crt; a directory\n"
"                   DIR alone names the one CA in it\n"
"  --force          replace an existing DIR/NAME.key and DIR/NAME.crt\n"
"  -h, --help       this text\n"
"  --version        the version\n"
"\n"
"NAME is letters, digits, '.', '_' and '-', not starting with '.'.\n"
"new, ca and pin print the pin (sha256//BASE64) alone on standard output\n"
"(revoke prints the CRL's path);\n"
"everything else goes to standard error. Exit status: 0 done, 1 failed,\n"
"2 bad usage.\n";

enum cmd { CMD_NEW, CMD_CA, CMD_PIN, CMD_REVOKE };

struct args {
	enum cmd cmd;
	const char *name;	/* NAME, or FILE for pin */
	const char *dir;
	const char *days_text;
	unsigned days;
	const char *dns[SAN_MAX];
	size_t ndns;
	struct x509gen_ip ip[SAN_MAX];
	size_t nip;
	const char *uri[SAN_MAX];
	size_t nuri;
	const char *ca;
	bool force;
	const char *certs[SAN_MAX];	/* revoke's CERTs */
	size_t ncerts;
	char ca_buf[PATH_MAX];		/* --ca DIR resolved */
};

/* Parsing ends: go on, or exit with this status. */
enum { ARGS_OK = -1 };

static int usage_error(const char *fmt, ...)
	__attribute__((format(printf, 1, 2)));

static int usage_error(const char *fmt, ...)
{
	va_list ap;
	fputs("upseal-certs: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputs("\nTry 'upseal-certs --help'.\n", stderr);
	return 2;
}

static bool name_ok(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > X509GEN_NAME_MAX || s[0] == '.')
		return false;
	return strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	    "0123456789._-") == n;
}

/* A host name: dot-separated labels of 1..63 [A-Za-z0-9_-]; "*." first ok. */
static bool dns_ok(const char *s)
{
	static const char label_chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
	    "abcdefghijklmnopqrstuvwxyz0123456789-_";
	size_t n = strlen(s);
	if (n == 0 || n > 253)
		return false;
	if (strncmp(s, "*.", 2) == 0)
		s += 2;
	for (;;) {
		size_t label = strspn(s, label_chars);
		if (label == 0 || label > 63)
			return false;
		s += label;
		if (*s == '\0')
			return true;
		if (*s != '.')
			return false;
		s++;
	}
}

static bool ip_parse(const char *s, struct x509gen_ip *out)
{
	if (inet_pton(AF_INET, s, out->addr) == 1) {
		out->len = 4;
		return true;
	}
	if (inet_pton(AF_INET6, s, out->addr) == 1) {
		out->len = 16;
		return true;
	}
	return false;
}

static bool days_parse(const char *s, unsigned *out)
{
	char *end;
	if (*s < '0' || *s > '9')
		return false;
	errno = 0;
	unsigned long v = strtoul(s, &end, 10);
	if (errno != 0 || *end != '\0' || v < 1 || v > X509GEN_DAYS_MAX)
		return false;
	*out = (unsigned)v;
	return true;
}

static const char *const cmd_names[] = { "new", "ca", "pin", "revoke" };

/* Read an option with a value: "--opt VALUE" or "--opt=VALUE". */
static int option_value(int argc, char **argv, int *i, const char *opt,
    const char **out)
{
	const char *arg = argv[*i];
	size_t n = strlen(opt);
	if (arg[n] == '=') {
		*out = arg + n + 1;
	} else if (*i + 1 < argc) {
		*out = argv[++*i];
	} else {
		return usage_error("%s needs a value", opt);
	}
	if (**out == '\0')
		return usage_error("%s needs a value", opt);
	return ARGS_OK;
}

/* The option name of arg: "--dir" for "--dir=x". */
static bool is_opt(const char *arg, const char *opt)
{
	size_t n = strlen(opt);
	return strncmp(arg, opt, n) == 0 && (arg[n] == '\0' || arg[n] == '=');
}

static int parse_option(int argc, char **argv, int *i, struct args *a)
{
	const char *arg = argv[*i], *v = NULL;
	const char *cmd = cmd_names[a->cmd];
	int rc;

	if (strcmp(arg, "--force") == 0) {
		if (a->cmd == CMD_PIN || a->cmd == CMD_REVOKE)
			return usage_error("'pin' takes no --force");
		a->force = true;
		return ARGS_OK;
	}
	if (is_opt(arg, "--dir") || is_opt(arg, "--days") || is_opt(arg, "--ca") ||
	    is_opt(arg, "--dns") || is_opt(arg, "--ip") || is_opt(arg, "--uri")) {
		size_t n = strcspn(arg, "=");
		char opt[8];
		snprintf(opt, sizeof opt, "%.*s", (int)n, arg);
		if (a->cmd == CMD_PIN || (a->cmd == CMD_CA &&
		    (strcmp(opt, "--dns") == 0 || strcmp(opt, "--ip") == 0 ||
		    strcmp(opt, "--uri") == 0 || strcmp(opt, "--ca") == 0)) ||
		    (a->cmd == CMD_REVOKE && strcmp(opt, "--ca") != 0 &&
		    strcmp(opt, "--days") != 0))
			return usage_error("'%s' takes no %s", cmd, opt);
		if ((rc = option_value(argc, argv, i, opt, &v)) != ARGS_OK)
			return rc;
		if (strcmp(opt, "--dir") == 0) {
			if (a->dir != NULL)
				return usage_error("--dir given twice");
			a->dir = v;
		} else if (strcmp(opt, "--days") == 0) {
			if (a->days_text != NULL)
				return usage_error("--days given twice");
			if (!days_parse(v, &a->days))
				return usage_error("--days %s: expected a whole "
				    "number of days from 1 to %d", v, X509GEN_DAYS_MAX);
			a->days_text = v;
		} else if (strcmp(opt, "--ca") == 0) {
			if (a->ca != NULL)
				return usage_error("--ca given twice");
			a->ca = v;
		} else if (strcmp(opt, "--dns") == 0) {
			if (a->ndns == SAN_MAX)
				return usage_error("more than %d --dns", SAN_MAX);
			if (!dns_ok(v))
				return usage_error("--dns %s: expected a host name "
				    "such as backend.internal or *.example.com", v);
			a->dns[a->ndns++] = v;
		} else if (strcmp(opt, "--uri") == 0) {
			struct name_rule r;
			char why[400];
			if (a->nuri == SAN_MAX)
				return usage_error("more than %d --uri", SAN_MAX);
			if (strchr(v, '*') != NULL)
				return usage_error("--uri %s: a certificate's URI "
				    "has no wildcard; expected a URI such as "
				    "spiffe://trust-domain/path", v);
			if (name_rule_parse(NAME_URI, v, &r, why, sizeof why) != 0)
				return usage_error("--uri %s", why);
			free(r.text);
			a->uri[a->nuri++] = v;
		} else {
			if (a->nip == SAN_MAX)
				return usage_error("more than %d --ip", SAN_MAX);
			if (!ip_parse(v, &a->ip[a->nip]))
				return usage_error("--ip %s: expected an IPv4 or IPv6 "
				    "address such as 10.0.0.7 or fd00::7", v);
			a->nip++;
		}
		return ARGS_OK;
	}
	return usage_error("unknown option %s for '%s'", arg, cmd);
}

/* ARGS_OK, or the exit status (0 after --help or --version). */
static int parse_args(int argc, char **argv, struct args *a)
{
	memset(a, 0, sizeof *a);
	if (argc < 2)
		return usage_error("a command is needed: new, ca or pin");
	const char *c = argv[1];
	if (strcmp(c, "-h") == 0 || strcmp(c, "--help") == 0 ||
	    strcmp(c, "help") == 0) {
		fputs(usage_text, stdout);
		return 0;
	}
	if (strcmp(c, "--version") == 0) {
		puts("upseal-certs " VERSION);
		return 0;
	}
	if (strcmp(c, "new") == 0)
		a->cmd = CMD_NEW;
	else if (strcmp(c, "ca") == 0)
		a->cmd = CMD_CA;
	else if (strcmp(c, "pin") == 0)
		a->cmd = CMD_PIN;
	else if (strcmp(c, "revoke") == 0)
		a->cmd = CMD_REVOKE;
	else
		return usage_error("unknown command '%s'; expected new, ca, "
		    "revoke or pin", c);

	bool options_done = false;
	for (int i = 2; i < argc; i++) {
		const char *arg = argv[i];
		if (!options_done && (strcmp(arg, "-h") == 0 ||
		    strcmp(arg, "--help") == 0)) {
			fputs(usage_text, stdout);
			return 0;
		}
		if (!options_done && strcmp(arg, "--") == 0) {
			options_done = true;
			continue;
		}
		if (!options_done && arg[0] == '-' && arg[1] != '\0') {
			int rc = parse_option(argc, argv, &i, a);
			if (rc != ARGS_OK)
				return rc;
			continue;
		}
		if (a->cmd == CMD_REVOKE) {
			if (a->ncerts == SAN_MAX)
				return usage_error("more than %d CERT", SAN_MAX);
			a->certs[a->ncerts++] = arg;
			continue;
		}
		if (a->name != NULL)
			return usage_error("unexpected argument '%s'", arg);
		a->name = arg;
	}
	if (a->cmd == CMD_REVOKE) {
		if (a->ca == NULL)
			return usage_error("'revoke' needs --ca DIR/CANAME");
		if (a->days == 0)
			a->days = CRLGEN_DAYS_DEFAULT;
		return ARGS_OK;
	}
	if (a->name == NULL)
		return usage_error("'%s' needs a %s", c,
		    a->cmd == CMD_PIN ? "FILE" : "NAME");
	if (a->cmd != CMD_PIN && !name_ok(a->name))
		return usage_error("NAME '%s': expected 1 to %d letters, digits, "
		    "'.', '_' or '-', not starting with '.'", a->name,
		    X509GEN_NAME_MAX);
	if (a->dir == NULL)
		a->dir = ".";
	if (a->days == 0)
		a->days = a->cmd == CMD_CA ? DAYS_CA : DAYS_NEW;
	return ARGS_OK;
}

static int fail(const char *err)
{
	fprintf(stderr, "upseal-certs: %s\n", err);
	return 1;
}

/* Print the pin alone on stdout; a failed write is an error too. */
static int print_pin(const struct pin *p)
{
	char text[PIN_TEXT_MAX];
	pin_format(p, text);
	if (printf("%s\n", text) < 0 || fflush(stdout) != 0)
		return fail("cannot write to standard output");
	return 0;
}

/*
 * --ca DIR: the one CA in DIR (NAME.crt, a CA certificate, with NAME.key
 * beside it), as DIR/NAME in a->ca_buf; --ca DIR/CANAME is kept as is.
 */
static int resolve_ca(struct args *a, char *err, size_t errlen)
{
	struct stat st;
	if (a->ca == NULL || stat(a->ca, &st) != 0 || !S_ISDIR(st.st_mode))
		return 0;
	DIR *d = opendir(a->ca);
	if (d == NULL) {
		snprintf(err, errlen, "--ca %s: %s", a->ca, strerror(errno));
		return -1;
	}
	int found = 0;
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		size_t n = strlen(de->d_name);
		char base[PATH_MAX], key[PATH_MAX + 8];
		if (n < 5 || strcmp(de->d_name + n - 4, ".crt") != 0 ||
		    snprintf(base, sizeof base, "%s/%.*s", a->ca, (int)(n - 4),
		    de->d_name) >= (int)sizeof base)
			continue;
		snprintf(key, sizeof key, "%s.key", base);
		if (access(key, F_OK) != 0)
			continue;
		mbedtls_x509_crt c;
		mbedtls_x509_crt_init(&c);
		char crt[PATH_MAX + 8];
		snprintf(crt, sizeof crt, "%s.crt", base);
		if (mbedtls_x509_crt_parse_file(&c, crt) == 0 &&
		    compat_crt_is_ca(&c)) {
			found++;
			snprintf(a->ca_buf, sizeof a->ca_buf, "%s", base);
		}
		mbedtls_x509_crt_free(&c);
	}
	closedir(d);
	if (found != 1) {
		snprintf(err, errlen, "--ca %s: %s; name it as --ca DIR/CANAME",
		    a->ca, found ? "more than one CA in the directory" :
		    "no CA (CANAME.crt with CANAME.key) in the directory");
		return -1;
	}
	a->ca = a->ca_buf;
	return 0;
}

static int cmd_revoke(const struct args *a)
{
	char err[ERR_MAX], crl_path[PATH_MAX];
	mbedtls_x509_crt ca_crt;
	mbedtls_pk_context ca_key;
	int status = 1;
	mbedtls_x509_crt_init(&ca_crt);
	mbedtls_pk_init(&ca_key);
	if (x509gen_ca_path(a->ca, ".crl", crl_path, sizeof crl_path) != 0) {
		fail("--ca: path too long");
		goto out;
	}
	if (rng_init() != 0) {
		fail("cannot seed the random generator");
		goto out;
	}
	if (x509gen_load_ca(a->ca, &ca_crt, &ca_key, err, sizeof err) != 0) {
		fail(err);
		goto out;
	}
	struct crlgen_result r;
	if (crlgen_revoke(crl_path, &ca_crt, &ca_key, a->certs, a->ncerts,
	    a->days, &r, err, sizeof err) != 0) {
		fail(err);
		goto out;
	}
	fprintf(stderr, "wrote %s: %zu revoked (%zu new%s), next update in "
	    "%u days\n", crl_path, r.entries, r.added, r.already ?
	    ", some listed already" : "", a->days);
	status = printf("%s\n", crl_path) < 0 || fflush(stdout) != 0 ?
	    fail("cannot write to standard output") : 0;
out:
	mbedtls_pk_free(&ca_key);
	mbedtls_x509_crt_free(&ca_crt);
	return status;
}

static int cmd_pin(const struct args *a)
{
	char err[ERR_MAX];
	struct pin p;
	if (pin_of_file(a->name, &p, err, sizeof err) != 0)
		return fail(err);
	return print_pin(&p);
}

/* DIR/NAME.ext into out, without doubling a trailing '/' of DIR. */
static int out_path(const char *dir, const char *name, const char *ext,
    char *out, size_t size)
{
	size_t n = strlen(dir);
	while (n > 1 && dir[n - 1] == '/')
		n--;
	const char *sep = dir[n - 1] == '/' ? "" : "/";
	int w = snprintf(out, size, "%.*s%s%s%s", (int)n, dir, sep, name, ext);
	return w < 0 || (size_t)w >= size ? -1 : 0;
}

/* Write the key and certificate: both staged before either is committed. */
static int write_pair(const struct args *a, const char *key_path,
    const char *crt_path, const unsigned char *key_pem, size_t key_len,
    const unsigned char *crt_pem, size_t crt_len, char *err, size_t errlen)
{
	bool created;
	if (outfile_mkdir(a->dir, &created, err, errlen) != 0)
		return -1;
	if (created)
		fprintf(stderr, "created %s (0700)\n", a->dir);

	struct outfile kf, cf;
	if (outfile_stage(&kf, key_path, key_pem, key_len, 0600, a->force,
	    err, errlen) != 0)
		return -1;
	if (outfile_stage(&cf, crt_path, crt_pem, crt_len, 0644, a->force,
	    err, errlen) != 0) {
		outfile_abort(&kf);
		return -1;
	}
	if (outfile_commit(&kf, err, errlen) != 0) {
		outfile_abort(&kf);
		outfile_abort(&cf);
		return -1;
	}
	if (outfile_commit(&cf, err, errlen) != 0) {
		outfile_abort(&cf);
		size_t n = strlen(err);
		snprintf(err + n, errlen - n, " (%s was already replaced)", key_path);
		return -1;
	}
	return 0;
}

static int cmd_make(const struct args *a)
{
	char err[ERR_MAX];
	char key_path[PATH_MAX], crt_path[PATH_MAX];
	mbedtls_x509_crt ca_crt;
	mbedtls_pk_context ca_key, key;
	unsigned char *key_pem = NULL, *crt_pem = NULL;
	size_t key_len = 0, key_size = 0, crt_len = 0;
	struct pin pin;
	int status = 1;

	mbedtls_x509_crt_init(&ca_crt);
	mbedtls_pk_init(&ca_key);
	mbedtls_pk_init(&key);

	if (out_path(a->dir, a->name, ".key", key_path, sizeof key_path) != 0 ||
	    out_path(a->dir, a->name, ".crt", crt_path, sizeof crt_path) != 0) {
		fail("--dir: path too long");
		goto out;
	}
	int rc = rng_init();
	if (rc != 0) {
		fail("cannot seed the random generator");
		goto out;
	}
	/* Refuse before any work, so that a refusal writes nothing. */
	if (!a->force && (outfile_check_absent(key_path, err, sizeof err) != 0 ||
	    outfile_check_absent(crt_path, err, sizeof err) != 0)) {
		fail(err);
		goto out;
	}
	if (a->ca != NULL &&
	    x509gen_load_ca(a->ca, &ca_crt, &ca_key, err, sizeof err) != 0) {
		fail(err);
		goto out;
	}

	struct x509gen_opts o = {
		.name = a->name,
		.ca = a->cmd == CMD_CA,
		.days = a->days,
		.dns = a->dns,
		.ndns = a->ndns,
		.ip = a->ip,
		.nip = a->nip,
		.uri = a->uri,
		.nuri = a->nuri,
		.issuer_crt = a->ca ? &ca_crt : NULL,
		.issuer_key = a->ca ? &ca_key : NULL,
	};
	if (x509gen_key(&key, err, sizeof err) != 0) {
		fail(err);
		goto out;
	}
	if (pin_of_pk(&key, &pin) != 0) {
		fail("cannot compute the pin of the new key");
		goto out;
	}
	if (x509gen_key_pem(&key, &key_pem, &key_len, &key_size, err,
	    sizeof err) != 0 ||
	    x509gen_crt_pem(&o, &key, &crt_pem, &crt_len, err, sizeof err) != 0 ||
	    write_pair(a, key_path, crt_path, key_pem, key_len, crt_pem, crt_len,
	    err, sizeof err) != 0) {
		fail(err);
		goto out;
	}
	fprintf(stderr, "wrote %s (0600), %s\n", key_path, crt_path);
	if (a->ca != NULL)
		fprintf(stderr, "%s: CN=%s, signed by %s, valid %u days\n",
		    crt_path, a->name, a->ca, a->days);
	else
		fprintf(stderr, "%s: CN=%s, self-signed%s, valid %u days\n",
		    crt_path, a->name, a->cmd == CMD_CA ? " CA" : "", a->days);
	status = print_pin(&pin);
out:
	if (key_pem != NULL) {
		mbedtls_platform_zeroize(key_pem, key_size);
		free(key_pem);
	}
	free(crt_pem);
	mbedtls_pk_free(&key);
	mbedtls_pk_free(&ca_key);
	mbedtls_x509_crt_free(&ca_crt);
	return status;
}

int main(int argc, char **argv)
{
	struct args a;
	int rc = parse_args(argc, argv, &a);
	if (rc != ARGS_OK)
		return rc;
	if (a.cmd == CMD_PIN)
		return cmd_pin(&a);
	char err[ERR_MAX];
	if (resolve_ca(&a, err, sizeof err) != 0)
		return fail(err);
	if (a.cmd == CMD_REVOKE)
		return cmd_revoke(&a);
	return cmd_make(&a);
}
