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
 * Why not a reader thread per connection, as nbdkit's C nbd plugin has:
 * every request would then cost a hand-off to that thread and back
 * (README, "Speed", has what that costs).
 *
 * Invariants
 *
 *  Ownership.  engine_new takes the connected nbd_handle: from then on
 *  only the engine calls libnbd on it, and engine_close closes it.  The
 *  engine also holds its own duplicate of the handle's socket (sock_fd),
 *  which it polls (nbd_aio_get_fd takes libnbd's lock) and shuts down to
 *  end the connection; sock_fd is closed by engine_close only.  The
 *  engine never reads sock_fd while libnbd may: only libnbd reads
 *  replies, and the one look at the socket after that (whether the
 *  server has closed it) is a MSG_PEEK made once libnbd has died and
 *  closed its own descriptor.
 *
 *  Locks, outermost first:
 *   - lock (a mutex) protects the leader flag and the list of sleeping
 *     waiters;
 *   - io_lock (a mutex) is held for every call into libnbd's state
 *     machine (nbd_aio_* that send, notify_read/notify_write), and while
 *     issuing the commands on to_issue;
 *   - libnbd's own handle lock, taken inside each libnbd call.
 *  A thread never waits for io_lock while holding lock.  A thread that
 *  would have to wait for io_lock to issue its command pushes it on
 *  to_issue (a lock-free list) instead, and whoever holds io_lock issues
 *  it before letting go.  Two kinds of thread do sleep on io_lock: the
 *  leader, to notify libnbd of what poll saw; and a thread ending the
 *  connection (end_connection: a leader or a follower whose deadline
 *  passed), to make libnbd notice the end.
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
 *  sock_fd is shut down both ways, so that the server sees the end of
 *  our requests and libnbd fails every command at once and lets go of
 *  their buffers.  From then on no command is sent.
 *
 *  The server shutting down.  A server that answers a command with
 *  NBD_ESHUTDOWN did not carry it out, and the protocol then asks the
 *  client to disconnect politely: the engine sends NBD_CMD_DISC (under
 *  io_lock, by whoever holds it next), sends no more commands (they are
 *  refused, ENGINE_NOT_DONE), and lets the commands in flight finish.
 *  engine_shut_down does the same for a connection whose server said so
 *  on another one (server_shutdown tells the two apart).
 *
 *  What a failed command may still do.  A server may carry out a
 *  command it has read after the connection has ended (doubt.h says
 *  why).  So a command the connection's end failed is reported
 *  ENGINE_IN_DOUBT when it was sent and not answered, and ENGINE_NOT_DONE
 *  only when it certainly will not be carried out: it never wholly left
 *  this process (libnbd refused it, or the connection died in the very
 *  call that was sending it), or the server answered NBD_ESHUTDOWN, or
 *  the server had announced its shutdown (NBD_ESHUTDOWN to any command
 *  on this connection) and then closed the connection without answering
 *  it.  The last rests on the protocol: a server shutting down services
 *  its requests in flight before it disconnects, so what it left
 *  unanswered it will not do.  doubt.h has the rule for writes built on
 *  this; this is the one place that tells the two apart.
 *
 * Not thread-safe: engine_new and engine_close (no command may be
 * running).  Thread-safe: everything else.
 */
#ifndef NBDGO_ENGINE_H
#define NBDGO_ENGINE_H

#include <pthread.h>
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
  ENGINE_CONN_FAILED,           /* the connection failed, or the server
                                   is shutting down */
};

/* CONN_FAILED: whether the server may still carry the command out (see
 * "What a failed command may still do" above).
 */
enum engine_doubt {
  ENGINE_NOT_DONE,
  ENGINE_IN_DOUBT,
};

struct engine_result {
  int outcome;                  /* enum engine_outcome */
  int errnum;                   /* the errno for the client, if not OK */
  int timed_out;                /* the connection was ended for a timeout */
  int doubt;                    /* CONN_FAILED: enum engine_doubt */
  int server_shutdown;          /* CONN_FAILED: the server said
                                   NBD_ESHUTDOWN on this connection */
  char *msg;                    /* malloc'd message, or NULL */
};

/* Take a connected handle.  timeout_ms: per command (0: none).  NULL
 * with errno set on failure; the handle is then still the caller's.
 */
struct engine *engine_new (struct nbd_handle *nbd, int64_t timeout_ms);

/* Run one command and wait for it.  Returns res->outcome. */
int engine_command (struct engine *e, struct engine_request *req,
                    struct engine_result *res);

/* Whether the connection has failed, been ended, or the server has
 * announced its shutdown.
 */
int engine_is_dead (struct engine *e);

/* The server is shutting down (it said so on another connection): send
 * no more commands, and NBD_CMD_DISC once those in flight are answered,
 * so that it can exit.  Never waits for the server.
 */
void engine_shut_down (struct engine *e);

/* End the connection politely (waiting at most the engine's timeout_ms,
 * 0: no limit, then ending it at once and, for a server we started,
 * killing it) and free everything.  No command may be running.  Once it returns, a
 * server that libnbd started (command=) has exited.
 */
void engine_close (struct engine *e);

/* CLOCK_MONOTONIC in milliseconds, the clock of every deadline here. */
int64_t engine_now_ms (void);
/* A condition variable whose timed waits use that clock. */
void engine_cond_init (pthread_cond_t *c);
/* Wait on c (made by engine_cond_init; m held) until deadline_ms on that
 * clock, -1: no limit.
 */
void engine_cond_wait (pthread_cond_t *c, pthread_mutex_t *m,
                       int64_t deadline_ms);

#endif
