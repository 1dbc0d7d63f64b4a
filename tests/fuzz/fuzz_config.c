/*
 * libFuzzer target: the config loader. The input is written to a temp
 * file (made once per process) and loaded in both roles; a config that
 * loads is freed again (ASan/LSan catch leaks and overflows).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char path[64];

static void cleanup(void)
{
	if (path[0])
		unlink(path);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!path[0]) {
		snprintf(path, sizeof path, "/tmp/upseal-fuzz-cfg-XXXXXX");
		int fd = mkstemp(path);
		if (fd < 0)
			abort();
		close(fd);
		atexit(cleanup);
	}
	FILE *f = fopen(path, "wb");
	if (f == NULL)
		abort();
	if (size && fwrite(data, 1, size, f) != size)
		abort();
	fclose(f);
	enum cfg_role roles[2] = { CFG_CLIENT, CFG_SERVER };
	for (int i = 0; i < 2; i++) {
		struct cfg *c = NULL;
		char err[512];
		err[0] = '\0';
		int rc = cfg_load(path, roles[i], &c, err, sizeof err);
		if (rc == 0) {
			if (c == NULL || c->ntunnels == 0)
				abort();	/* success means a usable config */
			cfg_free(c);
		} else {
			if (c != NULL || memchr(err, '\0', sizeof err) == NULL)
				abort();
		}
	}
	return 0;
}
