/*
 * watch: tell the daemon when the files its configuration names may have
 * changed, so that it reloads without a signal. Two sources, both on the
 * main loop:
 *
 * - file events (watch = yes): a uv_fs_event_t on the directory of each
 *   file, and of each hop of a symbolic link to it, filtered by name, so
 *   that a file replaced by a rename (an editor's save), written in place
 *   (cp) or swapped with the kubelet's `..data` symlink is seen. An event
 *   for `..data` in a watched directory counts for every watched file
 *   there. Events are coalesced: the callback fires once the directory
 *   has been quiet for WATCH_QUIET_MS, or WATCH_MAX_DELAY_MS after the
 *   first event of a burst that does not stop;
 * - a timer (reload_interval), for filesystems without events.
 *
 * Either only says "look now": the daemon decides whether anything
 * changed (watch_digest) and reloads as SIGHUP does.
 */
#ifndef UPSEAL_WATCH_H
#define UPSEAL_WATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

/* The quiet period after the last event of a burst, and its bound. */
#define WATCH_QUIET_MS 300
#define WATCH_MAX_DELAY_MS 3000
/* Symbolic links followed from a named file to the file itself. */
#define WATCH_HOPS_MAX 8

enum watch_trigger { WATCH_FILE, WATCH_INTERVAL };

/*
 * Called on the loop: a burst of events ended (WATCH_FILE, with changed
 * the first watched file of the burst, "DIR/NAME", valid during the
 * call) or the interval timer fired (WATCH_INTERVAL, changed NULL). The
 * callback may call watch_set, watch_enable and watch_settle.
 */
typedef void (*watch_fn)(void *arg, enum watch_trigger why,
    const char *changed);

struct watch;

/*
 * A watch on loop, calling fn(arg, ...), with no file and both sources
 * off. 0 and *out, or -1 (out of memory), nothing left.
 */
int watch_new(uv_loop_t *loop, watch_fn fn, void *arg, struct watch **out);

/*
 * The files to watch from now on (copied: paths stay the caller's). With
 * events on, the directories are watched at once: those no longer needed
 * are closed, new ones started. A directory that cannot be watched
 * (missing, inotify limits) is logged once as event=watch_failed, naming
 * it, and tried again at the next watch_set; everything else goes on.
 * -1: out of memory (the previous set stays).
 */
int watch_set(struct watch *w, const char *const *paths, size_t n);

/*
 * Turn file events on or off and set the interval (0: no timer). A
 * changed interval restarts the timer; the same one leaves it running.
 */
void watch_enable(struct watch *w, bool events, uint64_t interval_ms);

/* A reload has just read every file: forget a burst in progress. */
void watch_settle(struct watch *w);

/*
 * Stop both sources and close every handle; w is freed in the last close
 * callback (run the loop). No callback fires after this. NULL: no-op.
 */
void watch_close(struct watch *w);

/*
 * A digest of what the files hold now: SHA-256 chained from seed over,
 * for each path in order, the path and either the SHA-256 of its content
 * or the error that reading it met. Only content counts: touching a file
 * (its times) or rewriting it with the same bytes gives the same digest.
 * A file is read whole (at most 64 MiB; a larger one counts by its size
 * and mtime) and the copy is wiped: keys pass through here. 0, or -1
 * (out of memory).
 */
int watch_digest(const unsigned char seed[32], const char *const *paths,
    size_t n, unsigned char out[32]);

/* One directory to watch and a name in it. */
struct watch_target {
	char *dir;	/* resolved (realpath) when it exists; heap */
	char *name;	/* heap */
};

/*
 * The (directory, name) pairs that cover paths: for each path, its own
 * directory and name, then, while it is a symbolic link (at most
 * WATCH_HOPS_MAX), those of the link's target. Directories are resolved
 * with realpath (so `..data/x` names the timestamped directory it points
 * to now); pairs are unique. 0 with *out (free with watch_targets_free)
 * and *nout, or -1 (out of memory).
 */
int watch_targets(const char *const *paths, size_t n,
    struct watch_target **out, size_t *nout);
void watch_targets_free(struct watch_target *t, size_t n);

#endif
