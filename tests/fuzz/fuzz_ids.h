/*
 * Identities for the TLS fuzz targets: ECDSA P-256 keys and self-signed
 * certificates from certs/x509gen.c, written into a temp dir made once per
 * process and removed at exit (fuzz_ids_cleanup). No key material is kept
 * in the repository.
 */
#ifndef UPSEAL_FUZZ_IDS_H
#define UPSEAL_FUZZ_IDS_H

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <mbedtls/platform_util.h>

#include "../../certs/x509gen.h"
#include "pin.h"

#define FUZZ_PATH_MAX 128

static char fuzz_ids_dir[64];

static inline void fuzz_die(const char *target, const char *what,
    const char *err)
{
	fprintf(stderr, "%s: %s: %s\n", target, what, err);
	abort();
}

/* Mode 0600: upseal refuses a private key that others may read. */
static inline void fuzz_write_file(const char *path,
    const unsigned char *buf, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	FILE *f = fd < 0 ? NULL : fdopen(fd, "wb");
	if (f == NULL || fwrite(buf, 1, len, f) != len || fclose(f) != 0)
		fuzz_die("fuzz", "write", path);
}

/* Make the temp dir (once). */
static inline void fuzz_ids_init(void)
{
	snprintf(fuzz_ids_dir, sizeof fuzz_ids_dir, "/tmp/upseal-fuzz-tls-XXXXXX");
	if (mkdtemp(fuzz_ids_dir) == NULL)
		fuzz_die("fuzz", "mkdtemp", fuzz_ids_dir);
}

/* One identity: key + self-signed certificate in dir/name.{key,crt}. */
static inline void fuzz_make_identity(const char *name, char *crt_out,
    char *key_out, struct pin *pin)
{
	char err[256];
	mbedtls_pk_context key;
	unsigned char *pem = NULL;
	size_t len = 0, sz = 0;
	mbedtls_pk_init(&key);
	if (x509gen_key(&key, err, sizeof err) != 0)
		fuzz_die("fuzz", "key", err);
	if (x509gen_key_pem(&key, &pem, &len, &sz, err, sizeof err) != 0)
		fuzz_die("fuzz", "key pem", err);
	snprintf(key_out, FUZZ_PATH_MAX, "%s/%s.key", fuzz_ids_dir, name);
	fuzz_write_file(key_out, pem, len);
	/* A key must not be readable by others (secret.h), whatever the umask. */
	if (chmod(key_out, 0600) != 0)
		fuzz_die("fuzz", "chmod", key_out);
	mbedtls_platform_zeroize(pem, sz);
	free(pem);
	struct x509gen_opts o = { .name = name, .days = 30 };
	if (x509gen_crt_pem(&o, &key, &pem, &len, err, sizeof err) != 0)
		fuzz_die("fuzz", "crt", err);
	snprintf(crt_out, FUZZ_PATH_MAX, "%s/%s.crt", fuzz_ids_dir, name);
	fuzz_write_file(crt_out, pem, len);
	free(pem);
	if (pin_of_pk(&key, pin) != 0)
		fuzz_die("fuzz", "pin", name);
	mbedtls_pk_free(&key);
}

/* Remove what fuzz_make_identity wrote for these names, and the dir. */
static inline void fuzz_ids_cleanup(const char *const *names, size_t n)
{
	char p[160];
	for (size_t i = 0; i < n; i++) {
		snprintf(p, sizeof p, "%s/%s.key", fuzz_ids_dir, names[i]);
		unlink(p);
		snprintf(p, sizeof p, "%s/%s.crt", fuzz_ids_dir, names[i]);
		unlink(p);
	}
	rmdir(fuzz_ids_dir);
}

#endif
