#include "outfile.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "rng.h"

#define TMP_TRIES 8

int outfile_mkdir(const char *dir, bool *created, char *err, size_t errlen)
{
	*created = false;
	if (mkdir(dir, 0700) == 0) {
		*created = true;
		return 0;
	}
	if (errno != EEXIST) {
		snprintf(err, errlen, "%s: cannot create directory: %s", dir,
		    strerror(errno));
		return -1;
	}
	struct stat st;
	if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
		snprintf(err, errlen, "%s: exists and is not a directory", dir);
		return -1;
	}
	return 0;
}

int outfile_check_absent(const char *path, char *err, size_t errlen)
{
	struct stat st;
	if (lstat(path, &st) == 0) {
		snprintf(err, errlen, "%s exists; use --force to replace it", path);
		return -1;
	}
	if (errno != ENOENT) {
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		return -1;
	}
	return 0;
}

static int write_all(int fd, const unsigned char *p, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* The directory part of path ("." if none), into out. */
static void dir_of(const char *path, char *out, size_t size)
{
	const char *slash = strrchr(path, '/');
	if (slash == NULL)
		snprintf(out, size, ".");
	else if (slash == path)
		snprintf(out, size, "/");
	else
		snprintf(out, size, "%.*s", (int)(slash - path), path);
}

/* Open a new temporary file beside path: DIR/.BASE.tmp-XXXXXXXXXXXX. */
static int open_tmp(struct outfile *f, mode_t mode)
{
	const char *slash = strrchr(f->path, '/');
	int dirlen = slash ? (int)(slash - f->path + 1) : 0;
	const char *base = f->path + dirlen;

	for (int i = 0; i < TMP_TRIES; i++) {
		unsigned char r[6];
		if (rng_random(NULL, r, sizeof r) != 0) {
			errno = EIO;
			return -1;
		}
		int n = snprintf(f->tmp, sizeof f->tmp,
		    "%.*s.%s.tmp-%02x%02x%02x%02x%02x%02x", dirlen, f->path,
		    base, r[0], r[1], r[2], r[3], r[4], r[5]);
		if (n < 0 || (size_t)n >= sizeof f->tmp) {
			f->tmp[0] = '\0';
			errno = ENAMETOOLONG;
			return -1;
		}
		int fd = open(f->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC |
		    O_NOFOLLOW, mode);
		if (fd >= 0)
			return fd;
		f->tmp[0] = '\0';
		if (errno != EEXIST)
			return -1;
	}
	errno = EEXIST;
	return -1;
}

int outfile_stage(struct outfile *f, const char *path, const void *data,
    size_t len, mode_t mode, bool replace, char *err, size_t errlen)
{
	f->tmp[0] = '\0';
	f->created = false;
	if (snprintf(f->path, sizeof f->path, "%s", path) >= (int)sizeof f->path) {
		snprintf(err, errlen, "%s: path too long", path);
		return -1;
	}

	int fd;
	if (replace) {
		fd = open_tmp(f, mode);
	} else {
		fd = open(f->path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC |
		    O_NOFOLLOW, mode);
		if (fd < 0 && errno == EEXIST) {
			snprintf(err, errlen, "%s exists; use --force to replace it",
			    path);
			return -1;
		}
		f->created = fd >= 0;
	}
	if (fd < 0) {
		snprintf(err, errlen, "%s%s: cannot create: %s",
		    replace ? "temporary file for " : "", path, strerror(errno));
		return -1;
	}
	if (write_all(fd, data, len) != 0 || fsync(fd) != 0) {
		snprintf(err, errlen, "%s: cannot write: %s", path, strerror(errno));
		close(fd);
		outfile_abort(f);
		return -1;
	}
	if (close(fd) != 0) {
		snprintf(err, errlen, "%s: cannot write: %s", path, strerror(errno));
		outfile_abort(f);
		return -1;
	}
	return 0;
}

int outfile_commit(struct outfile *f, char *err, size_t errlen)
{
	if (f->tmp[0] != '\0') {
		if (rename(f->tmp, f->path) != 0) {
			snprintf(err, errlen, "%s: cannot replace: %s", f->path,
			    strerror(errno));
			return -1;
		}
		f->tmp[0] = '\0';
	}
	f->created = false;

	/* Make the new directory entry durable too. */
	char dir[PATH_MAX];
	dir_of(f->path, dir, sizeof dir);
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd >= 0) {
		(void)fsync(fd);
		close(fd);
	}
	return 0;
}

void outfile_abort(struct outfile *f)
{
	if (f->tmp[0] != '\0') {
		(void)unlink(f->tmp);
		f->tmp[0] = '\0';
	}
	if (f->created) {
		(void)unlink(f->path);
		f->created = false;
	}
}
