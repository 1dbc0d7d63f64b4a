/*
 * outfile: writing upseal-certs' output files so that a key is never
 * readable by others, never half-written under its final name (with
 * --force), and an existing file is never replaced without --force.
 *
 * A file is written in two steps: outfile_stage() writes the data, then
 * outfile_commit() makes it visible under its name, or outfile_abort()
 * removes what was staged. Every function returning int returns 0, or -1
 * with a sentence in err naming the file.
 */
#ifndef UPSEAL_OUTFILE_H
#define UPSEAL_OUTFILE_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

struct outfile {
	char path[PATH_MAX];
	char tmp[PATH_MAX];	/* the staged temporary file; "" if none */
	bool created;		/* path itself was created by stage */
};

/*
 * Create dir with mode 0700 unless it exists (one level). *created tells
 * whether it was made.
 */
int outfile_mkdir(const char *dir, bool *created, char *err, size_t errlen);

/* -1 with "PATH exists; use --force to replace it" if path exists. */
int outfile_check_absent(const char *path, char *err, size_t errlen);

/*
 * Write data to a new file created with open(O_CREAT|O_EXCL, mode), and
 * fsync it. Without replace, that file is path itself, and an existing path
 * is an error; with replace, it is a temporary file in path's directory that
 * outfile_commit() renames over path. f is filled in; its path is the caller's
 * string copied. rng_init() first.
 */
int outfile_stage(struct outfile *f, const char *path, const void *data,
    size_t len, mode_t mode, bool replace, char *err, size_t errlen);

/* Make a staged file visible under its name (rename, then fsync the dir). */
int outfile_commit(struct outfile *f, char *err, size_t errlen);

/*
 * Remove what outfile_stage() created: the temporary file, or path itself
 * when it was created there. Safe to call twice, and after a commit
 * (then it removes nothing).
 */
void outfile_abort(struct outfile *f);

#endif
