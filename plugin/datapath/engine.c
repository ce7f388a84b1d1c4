/* SPDX-License-Identifier: BSD-3-Clause
 *
 * The command engine (engine.h states its invariants).
 *
 * Waiting: one waiting thread at a time (the leader) polls the socket and
 * lets libnbd read replies, whichever commands they belong to; the others
 * sleep on a futex in their own command until its completion callback
 * marks it done.  When the leader's own command is done it hands the
 * socket to a follower whose command is still pending.  A request thus
 * costs no pipe write and no extra thread wake-up beyond telling its own
 * thread it is done.
 *
 * Issuing: libnbd holds its handle lock while inside any call, and the
 * leader is inside nbd_aio_notify_read for as long as replies keep
 * coming; a thread issuing a command would sleep on that lock.  So every
 * call into libnbd's state machine goes through io_lock, and a thread
 * that finds io_lock taken leaves its command on to_issue and goes on to
 * wait for the reply; whoever holds io_lock issues the commands on the
 * list before letting go (flat combining).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <linux/futex.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>

#include "engine.h"

/* struct engine.ending: whether we ended the connection. */
enum {
  RUNNING,
  ENDED,                        /* sock_fd shut down both ways */
};

struct cmd;

struct engine {
  struct nbd_handle *nbd;
  int sock_fd;                  /* our duplicate of the handle's socket */
  int wake_fd;                  /* eventfd: wakes the leader's poll */
  int64_t timeout_ms;

  pthread_mutex_t lock;         /* protects leader and waiters */
  int leader;
  struct cmd *waiters;          /* commands whose threads sleep */

  pthread_mutex_t io_lock;      /* held to call libnbd's state machine */
  struct cmd *_Atomic to_issue; /* left for io_lock's holder */

  _Atomic int ending;           /* RUNNING or ENDED */
  _Atomic int timed_out;        /* ended because of a timeout */
  char *_Atomic cause;          /* libnbd's first error on this connection */

  /* The server answered a command with NBD_ESHUTDOWN (server_shutdown),
   * or said so on another connection (engine_shut_down): no command is
   * sent from then on, and NBD_CMD_DISC is (disc_sent, under io_lock).
   */
  _Atomic int shutting_down;
  _Atomic int server_shutdown;
  int disc_sent;
  int tls;                      /* TLS was negotiated */
};

/* Bits of struct cmd.state, the futex word. */
#define DONE     1u             /* completion callback ran, or refused */
#define LEAD     2u             /* promoted: this thread polls next */
#define SLEEPING 4u             /* the thread sleeps in futex_wait */

struct cmd {
  _Atomic unsigned state;
  struct engine *engine;
  int error;                    /* errno from the completion callback */
  int64_t deadline;             /* engine_now_ms; -1: none */
  /* in engine.waiters, under engine.lock: pprev points at whatever
   * points at this record (NULL: not on the list), so that a thread
   * whose reply came takes itself off in constant time; with hundreds
   * of commands in flight a walk of the list was 8% of the proxy's time.
   */
  struct cmd *next, **pprev;
  struct cmd *next_issue;       /* in engine.to_issue */
  struct engine_request *req;
  /* set when libnbd refused the command (it was never sent) */
  int refused, refused_errno, refused_dead;
  char *refused_msg;
  /* Set by the thread issuing it: libnbd sends it in that very call,
   * being idle (READY, nothing queued).  A completion during the call
   * is then the connection dying while it was being sent: unsent (see
   * issue).
   */
  int from_ready, unsent;
};

/* The command this thread is handing to libnbd, during the call. */
static __thread struct cmd *issuing;

int64_t
engine_now_ms (void)
{
  struct timespec ts;

  clock_gettime (CLOCK_MONOTONIC, &ts);
  return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ms milliseconds as a timespec. */
static struct timespec
ms_timespec (int64_t ms)
{
  return (struct timespec) { ms / 1000, (ms % 1000) * 1000000L };
}

void
engine_cond_init (pthread_cond_t *c)
{
  pthread_condattr_t attr;

  pthread_condattr_init (&attr);
  pthread_condattr_setclock (&attr, CLOCK_MONOTONIC);
  pthread_cond_init (c, &attr);
  pthread_condattr_destroy (&attr);
}

void
engine_cond_wait (pthread_cond_t *c, pthread_mutex_t *m, int64_t deadline_ms)
{
  struct timespec ts;

  if (deadline_ms < 0) {
    pthread_cond_wait (c, m);
    return;
  }
  ts = ms_timespec (deadline_ms);
  pthread_cond_timedwait (c, m, &ts);
}

/* The poll events libnbd waits for, from nbd_aio_get_direction. */
static short
poll_events (unsigned dir)
{
  return ((dir & LIBNBD_AIO_DIRECTION_READ) ? POLLIN : 0) |
         ((dir & LIBNBD_AIO_DIRECTION_WRITE) ? POLLOUT : 0);
}

/* Milliseconds until deadline (at least 0), or -1 for none. */
static int
ms_left (int64_t deadline)
{
  int64_t left;

  if (deadline < 0)
    return -1;
  left = deadline - engine_now_ms ();
  return left < 0 ? 0 : left > 1000000 ? 1000000 : (int) left;
}

static void
futex_wait (_Atomic unsigned *word, unsigned val, int timeout_ms)
{
  struct timespec ts = ms_timespec (timeout_ms);

  syscall (SYS_futex, word, FUTEX_WAIT_PRIVATE, val,
           timeout_ms >= 0 ? &ts : NULL, NULL, 0);
}

static void
futex_wake (_Atomic unsigned *word)
{
  syscall (SYS_futex, word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

static void
wake_leader (struct engine *e)
{
  uint64_t one = 1;

  if (write (e->wake_fd, &one, sizeof one) == -1) { /* already kicked */ }
}

static int
dead (struct engine *e)
{
  return nbd_aio_is_dead (e->nbd) == 1 || nbd_aio_is_closed (e->nbd) == 1;
}

int
engine_is_dead (struct engine *e)
{
  return atomic_load (&e->ending) != RUNNING ||
    atomic_load (&e->shutting_down) || dead (e);
}

/* Whether the server has closed the connection, as far as can be known
 * without reading from under libnbd: libnbd saw the close after our
 * NBD_CMD_DISC, or libnbd died by itself (not by our ending it) and the
 * socket, which libnbd has let go of, shows the end (a peek, so nothing
 * is taken from a stream that anyone else could read).
 */
static int
server_closed (struct engine *e)
{
  char byte;
  ssize_t n;

  if (nbd_aio_is_closed (e->nbd) == 1)
    return 1;
  if (atomic_load (&e->ending) != RUNNING || nbd_aio_is_dead (e->nbd) != 1)
    return 0;
  n = recv (e->sock_fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
  return n == 0 ||
    (n == -1 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

/* Keep libnbd's message of the call that just failed as the cause of
 * the connection's end, if it is the first.
 */
static void
note_cause (struct engine *e)
{
  const char *msg = nbd_get_error ();
  char *copy, *none = NULL;

  if (msg == NULL || atomic_load (&e->cause) != NULL)
    return;
  copy = strdup (msg);
  if (copy && !atomic_compare_exchange_strong (&e->cause, &none, copy))
    free (copy);
}

static void drain_and_unlock (struct engine *e);

/* End the connection now, for every command in flight (see "Ending a
 * connection" in engine.h): shutting sock_fd down both ways tells the
 * server that no more requests come, and makes libnbd's next look at
 * the socket fail, which fails every command at once and lets go of
 * their buffers.  libnbd is notified here, under io_lock, so that it
 * looks now even when no leader is polling.
 */
static void
end_connection (struct engine *e)
{
  unsigned dir;

  if (atomic_exchange (&e->ending, ENDED) != RUNNING)
    return;
  shutdown (e->sock_fd, SHUT_RDWR);
  pthread_mutex_lock (&e->io_lock);
  dir = nbd_aio_get_direction (e->nbd);
  if (dir & LIBNBD_AIO_DIRECTION_READ)
    nbd_aio_notify_read (e->nbd);
  else if (dir & LIBNBD_AIO_DIRECTION_WRITE)
    nbd_aio_notify_write (e->nbd);
  drain_and_unlock (e);         /* what is left there is refused */
  wake_leader (e);
}

/* A command's deadline passed. */
static void
deadline_passed (struct engine *e)
{
  atomic_store (&e->timed_out, 1);
  end_connection (e);
}

/* Until when c waits before deadline_passed: once the connection is
 * ended, until libnbd has failed it, which is at once.
 */
static int64_t
deadline_of (struct engine *e, struct cmd *c)
{
  return atomic_load (&e->ending) == RUNNING ? c->deadline : -1;
}

/* Wake-ups the leader owes, made once libnbd's call has returned: a
 * futex_wake inside a completion callback would keep libnbd busy (and
 * the next reply waiting) for the length of a system call.  Addresses,
 * not records, are kept: a record may vanish once DONE is set, and a
 * late futex_wake on its address is harmless (waits re-check their
 * condition).
 */
#define MAX_DEFERRED 64
static __thread int deferring;
static __thread int nr_deferred;
static __thread _Atomic unsigned *deferred[MAX_DEFERRED];

static void
wake_deferred (void)
{
  int i;

  for (i = 0; i < nr_deferred; ++i)
    futex_wake (deferred[i]);
  nr_deferred = 0;
}

/* Set bits in a command's state; wake its thread if it sleeps. */
static void
signal_cmd (struct cmd *c, unsigned bits)
{
  if (!(atomic_fetch_or (&c->state, bits) & SLEEPING))
    return;
  if (deferring && nr_deferred < MAX_DEFERRED)
    deferred[nr_deferred++] = &c->state;
  else
    futex_wake (&c->state);
}

static int
on_complete (void *user_data, int *error)
{
  struct cmd *c = user_data;

  c->error = *error;
  if (c == issuing && c->from_ready)
    c->unsent = 1;
  /* The server is going away: no more commands (see engine.h).  libnbd's
   * lock is held here, so NBD_CMD_DISC waits for drain_and_unlock.
   */
  if (*error == ESHUTDOWN) {
    atomic_store (&c->engine->server_shutdown, 1);
    atomic_store (&c->engine->shutting_down, 1);
  }
  signal_cmd (c, DONE);
  return 1;                     /* retire the command */
}

static int
on_extent (void *user_data, const char *metacontext, uint64_t offset,
           uint32_t *entries, size_t nr_entries, int *error)
{
  struct engine_request *r = ((struct cmd *) user_data)->req;
  uint32_t *p;

  if (strcmp (metacontext, r->context) != 0)
    return 0;
  p = realloc (r->entries, (r->nr_entries + nr_entries) * sizeof *p);
  if (p == NULL) {
    *error = ENOMEM;
    return -1;
  }
  memcpy (p + r->nr_entries, entries, nr_entries * sizeof *p);
  r->entries = p;
  r->nr_entries += nr_entries;
  return 0;
}

/* Hand c to libnbd; the caller holds io_lock.  A command is refused
 * (never sent) once the connection is being ended or the server is
 * shutting down, or when libnbd says no; libnbd's error is read here,
 * in the thread that made the call.  c may be gone once it is DONE.
 */
static void
issue (struct engine *e, struct cmd *c)
{
  nbd_completion_callback cb = { .callback = on_complete, .user_data = c };
  struct engine_request *r = c->req;
  const int op = r->op;         /* c, r may be gone once the call returns */
  const char *msg;
  int64_t cookie;

  if (atomic_load (&e->ending) != RUNNING ||
      atomic_load (&e->shutting_down)) {
    c->refused = 1;
    c->refused_dead = 1;
    signal_cmd (c, DONE);
    return;
  }
  /* A write libnbd sends now, in this call, is not in doubt if the
   * connection dies in the call: it died while the write was being
   * sent, and no server carries out a write it has not read whole.  Not
   * with TLS, where libnbd may also read in the call after sending.
   */
  c->from_ready = !e->tls &&
    (op == ENGINE_PWRITE || op == ENGINE_ZERO || op == ENGINE_TRIM) &&
    nbd_aio_is_ready (e->nbd) == 1;
  issuing = c;
  switch (op) {
  case ENGINE_PREAD:
    cookie = nbd_aio_pread (e->nbd, r->buf, r->count, r->offset, cb,
                            r->flags);
    break;
  case ENGINE_PWRITE:
    cookie = nbd_aio_pwrite (e->nbd, r->buf, r->count, r->offset, cb,
                             r->flags);
    break;
  case ENGINE_ZERO:
    cookie = nbd_aio_zero (e->nbd, r->count, r->offset, cb, r->flags);
    break;
  case ENGINE_TRIM:
    cookie = nbd_aio_trim (e->nbd, r->count, r->offset, cb, r->flags);
    break;
  case ENGINE_FLUSH:
    cookie = nbd_aio_flush (e->nbd, cb, r->flags);
    break;
  case ENGINE_CACHE:
    cookie = nbd_aio_cache (e->nbd, r->count, r->offset, cb, r->flags);
    break;
  case ENGINE_BLOCK_STATUS:
    cookie = nbd_aio_block_status (e->nbd, r->count, r->offset,
        (nbd_extent_callback) { .callback = on_extent, .user_data = c },
        cb, r->flags);
    break;
  default:
    errno = EINVAL;
    cookie = -1;
  }
  issuing = NULL;
  if (cookie == -1) {
    c->refused = 1;
    c->refused_dead = dead (e);
    if (c->refused_dead)
      note_cause (e);           /* it may have died in this call */
    c->refused_errno = nbd_get_errno () ? nbd_get_errno () : EIO;
    msg = nbd_get_error ();
    c->refused_msg = msg ? strdup (msg) : NULL;
    signal_cmd (c, DONE);
  }
  else if (op == ENGINE_PWRITE &&
           (nbd_aio_get_direction (e->nbd) & LIBNBD_AIO_DIRECTION_WRITE)) {
    /* libnbd could not send all of the write at once and now waits to
     * write, which a leader already in poll() does not know.  Other
     * requests are 28 bytes: one is only left half-sent when the socket
     * buffer is full of earlier requests the server has not read, and
     * their replies wake the leader, which then polls for writing too.
     */
    wake_leader (e);
  }
}

/* Issue what other threads left on to_issue, oldest first, and let go
 * of io_lock.  A command left there just before io_lock was released is
 * seen either by the check after releasing or by its own thread's
 * second try for io_lock.  Both sides store then load (Dekker's
 * pattern), so each needs a full fence between the two: here between
 * the unlock (a release store) and the load of to_issue; in submit
 * between the push and the trylock.
 */
static void
drain_and_unlock (struct engine *e)
{
  struct cmd *list, *rev, *next;

  for (;;) {
    if (atomic_load (&e->shutting_down) && !e->disc_sent) {
      /* Commands in flight still get their replies. */
      e->disc_sent = 1;
      if (!dead (e) && nbd_aio_disconnect (e->nbd, 0) == -1)
        note_cause (e);
    }
    list = atomic_exchange (&e->to_issue, NULL);
    if (list == NULL) {
      pthread_mutex_unlock (&e->io_lock);
      atomic_thread_fence (memory_order_seq_cst);
      if (atomic_load (&e->to_issue) == NULL ||
          pthread_mutex_trylock (&e->io_lock) != 0)
        return;
      continue;
    }
    for (rev = NULL; list != NULL; list = next) {
      next = list->next_issue;
      list->next_issue = rev;
      rev = list;
    }
    for (; rev != NULL; rev = next) {
      next = rev->next_issue;   /* rev may be gone after issue */
      issue (e, rev);
    }
  }
}

/* Issue c now if io_lock is free, or leave it for the holder. */
static void
submit (struct engine *e, struct cmd *c)
{
  if (pthread_mutex_trylock (&e->io_lock) != 0) {
    c->next_issue = atomic_load (&e->to_issue);
    while (!atomic_compare_exchange_weak (&e->to_issue, &c->next_issue, c))
      ;
    atomic_thread_fence (memory_order_seq_cst);
    if (pthread_mutex_trylock (&e->io_lock) != 0)
      return;                   /* the holder will issue c */
    deferring = 1;
  }
  else {
    deferring = 1;
    issue (e, c);
  }
  drain_and_unlock (e);
  deferring = 0;
  wake_deferred ();
}

/* engine.waiters, under engine.lock. */
static void
push_waiter (struct engine *e, struct cmd *c)
{
  c->next = e->waiters;
  if (c->next)
    c->next->pprev = &c->next;
  e->waiters = c;
  c->pprev = &e->waiters;
}

static void
unlink_waiter (struct cmd *c)
{
  if (c->pprev == NULL)
    return;
  *c->pprev = c->next;
  if (c->next)
    c->next->pprev = c->pprev;
  c->next = NULL;
  c->pprev = NULL;
}

/* Pass the leader's role to a thread whose command is still pending, or
 * give it up if there is none.
 */
static void
hand_off (struct engine *e)
{
  struct cmd *c;

  pthread_mutex_lock (&e->lock);
  for (c = e->waiters; c != NULL; c = c->next) {
    if (!(atomic_load (&c->state) & DONE)) {
      unlink_waiter (c);
      signal_cmd (c, LEAD);
      pthread_mutex_unlock (&e->lock);
      return;
    }
  }
  e->leader = 0;
  pthread_mutex_unlock (&e->lock);
}

/* Tell libnbd what poll() saw, by the direction libnbd waits in: a
 * connect or a send that fails shows as POLLERR/POLLHUP, which libnbd
 * must hear about as a write event.
 */
static int
notify (struct nbd_handle *nbd, unsigned dir, short revents)
{
  if ((dir & LIBNBD_AIO_DIRECTION_READ) && (revents & (POLLIN | POLLHUP | POLLERR)))
    return nbd_aio_notify_read (nbd);
  if ((dir & LIBNBD_AIO_DIRECTION_WRITE) && (revents & (POLLOUT | POLLHUP | POLLERR)))
    return nbd_aio_notify_write (nbd);
  return 0;
}

/* Poll the socket and let libnbd read and write until c is done.
 *
 * The leader polls sock_fd, not nbd_aio_get_fd's descriptor: that call
 * takes libnbd's lock, which made the leader wait for threads sending.
 *
 * libnbd reads one reply per read notification, so the leader polls
 * about once per reply.  Notifying it without a poll first ("the next
 * reply may be there already") is not safe: in the middle of a send it
 * pauses the send to wait for a reply the server will not send before
 * the rest of the request; and when nothing has come it stays in its
 * reply-reading state and holds back new commands until a reply comes.
 */
static void
lead (struct engine *e, struct cmd *c)
{
  struct pollfd fds[2];
  unsigned dir;
  uint64_t n;
  int r;

  while (!(atomic_load (&c->state) & DONE)) {
    if (dead (e))
      break;                    /* libnbd has failed c, or refuses it */
    dir = nbd_aio_get_direction (e->nbd);
    fds[0].fd = e->sock_fd;
    fds[0].events = poll_events (dir);
    fds[1].fd = e->wake_fd;
    fds[1].events = POLLIN;
    r = poll (fds, 2, ms_left (deadline_of (e, c)));
    if (r == -1) {
      /* EINTR, or ENOMEM: try again.  Giving up is not an option while
       * commands are in flight.
       */
      if (errno != EINTR)
        nanosleep (&(struct timespec) { 0, 1000000 }, NULL);
      continue;
    }
    if (r == 0) {
      deadline_passed (e);
      continue;
    }
    if (fds[1].revents & POLLIN) {
      if (read (e->wake_fd, &n, sizeof n) == -1) { /* drained */ }
    }
    deferring = 1;
    pthread_mutex_lock (&e->io_lock);
    r = notify (e->nbd, dir, fds[0].revents);
    if (r == -1)
      note_cause (e);
    /* Wake the threads whose replies came before sending what others
     * left on to_issue: they have a reply to pass on, and no one waits
     * for io_lock meanwhile.
     */
    wake_deferred ();
    drain_and_unlock (e);
    deferring = 0;
    wake_deferred ();
  }
  /* libnbd closed its descriptor of a dead connection; ours keeps the
   * socket open, so tell the server that we are done with it.
   */
  if (dead (e))
    shutdown (e->sock_fd, SHUT_WR);
  hand_off (e);
}

/* After the leader gave up on a dead connection: c is done soon, failed
 * by libnbd or refused by it when issued (by whoever holds io_lock).
 */
static void
wait_done (struct cmd *c)
{
  unsigned s;

  while (!((s = atomic_load (&c->state)) & DONE)) {
    if (atomic_compare_exchange_weak (&c->state, &s, s | SLEEPING))
      futex_wait (&c->state, s | SLEEPING, -1);
  }
}

/* Wait until c is done, leading when no one else is. */
static void
wait_cmd (struct engine *e, struct cmd *c)
{
  unsigned s;

  pthread_mutex_lock (&e->lock);
  if (atomic_load (&c->state) & DONE) {
    pthread_mutex_unlock (&e->lock);
    return;
  }
  if (!e->leader) {
    e->leader = 1;
    pthread_mutex_unlock (&e->lock);
    lead (e, c);
    wait_done (c);
    return;
  }
  push_waiter (e, c);
  pthread_mutex_unlock (&e->lock);

  for (;;) {
    s = atomic_load (&c->state);
    if (s & (DONE | LEAD))
      break;
    if (ms_left (deadline_of (e, c)) == 0)
      deadline_passed (e);
    if (atomic_compare_exchange_weak (&c->state, &s, s | SLEEPING))
      futex_wait (&c->state, s | SLEEPING, ms_left (deadline_of (e, c)));
  }

  if (s & LEAD) {               /* hand_off took c off the list */
    lead (e, c);
    wait_done (c);
    return;
  }
  pthread_mutex_lock (&e->lock);
  unlink_waiter (c);            /* unless hand_off did */
  pthread_mutex_unlock (&e->lock);
  /* hand_off may have chosen c between our wake-up and the lock. */
  if (atomic_load (&c->state) & LEAD)
    hand_off (e);
}

/* The message for a command the connection's end failed. */
static char *
conn_failed_msg (struct engine *e, int errnum)
{
  const char *cause = atomic_load (&e->cause);
  char *msg;

  if (atomic_load (&e->timed_out)) {
    if (asprintf (&msg, "the server did not answer within timeout=%g",
                  e->timeout_ms / 1000.0) == -1)
      return NULL;
  }
  else if (atomic_load (&e->server_shutdown)) {
    if (asprintf (&msg, "the server is shutting down (NBD_ESHUTDOWN)") == -1)
      return NULL;
  }
  else if (atomic_load (&e->shutting_down)) {
    if (asprintf (&msg, "the server is shutting down (NBD_ESHUTDOWN on "
                  "another connection to it)") == -1)
      return NULL;
  }
  else if (asprintf (&msg, "server connection failed: %s",
                     cause ? cause : strerror (errnum)) == -1)
    return NULL;
  return msg;
}

int
engine_command (struct engine *e, struct engine_request *req,
                struct engine_result *res)
{
  struct cmd c = {
    .state = 0, .engine = e, .req = req,
    .deadline = e->timeout_ms > 0 ? engine_now_ms () + e->timeout_ms : -1,
  };

  submit (e, &c);
  wait_cmd (e, &c);

  *res = (struct engine_result) { .outcome = ENGINE_OK };
  if (c.refused && !c.refused_dead) {
    res->outcome = ENGINE_ERROR;
    res->errnum = c.refused_errno;
    res->msg = c.refused_msg;
    return res->outcome;
  }
  free (c.refused_msg);
  /* A command libnbd failed because the connection died: it calls the
   * completion of each with ENOTCONN (or the error of a reply it had
   * begun to read) once it is dead or closed.  No server can send
   * ENOTCONN (NBD has no such error), and a reply that came while the
   * connection was being ended is the server's answer all the same.
   */
  if (c.refused || c.error == ESHUTDOWN || c.error == ENOTCONN ||
      (c.error && dead (e))) {
    res->outcome = ENGINE_CONN_FAILED;
    if (c.refused || c.unsent || c.error == ESHUTDOWN ||
        (atomic_load (&e->server_shutdown) && server_closed (e)))
      res->doubt = ENGINE_NOT_DONE;
    else
      res->doubt = ENGINE_IN_DOUBT;
    res->server_shutdown = atomic_load (&e->server_shutdown);
    res->timed_out = atomic_load (&e->timed_out);
    res->msg = conn_failed_msg (e, c.error ? c.error : ENOTCONN);
    /* NBD has neither ETIMEDOUT nor ENOTCONN (nbdkit would send EINVAL,
     * which blames the client): a connection that failed is an I/O
     * error, a server shutting down says so.
     */
    res->errnum = res->server_shutdown || c.error == ESHUTDOWN ? ESHUTDOWN : EIO;
  }
  else if (c.error) {
    res->outcome = ENGINE_ERROR;
    res->errnum = c.error;
  }
  return res->outcome;
}

struct engine *
engine_new (struct nbd_handle *nbd, int64_t timeout_ms)
{
  struct engine *e = calloc (1, sizeof *e);
  int fd, err;

  if (e == NULL)
    return NULL;
  fd = nbd_aio_get_fd (nbd);
  e->sock_fd = fd >= 0 ? fcntl (fd, F_DUPFD_CLOEXEC, 0) : -1;
  e->wake_fd = eventfd (0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (e->sock_fd == -1 || e->wake_fd == -1) {
    err = fd >= 0 ? errno : ENOTCONN;
    if (e->sock_fd >= 0)
      close (e->sock_fd);
    if (e->wake_fd >= 0)
      close (e->wake_fd);
    free (e);
    errno = err;
    return NULL;
  }
  e->nbd = nbd;
  e->timeout_ms = timeout_ms;
  e->tls = nbd_get_tls_negotiated (nbd) == 1;
  pthread_mutex_init (&e->lock, NULL);
  pthread_mutex_init (&e->io_lock, NULL);
  return e;
}

void
engine_shut_down (struct engine *e)
{
  if (atomic_exchange (&e->shutting_down, 1))
    return;
  /* NBD_CMD_DISC goes now if nothing is in flight, else after what is. */
  pthread_mutex_lock (&e->io_lock);
  drain_and_unlock (e);
}

/* Say goodbye to the server (NBD_CMD_DISC) and wait until deadline for
 * it to close: 1 if it did; 0 if there is no goodbye to wait for (the
 * connection was already dead, or libnbd failed to send the goodbye or
 * to take in what the server sent after it); -1 if the server did not
 * let go in time.
 */
static int
disconnect (struct engine *e, int64_t deadline)
{
  struct pollfd pfd = { .fd = e->sock_fd };
  unsigned dir;
  int r;

  if (engine_is_dead (e) || nbd_aio_disconnect (e->nbd, 0) == -1)
    return 0;
  while (!dead (e)) {
    dir = nbd_aio_get_direction (e->nbd);
    pfd.events = poll_events (dir);
    r = poll (&pfd, 1, ms_left (deadline));
    if (r == 0)
      return -1;
    if (r > 0 && notify (e->nbd, dir, pfd.revents) == -1 && !dead (e))
      return 0;
  }
  return 1;
}

void
engine_close (struct engine *e)
{
  int64_t timeout_ms, deadline;

  if (e == NULL)
    return;
  timeout_ms = e->timeout_ms;
  deadline = timeout_ms > 0 ? engine_now_ms () + timeout_ms : -1;
  if ((disconnect (e, deadline) == -1 || atomic_load (&e->timed_out)) &&
      timeout_ms > 0) {
    /* The server is not answering.  If we started it, nbd_close would
     * wait for it to exit on SIGTERM, which a stopped process does not:
     * it has nothing left to save, so it is killed.
     */
    shutdown (e->sock_fd, SHUT_RDWR);
    nbd_kill_subprocess (e->nbd, SIGKILL);
  }
  nbd_close (e->nbd);
  close (e->sock_fd);
  close (e->wake_fd);
  free (atomic_load (&e->cause));
  pthread_mutex_destroy (&e->lock);
  pthread_mutex_destroy (&e->io_lock);
  free (e);
}
