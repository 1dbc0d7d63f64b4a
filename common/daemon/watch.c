#include "watch.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <mbedtls/platform_util.h>

#include "compat.h"
#include "log.h"

#define READ_MAX (64u * 1024 * 1024)
#define container_of(p, type, member) \
	((type *)(void *)((char *)(p) - offsetof(type, member)))
/* The kubelet's atomic writer: files are links into this link's target. */
#define KUBELET_DATA "..data"

/* A watched directory and the names that matter in it. */
struct wdir {
	struct watch *w;
	struct wdir *next;
	char *dir;
	char **names;
	size_t nnames, cap;
	uv_fs_event_t ev;
	bool started;		/* uv_fs_event_start succeeded */
	bool warned;		/* its failure was logged */
	bool wanted;		/* during watch_set: still needed */
};

struct watch {
	uv_loop_t *loop;
	watch_fn fn;
	void *arg;
	char **paths;
	size_t npaths;
	bool events;
	uint64_t interval_ms;
	struct wdir *dirs;
	uv_timer_t quiet;	/* the end of a burst */
	uv_timer_t tick;	/* reload_interval */
	bool pending;		/* a burst is in progress */
	uint64_t burst_start;	/* uv_now at its first event */
	char changed[PATH_MAX + NAME_MAX + 2];
	bool closing;
	unsigned open_handles;	/* freed when the last one closes */
};

static void free_names(struct wdir *wd)
{
	for (size_t i = 0; i < wd->nnames; i++)
		free(wd->names[i]);
	wd->nnames = 0;
}

static void on_handle_closed(uv_handle_t *h)
{
	struct watch *w = h->data;
	if (h->type == UV_FS_EVENT) {
		struct wdir *wd = container_of((uv_fs_event_t *)h,
		    struct wdir, ev);
		w = wd->w;
		free_names(wd);
		free(wd->names);
		free(wd->dir);
		free(wd);
	}
	if (--w->open_handles > 0)
		return;
	for (size_t i = 0; i < w->npaths; i++)
		free(w->paths[i]);
	free(w->paths);
	free(w);
}

static void close_dir(struct wdir *wd)
{
	uv_close((uv_handle_t *)&wd->ev, on_handle_closed);
}

static bool matches(const struct wdir *wd, const char *name)
{
	if (name == NULL || strcmp(name, KUBELET_DATA) == 0)
		return true;
	for (size_t i = 0; i < wd->nnames; i++)
		if (strcmp(wd->names[i], name) == 0)
			return true;
	return false;
}

static void on_quiet(uv_timer_t *t)
{
	struct watch *w = t->data;
	char changed[sizeof w->changed];
	if (!w->pending)
		return;
	w->pending = false;
	memcpy(changed, w->changed, sizeof changed);
	w->fn(w->arg, WATCH_FILE, changed);
}

static void on_fs_event(uv_fs_event_t *h, const char *name, int events,
    int status)
{
	struct wdir *wd = container_of(h, struct wdir, ev);
	struct watch *w = wd->w;
	(void)events;
	if (w->closing || (status == 0 && !matches(wd, name)))
		return;
	uint64_t now = uv_now(w->loop), delay = WATCH_QUIET_MS;
	if (!w->pending) {
		w->pending = true;
		w->burst_start = now;
		snprintf(w->changed, sizeof w->changed, "%s%s%s", wd->dir,
		    strcmp(wd->dir, "/") == 0 ? "" : "/",
		    name != NULL ? name : "");
	} else {
		uint64_t end = w->burst_start + WATCH_MAX_DELAY_MS;
		delay = end <= now ? 0 : end - now;
		if (delay > WATCH_QUIET_MS)
			delay = WATCH_QUIET_MS;
	}
	uv_timer_start(&w->quiet, on_quiet, delay, 0);
}

static void on_tick(uv_timer_t *t)
{
	struct watch *w = t->data;
	w->fn(w->arg, WATCH_INTERVAL, NULL);
}

int watch_new(uv_loop_t *loop, watch_fn fn, void *arg, struct watch **out)
{
	struct watch *w = calloc(1, sizeof *w);
	*out = NULL;
	if (w == NULL)
		return -1;
	w->loop = loop;
	w->fn = fn;
	w->arg = arg;
	uv_timer_init(loop, &w->quiet);
	uv_timer_init(loop, &w->tick);
	w->quiet.data = w->tick.data = w;
	w->open_handles = 2;
	*out = w;
	return 0;
}

static void start_dir(struct wdir *wd)
{
	int rc = uv_fs_event_start(&wd->ev, on_fs_event, wd->dir, 0);
	if (rc == 0) {
		wd->started = true;
		struct log_line l;
		log_begin(&l, LOG_DEBUG, "watching");
		log_str(&l, "dir", wd->dir);
		log_end(&l);
		return;
	}
	if (wd->warned)
		return;
	wd->warned = true;
	struct log_line l;
	log_begin(&l, LOG_WARN, "watch_failed");
	log_str(&l, "path", wd->dir);
	log_str(&l, "error", log_uverr(rc));
	log_str(&l, "msg", rc == UV_ENOSPC || rc == UV_EMFILE ?
	    "inotify limit reached (fs.inotify.max_user_watches or "
	    "max_user_instances): changes there are not seen; SIGHUP and "
	    "reload_interval still reload" :
	    "changes there are not seen; SIGHUP and reload_interval still "
	    "reload");
	log_end(&l);
}

static struct wdir *find_dir(struct watch *w, const char *dir)
{
	for (struct wdir *wd = w->dirs; wd != NULL; wd = wd->next)
		if (strcmp(wd->dir, dir) == 0)
			return wd;
	return NULL;
}

static struct wdir *new_dir(struct watch *w, const char *dir)
{
	struct wdir *wd = calloc(1, sizeof *wd);
	if (wd == NULL || (wd->dir = strdup(dir)) == NULL) {
		free(wd);
		return NULL;
	}
	wd->w = w;
	uv_fs_event_init(w->loop, &wd->ev);
	w->open_handles++;
	wd->next = w->dirs;
	w->dirs = wd;
	return wd;
}

static int add_name(struct wdir *wd, const char *name)
{
	for (size_t i = 0; i < wd->nnames; i++)
		if (strcmp(wd->names[i], name) == 0)
			return 0;
	if (wd->nnames == wd->cap) {
		size_t cap = wd->cap ? wd->cap * 2 : 4;
		char **v = realloc(wd->names, cap * sizeof *v);
		if (v == NULL)
			return -1;
		wd->names = v;
		wd->cap = cap;
	}
	if ((wd->names[wd->nnames] = strdup(name)) == NULL)
		return -1;
	wd->nnames++;
	return 0;
}

/* Close every directory not wanted (all, with events off). */
static void drop_unwanted(struct watch *w)
{
	struct wdir **pp = &w->dirs;
	while (*pp != NULL) {
		struct wdir *wd = *pp;
		if (wd->wanted && w->events) {
			pp = &wd->next;
			continue;
		}
		*pp = wd->next;
		close_dir(wd);
	}
}

/* Make the watched directories those of w->paths. */
static int sync_dirs(struct watch *w)
{
	struct watch_target *t = NULL;
	size_t n = 0;
	int rc = 0;
	if (w->events && watch_targets((const char *const *)w->paths,
	    w->npaths, &t, &n) != 0)
		goto fail;
	for (struct wdir *wd = w->dirs; wd != NULL; wd = wd->next) {
		wd->wanted = false;
		free_names(wd);
	}
	for (size_t i = 0; i < n; i++) {
		struct wdir *wd = find_dir(w, t[i].dir);
		if (wd == NULL && (wd = new_dir(w, t[i].dir)) == NULL)
			rc = -1;
		else if (add_name(wd, t[i].name) != 0)
			rc = -1;
		if (wd != NULL)
			wd->wanted = true;
	}
	watch_targets_free(t, n);
	drop_unwanted(w);
	for (struct wdir *wd = w->dirs; wd != NULL; wd = wd->next)
		if (!wd->started)
			start_dir(wd);
	if (rc == 0)
		return 0;
fail:
	log_msg(LOG_WARN, "watch_failed", "out of memory: some files are "
	    "not watched; SIGHUP and reload_interval still reload");
	return -1;
}

int watch_set(struct watch *w, const char *const *paths, size_t n)
{
	char **v = calloc(n ? n : 1, sizeof *v);
	if (v == NULL)
		return -1;
	for (size_t i = 0; i < n; i++) {
		if ((v[i] = strdup(paths[i])) != NULL)
			continue;
		while (i > 0)
			free(v[--i]);
		free(v);
		return -1;
	}
	for (size_t i = 0; i < w->npaths; i++)
		free(w->paths[i]);
	free(w->paths);
	w->paths = v;
	w->npaths = n;
	return w->events ? sync_dirs(w) : 0;
}

void watch_enable(struct watch *w, bool events, uint64_t interval_ms)
{
	if (w->closing)
		return;
	if (events != w->events) {
		w->events = events;
		if (!events)
			watch_settle(w);
		sync_dirs(w);
	}
	if (interval_ms != w->interval_ms) {
		w->interval_ms = interval_ms;
		uv_timer_stop(&w->tick);
		if (interval_ms > 0)
			uv_timer_start(&w->tick, on_tick, interval_ms,
			    interval_ms);
	}
}

void watch_settle(struct watch *w)
{
	if (w == NULL)
		return;
	w->pending = false;
	uv_timer_stop(&w->quiet);
}

void watch_close(struct watch *w)
{
	if (w == NULL || w->closing)
		return;
	w->closing = true;
	w->events = false;
	drop_unwanted(w);
	uv_close((uv_handle_t *)&w->quiet, on_handle_closed);
	uv_close((uv_handle_t *)&w->tick, on_handle_closed);
}

/* ---- the digest ------------------------------------------------------ */

/*
 * The SHA-256 of what path holds, or -errno. Content only; a file past
 * READ_MAX is counted by its size and mtime instead.
 */
static int hash_file(const char *path, unsigned char h[32])
{
	struct stat st;
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) != 0) {
		int e = errno;
		close(fd);
		return -e;
	}
	if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size > READ_MAX) {
		struct { uint64_t size, sec, nsec; unsigned mode; } id = {
			(uint64_t)st.st_size, (uint64_t)st.st_mtim.tv_sec,
			(uint64_t)st.st_mtim.tv_nsec, st.st_mode,
		};
		close(fd);
		return compat_sha256((const unsigned char *)&id, sizeof id, h)
		    == 0 ? 0 : -EIO;
	}
	/* One byte more than it says: a file growing meanwhile still counts. */
	size_t cap = (size_t)st.st_size + 1, len = 0;
	unsigned char *buf = malloc(cap);
	int rc = 0;
	if (buf == NULL) {
		close(fd);
		return -ENOMEM;
	}
	while (len < cap) {
		ssize_t r = read(fd, buf + len, cap - len);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			rc = -errno;
			break;
		}
		if (r == 0)
			break;
		len += (size_t)r;
	}
	close(fd);
	if (rc == 0 && compat_sha256(buf, len, h) != 0)
		rc = -EIO;
	mbedtls_platform_zeroize(buf, cap);
	free(buf);
	return rc;
}

int watch_digest(const unsigned char seed[32], const char *const *paths,
    size_t n, unsigned char out[32])
{
	unsigned char acc[32];
	memcpy(acc, seed, sizeof acc);
	for (size_t i = 0; i < n; i++) {
		size_t plen = strlen(paths[i]);
		/* acc, path, NUL, 'F' + hash or 'E' + errno */
		size_t len = sizeof acc + plen + 1 + 1 + 32;
		unsigned char *b = malloc(len);
		if (b == NULL)
			return -1;
		memcpy(b, acc, sizeof acc);
		memcpy(b + sizeof acc, paths[i], plen + 1);
		unsigned char *tag = b + sizeof acc + plen + 1;
		int rc = hash_file(paths[i], tag + 1);
		if (rc == -ENOMEM) {
			free(b);
			return -1;
		}
		tag[0] = rc == 0 ? 'F' : 'E';
		if (rc != 0) {
			memset(tag + 1, 0, 32);
			memcpy(tag + 1, &rc, sizeof rc);
		}
		rc = compat_sha256(b, len, acc);
		free(b);
		if (rc != 0)
			return -1;
	}
	memcpy(out, acc, sizeof acc);
	return 0;
}

/* ---- what to watch --------------------------------------------------- */

struct targets {
	struct watch_target *v;
	size_t n, cap;
};

/* Split path into its directory ("." or "/" at least) and last name. */
static int split(const char *path, char **dir, char **name)
{
	const char *slash = strrchr(path, '/');
	*dir = *name = NULL;
	if (slash == NULL)
		*dir = strdup(".");
	else if (slash == path)
		*dir = strdup("/");
	else
		*dir = strndup(path, (size_t)(slash - path));
	*name = strdup(slash ? slash + 1 : path);
	if (*dir == NULL || *name == NULL) {
		free(*dir);
		free(*name);
		return -1;
	}
	return 0;
}

/* Add (dir, name), dir resolved when it can be; takes both strings. */
static int add_target(struct targets *ts, char *dir, char *name)
{
	char *real = realpath(dir, NULL);
	if (real != NULL) {
		free(dir);
		dir = real;
	}
	for (size_t i = 0; i < ts->n; i++) {
		if (strcmp(ts->v[i].dir, dir) == 0 &&
		    strcmp(ts->v[i].name, name) == 0) {
			free(dir);
			free(name);
			return 0;
		}
	}
	if (ts->n == ts->cap) {
		size_t cap = ts->cap ? ts->cap * 2 : 8;
		struct watch_target *v = realloc(ts->v, cap * sizeof *v);
		if (v == NULL) {
			free(dir);
			free(name);
			return -1;
		}
		ts->v = v;
		ts->cap = cap;
	}
	ts->v[ts->n++] = (struct watch_target){ .dir = dir, .name = name };
	return 0;
}

/* path and each hop of the links from it. */
static int add_path(struct targets *ts, const char *path)
{
	char *cur = strdup(path);
	char link[PATH_MAX];
	int rc = cur == NULL ? -1 : 0;
	for (int hop = 0; rc == 0 && hop <= WATCH_HOPS_MAX; hop++) {
		char *dir, *name;
		if (split(cur, &dir, &name) != 0) {
			rc = -1;
			break;
		}
		ssize_t r = readlink(cur, link, sizeof link - 1);
		char *next = NULL;
		if (r > 0) {
			link[r] = '\0';
			if (link[0] == '/')
				next = strdup(link);
			else if (asprintf(&next, "%s/%s", dir, link) < 0)
				next = NULL;
		}
		if (add_target(ts, dir, name) != 0 || (r > 0 && next == NULL)) {
			free(next);
			rc = -1;
			break;
		}
		free(cur);
		cur = next;
		if (cur == NULL)
			break;
	}
	free(cur);
	return rc;
}

int watch_targets(const char *const *paths, size_t n,
    struct watch_target **out, size_t *nout)
{
	struct targets ts = { 0 };
	*out = NULL;
	*nout = 0;
	for (size_t i = 0; i < n; i++) {
		if (add_path(&ts, paths[i]) != 0) {
			watch_targets_free(ts.v, ts.n);
			return -1;
		}
	}
	*out = ts.v;
	*nout = ts.n;
	return 0;
}

void watch_targets_free(struct watch_target *t, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(t[i].dir);
		free(t[i].name);
	}
	free(t);
}
