#include "test.h"

#include "config.h"

#define PIN0 "sha256//AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
#define PIN1 "sha256//AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="
#define PIN2 "sha256//AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI="

/* A valid tunnel, lines 1 to 6, for each role. */
#define CLIENT_APP                                                        \
	"[app]\n"                                                         \
	"listen = 127.0.0.1:7001\n"                                       \
	"connect = backend.internal:7443\n"                               \
	"cert = c.crt\n"                                                  \
	"key = c.key\n"                                                   \
	"pin = " PIN0 "\n"
#define SERVER_APP                                                        \
	"[app]\n"                                                         \
	"listen = 0.0.0.0:7443\n"                                         \
	"connect = 127.0.0.1:8080\n"                                      \
	"cert = s.crt\n"                                                  \
	"key = s.key\n"                                                   \
	"pin = " PIN0 "\n"

static char err[1024];

/* Write len bytes of text to name in the temp dir; the path (static). */
static const char *write_bytes(const char *name, const char *text, size_t len)
{
	static char path[512];
	FILE *f;

	snprintf(path, sizeof path, "%s/%s", test_tmpdir(), name);
	f = fopen(path, "wb");
	CHECK(f != NULL);
	if (f == NULL)
		return path;
	CHECK_INT(fwrite(text, 1, len, f), len);
	fclose(f);
	return path;
}

static const char *write_ini(const char *name, const char *text)
{
	return write_bytes(name, text, strlen(text));
}

/* Load text as name; expect success (else the check shows the error). */
static struct cfg *load_ok(enum cfg_role role, const char *name,
    const char *text)
{
	struct cfg *c = NULL;

	err[0] = '\0';
	cfg_load(write_ini(name, text), role, &c, err, sizeof err);
	CHECK_STR(err, "");
	CHECK(c != NULL);
	return c;
}

/* Load the file at path; expect failure and return the error. */
static const char *load_path_err(enum cfg_role role, const char *path)
{
	struct cfg *c = (struct cfg *)1;

	err[0] = '\0';
	CHECK_INT(cfg_load(path, role, &c, err, sizeof err), -1);
	CHECK(c == NULL);
	CHECK(strchr(err, '\n') == NULL);
	if (c != NULL && c != (struct cfg *)1)
		cfg_free(c);
	return err;
}

static const char *load_err(enum cfg_role role, const char *name,
    const char *text)
{
	return load_path_err(role, write_ini(name, text));
}

#define CLIENT_ERR(text, want) \
	CHECK_CONTAINS(load_err(CFG_CLIENT, "client.ini", text), want)
#define SERVER_ERR(text, want) \
	CHECK_CONTAINS(load_err(CFG_SERVER, "server.ini", text), want)

static int pin_byte(const struct pin *p)
{
	for (size_t i = 1; i < PIN_HASH_LEN; i++) {
		if (p->hash[i] != p->hash[0])
			return -1;
	}
	return p->hash[0];
}

TEST(config_client_full)
{
	struct cfg *c = load_ok(CFG_CLIENT, "client.ini",
	    "; upseal client\n"				/* 1 */
	    "[upseal]\n"
	    "log_level = debug\n"
	    "log_format = json\n"
	    "drain_timeout = 30s\n"			/* 5 */
	    "\n"
	    "[app]\n"
	    "listen = 127.0.0.1:7001\n"
	    "connect = backend.internal:7443\n"
	    "cert = /etc/upseal/proxy.crt\n"		/* 10 */
	    "key = /etc/upseal/proxy.key\n"
	    "ca = /etc/upseal/ca.crt\n"
	    "server_name = tls.backend.internal\n"
	    "pin = " PIN0 "\n"
	    "pin = " PIN1 "  ; next key, for rotation\n"	/* 15 */
	    "connect_timeout = 500ms\n"
	    "handshake_timeout = 2s\n"
	    "idle_timeout = 0\n"
	    "max_connections = 77\n"
	    "allow_remote = no\n"			/* 20 */
	    "\n"
	    "[unix.app-2]\n"
	    "listen = unix:/run/upseal/app.sock\n"
	    "connect = unix:/run/upseal/tls.sock\n"
	    "cert = rel.crt\n"				/* 25 */
	    "key = rel.key\n"
	    "pin = " PIN2 "\n");
	if (c == NULL)
		return;
	CHECK_CONTAINS(c->path, "/client.ini");
	CHECK_INT(c->log_level, LOG_DEBUG);
	CHECK(c->log_json);
	CHECK_INT(c->drain_timeout_ms, 30000);
	CHECK_INT(c->ntunnels, 2);

	struct cfg_tunnel *t = &c->tunnels[0];
	CHECK_STR(t->name, "app");
	CHECK_INT(t->line, 7);
	CHECK_INT(t->listen.kind, ADDR_TCP);
	CHECK_STR(t->listen.host, "127.0.0.1");
	CHECK_INT(t->listen.port, 7001);
	CHECK(t->listen.numeric);
	CHECK_STR(t->connect.host, "backend.internal");
	CHECK_INT(t->connect.port, 7443);
	CHECK(!t->connect.numeric);
	CHECK_STR(t->cert, "/etc/upseal/proxy.crt");
	CHECK_STR(t->key, "/etc/upseal/proxy.key");
	CHECK_STR(t->ca, "/etc/upseal/ca.crt");
	CHECK_STR(t->server_name, "tls.backend.internal");
	CHECK_INT(t->npins, 2);
	CHECK_INT(pin_byte(&t->pins[0]), 0);
	CHECK_INT(pin_byte(&t->pins[1]), 1);
	CHECK_INT(t->connect_timeout_ms, 500);
	CHECK_INT(t->handshake_timeout_ms, 2000);
	CHECK_INT(t->idle_timeout_ms, 0);
	CHECK_INT(t->max_connections, 77);
	CHECK(!t->allow_remote);

	t = &c->tunnels[1];
	CHECK_STR(t->name, "unix.app-2");
	CHECK_INT(t->line, 22);
	CHECK_INT(t->listen.kind, ADDR_UNIX);
	CHECK_STR(t->listen.path, "/run/upseal/app.sock");
	CHECK_INT(t->connect.kind, ADDR_UNIX);
	CHECK_STR(t->connect.path, "/run/upseal/tls.sock");
	CHECK_STR(t->cert, "rel.crt");
	CHECK_STR(t->key, "rel.key");
	CHECK(t->ca == NULL);
	CHECK(t->server_name == NULL);
	CHECK_INT(t->npins, 1);
	CHECK_INT(pin_byte(&t->pins[0]), 2);
	CHECK_INT(t->connect_timeout_ms, 5000);
	cfg_free(c);
}

TEST(config_server_full)
{
	struct cfg *c = load_ok(CFG_SERVER, "server.ini",
	    "[upseal]\n"				/* 1 */
	    "log_level = error\n"
	    "log_format = text\n"
	    "drain_timeout = 0\n"
	    "[app]\n"					/* 5 */
	    "listen = 0.0.0.0:7443\n"
	    "connect = unix:/run/app.sock\n"
	    "cert = /etc/upseal/backend.crt\n"
	    "key = /etc/upseal/backend.key\n"
	    "ca = /etc/upseal/ca.crt\n"			/* 10 */
	    "pin = " PIN1 "\n"
	    "connect_timeout = 1h\n"
	    "handshake_timeout = 1ms\n"
	    "idle_timeout = 48h\n"
	    "max_connections = 1000000\n"		/* 15 */
	    "allow_remote = yes\n"
	    "[remote]\n"
	    "listen = [::]:7444\n"
	    "connect = 10.1.2.3:8080\n"
	    "cert = b.crt\n"				/* 20 */
	    "key = b.key\n"
	    "ca = ca.crt\n"
	    "allow_remote = On\n");
	if (c == NULL)
		return;
	CHECK_INT(c->log_level, LOG_ERROR);
	CHECK(!c->log_json);
	CHECK_INT(c->drain_timeout_ms, 0);
	CHECK_INT(c->ntunnels, 2);

	struct cfg_tunnel *t = &c->tunnels[0];
	CHECK_STR(t->name, "app");
	CHECK_INT(t->line, 5);
	CHECK_STR(t->listen.host, "0.0.0.0");
	CHECK_INT(t->listen.port, 7443);
	CHECK_INT(t->connect.kind, ADDR_UNIX);
	CHECK_STR(t->connect.path, "/run/app.sock");
	CHECK_STR(t->cert, "/etc/upseal/backend.crt");
	CHECK_STR(t->key, "/etc/upseal/backend.key");
	CHECK_STR(t->ca, "/etc/upseal/ca.crt");
	CHECK(t->server_name == NULL);	/* no default name in the server role */
	CHECK_INT(t->npins, 1);
	CHECK_INT(pin_byte(&t->pins[0]), 1);
	CHECK_INT(t->connect_timeout_ms, 3600000);
	CHECK_INT(t->handshake_timeout_ms, 1);
	CHECK_INT(t->idle_timeout_ms, 48 * 3600000LL);
	CHECK_INT(t->max_connections, 1000000);
	CHECK(t->allow_remote);

	t = &c->tunnels[1];
	CHECK_STR(t->name, "remote");
	CHECK_INT(t->line, 17);
	CHECK_STR(t->listen.host, "::");
	CHECK_STR(t->connect.host, "10.1.2.3");
	CHECK_INT(t->npins, 0);
	CHECK(t->pins == NULL);
	CHECK_STR(t->ca, "ca.crt");
	CHECK(t->allow_remote);
	cfg_free(c);
}

TEST(config_defaults)
{
	struct cfg *c = load_ok(CFG_CLIENT, "defaults.ini",
	    "[app]\n"
	    "listen = 127.0.0.1:7001\n"
	    "connect = 10.0.0.5:7443\n"	/* the TLS end may be remote */
	    "cert = c.crt\n"
	    "key = c.key\n"
	    "pin = " PIN0 "\n");
	if (c == NULL)
		return;
	CHECK_INT(c->log_level, LOG_INFO);
	CHECK(!c->log_json);
	CHECK_INT(c->drain_timeout_ms, 15000);
	CHECK_INT(c->ntunnels, 1);
	CHECK(c->tunnels[0].ca == NULL);
	CHECK(c->tunnels[0].server_name == NULL);
	CHECK_INT(c->tunnels[0].connect_timeout_ms, 5000);
	CHECK_INT(c->tunnels[0].handshake_timeout_ms, 10000);
	CHECK_INT(c->tunnels[0].idle_timeout_ms, 300000);
	CHECK_INT(c->tunnels[0].max_connections, 10000);
	CHECK(!c->tunnels[0].allow_remote);
	cfg_free(c);
	cfg_free(NULL);
}

TEST(config_default_server_name)
{
	struct cfg *c = load_ok(CFG_CLIENT, "sni.ini",
	    "[app]\n"
	    "listen = 127.0.0.1:7001\n"
	    "connect = Backend.internal:7443\n"
	    "cert = c.crt\n"
	    "key = c.key\n"
	    "ca = ca.crt\n"
	    "[ip]\n"
	    "listen = 127.0.0.1:7002\n"
	    "connect = 10.0.0.5:7443\n"
	    "cert = c.crt\n"
	    "key = c.key\n"
	    "ca = ca.crt\n"
	    "server_name = backend.internal\n");
	if (c == NULL)
		return;
	CHECK_STR(c->tunnels[0].server_name, "Backend.internal");
	CHECK_INT(c->tunnels[0].npins, 0);
	CHECK_STR(c->tunnels[1].server_name, "backend.internal");
	cfg_free(c);

	CLIENT_ERR("[app]\n"
	    "listen = 127.0.0.1:7001\n"
	    "connect = 10.0.0.5:7443\n"
	    "cert = c.crt\n"
	    "key = c.key\n"
	    "ca = ca.crt\n",
	    "client.ini:1: [app]: ca is set and connect is an IP address");
	CHECK_CONTAINS(err, "set server_name =");
	CLIENT_ERR("[app]\n"
	    "listen = 127.0.0.1:7001\n"
	    "connect = unix:/run/tls.sock\n"
	    "cert = c.crt\n"
	    "key = c.key\n"
	    "pin = " PIN0 "\n"
	    "ca = ca.crt\n",
	    "client.ini:1: [app]: ca is set and connect is a unix socket");
}

TEST(config_pins)
{
	char text[4096];
	size_t n = (size_t)snprintf(text, sizeof text, CLIENT_APP);

	/* 15 more: 16 in all is the most. */
	for (int i = 0; i < 15; i++)
		n += (size_t)snprintf(text + n, sizeof text - n, "pin = %s\n",
		    i % 2 ? PIN1 : PIN2);
	struct cfg *c = load_ok(CFG_CLIENT, "pins.ini", text);
	if (c != NULL) {
		CHECK_INT(c->tunnels[0].npins, 16);
		CHECK_INT(pin_byte(&c->tunnels[0].pins[15]), 2);
		cfg_free(c);
	}
	snprintf(text + n, sizeof text - n, "pin = %s\n", PIN1);
	CLIENT_ERR(text, "client.ini:22: [app] pin: too many pins; expected at most 16");

	CLIENT_ERR(CLIENT_APP "pin = sha1//AAAA\n", "client.ini:7: [app] pin: ");
	CHECK_CONTAINS(err, "expected sha256//BASE64");
	CLIENT_ERR(CLIENT_APP "pin = sha256//AAAA\n", "client.ini:7: [app] pin: ");
}

TEST(config_bools)
{
	static const char *const words[] = {
		"yes", "true", "on", "1", "YES", "True",
		"no", "false", "off", "0", "No", "OFF",
	};
	char text[512];

	for (size_t i = 0; i < sizeof words / sizeof words[0]; i++) {
		snprintf(text, sizeof text, CLIENT_APP "allow_remote = %s\n",
		    words[i]);
		struct cfg *c = load_ok(CFG_CLIENT, "bool.ini", text);
		if (c == NULL)
			continue;
		CHECK_INT(c->tunnels[0].allow_remote, i < 6);
		cfg_free(c);
	}
	CLIENT_ERR(CLIENT_APP "allow_remote = maybe\n",
	    "client.ini:7: [app] allow_remote: \"maybe\" is not yes or no; expected yes, no");
}

TEST(config_error_format)
{
	char want[1024];
	const char *path = write_ini("client.ini", CLIENT_APP
	    "connect_timeout = 5\n");

	snprintf(want, sizeof want, "%s:7: [app] connect_timeout: \"5\" has no "
	    "unit; expected a duration such as 500ms, 10s, 5m", path);
	CHECK_STR(load_path_err(CFG_CLIENT, path), want);

	path = write_ini("client.ini", "[upseal]\nlog_level = info\n");
	snprintf(want, sizeof want, "%s: no tunnels: add a [name] section "
	    "with listen, connect, cert, key and pin", path);
	CHECK_STR(load_path_err(CFG_CLIENT, path), want);
}

TEST(config_unknown_keys)
{
	CLIENT_ERR("[app]\nlisten = 127.0.0.1:7001\ncolour = blue\n",
	    "client.ini:3: [app] colour: unknown key; expected one of listen, connect,");
	CLIENT_ERR("[upseal]\nworkerz = 2\n",
	    "client.ini:2: [upseal] workerz: unknown key; expected one of log_level, "
	    "log_format, drain_timeout, status, status_allow_remote, user, "
	    "workers");
	CLIENT_ERR("[upseal]\nlisten = 127.0.0.1:1\n",
	    "client.ini:2: [upseal] listen: unknown key");
	CHECK_CONTAINS(err, "tunnel keys go in a [name] section");
	CLIENT_ERR("; comment\nlisten = 127.0.0.1:7001\n",
	    "client.ini:2: listen: key before any section");
}

TEST(config_status_and_user)
{
	struct cfg *c = NULL;
	char e[512];
	const char *path = write_ini("client.ini", "[upseal]\n"
	    "status = 127.0.0.1:9180\nuser = upseal\n" CLIENT_APP);
	CHECK_INT(cfg_load(path, CFG_CLIENT, &c, e, sizeof e), 0);
	if (c != NULL) {
		CHECK(c->has_status);
		CHECK_INT(c->status.port, 9180);
		CHECK_STR(c->user, "upseal");
		CHECK_INT(c->refs, 1);
		cfg_hold(c);
		cfg_release(c);
		CHECK_INT(c->refs, 1);
		cfg_release(c);
	}
	CLIENT_ERR("[upseal]\nstatus = 0.0.0.0:9180\n" CLIENT_APP,
	    "client.ini:2: [upseal] status: 0.0.0.0:9180 is not a loopback "
	    "address; expected 127.0.0.1:PORT");
	path = write_ini("client.ini", "[upseal]\nstatus = 0.0.0.0:9180\n"
	    "status_allow_remote = yes\n" CLIENT_APP);
	c = NULL;
	CHECK_INT(cfg_load(path, CFG_CLIENT, &c, e, sizeof e), 0);
	cfg_free(c);
	CLIENT_ERR("[upseal]\nuser = root;rm\n" CLIENT_APP,
	    "client.ini:2: [upseal] user: \"root;rm\" is not a user name");
}

TEST(config_workers)
{
	struct cfg *c = NULL;
	char e[512];
	const char *path = write_ini("client.ini", CLIENT_APP);
	CHECK_INT(cfg_load(path, CFG_CLIENT, &c, e, sizeof e), 0);
	if (c != NULL)
		CHECK_INT(c->workers, 0);	/* auto: the number of cores */
	cfg_free(c);
	c = NULL;
	path = write_ini("client.ini", "[upseal]\nworkers = 3\n" CLIENT_APP);
	CHECK_INT(cfg_load(path, CFG_CLIENT, &c, e, sizeof e), 0);
	if (c != NULL)
		CHECK_INT(c->workers, 3);
	cfg_free(c);
	c = NULL;
	path = write_ini("client.ini", "[upseal]\nworkers = auto\n" CLIENT_APP);
	CHECK_INT(cfg_load(path, CFG_CLIENT, &c, e, sizeof e), 0);
	if (c != NULL)
		CHECK_INT(c->workers, 0);
	cfg_free(c);
	CLIENT_ERR("[upseal]\nworkers = 0\n" CLIENT_APP,
	    "client.ini:2: [upseal] workers: \"0\" is out of range; expected "
	    "auto or a number from 1 to 64");
	CLIENT_ERR("[upseal]\nworkers = 65\n" CLIENT_APP,
	    "client.ini:2: [upseal] workers: \"65\" is out of range");
	CLIENT_ERR("[upseal]\nworkers = many\n" CLIENT_APP,
	    "client.ini:2: [upseal] workers: \"many\" is not a number");
	CLIENT_ERR(CLIENT_APP "workers = 2\n",
	    "client.ini:7: [app] workers: unknown key");
}

TEST(config_value_errors)
{
	CLIENT_ERR(CLIENT_APP "connect_timeout = 5x\n",
	    "client.ini:7: [app] connect_timeout: \"5x\" has an unknown unit");
	CLIENT_ERR(CLIENT_APP "connect_timeout = -5s\n",
	    "client.ini:7: [app] connect_timeout: \"-5s\" is negative");
	CLIENT_ERR(CLIENT_APP "connect_timeout = 5 s\n",
	    "client.ini:7: [app] connect_timeout: \"5 s\" has a space inside");
	CLIENT_ERR(CLIENT_APP "idle_timeout = 99999999999999999999h\n",
	    "client.ini:7: [app] idle_timeout: \"99999999999999999999h\" is too large");
	CLIENT_ERR(CLIENT_APP "connect_timeout = 0\n",
	    "client.ini:7: [app] connect_timeout: \"0\" is out of range; "
	    "expected a duration from 1ms to 1h");
	CLIENT_ERR(CLIENT_APP "handshake_timeout = 61m\n",
	    "client.ini:7: [app] handshake_timeout: \"61m\" is out of range");
	SERVER_ERR("[upseal]\ndrain_timeout = 2h\n" SERVER_APP,
	    "server.ini:2: [upseal] drain_timeout: \"2h\" is out of range; "
	    "expected a duration from 0 to 1h");
	CLIENT_ERR(CLIENT_APP "max_connections = 0\n",
	    "client.ini:7: [app] max_connections: \"0\" is out of range; "
	    "expected a number from 1 to 1000000");
	CLIENT_ERR(CLIENT_APP "max_connections = 1000001\n",
	    "client.ini:7: [app] max_connections: \"1000001\" is out of range");
	CLIENT_ERR(CLIENT_APP "max_connections = 99999999999999999999999\n",
	    "is out of range");
	CLIENT_ERR(CLIENT_APP "max_connections = 10k\n",
	    "client.ini:7: [app] max_connections: \"10k\" is not a number");
	CLIENT_ERR(CLIENT_APP "max_connections = -1\n", "is not a number");
	CLIENT_ERR("[upseal]\nlog_level = verbose\n",
	    "client.ini:2: [upseal] log_level: \"verbose\" is not a log level; "
	    "expected error, warn, info or debug");
	CLIENT_ERR("[upseal]\nlog_format = xml\n",
	    "client.ini:2: [upseal] log_format: \"xml\" is not a log format; "
	    "expected text or json");
	CLIENT_ERR("[app]\nlisten = 127.0.0.1:7001\ncert =\n",
	    "client.ini:3: [app] cert: empty value; expected cert = FILE");
	CLIENT_ERR("[app]\nlisten = ; only a comment\n",
	    "client.ini:2: [app] listen: empty value; expected listen = HOST:PORT");
	CLIENT_ERR("[app]\nlisten = 127.0.0.1:7001\nconnect = backend\n",
	    "client.ini:3: [app] connect: \"backend\": missing port: expected "
	    "HOST:PORT, [V6]:PORT or unix:/path");
	CLIENT_ERR("[app]\nlisten = 127.0.0.1:99999\n",
	    "client.ini:2: [app] listen: \"127.0.0.1:99999\": port \"99999\" is "
	    "out of range 0..65535");
	CLIENT_ERR("[app]\nlisten = ::1:7001\n",
	    "IPv6 address must be in brackets: [::1]:7443");
}

TEST(config_server_name)
{
	SERVER_ERR(SERVER_APP "server_name = backend.internal\n",
	    "server.ini:7: [app] server_name: only meaningful in client.ini");
	CLIENT_ERR(CLIENT_APP "server_name = 10.0.0.1\n",
	    "client.ini:7: [app] server_name: \"10.0.0.1\" is an IP address; "
	    "expected a DNS name");
	CLIENT_ERR(CLIENT_APP "server_name = ::1\n", "is an IP address");
	CLIENT_ERR(CLIENT_APP "server_name = bad_name\n",
	    "client.ini:7: [app] server_name: \"bad_name\" is not a DNS name");
}

TEST(config_duplicates)
{
	CLIENT_ERR("[app]\nlisten = 127.0.0.1:7001\ncert = a\n\ncert = b\n",
	    "client.ini:5: [app] cert: duplicate key; first at line 3");
	CLIENT_ERR(CLIENT_APP "\n[app]\n",
	    "client.ini:8: [app]: duplicate tunnel section; first at line 1");
	CLIENT_ERR("[upseal]\nlog_level = info\n" CLIENT_APP "[upseal]\n",
	    "client.ini:9: [upseal]: duplicate section; first at line 1");
	CLIENT_ERR("[upseal]\nlog_level = info\nlog_level = debug\n",
	    "client.ini:3: [upseal] log_level: duplicate key; first at line 2");
}

TEST(config_duplicate_listen)
{
	struct cfg *c;

	CLIENT_ERR(CLIENT_APP
	    "[b]\n"
	    "connect = backend.internal:7443\n"
	    "listen = 127.0.0.1:7001\n"
	    "cert = c.crt\nkey = c.key\npin = " PIN0 "\n",
	    "client.ini:9: [b] listen: 127.0.0.1:7001 is already the listen "
	    "address of [app] (line 1)");
	CLIENT_ERR("[a]\nlisten = [::1]:80\nconnect = x:1\ncert = c\nkey = k\n"
	    "pin = " PIN0 "\n"
	    "[b]\nlisten = [0:0::1]:80\nconnect = x:1\ncert = c\nkey = k\n"
	    "pin = " PIN0 "\n",
	    "client.ini:8: [b] listen: [0:0::1]:80 is already the listen "
	    "address of [a]");
	CLIENT_ERR("[a]\nlisten = LOCALHOST:80\nconnect = x:1\ncert = c\nkey = k\n"
	    "pin = " PIN0 "\n"
	    "[b]\nlisten = localhost:80\nconnect = x:1\ncert = c\nkey = k\n"
	    "pin = " PIN0 "\n",
	    "client.ini:8: [b] listen: localhost:80 is already");
	CLIENT_ERR("[a]\nlisten = unix:/x.sock\nconnect = x:1\ncert = c\nkey = k\n"
	    "pin = " PIN0 "\n"
	    "[b]\nlisten = unix:/x.sock\nconnect = x:1\ncert = c\nkey = k\n"
	    "pin = " PIN0 "\n",
	    "client.ini:8: [b] listen: unix:/x.sock is already");

	/* Port 0 binds a fresh port each time; other ports differ. */
	c = load_ok(CFG_CLIENT, "client.ini",
	    "[a]\nlisten = 127.0.0.1:0\nconnect = x:1\ncert = c\nkey = k\n"
	    "pin = " PIN0 "\n"
	    "[b]\nlisten = 127.0.0.1:0\nconnect = x:1\ncert = c\nkey = k\n"
	    "pin = " PIN0 "\n"
	    "[c]\nlisten = 127.0.0.1:1\nconnect = x:1\ncert = c\nkey = k\n"
	    "pin = " PIN0 "\n"
	    "[d]\nlisten = 127.0.0.2:1\nconnect = x:1\ncert = c\nkey = k\n"
	    "pin = " PIN0 "\n");
	if (c != NULL)
		CHECK_INT(c->ntunnels, 4);
	cfg_free(c);
}

TEST(config_missing_keys)
{
	static const char *const keys[] = { "listen", "connect", "cert", "key" };
	static const char *const lines[] = {
		"listen = 127.0.0.1:8080\n", "connect = 127.0.0.1:8080\n",
		"cert = s.crt\n", "key = s.key\n",
	};
	char text[1024], want[128];

	for (size_t skip = 0; skip < 4; skip++) {
		size_t n = (size_t)snprintf(text, sizeof text,
		    "; server\n[upseal]\n\n[app]\npin = %s\n", PIN0);
		for (size_t i = 0; i < 4; i++) {
			if (i != skip)
				n += (size_t)snprintf(text + n, sizeof text - n,
				    "%s", lines[i]);
		}
		snprintf(want, sizeof want, "server.ini:4: [app]: missing "
		    "required key \"%s\"; expected %s = ", keys[skip], keys[skip]);
		SERVER_ERR(text, want);
	}
	SERVER_ERR("[app]\nlisten = 0.0.0.0:7443\nconnect = 127.0.0.1:8080\n"
	    "cert = s.crt\nkey = s.key\n[next]\n",
	    "server.ini:1: [app]: no pin and no ca: set pin = sha256//... "
	    "(see upseal-certs pin), pin_file = FILE or ca = FILE");
	/* The last section is checked at the end of the file too. */
	SERVER_ERR(SERVER_APP "[next]\nlisten = 0.0.0.0:7444\n",
	    "server.ini:7: [next]: missing required key \"connect\"");
	SERVER_ERR(SERVER_APP "[empty]\n",
	    "server.ini:7: [empty]: missing required key \"listen\"");
}

TEST(config_plaintext_end_local)
{
	struct cfg *c;

	CLIENT_ERR("[app]\n"
	    "listen = 0.0.0.0:7001\n"
	    "connect = backend.internal:7443\n"
	    "cert = c.crt\nkey = c.key\npin = " PIN0 "\n",
	    "client.ini:2: [app] listen: 0.0.0.0:7001 is not a loopback address");
	CHECK_CONTAINS(err, "set allow_remote = yes");
	CLIENT_ERR("[app]\nlisten = proxy.internal:7001\nconnect = b:1\n"
	    "cert = c\nkey = k\npin = " PIN0 "\n",
	    "client.ini:2: [app] listen: proxy.internal:7001 is not a loopback address");
	SERVER_ERR("[app]\n"
	    "listen = 0.0.0.0:7443\n"
	    "pin = " PIN0 "\n"
	    "connect = 10.0.0.8:8080\n"
	    "cert = s.crt\nkey = s.key\n",
	    "server.ini:4: [app] connect: 10.0.0.8:8080 is not a loopback address");
	CHECK_CONTAINS(err, "set allow_remote = yes");

	c = load_ok(CFG_CLIENT, "client.ini", "[app]\n"
	    "listen = 0.0.0.0:7001\n"
	    "connect = backend.internal:7443\n"
	    "cert = c.crt\nkey = c.key\npin = " PIN0 "\n"
	    "allow_remote = yes\n");
	cfg_free(c);
	c = load_ok(CFG_SERVER, "server.ini", "[app]\n"
	    "listen = 0.0.0.0:7443\n"
	    "connect = localhost:8080\n"
	    "cert = s.crt\nkey = s.key\npin = " PIN0 "\n"
	    "[six]\n"
	    "listen = [::]:7444\n"
	    "connect = [::1]:8080\n"
	    "cert = s.crt\nkey = s.key\npin = " PIN0 "\n");
	cfg_free(c);
}

TEST(config_sections)
{
	char want[400];

	CLIENT_ERR("[my app]\n", "client.ini:1: [my app]: invalid section name; "
	    "expected 1 to 63 characters of A-Z a-z 0-9 _ . -");
	CLIENT_ERR(CLIENT_APP "[]\n", "client.ini:7: []: invalid section name");
	snprintf(want, sizeof want, "[%064d]\n", 0);
	CLIENT_ERR(want, "client.ini:1: [0000");
	CHECK_CONTAINS(err, "invalid section name");
	snprintf(want, sizeof want, CLIENT_APP "[%063d]\n", 0);
	CLIENT_ERR(want, "missing required key \"listen\"");	/* 63 is fine */
	CLIENT_ERR("", "client.ini: no tunnels: add a [name] section");
	CLIENT_ERR("[upseal]\n", "client.ini: no tunnels");
}

TEST(config_syntax)
{
	static const char *const want = "syntax error: expected [section] or "
	    "key = value";

	CLIENT_ERR("[app]\nlisten = 127.0.0.1:7001\njust words\n",
	    "client.ini:3: syntax error: expected [section] or key = value");
	CLIENT_ERR("[app\n", "client.ini:1: syntax error");
	CLIENT_ERR("[app] junk\n", "client.ini:1: syntax error");
	CLIENT_ERR("[app]\n= value\n", "client.ini:2: syntax error");
	/* The first error wins, whoever finds it. */
	CLIENT_ERR("[app]\nlisten = 127.0.0.1:7001\n??\ncolour = blue\n",
	    "client.ini:3: syntax error");
	CHECK_CONTAINS(err, want);
	CLIENT_ERR("[app]\ncolour = blue\n??\n", "client.ini:2: [app] colour");
}

TEST(config_long_lines)
{
	char text[1024];
	struct cfg *c;
	size_t n;

	/* Line 6, "cert = " and 192 bytes: 199 bytes, accepted and not cut. */
	n = (size_t)snprintf(text, sizeof text, "[app]\nlisten = 127.0.0.1:7001\n"
	    "connect = b.internal:1\nkey = k\npin = %s\ncert = ", PIN0);
	memset(text + n, 'c', 192);
	strcpy(text + n + 192, "\r\n");
	c = load_ok(CFG_CLIENT, "client.ini", text);
	if (c != NULL)
		CHECK_INT(strlen(c->tunnels[0].cert), 192);
	cfg_free(c);

	/* One more byte: an error naming the line. */
	memset(text + n, 'c', 193);
	strcpy(text + n + 193, "\n");
	CLIENT_ERR(text, "client.ini:6: line is longer than 199 bytes");

	/* A long comment is too long as well, and no later line is read. */
	n = (size_t)snprintf(text, sizeof text, "; hello\n\n\n;");
	memset(text + n, '-', 300);
	strcpy(text + n + 300, "\n[app]\n");
	CLIENT_ERR(text, "client.ini:4: line is longer than 199 bytes");
}

TEST(config_file_errors)
{
	char path[512], want[600];

	snprintf(path, sizeof path, "%s/does-not-exist.ini", test_tmpdir());
	snprintf(want, sizeof want, "%s: cannot read: No such file or directory",
	    path);
	CHECK_STR(load_path_err(CFG_CLIENT, path), want);
	CHECK_CONTAINS(load_path_err(CFG_CLIENT, test_tmpdir()),
	    ": cannot read: Is a directory");

	static const char nul[] = "[app]\nlisten = 127.0.0.1:7001\ncert = a\0b\n";
	CHECK_CONTAINS(load_path_err(CFG_CLIENT,
	    write_bytes("nul.ini", nul, sizeof nul - 1)),
	    "nul.ini:3: NUL byte in the file");
}

TEST(config_text_forms)
{
	/* A BOM, CRLF ends, indented lines, comments, `key: value`. */
	struct cfg *c = load_ok(CFG_CLIENT, "forms.ini",
	    "\xEF\xBB\xBF; made on Windows\r\n"
	    "# another comment\r\n"
	    "[app] ; the app\r\n"
	    "  listen = 127.0.0.1:7001 ; plaintext end\r\n"
	    "\tconnect = backend.internal:7443\r\n"
	    "    cert = c.crt\r\n"
	    "key: c.key\r\n"
	    "pin = " PIN0 "\r\n"
	    "  [second]\r\n"
	    "listen = unix:/x.sock\r\n"
	    "connect = backend.internal:7443\r\n"
	    "cert = c.crt\r\nkey = c.key\r\npin = " PIN0);
	if (c == NULL)
		return;
	CHECK_INT(c->ntunnels, 2);
	CHECK_STR(c->tunnels[0].listen.host, "127.0.0.1");
	CHECK_STR(c->tunnels[0].connect.host, "backend.internal");
	CHECK_STR(c->tunnels[0].cert, "c.crt");
	CHECK_STR(c->tunnels[0].key, "c.key");
	CHECK_INT(c->tunnels[0].line, 3);
	CHECK_INT(c->tunnels[1].line, 9);
	CHECK_STR(c->tunnels[1].listen.path, "/x.sock");
	cfg_free(c);

	/* Line numbers stay right with a BOM and CRLF. */
	CLIENT_ERR("\xEF\xBB\xBF[app]\r\n\r\ncolour = red\r\n",
	    "client.ini:3: [app] colour: unknown key");
}

TEST(config_ciphers_and_tickets)
{
	struct cfg *c = NULL;
	char e[512];
	const char *path = write_ini("server.ini", SERVER_APP
	    "ciphers = ECDHE-ECDSA-AES256-GCM-SHA384:ecdhe-ecdsa-chacha20-poly1305\n"
	    "ticket_key_file = /etc/upseal/tickets.key\nresumption = yes\n");
	CHECK_INT(cfg_load(path, CFG_SERVER, &c, e, sizeof e), 0);
	if (c != NULL) {
		const struct cfg_tunnel *t = &c->tunnels[0];
		CHECK_INT(t->nciphers, 2);
		CHECK_INT(t->ciphers[0], CFG_CIPHER_AES256GCM);
		CHECK_INT(t->ciphers[1], CFG_CIPHER_CHACHA20);
		CHECK_STR(t->ticket_key_file, "/etc/upseal/tickets.key");
		CHECK(t->resumption);
		cfg_free(c);
	}
	SERVER_ERR(SERVER_APP "ciphers = ECDHE-RSA-AES128-GCM-SHA256\n",
	    "server.ini:7: [app] ciphers: \"ECDHE-RSA-AES128-GCM-SHA256\" is "
	    "not an offered suite");
	SERVER_ERR(SERVER_APP "ciphers = ECDHE-ECDSA-AES128-GCM-SHA256,"
	    "ECDHE-ECDSA-AES128-GCM-SHA256\n",
	    "server.ini:7: [app] ciphers: \"ECDHE-ECDSA-AES128-GCM-SHA256\" is "
	    "listed twice");
	SERVER_ERR(SERVER_APP "ciphers = ::\n",
	    "server.ini:7: [app] ciphers: no suite");
	CLIENT_ERR(CLIENT_APP "ticket_key_file = t.key\n",
	    "client.ini:7: [app] ticket_key_file: only meaningful in server.ini");
}

TEST(config_pool)
{
	struct cfg *c = load_ok(CFG_CLIENT, "client.ini", CLIENT_APP);
	if (c != NULL) {
		/* Off by default; a ready connection lives a minute. */
		CHECK_INT(c->tunnels[0].pool, 0);
		CHECK_INT(c->tunnels[0].pool_idle_ms, 60 * 1000);
		cfg_free(c);
	}
	c = load_ok(CFG_CLIENT, "client.ini", CLIENT_APP
	    "pool = 8\npool_idle = 30s\n");
	if (c != NULL) {
		CHECK_INT(c->tunnels[0].pool, 8);
		CHECK_INT(c->tunnels[0].pool_idle_ms, 30 * 1000);
		cfg_free(c);
	}
	c = load_ok(CFG_CLIENT, "client.ini", CLIENT_APP "pool = 1000\n");
	if (c != NULL) {
		CHECK_INT(c->tunnels[0].pool, 1000);
		cfg_free(c);
	}
	CLIENT_ERR(CLIENT_APP "pool = 1001\n",
	    "client.ini:7: [app] pool: \"1001\" is out of range; expected a "
	    "number from 0 to 1000");
	CLIENT_ERR(CLIENT_APP "pool = -1\n",
	    "client.ini:7: [app] pool: \"-1\" is not a number");
	CLIENT_ERR(CLIENT_APP "pool = many\n",
	    "client.ini:7: [app] pool: \"many\" is not a number");
	CLIENT_ERR(CLIENT_APP "pool = 2\npool = 3\n",
	    "client.ini:8: [app] pool: duplicate key; first at line 7");
	CLIENT_ERR(CLIENT_APP "pool_idle = 0\n",
	    "client.ini:7: [app] pool_idle: \"0\" is out of range; expected a "
	    "duration from 1ms to 1h");
	CLIENT_ERR(CLIENT_APP "pool_idle = 2h\n",
	    "client.ini:7: [app] pool_idle: \"2h\" is out of range");
	CLIENT_ERR(CLIENT_APP "pool_idle = 30\n",
	    "client.ini:7: [app] pool_idle: \"30\" has no unit");
	/* Client-only keys, refused in the server's file like server_name. */
	SERVER_ERR(SERVER_APP "pool = 4\n",
	    "server.ini:7: [app] pool: only meaningful in client.ini; "
	    "expected no pool in the server's file");
	SERVER_ERR(SERVER_APP "pool_idle = 10s\n",
	    "server.ini:7: [app] pool_idle: only meaningful in client.ini");
	/* Not a process-wide key. */
	CLIENT_ERR("[upseal]\npool = 4\n" CLIENT_APP,
	    "client.ini:2: [upseal] pool: unknown key");
}

TEST(config_max_handshakes)
{
	struct cfg *c = load_ok(CFG_SERVER, "server.ini", SERVER_APP);
	if (c != NULL) {
		/* Unset: 256, or max_connections if that is smaller. */
		CHECK_INT(c->tunnels[0].max_handshakes, 256);
		cfg_free(c);
	}
	c = load_ok(CFG_SERVER, "server.ini", SERVER_APP
	    "max_connections = 100\n");
	if (c != NULL) {
		CHECK_INT(c->tunnels[0].max_handshakes, 100);
		cfg_free(c);
	}
	/* Either order: checked when the section ends. */
	c = load_ok(CFG_SERVER, "server.ini", SERVER_APP
	    "max_handshakes = 8\nmax_connections = 8\n");
	if (c != NULL) {
		CHECK_INT(c->tunnels[0].max_handshakes, 8);
		CHECK_INT(c->tunnels[0].max_connections, 8);
		cfg_free(c);
	}
	c = load_ok(CFG_SERVER, "server.ini", SERVER_APP
	    "max_handshakes = 5000\n");
	if (c != NULL) {
		CHECK_INT(c->tunnels[0].max_handshakes, 5000);
		cfg_free(c);
	}
	SERVER_ERR(SERVER_APP "max_handshakes = 500\nmax_connections = 100\n",
	    "server.ini:7: [app] max_handshakes: 500 is more than "
	    "max_connections (100); expected a number from 1 to 100");
	SERVER_ERR(SERVER_APP "max_handshakes = 10001\n",
	    "server.ini:7: [app] max_handshakes: 10001 is more than "
	    "max_connections (10000)");
	SERVER_ERR(SERVER_APP "max_handshakes = 0\n",
	    "server.ini:7: [app] max_handshakes: \"0\" is out of range; "
	    "expected a number from 1 to max_connections");
	SERVER_ERR(SERVER_APP "max_handshakes = lots\n",
	    "server.ini:7: [app] max_handshakes: \"lots\" is not a number");
	SERVER_ERR(SERVER_APP "max_handshakes = 8\nmax_handshakes = 9\n",
	    "server.ini:8: [app] max_handshakes: duplicate key; first at "
	    "line 7");
	/* The client's TLS end is dialed, not accepted: nothing to budget. */
	CLIENT_ERR(CLIENT_APP "max_handshakes = 8\n",
	    "client.ini:7: [app] max_handshakes: only meaningful in server.ini");
}

TEST(config_fleet_keys)
{
	struct cfg *c = load_ok(CFG_SERVER, "server.ini",
	    "[app]\nlisten = 0.0.0.0:7443\nconnect = 127.0.0.1:8080\n"
	    "cert = s.crt\nkey = s.key\nca = ca.crt\n"
	    "pin_file = /etc/upseal/a.pins\npin_file = b.pins\n"
	    "allow_dns = *.proxies.internal\n"
	    "allow_uri = spiffe://prod.example/ns/web/*\n"
	    "allow_cn = proxy-1\ncrl = ca.crl\ncrl = other.crl\n"
	    "expiry_warning = 30d\n");
	CHECK(c != NULL);
	if (c != NULL) {
		const struct cfg_tunnel *t = &c->tunnels[0];
		CHECK_INT(t->npin_files, 2);
		CHECK_STR(t->pin_files[1], "b.pins");
		CHECK_INT(t->nallow, 3);
		CHECK_INT(t->allow[0].kind, NAME_DNS);
		CHECK_INT(t->allow[1].kind, NAME_URI);
		CHECK_INT(t->allow[2].kind, NAME_CN);
		CHECK_STR(t->allow[2].text, "proxy-1");
		CHECK_INT(t->ncrl_files, 2);
		CHECK_STR(t->crl_files[0], "ca.crl");
		CHECK_INT(t->expiry_warning_ms, 30ULL * 86400 * 1000);
		cfg_free(c);
	}
	/* pin_file alone is enough, without pin or ca; defaults. */
	c = load_ok(CFG_SERVER, "server.ini",
	    "[app]\nlisten = 0.0.0.0:7443\nconnect = 127.0.0.1:8080\n"
	    "cert = s.crt\nkey = s.key\npin_file = a.pins\n");
	CHECK(c != NULL);
	if (c != NULL) {
		CHECK_INT(c->tunnels[0].expiry_warning_ms, 14ULL * 86400 * 1000);
		CHECK_INT(c->tunnels[0].nallow, 0);
		cfg_free(c);
	}
	SERVER_ERR(SERVER_APP "allow_dns = a.*.internal\n",
	    "server.ini:7: [app] allow_dns: \"a.*.internal\" has a '*' that "
	    "is not the whole leftmost label");
	SERVER_ERR(SERVER_APP "ca = ca.crt\nallow_uri = prod.example/x\n",
	    "server.ini:8: [app] allow_uri: \"prod.example/x\" has no "
	    "scheme://authority");
	SERVER_ERR(SERVER_APP "allow_dns = a.internal\n",
	    "server.ini:7: [app] allow_dns: needs ca = FILE: without a CA");
	SERVER_ERR(SERVER_APP "crl = ca.crl\n",
	    "server.ini:7: [app] crl: needs ca = FILE: a CRL revokes");
	SERVER_ERR(SERVER_APP "expiry_warning = 11y\n",
	    "server.ini:7: [app] expiry_warning: \"11y\" has an unknown unit");
	SERVER_ERR(SERVER_APP "expiry_warning = 3651d\n",
	    "server.ini:7: [app] expiry_warning: \"3651d\" is out of range; "
	    "expected a duration from 0 to 3650d");
}
