#include "secret.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <mbedtls/platform_util.h>

/* Whether st may hold a secret that the effective user reads; if not, why. */
static int loose(const struct stat *st, const char *path, uid_t run_as,
    char *err, size_t errlen)
{
	unsigned mode = (unsigned)(st->st_mode & 07777);
	uid_t me = st->st_uid == run_as ? run_as : geteuid();
	if (!S_ISREG(st->st_mode)) {
		snprintf(err, errlen, "%s: not a regular file", path);
		return -1;
	}
	if (st->st_uid == 0 && (mode & 027) != 0) {
		snprintf(err, errlen, "%s: owned by root with mode %04o, which "
		    "lets others read it or the group change it; chmod 640 "
		    "(group may read) or 600 it", path, mode);
		return -1;
	}
	if (st->st_uid != 0 && st->st_uid == me && (mode & 077) != 0) {
		snprintf(err, errlen, "%s: mode %04o lets group or others read "
		    "or change it; chmod 600 it", path, mode);
		return -1;
	}
	if (st->st_uid != 0 && st->st_uid != me) {
		if (run_as != (uid_t)-1 && run_as != me)
			snprintf(err, errlen, "%s: owned by uid %u, not by the "
			    "user reading it (uid %u), the user it runs as "
			    "(uid %u) or root; chown it", path,
			    (unsigned)st->st_uid, (unsigned)me,
			    (unsigned)run_as);
		else
			snprintf(err, errlen, "%s: owned by uid %u, not by the "
			    "user reading it (uid %u) or root; chown it", path,
			    (unsigned)st->st_uid, (unsigned)me);
		return -1;
	}
	return 0;
}

int secret_read(const char *path, size_t max, uid_t run_as,
    unsigned char **buf, size_t *len, char *err, size_t errlen)
{
	*buf = NULL;
	*len = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0) {
		snprintf(err, errlen, "%s: cannot read: %s", path,
		    strerror(errno));
		return -1;
	}
	struct stat st;
	unsigned char *b = NULL;
	size_t n = 0;
	if (fstat(fd, &st) != 0) {
		snprintf(err, errlen, "%s: cannot read: %s", path,
		    strerror(errno));
		goto fail;
	}
	if (loose(&st, path, run_as, err, errlen) != 0)
		goto fail;
	if ((b = malloc(max + 2)) == NULL) {
		snprintf(err, errlen, "%s: out of memory", path);
		goto fail;
	}
	/* One byte more than allowed tells an over-long file. */
	while (n <= max) {
		ssize_t r = read(fd, b + n, max + 1 - n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			snprintf(err, errlen, "%s: cannot read: %s", path,
			    strerror(errno));
			goto fail;
		}
		if (r == 0)
			break;
		n += (size_t)r;
	}
	if (n > max) {
		snprintf(err, errlen, "%s: holds more than %zu bytes", path,
		    max);
		goto fail;
	}
	close(fd);
	b[n] = 0;
	*buf = b;
	*len = n;
	return 0;

fail:
	secret_free(b, n);
	close(fd);
	return -1;
}

void secret_free(unsigned char *buf, size_t len)
{
	if (buf == NULL)
		return;
	mbedtls_platform_zeroize(buf, len + 1);
	free(buf);
}
