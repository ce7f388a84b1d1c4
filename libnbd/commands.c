/* Commands that many threads can run at once on one handle.
 *
 * libnbd's synchronous calls hold the handle's lock until the reply has
 * come, so they run one at a time.  Here each thread issues its command
 * with libnbd's aio call (which sends it at once) and then waits for the
 * reply.  Waiting uses a leader/followers scheme instead of a reader
 * thread: one waiting thread at a time (the leader) polls the socket and
 * lets libnbd read replies, whichever commands they belong to; the others
 * sleep on a futex in their own command until its completion callback
 * marks it done.  When the leader's own command is done it hands the
 * socket to a follower whose command is still pending.  A request thus
 * costs no pipe write, no extra thread wake-up beyond telling its own
 * thread it is done, and no lock held across I/O of ours.
 *
 * The command record lives on the waiting thread's stack: the thread
 * does not return before libnbd has called the completion callback,
 * which libnbd does exactly once for every command it accepted (with an
 * error if the connection dies).
 *
 * With a timeout, a thread whose command is not answered in time kills
 * the connection (NBD cannot cancel one request): libnbd then fails
 * every command in flight, and those fail with ETIMEDOUT.
 */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <linux/futex.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>

#include "gonbd.h"

/* Bits of struct gonbd_cmd.state, the futex word. */
#define DONE     1u             /* completion callback ran */
#define LEAD     2u             /* promoted: this thread polls next */
#define SLEEPING 4u             /* the thread sleeps in futex_wait */

struct gonbd_cmd {
  _Atomic unsigned state;
  int error;                    /* errno from the server, or 0 */
  int64_t deadline;             /* CLOCK_MONOTONIC ms; -1: none */
  struct gonbd_cmd *next;       /* in gonbd.waiters, under gonbd.lock */
  /* block status only */
  const char *context;
  uint32_t *entries;
  size_t nr_entries;
};

int64_t
gonbd_now_ms (void)
{
  struct timespec ts;

  clock_gettime (CLOCK_MONOTONIC, &ts);
  return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The deadline of something starting now under g's timeout, or -1. */
int64_t
gonbd_deadline (struct gonbd *g)
{
  return g->timeout_ms > 0 ? gonbd_now_ms () + g->timeout_ms : -1;
}

/* Milliseconds until deadline (at least 0), or -1 for none. */
static int
ms_left (int64_t deadline)
{
  int64_t left;

  if (deadline < 0)
    return -1;
  left = deadline - gonbd_now_ms ();
  return left < 0 ? 0 : left > 1000000 ? 1000000 : (int) left;
}

static void
futex_wait (_Atomic unsigned *word, unsigned val, int timeout_ms)
{
  struct timespec ts = { timeout_ms / 1000, (timeout_ms % 1000) * 1000000L };

  syscall (SYS_futex, word, FUTEX_WAIT_PRIVATE, val,
           timeout_ms >= 0 ? &ts : NULL, NULL, 0);
}

/* A command was not answered in time: end the connection, so that
 * libnbd fails everything in flight and the leader's poll wakes up.
 */
static void
kill_connection (struct gonbd *g)
{
  int fd;

  if (atomic_exchange (&g->timed_out, 1))
    return;
  fd = nbd_aio_get_fd (g->nbd);
  if (fd >= 0)
    shutdown (fd, SHUT_RDWR);
}

static void
futex_wake (_Atomic unsigned *word)
{
  syscall (SYS_futex, word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

/* Wake-ups the leader owes, made after libnbd's lock is released: a
 * futex_wake inside a completion callback would lengthen the time every
 * thread issuing a command waits for that lock.  Addresses, not records,
 * are kept: a record may vanish once DONE is set, and a late futex_wake
 * on its address is harmless (waits re-check their condition).
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
signal_cmd (struct gonbd_cmd *c, unsigned bits)
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
  struct gonbd_cmd *c = user_data;

  c->error = *error;
  signal_cmd (c, DONE);
  return 1;                     /* retire the command */
}

static int
on_extent (void *user_data, const char *metacontext, uint64_t offset,
           uint32_t *entries, size_t nr_entries, int *error)
{
  struct gonbd_cmd *c = user_data;
  uint32_t *p;

  if (strcmp (metacontext, c->context) != 0)
    return 0;
  p = realloc (c->entries, (c->nr_entries + nr_entries) * sizeof *p);
  if (p == NULL) {
    *error = ENOMEM;
    return -1;
  }
  memcpy (p + c->nr_entries, entries, nr_entries * sizeof *p);
  c->entries = p;
  c->nr_entries += nr_entries;
  return 0;
}

/* Pass the leader's role to a thread whose command is still pending, or
 * give it up if there is none.
 */
static void
hand_off (struct gonbd *g)
{
  struct gonbd_cmd **pp, *c;

  pthread_mutex_lock (&g->lock);
  for (pp = &g->waiters; (c = *pp) != NULL; pp = &c->next) {
    if (!(atomic_load (&c->state) & DONE)) {
      *pp = c->next;
      c->next = NULL;
      signal_cmd (c, LEAD);
      pthread_mutex_unlock (&g->lock);
      return;
    }
  }
  g->leader = 0;
  pthread_mutex_unlock (&g->lock);
}

/* Poll the socket and let libnbd read and write until c is done. */
static void
lead (struct gonbd *g, struct gonbd_cmd *c)
{
  struct pollfd fds[2];
  unsigned dir;
  uint64_t n;
  int r;

  while (!(atomic_load (&c->state) & DONE)) {
    fds[0].fd = nbd_aio_get_fd (g->nbd);
    if (fds[0].fd == -1)
      break;                    /* closed or dead: libnbd failed c */
    dir = nbd_aio_get_direction (g->nbd);
    fds[0].events = ((dir & LIBNBD_AIO_DIRECTION_READ) ? POLLIN : 0) |
                    ((dir & LIBNBD_AIO_DIRECTION_WRITE) ? POLLOUT : 0);
    fds[1].fd = g->wake_fd;
    fds[1].events = POLLIN;
    r = poll (fds, 2, ms_left (c->deadline));
    if (r == -1) {
      if (errno == EINTR)
        continue;
      break;
    }
    if (r == 0) {               /* c's deadline passed */
      kill_connection (g);
      c->deadline = -1;
      continue;
    }
    if (fds[1].revents & POLLIN) {
      if (read (g->wake_fd, &n, sizeof n) == -1) { /* drained */ }
    }
    deferring = 1;
    if (fds[0].revents & (POLLIN | POLLHUP | POLLERR))
      r = nbd_aio_notify_read (g->nbd);
    else if (fds[0].revents & POLLOUT)
      r = nbd_aio_notify_write (g->nbd);
    else
      r = 0;
    deferring = 0;
    wake_deferred ();
    if (r == -1 && nbd_aio_is_dead (g->nbd))
      break;
  }
  hand_off (g);
}

/* Wait until c is done, leading when no one else is. */
static void
wait_cmd (struct gonbd *g, struct gonbd_cmd *c)
{
  unsigned s;

  pthread_mutex_lock (&g->lock);
  if (atomic_load (&c->state) & DONE) {
    pthread_mutex_unlock (&g->lock);
    return;
  }
  if (!g->leader) {
    g->leader = 1;
    pthread_mutex_unlock (&g->lock);
    lead (g, c);
    return;
  }
  c->next = g->waiters;
  g->waiters = c;
  pthread_mutex_unlock (&g->lock);

  for (;;) {
    s = atomic_load (&c->state);
    if (s & (DONE | LEAD))
      break;
    if (c->deadline >= 0 && ms_left (c->deadline) == 0) {
      kill_connection (g);
      c->deadline = -1;
    }
    if (atomic_compare_exchange_weak (&c->state, &s, s | SLEEPING))
      futex_wait (&c->state, s | SLEEPING, ms_left (c->deadline));
  }

  if (s & LEAD) {               /* hand_off took c off the list */
    lead (g, c);
    return;
  }
  pthread_mutex_lock (&g->lock);
  {
    struct gonbd_cmd **pp;
    for (pp = &g->waiters; *pp; pp = &(*pp)->next)
      if (*pp == c) {
        *pp = c->next;
        break;
      }
  }
  pthread_mutex_unlock (&g->lock);
  /* hand_off may have chosen c between our wake-up and the lock. */
  if (atomic_load (&c->state) & LEAD)
    hand_off (g);
}

/* After issuing a write: if libnbd could not send all of it at once it
 * now waits to write, which a leader already in poll() does not know.
 * Other requests are 28 bytes: one can only be left half-sent when the
 * socket buffer is full of earlier requests the server has not read,
 * and their replies wake the leader, which then polls for writing too.
 * So they skip this check, and the libnbd lock it takes.
 */
static void
kick_leader (struct gonbd *g)
{
  uint64_t one = 1;

  if (nbd_aio_get_direction (g->nbd) & LIBNBD_AIO_DIRECTION_WRITE) {
    if (write (g->wake_fd, &one, sizeof one) == -1) { /* already kicked */ }
  }
}

static int
finish (struct gonbd *g, struct gonbd_cmd *c, int64_t cookie, int payload,
        struct gonbd_err *err)
{
  if (cookie == -1) {
    gonbd_capture (err);
    if (err->errnum == 0)
      err->errnum = EIO;
    return -1;
  }
  if (payload)
    kick_leader (g);
  wait_cmd (g, c);
  if (!(atomic_load (&c->state) & DONE)) {
    /* Only if poll itself failed; libnbd fails every command of a dead
     * connection, so this is not expected.
     */
    err->msg = strdup ("lost track of the command");
    err->errnum = EIO;
    return -1;
  }
  if (c->error) {
    err->errnum = atomic_load (&g->timed_out) ? ETIMEDOUT : c->error;
    if (err->errnum == ETIMEDOUT)
      err->msg = strdup ("the server did not answer in time");
    return -1;
  }
  return 0;
}

/* Returns the error by value (errnum 0: success), so that Go passes no
 * pointer to it and nothing escapes to the heap per request.
 */
struct gonbd_err
gonbd_command (struct gonbd *g, int op, void *buf, uint64_t count,
               uint64_t offset, uint32_t flags)
{
  struct gonbd_err err = { .msg = NULL, .errnum = 0 };
  struct gonbd_cmd c = {
    .state = 0, .deadline = gonbd_deadline (g)
  };
  nbd_completion_callback cb = { .callback = on_complete, .user_data = &c };
  int64_t cookie;

  switch (op) {
  case GONBD_PREAD:
    cookie = nbd_aio_pread (g->nbd, buf, count, offset, cb, flags);
    break;
  case GONBD_PWRITE:
    cookie = nbd_aio_pwrite (g->nbd, buf, count, offset, cb, flags);
    break;
  case GONBD_ZERO:
    cookie = nbd_aio_zero (g->nbd, count, offset, cb, flags);
    break;
  case GONBD_TRIM:
    cookie = nbd_aio_trim (g->nbd, count, offset, cb, flags);
    break;
  case GONBD_FLUSH:
    cookie = nbd_aio_flush (g->nbd, cb, flags);
    break;
  case GONBD_CACHE:
    cookie = nbd_aio_cache (g->nbd, count, offset, cb, flags);
    break;
  default:
    err.errnum = EINVAL;
    return err;
  }
  finish (g, &c, cookie, op == GONBD_PWRITE, &err);
  return err;
}

int
gonbd_block_status (struct gonbd *g, const char *context,
                    uint64_t count, uint64_t offset, uint32_t flags,
                    uint32_t **entries, size_t *nr_entries,
                    struct gonbd_err *err)
{
  struct gonbd_cmd c = {
    .state = 0, .context = context,
    .deadline = gonbd_deadline (g)
  };
  int64_t cookie;
  int r;

  cookie = nbd_aio_block_status (g->nbd, count, offset,
      (nbd_extent_callback) { .callback = on_extent, .user_data = &c },
      (nbd_completion_callback) { .callback = on_complete, .user_data = &c },
      flags);
  r = finish (g, &c, cookie, 0, err);
  *entries = c.entries;         /* freed by the caller, even on error */
  *nr_entries = c.nr_entries;
  return r;
}
