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
 * costs no pipe write and no extra thread wake-up beyond telling its own
 * thread it is done.
 *
 * Issuing: libnbd holds its handle lock while inside any call, and the
 * leader is inside nbd_aio_notify_read for as long as replies keep
 * coming.  A thread issuing a command then slept on that lock: a futex
 * wait, a wake-up and a context switch, about one per request with 4k
 * reads.  So every call into libnbd's state machine made here goes
 * through io_lock instead, and a thread that finds io_lock taken does
 * not wait: it leaves its command on the to_issue list and goes on to
 * wait for the reply; whoever holds io_lock issues the commands on the
 * list before letting go (flat combining).  Only the leader ever waits
 * for io_lock, and only behind a thread that is sending.
 *
 * The command record lives on the waiting thread's stack: the thread
 * does not return before its command is done: libnbd refused it, or
 * libnbd called the completion callback, which it does exactly once for
 * every command it accepted (with an error if the connection dies).
 *
 * With a timeout, a thread whose command is not answered in time kills
 * the connection (NBD cannot cancel one request): libnbd then fails
 * every command in flight, and those fail with ETIMEDOUT.
 */
#include <errno.h>
#include <fcntl.h>
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
  /* the command, for whichever thread issues it */
  int op;                       /* enum gonbd_op, or BLOCK_STATUS */
  void *buf;
  uint64_t count, offset;
  uint32_t flags;
  struct gonbd_cmd *next_issue; /* in gonbd.to_issue */
  struct gonbd_err refused;     /* why libnbd refused it, if it did */
  /* block status only */
  const char *context;
  uint32_t *entries;
  size_t nr_entries;
};

#define BLOCK_STATUS (-1)

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

/* After issuing a write: if libnbd could not send all of it at once it
 * now waits to write, which a leader already in poll() does not know.
 * Other requests are 28 bytes: one can only be left half-sent when the
 * socket buffer is full of earlier requests the server has not read,
 * and their replies wake the leader, which then polls for writing too.
 * So they skip this check (and the eventfd write it may cost).
 */
static void
kick_leader (struct gonbd *g)
{
  uint64_t one = 1;

  if (nbd_aio_get_direction (g->nbd) & LIBNBD_AIO_DIRECTION_WRITE) {
    if (write (g->wake_fd, &one, sizeof one) == -1) { /* already kicked */ }
  }
}

/* Hand c to libnbd; the caller holds io_lock.  If libnbd refuses it,
 * c is done at once, with libnbd's error (read here, in the thread that
 * made the call).  c may be gone once it is done.
 */
static void
issue (struct gonbd *g, struct gonbd_cmd *c)
{
  nbd_completion_callback cb = { .callback = on_complete, .user_data = c };
  int64_t cookie;

  switch (c->op) {
  case GONBD_PREAD:
    cookie = nbd_aio_pread (g->nbd, c->buf, c->count, c->offset, cb,
                            c->flags);
    break;
  case GONBD_PWRITE:
    cookie = nbd_aio_pwrite (g->nbd, c->buf, c->count, c->offset, cb,
                             c->flags);
    break;
  case GONBD_ZERO:
    cookie = nbd_aio_zero (g->nbd, c->count, c->offset, cb, c->flags);
    break;
  case GONBD_TRIM:
    cookie = nbd_aio_trim (g->nbd, c->count, c->offset, cb, c->flags);
    break;
  case GONBD_FLUSH:
    cookie = nbd_aio_flush (g->nbd, cb, c->flags);
    break;
  case GONBD_CACHE:
    cookie = nbd_aio_cache (g->nbd, c->count, c->offset, cb, c->flags);
    break;
  case BLOCK_STATUS:
    cookie = nbd_aio_block_status (g->nbd, c->count, c->offset,
        (nbd_extent_callback) { .callback = on_extent, .user_data = c },
        cb, c->flags);
    break;
  default:
    errno = EINVAL;
    cookie = -1;
  }
  if (cookie == -1) {
    gonbd_capture (&c->refused);
    if (c->refused.errnum == 0)
      c->refused.errnum = EIO;
    signal_cmd (c, DONE);
  }
  else if (c->op == GONBD_PWRITE)
    kick_leader (g);
}

/* Issue what other threads left on to_issue, oldest first, and let go
 * of io_lock.  A command left there just before io_lock was released is
 * seen either by the check after releasing or by its own thread's
 * second try for io_lock (both are sequentially consistent).
 */
static void
drain_and_unlock (struct gonbd *g)
{
  struct gonbd_cmd *list, *rev, *next;

  for (;;) {
    list = atomic_exchange (&g->to_issue, NULL);
    if (list == NULL) {
      pthread_mutex_unlock (&g->io_lock);
      if (atomic_load (&g->to_issue) == NULL ||
          pthread_mutex_trylock (&g->io_lock) != 0)
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
      issue (g, rev);
    }
  }
}

/* Issue c now if io_lock is free, or leave it for the holder. */
static void
submit (struct gonbd *g, struct gonbd_cmd *c)
{
  if (pthread_mutex_trylock (&g->io_lock) != 0) {
    c->next_issue = atomic_load (&g->to_issue);
    while (!atomic_compare_exchange_weak (&g->to_issue, &c->next_issue, c))
      ;
    if (pthread_mutex_trylock (&g->io_lock) != 0)
      return;                   /* the holder will issue c */
    deferring = 1;
  }
  else {
    deferring = 1;
    issue (g, c);
  }
  drain_and_unlock (g);
  deferring = 0;
  wake_deferred ();
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

/* The socket for the leader to poll.  nbd_aio_get_fd takes libnbd's
 * lock, and calling it on every turn of the leader's loop made the
 * leader wait for threads sending commands (a futex wait and wake-up per
 * reply), so the leader keeps its own duplicate.  A duplicate, not the
 * number: libnbd closes its descriptor when the connection dies, and
 * the number could then name some other file.  Only the leader uses it
 * (the role passes under g->lock).
 */
static int
leader_socket (struct gonbd *g)
{
  int fd;

  if (g->sock_fd == -1) {
    fd = nbd_aio_get_fd (g->nbd);
    if (fd == -1)
      return -1;
    g->sock_fd = fcntl (fd, F_DUPFD_CLOEXEC, 0);
  }
  return g->sock_fd;
}

/* Poll the socket and let libnbd read and write until c is done.
 *
 * libnbd reads one reply per read notification, so the leader polls
 * about once per reply.  Notifying it without a poll first ("the next
 * reply may be there already") is not safe: in the middle of a send it
 * pauses the send to wait for a reply the server will not send before
 * the rest of the request; and when nothing has come it stays in its
 * reply-reading state and holds back new commands until a reply comes,
 * which cost 7-10% with a slow server.
 */
static void
lead (struct gonbd *g, struct gonbd_cmd *c)
{
  struct pollfd fds[2];
  unsigned dir;
  uint64_t n;
  int r;

  while (!(atomic_load (&c->state) & DONE)) {
    fds[0].fd = leader_socket (g);
    if (fds[0].fd == -1)
      break;                    /* closed or dead: libnbd failed c */
    dir = nbd_aio_get_direction (g->nbd);
    fds[0].events = ((dir & LIBNBD_AIO_DIRECTION_READ) ? POLLIN : 0) |
                    ((dir & LIBNBD_AIO_DIRECTION_WRITE) ? POLLOUT : 0);
    fds[1].fd = g->wake_fd;
    fds[1].events = POLLIN;
    r = poll (fds, 2, ms_left (c->deadline));
    if (r == -1) {
      /* EINTR, or ENOMEM: try again.  Giving up is not an option while
       * commands are in flight.
       */
      if (errno != EINTR)
        nanosleep (&(struct timespec) { 0, 1000000 }, NULL);
      continue;
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
    pthread_mutex_lock (&g->io_lock);
    if (fds[0].revents & (POLLIN | POLLHUP | POLLERR))
      r = nbd_aio_notify_read (g->nbd);
    else if (fds[0].revents & POLLOUT)
      r = nbd_aio_notify_write (g->nbd);
    else
      r = 0;
    /* Wake the threads whose replies came before sending what others
     * left on to_issue: they have a reply to pass on, and no one waits
     * for io_lock meanwhile.
     */
    wake_deferred ();
    drain_and_unlock (g);
    deferring = 0;
    wake_deferred ();
    if (r == -1 && nbd_aio_is_dead (g->nbd)) {
      close (g->sock_fd);       /* let the server see the end now */
      g->sock_fd = -1;
      break;
    }
  }
  hand_off (g);
}

/* After the leader gave up on a closed or dead connection: c is done
 * soon, failed by libnbd or refused by it when issued (by whoever holds
 * io_lock).
 */
static void
wait_done (struct gonbd_cmd *c)
{
  unsigned s;

  while (!((s = atomic_load (&c->state)) & DONE)) {
    if (atomic_compare_exchange_weak (&c->state, &s, s | SLEEPING))
      futex_wait (&c->state, s | SLEEPING, -1);
  }
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
    wait_done (c);
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
    wait_done (c);
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

/* Issue c, wait for it, and report how it went (0 or -1 with err). */
static int
run_cmd (struct gonbd *g, struct gonbd_cmd *c, struct gonbd_err *err)
{
  submit (g, c);
  wait_cmd (g, c);
  if (c->refused.errnum) {
    *err = c->refused;
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
    .state = 0, .deadline = gonbd_deadline (g),
    .op = op, .buf = buf, .count = count, .offset = offset, .flags = flags,
  };

  if (op < GONBD_PREAD || op > GONBD_CACHE) {
    err.errnum = EINVAL;
    return err;
  }
  run_cmd (g, &c, &err);
  return err;
}

int
gonbd_block_status (struct gonbd *g, const char *context,
                    uint64_t count, uint64_t offset, uint32_t flags,
                    uint32_t **entries, size_t *nr_entries,
                    struct gonbd_err *err)
{
  struct gonbd_cmd c = {
    .state = 0, .deadline = gonbd_deadline (g), .op = BLOCK_STATUS,
    .count = count, .offset = offset, .flags = flags, .context = context,
  };
  int r;

  r = run_cmd (g, &c, err);
  *entries = c.entries;         /* freed by the caller, even on error */
  *nr_entries = c.nr_entries;
  return r;
}
