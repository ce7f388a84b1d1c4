/* SPDX-License-Identifier: BSD-3-Clause
 *
 * Who serves a server connection: the process at the other end of a
 * Unix socket of this host, when that can be told for certain, so that
 * its exit can end the doubts of the writes it was sent (doubt.h).
 *
 * SO_PEERCRED (and SO_PEERPIDFD, Linux 6.5) name the process that
 * called listen(), which is not always the one that serves: a server
 * that forks per connection (nbd-server) serves from a child, under
 * systemd socket activation the listener is PID 1, and a pid may have
 * been reused.  So the process is taken as the server only if it holds
 * the server's end of this very connection (its inode, from the
 * kernel's sock_diag) and has no child process, and is alive after
 * both checks (so the pidfd, taken first, is of the process checked);
 * not if it is this process (command=: libnbd listened) or PID 1, or
 * if it has no pid in this namespace.  Anything else gives no evidence.
 *
 * What this cannot see: a server that hands a write it read to a
 * helper process that outlives it (nbdkit's sh or eval plugins run
 * scripts), or forks after the check.  The man page says so.
 */
#ifndef NBDGO_PEER_H
#define NBDGO_PEER_H

#include <sys/types.h>

/* A pidfd of the process serving the connected socket fd, or -1 when
 * that cannot be told for certain.  *pid: the listener's pid as
 * SO_PEERCRED gives it (0 if none), whether certain or not: which
 * connections reach the same server.
 */
int peer_pidfd (int fd, pid_t *pid);

#endif
