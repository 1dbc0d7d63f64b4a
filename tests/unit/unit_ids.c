#include "unit_ids.h"

#include <stdio.h>
#include <string.h>

#include "../fuzz/fuzz_ids.h"
#include "rng.h"

static char srv_crt[FUZZ_PATH_MAX], srv_key[FUZZ_PATH_MAX];
static char cli_crt[FUZZ_PATH_MAX], cli_key[FUZZ_PATH_MAX];
static struct unit_ids ids;
static bool made;

struct unit_ids *unit_ids(void)
{
	if (made)
		return &ids;
	if (rng_init() != 0) {
		printf("  unit_ids: cannot seed the random generator\n");
		return NULL;
	}
	fuzz_ids_init();
	fuzz_make_identity("srv", srv_crt, srv_key, &ids.srv_pin);
	fuzz_make_identity("cli", cli_crt, cli_key, &ids.cli_pin);
	ids.srv_crt = srv_crt;
	ids.srv_key = srv_key;
	ids.cli_crt = cli_crt;
	ids.cli_key = cli_key;
	made = true;
	return &ids;
}

int unit_tunnel(struct cfg_tunnel *t, struct unit_ids *u,
    enum cfg_role role)
{
	char err[200];
	bool srv = role == CFG_SERVER;
	memset(t, 0, sizeof *t);
	snprintf(t->name, sizeof t->name, "unit");
	t->cert = srv ? u->srv_crt : u->cli_crt;
	t->key = srv ? u->srv_key : u->cli_key;
	t->pins = srv ? &u->cli_pin : &u->srv_pin;
	t->npins = 1;
	if (addr_parse("127.0.0.1:0", &t->listen, err, sizeof err) != 0 ||
	    addr_parse("127.0.0.1:1", &t->connect, err, sizeof err) != 0) {
		printf("  unit_tunnel: %s\n", err);
		return -1;
	}
	return 0;
}

__attribute__((destructor)) static void unit_ids_free(void)
{
	static const char *const names[] = { "srv", "cli" };
	if (made)
		fuzz_ids_cleanup(names, 2);
}
