/* SPDX-License-Identifier: BSD-3-Clause
 *
 * Who serves a server connection: the process at the other end of a
 * Unix socket of this host, when that can be told for certain, so that
 * its exit can end the doubts of the writes it was sent (doubt.h).
 *
 * The server is the process that holds the server's end of this very
 * connection (its inode, from the kernel's sock_diag): the listener
 * that SO_PEERCRED names, if it holds it (nbdkit -f, qemu-nbd), else
 * the one process that does (nbdkit in the background listened, then
 * forked; a server systemd started by socket activation accepts
 * itself).  SO_PEERCRED alone would be fooled: a server that forks per
 * connection (nbd-server) serves from a child while its parent
 * listens, under systemd the listener is PID 1, a pid may have been
 * reused.  The process is taken as the server only if it holds the
 * connection (the listener; else as the only process that does), has
 * no child process, and is alive after the checks (so the pidfd, taken
 * before them, is of the process checked); not PID 1; and only where
 * /proc shows this PID namespace.  Anything else gives no evidence.
 * (The listener is not checked to be the only holder: that would look
 * at every process for every connection.  A server that passes its
 * connections to another process and keeps a copy would fool it.)
 *
 * What this cannot see: a server that hands a write it read to a
 * helper process that outlives it (nbdkit's sh or eval plugins run
 * scripts), or that forks after the check.  The man page says so.
 */
#ifndef NBDGO_PEER_H
#define NBDGO_PEER_H

#include <sys/types.h>

/* A pidfd of the process serving the connected socket fd, or -1 when
 * that cannot be told for certain.  *pid: the serving process if
 * found, else the listener as SO_PEERCRED gives it (0: none), certain
 * or not: which connections reach the same server (serve.c).
 */
int peer_pidfd (int fd, pid_t *pid);

#endif
