/*
 * secret: read a file that holds a secret (a private key, the shared
 * ticket key file) only if nobody but its reader, or root, can read or
 * replace it, as ssh refuses a loose private key. Whoever reads a key can
 * be that sidecar; whoever reads a ticket_key_file can resume as any
 * client of every server sharing it (docs/SECURITY.md).
 *
 * The rule, checked on the open descriptor (no window between the check
 * and the read), is PostgreSQL's for its server key:
 * - a regular file;
 * - owned by the user reading it, or by the user the process is about to
 *   run as (`user =`, read by root at start): no permission for group or
 *   others (0600, 0400);
 * - owned by root: group may read, others nothing (0640, 0440): root
 *   chose the group, as Debian's ssl-cert group and a Kubernetes Secret
 *   mounted with fsGroup and defaultMode 0440 do;
 * - owned by anyone else: refused.
 */
#ifndef UPSEAL_SECRET_H
#define UPSEAL_SECRET_H

#include <stddef.h>
#include <sys/types.h>

/*
 * Read all of path (at most max bytes; run_as is the uid of `user =`, or
 * (uid_t)-1) into a new buffer that ends with
 * one NUL byte not counted in *len (a PEM parser wants it). On success
 * returns 0 and the caller owns *buf: wipe and free it with secret_free.
 * On error returns -1 and err says what is wrong with the file, naming it
 * and, for a loose file, its owner and mode and the fix: "cannot read:
 * Permission denied", "mode 0644 lets group or others read it; chmod 600
 * it", "holds more than N bytes".
 */
int secret_read(const char *path, size_t max, uid_t run_as,
    unsigned char **buf, size_t *len, char *err, size_t errlen);

/* Wipe and free a buffer from secret_read; NULL is a no-op. */
void secret_free(unsigned char *buf, size_t len);

#endif
