#include "test.h"

#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <uv.h>

#include "config.h"
#include "watch.h"

/* tmpdir/rel, in one of a few rotating static buffers. */
static const char *at(const char *rel)
{
	static char buf[8][PATH_MAX];
	static int i;
	char *p = buf[i++ % 8];
	snprintf(p, PATH_MAX, "%s/%s", test_tmpdir(), rel);
	return p;
}

static void put(const char *path, const char *text)
{
	FILE *f = fopen(path, "wb");
	CHECK(f != NULL);
	if (f == NULL)
		return;
	fputs(text, f);
	fclose(f);
}

/* The realpath of tmpdir/rel (the directory form watch_targets gives). */
static const char *real(const char *rel)
{
	static char buf[4][PATH_MAX];
	static int i;
	char *p = buf[i++ % 4];
	if (realpath(at(rel), p) == NULL)
		snprintf(p, PATH_MAX, "(no %s)", rel);
	return p;
}

TEST(watch_targets_plain_file_and_relative_path)
{
	struct watch_target *t;
	size_t n;
	mkdir(at("plain"), 0700);
	put(at("plain/a.crt"), "a");
	const char *paths[] = { at("plain/a.crt"), at("plain/a.crt"),
	    "relative.ini", at("missing/b.key") };
	CHECK_INT(watch_targets(paths, 4, &t, &n), 0);
	CHECK_INT(n, 3);	/* the same file twice is one target */
	if (n != 3)
		return;
	CHECK_STR(t[0].dir, real("plain"));
	CHECK_STR(t[0].name, "a.crt");
	char cwd[PATH_MAX];
	CHECK(getcwd(cwd, sizeof cwd) != NULL);
	CHECK_STR(t[1].dir, cwd);
	CHECK_STR(t[1].name, "relative.ini");
	/* A directory that does not exist stays as written. */
	CHECK_STR(t[2].dir, at("missing"));
	CHECK_STR(t[2].name, "b.key");
	watch_targets_free(t, n);
}

/* The kubelet's layout: NAME -> ..data/NAME, ..data -> ..TIMESTAMP. */
TEST(watch_targets_kubelet_layout)
{
	struct watch_target *t;
	size_t n;
	mkdir(at("kube"), 0700);
	mkdir(at("kube/..2024_06_01"), 0700);
	put(at("kube/..2024_06_01/tls.crt"), "crt");
	CHECK_INT(symlink("..2024_06_01", at("kube/..data")), 0);
	CHECK_INT(symlink("..data/tls.crt", at("kube/tls.crt")), 0);
	const char *paths[] = { at("kube/tls.crt") };
	CHECK_INT(watch_targets(paths, 1, &t, &n), 0);
	CHECK_INT(n, 2);
	if (n != 2)
		return;
	CHECK_STR(t[0].dir, real("kube"));
	CHECK_STR(t[0].name, "tls.crt");
	/* The hop through ..data: the timestamped directory it points to. */
	CHECK_STR(t[1].dir, real("kube/..2024_06_01"));
	CHECK_STR(t[1].name, "tls.crt");
	watch_targets_free(t, n);
}

/* certbot's: live/NAME -> ../../archive/NAME3, each hop watched. */
TEST(watch_targets_link_chain_across_directories)
{
	struct watch_target *t;
	size_t n;
	mkdir(at("le"), 0700);
	mkdir(at("le/live"), 0700);
	mkdir(at("le/archive"), 0700);
	mkdir(at("etc"), 0700);
	put(at("le/archive/cert3.pem"), "crt");
	CHECK_INT(symlink("../archive/cert3.pem", at("le/live/cert.pem")), 0);
	CHECK_INT(symlink(at("le/live/cert.pem"), at("etc/upseal.crt")), 0);
	const char *paths[] = { at("etc/upseal.crt") };
	CHECK_INT(watch_targets(paths, 1, &t, &n), 0);
	CHECK_INT(n, 3);
	if (n != 3)
		return;
	CHECK_STR(t[0].dir, real("etc"));
	CHECK_STR(t[0].name, "upseal.crt");
	CHECK_STR(t[1].dir, real("le/live"));
	CHECK_STR(t[1].name, "cert.pem");
	CHECK_STR(t[2].dir, real("le/archive"));
	CHECK_STR(t[2].name, "cert3.pem");
	watch_targets_free(t, n);
}

TEST(watch_targets_link_loop_is_bounded)
{
	struct watch_target *t;
	size_t n;
	mkdir(at("loop"), 0700);
	CHECK_INT(symlink("b", at("loop/a")), 0);
	CHECK_INT(symlink("a", at("loop/b")), 0);
	const char *paths[] = { at("loop/a") };
	CHECK_INT(watch_targets(paths, 1, &t, &n), 0);
	CHECK_INT(n, 2);
	watch_targets_free(t, n);
}

TEST(watch_digest_counts_content_only)
{
	static const unsigned char seed[32], seed2[32] = { 1 };
	unsigned char d0[32], d1[32];
	mkdir(at("dg"), 0700);
	put(at("dg/a"), "one");
	put(at("dg/b"), "two");
	const char *ab[] = { at("dg/a"), at("dg/b") };
	const char *ba[] = { at("dg/b"), at("dg/a") };
	CHECK_INT(watch_digest(seed, ab, 2, d0), 0);
	CHECK_INT(watch_digest(seed, ab, 2, d1), 0);
	CHECK(memcmp(d0, d1, 32) == 0);
	/* New times, same bytes (touch, or a rewrite with the same text). */
	struct timespec ts[2] = { { .tv_sec = 1 }, { .tv_sec = 1 } };
	CHECK_INT(utimensat(AT_FDCWD, at("dg/a"), ts, 0), 0);
	put(at("dg/b"), "two");
	CHECK_INT(watch_digest(seed, ab, 2, d1), 0);
	CHECK(memcmp(d0, d1, 32) == 0);
	/* Order, seed and content each count. */
	CHECK_INT(watch_digest(seed, ba, 2, d1), 0);
	CHECK(memcmp(d0, d1, 32) != 0);
	CHECK_INT(watch_digest(seed2, ab, 2, d1), 0);
	CHECK(memcmp(d0, d1, 32) != 0);
	put(at("dg/b"), "twO");
	CHECK_INT(watch_digest(seed, ab, 2, d1), 0);
	CHECK(memcmp(d0, d1, 32) != 0);
	/* A missing file is a value too, not a failure; and not "empty". */
	const char *gone[] = { at("dg/gone") }, *empty[] = { at("dg/e") };
	put(at("dg/e"), "");
	CHECK_INT(watch_digest(seed, gone, 1, d0), 0);
	CHECK_INT(watch_digest(seed, empty, 1, d1), 0);
	CHECK(memcmp(d0, d1, 32) != 0);
}

TEST(config_watch_keys)
{
	const char *path = at("watch.ini");
	struct cfg *c = NULL;
	char err[512];
	put(path, "[app]\nlisten = 127.0.0.1:7001\nconnect = 10.0.0.5:7443\n"
	    "cert = c.crt\nkey = c.key\npin = "
	    "sha256//AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n");
	CHECK_INT(cfg_load(path, CFG_CLIENT, &c, err, sizeof err), 0);
	if (c != NULL) {
		CHECK(c->watch);
		CHECK_INT(c->reload_interval_ms, 0);
		cfg_free(c);
	}
	put(path, "[upseal]\nwatch = no\nreload_interval = 30s\n"
	    "[app]\nlisten = 127.0.0.1:7001\nconnect = 10.0.0.5:7443\n"
	    "cert = c.crt\nkey = c.key\npin = "
	    "sha256//AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n");
	CHECK_INT(cfg_load(path, CFG_CLIENT, &c, err, sizeof err), 0);
	if (c != NULL) {
		CHECK(!c->watch);
		CHECK_INT(c->reload_interval_ms, 30000);
		cfg_free(c);
	}
	put(path, "[upseal]\nreload_interval = 2h\n");
	CHECK_INT(cfg_load(path, CFG_CLIENT, &c, err, sizeof err), -1);
	CHECK_CONTAINS(err, "watch.ini:2: [upseal] reload_interval: \"2h\" "
	    "is out of range; expected a duration from 0 to 1h");
	put(path, "[upseal]\nwatch = sometimes\n");
	CHECK_INT(cfg_load(path, CFG_CLIENT, &c, err, sizeof err), -1);
	CHECK_CONTAINS(err, "[upseal] watch: \"sometimes\" is not yes or no");
}

static void collect(const char *path, void *arg)
{
	char *out = arg;
	size_t used = strlen(out);
	snprintf(out + used, 1024 - used, "%s;", path);
}

TEST(config_files_lists_every_named_file)
{
	const char *path = at("files.ini");
	struct cfg *c = NULL;
	char err[512], got[1024] = "", want[1024];
	put(path, "[a]\nlisten = 0.0.0.0:7443\nconnect = 127.0.0.1:8080\n"
	    "cert = a.crt\nkey = a.key\nca = ca.crt\n"
	    "ticket_key_file = t.key\n"
	    "[b]\nlisten = 0.0.0.0:7444\nconnect = 127.0.0.1:8081\n"
	    "cert = b.crt\nkey = b.key\npin = "
	    "sha256//AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n");
	CHECK_INT(cfg_load(path, CFG_SERVER, &c, err, sizeof err), 0);
	if (c == NULL)
		return;
	cfg_files(c, collect, got);
	snprintf(want, sizeof want, "%s;a.crt;a.key;ca.crt;t.key;b.crt;b.key;",
	    path);
	CHECK_STR(got, want);
	/* The digest of the text the load parsed: the same text, the same. */
	struct cfg *c2 = NULL;
	CHECK_INT(cfg_load(path, CFG_SERVER, &c2, err, sizeof err), 0);
	if (c2 != NULL)
		CHECK(memcmp(c->text_sha256, c2->text_sha256, 32) == 0);
	cfg_free(c2);
	cfg_free(c);
}

/* ---- the watch on a loop --------------------------------------------- */

struct seen {
	int calls;
	enum watch_trigger why;
	char changed[PATH_MAX];
	uv_loop_t *loop;
};

static void on_change(void *arg, enum watch_trigger why, const char *changed)
{
	struct seen *s = arg;
	s->calls++;
	s->why = why;
	snprintf(s->changed, sizeof s->changed, "%s", changed ? changed : "");
	uv_stop(s->loop);
}

static void on_deadline(uv_timer_t *t)
{
	uv_stop(t->loop);
}

/* Run the loop until the callback fires or 3 s pass. */
static void run_until_called(struct seen *s, uv_loop_t *loop)
{
	uv_timer_t deadline;
	uv_timer_init(loop, &deadline);
	uv_timer_start(&deadline, on_deadline, 3000, 0);
	uv_run(loop, UV_RUN_DEFAULT);
	uv_close((uv_handle_t *)&deadline, NULL);
	uv_run(loop, UV_RUN_NOWAIT);
	(void)s;
}

TEST(watch_sees_a_rename_over_a_watched_file_only)
{
	uv_loop_t loop;
	struct watch *w;
	struct seen s = { .loop = &loop };
	mkdir(at("ev"), 0700);
	put(at("ev/x.crt"), "old");
	CHECK_INT(uv_loop_init(&loop), 0);
	CHECK_INT(watch_new(&loop, on_change, &s, &w), 0);
	const char *paths[] = { at("ev/x.crt") };
	CHECK_INT(watch_set(w, paths, 1), 0);
	watch_enable(w, true, 0);
	/* An unrelated file in the same directory: no call. */
	put(at("ev/other.log"), "noise");
	uv_run(&loop, UV_RUN_NOWAIT);
	put(at("ev/x.crt.tmp"), "new");
	CHECK_INT(rename(at("ev/x.crt.tmp"), at("ev/x.crt")), 0);
	run_until_called(&s, &loop);
	CHECK_INT(s.calls, 1);
	CHECK_INT(s.why, WATCH_FILE);
	char want[PATH_MAX];
	snprintf(want, sizeof want, "%s/x.crt", real("ev"));
	CHECK_STR(s.changed, want);
	/* Off: events no longer count; the interval timer does. */
	watch_enable(w, false, 20);
	put(at("ev/x.crt"), "newer");
	run_until_called(&s, &loop);
	CHECK_INT(s.calls, 2);
	CHECK_INT(s.why, WATCH_INTERVAL);
	watch_close(w);
	uv_run(&loop, UV_RUN_DEFAULT);
	CHECK_INT(uv_loop_close(&loop), 0);
}
