/* SPDX-License-Identifier: BSD-3-Clause
 *
 * The command engine: many threads running NBD commands at once on one
 * connected libnbd handle.
 *
 * libnbd's synchronous calls hold the handle's lock until the reply has
 * come, so they run one at a time.  Here each thread sends its command
 * with libnbd's aio call and waits for the reply; one waiting thread at a
 * time (the leader) polls the socket and lets libnbd read replies,
 * whichever commands they belong to.  engine.c says how.
 *
 * Invariants
 *
 *  Ownership.  engine_new takes the connected nbd_handle: from then on
 *  only the engine calls libnbd on it, and engine_close closes it.  The
 *  engine also holds its own duplicate of the handle's socket (sock_fd),
 *  so that a socket libnbd has closed is never confused with a newer file
 *  that got the same number; sock_fd is closed by engine_close only.
 *
 *  Locks, outermost first:
 *   - lock (a mutex) protects the leader flag and the list of sleeping
 *     waiters;
 *   - io_lock (a mutex) is held for every call into libnbd's state
 *     machine (nbd_aio_* that send, notify_read/notify_write), and while
 *     issuing the commands on to_issue;
 *   - libnbd's own handle lock, taken inside each libnbd call.
 *  A thread never waits for io_lock while holding lock.  Only the leader
 *  ever sleeps on io_lock; a thread that would have to wait to issue its
 *  command pushes it on to_issue (a lock-free list) instead, and whoever
 *  holds io_lock issues it before letting go.
 *  drain_lock serialises reading the socket after the connection died.
 *
 *  Roles.  At most one thread leads (lock: leader = 1) and polls sock_fd;
 *  the others sleep on the futex word of their own command.  A leader
 *  whose own command is done hands the role to a waiter whose command is
 *  still pending (the LEAD bit in its state), or clears the flag.
 *
 *  Command records live on the stack of the thread that runs the command
 *  and are valid until that thread returns.  The thread does not return
 *  before its record is DONE: libnbd refused it, or libnbd called the
 *  completion callback, which it does exactly once for every command it
 *  accepted (with an error when the connection dies).  So libnbd never
 *  holds a buffer that a caller has taken back.
 *
 *  Ending a connection.  A command not answered within timeout_ms ends
 *  the connection for every command in flight (NBD cannot cancel one):
 *  the socket's sending half is shut, so that the server sees the end of
 *  our requests, finishes what it has and closes; and libnbd's
 *  descriptor is pointed at a dead socket (dup3 under io_lock), so that
 *  libnbd fails every command at once and lets go of their buffers.  The
 *  socket's receiving half stays open on sock_fd.  From then on no
 *  command is sent (engine_command reports them failed and not sent).
 *
 *  Knowing that the server let go.  A write that may have reached the
 *  server on a connection that then failed must not be sent again while
 *  the server may still apply the first copy: the resent copy could be
 *  acknowledged, a later write acknowledged on top of it, and the old
 *  copy applied last.  engine_server_closed tells whether the server has
 *  closed the connection (it reads the socket to its end), which is
 *  when the first copy can no longer be applied.
 *
 * Not thread-safe: engine_new and engine_close (no command may be
 * running).  Thread-safe: everything else.
 */
#ifndef NBDGO_ENGINE_H
#define NBDGO_ENGINE_H

#include <stddef.h>
#include <stdint.h>
#include <libnbd.h>

struct engine;

/* The operations; nbdkit's request flags are mapped to NBD's by the
 * caller (LIBNBD_CMD_FLAG_*).
 */
enum engine_op {
  ENGINE_PREAD, ENGINE_PWRITE, ENGINE_ZERO, ENGINE_TRIM, ENGINE_FLUSH,
  ENGINE_CACHE, ENGINE_BLOCK_STATUS,
};

struct engine_request {
  int op;                       /* enum engine_op */
  void *buf;                    /* pread, pwrite */
  uint64_t count, offset;
  uint32_t flags;               /* LIBNBD_CMD_FLAG_* */
  const char *context;          /* block status: the meta context */
  /* block status, out: (length, flags) pairs, malloc'd, freed by the
   * caller even when the command failed.
   */
  uint32_t *entries;
  size_t nr_entries;
};

/* How a command ended. */
enum engine_outcome {
  ENGINE_OK,
  ENGINE_ERROR,                 /* the server (or libnbd) refused it */
  ENGINE_CONN_FAILED,           /* the connection failed */
};

struct engine_result {
  int outcome;                  /* enum engine_outcome */
  int errnum;                   /* the errno for the client, if not OK */
  int timed_out;                /* the connection was ended for a timeout */
  int not_sent;                 /* CONN_FAILED: it never left this process */
  char *msg;                    /* malloc'd message, or NULL */
};

/* Take a connected handle.  timeout_ms: per command (0: none).  NULL
 * with errno set on failure; the handle is then still the caller's.
 */
struct engine *engine_new (struct nbd_handle *nbd, int64_t timeout_ms);

/* Run one command and wait for it.  Returns res->outcome. */
int engine_command (struct engine *e, struct engine_request *req,
                    struct engine_result *res);

/* Whether the connection has failed or been ended. */
int engine_is_dead (struct engine *e);

/* Wait until deadline_ms (engine_now_ms clock; -1: do not wait) for the
 * server to close a connection that has failed; 1 if it has.
 */
int engine_server_closed (struct engine *e, int64_t deadline_ms);

/* End the connection politely (waiting at most timeout_ms, 0: no limit,
 * then ending it at once and, for a server we started, killing it) and
 * free everything.  No command may be running.
 */
void engine_close (struct engine *e, int64_t timeout_ms);

/* CLOCK_MONOTONIC in milliseconds, the clock of every deadline here. */
int64_t engine_now_ms (void);

#endif
