/* SPDX-License-Identifier: BSD-3-Clause
 *
 * The data path: every data request (read, write, zero, trim, flush,
 * cache, extents) goes from the loader to these functions, and from here
 * to the server through the command engine (engine.h), without entering
 * Go.  This is the one place where nbdkit's request flags become NBD's
 * and where a request meets a failed connection.
 *
 * Server connections.  A path has a current connection (a link: an
 * engine, the number of requests using it, and its generation, which
 * counts the path's connections).  Without reconnect-delay it is the
 * first one for the path's whole life, and requests use it without
 * counting.  With reconnect-delay a request that finds the connection
 * failed waits for a new one (Go dials it: see seam.go,
 * nbdgoRedial) and runs again on it; each request counts itself on the
 * link it uses, under lock, so that a replaced connection is closed (its
 * socket, eventfd and, for command=, its server process) once the last
 * request using it has let go: in a thread of its own, so that neither
 * a request nor Go waits for a server to say goodbye.
 *
 * What a client can rely on (the man page's CONNECTION FAILURES):
 *  - Resending.  A read, and any request the server certainly did not
 *    carry out (engine.h: ENGINE_NOT_DONE), is sent again on the new
 *    connection.  So is a write in doubt (sent, unanswered): the same
 *    bytes again; what keeps its old copy from landing on a newer write
 *    is the fence of doubt.h, which every write passes before it is
 *    sent, and a write in doubt is recorded there before its request
 *    answers.
 *  - Repairs.  Before a server connection serves a request, it writes
 *    again what a failed one may have lost of the writes acknowledged
 *    and not yet flushed (kept.h), so that a flush on it covers them.
 *  - Flushes.  A flush fails when a write acknowledged to its client
 *    was lost for good: a repair could not write it again, or it was
 *    not kept (repair-memory=0, or past the bound).  Writes not kept are
 *    counted per client (struct client): the generations of connections
 *    they were acknowledged on.  A flush that succeeds on a later
 *    generation than one of the writes acknowledged before it began
 *    cannot cover them: they may be lost.  From then on every flush of
 *    that client fails with EIO, those in flight too.  Not only the next
 *    one: requests and replies cross on the wire, so the plugin cannot
 *    tell which flush the client sent after it saw a lost write
 *    acknowledged, and a later flush that succeeded would vouch for it.
 *  - Letting a stopping server go.  A server that answers NBD_ESHUTDOWN
 *    waits for its clients to leave before it exits, and a connection
 *    with nothing in flight is told nothing: with reconnect-delay the
 *    plugin ends its other connections to that server politely too
 *    (stop_others).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "datapath.h"
#include "disk.h"
#include "doubt.h"
#include "engine.h"
#include "host.h"
#include "kept.h"
#include "peer.h"
#include "_cgo_export.h"

/* One server connection and the requests using it (under path.lock). */
struct link {
  struct engine *engine;
  uint64_t gen;                 /* 1 for the path's first connection */
  struct fate *fate;            /* its record on the disk (disk.h) */
  pid_t server;                 /* the server's listener (peer.h), or 0 */
  int64_t made_ms;              /* when it was made */
  int refs;                     /* the path's own, plus one per request */
  int logged;                   /* its failure has been logged */
  int stopped_others;           /* its NBD_ESHUTDOWN was passed on */
};

struct path {
  int flushes;                  /* the server accepts flush */
  int keeps;                    /* it keeps writes for repairs (kept.h) */
  struct disk *disk;
  uintptr_t go_ref;             /* the Go upstream, for nbdgoRedial */
  struct path *next;            /* in paths (stop_others) */

  pthread_mutex_t lock;         /* protects cur, link refs, gens,
                                   redialing, closing */
  pthread_cond_t changed;       /* cur changed, a redial or a close ended */
  struct link *cur;
  uint64_t last_gen;
  int redialing;
  int closing;                  /* links being closed in the background */
};

/* Writes acknowledged to a client on one generation, numbered first
 * to last in the order they were acknowledged.
 */
struct run {
  uint64_t gen, first, last;
};

/* Runs kept per client; a new run begins only when the generation
 * changes, and past this many the oldest two are merged (under the
 * older generation, which can only make a flush fail, never vouch).
 */
#define MAX_RUNS 8

/* An nbdkit connection's data path (see "Flushes" above). */
struct client {
  struct nbdkitgo_direct ops;   /* ops.ctx points back here */
  struct path *path;
  int tracks;                   /* whether to count writes not kept */
  struct owner *owner;          /* of its kept writes */
  int losses;                   /* the disk's losses when it came */

  pthread_mutex_t lock;         /* protects what follows */
  uint64_t acked;               /* writes acknowledged, the last's number */
  struct run runs[MAX_RUNS];    /* those no flush has covered, in order */
  int nr_runs;
  int lost;                     /* some may be lost: every flush fails */
};

static const char *const op_names[] = {
  [ENGINE_PREAD] = "pread", [ENGINE_PWRITE] = "pwrite",
  [ENGINE_ZERO] = "zero", [ENGINE_TRIM] = "trim",
  [ENGINE_FLUSH] = "flush", [ENGINE_CACHE] = "cache",
  [ENGINE_BLOCK_STATUS] = "block_status",
};

/* A link over nbd, not yet current: its engine takes nbd.  Who serves
 * it is looked up now, once (peer.h), without any lock held.  NULL with
 * errno set on failure, nbd then still the caller's.
 */
static struct link *
link_new (struct path *p, struct nbd_handle *nbd)
{
  struct link *l = malloc (sizeof *l);
  int pidfd, err;

  if (l == NULL)
    return NULL;
  pidfd = peer_pidfd (nbd_aio_get_fd (nbd), &l->server);
  l->fate = fate_new (p->disk, pidfd);
  if (l->fate == NULL) {
    free (l);
    errno = ENOMEM;
    return NULL;
  }
  /* Last: an engine is undone only by closing its handle. */
  l->engine = engine_new (nbd, settings.timeout_ms);
  if (l->engine == NULL) {
    err = errno;
    fate_put (l->fate);
    free (l);
    errno = err;
    return NULL;
  }
  l->gen = 0;                   /* set as it becomes current */
  l->made_ms = engine_now_ms ();
  l->refs = 1;
  l->logged = 0;
  l->stopped_others = 0;
  return l;
}

/* Close p's connection l.  Once engine_close has returned, a server that
 * libnbd started has exited (nbd_close waits for it), so nothing it was
 * sent can still land.
 */
static void
link_close (struct path *p, struct link *l)
{
  engine_close (l->engine);
  if (settings.server_exits)
    fate_end (l->fate);
  fate_put (l->fate);
  free (l);
}

/* A link being closed in a thread of its own. */
struct closer {
  struct path *path;
  struct link *link;
};

static void
closed_one (struct path *p)
{
  pthread_mutex_lock (&p->lock);
  p->closing--;
  pthread_cond_broadcast (&p->changed);
  pthread_mutex_unlock (&p->lock);
}

static void *
close_in_background (void *arg)
{
  struct closer *c = arg;

  link_close (c->path, c->link);
  closed_one (c->path);
  free (c);
  return NULL;
}

/* Close a replaced link (path.lock not held) without waiting for it:
 * a polite goodbye can take up to timeout=, and a server we started must
 * exit.  path_free waits for these.
 */
static void
retire (struct path *p, struct link *l)
{
  struct closer *c;
  pthread_attr_t attr;
  pthread_t t;
  int err = -1;

  if (l == NULL)
    return;
  pthread_mutex_lock (&p->lock);
  p->closing++;
  pthread_mutex_unlock (&p->lock);
  c = malloc (sizeof *c);
  if (c) {
    *c = (struct closer) { .path = p, .link = l };
    pthread_attr_init (&attr);
    pthread_attr_setdetachstate (&attr, PTHREAD_CREATE_DETACHED);
    err = pthread_create (&t, &attr, close_in_background, c);
    pthread_attr_destroy (&attr);
  }
  if (err != 0) {               /* no thread: close it here */
    free (c);
    link_close (p, l);
    closed_one (p);
  }
}

/* Drop one reference (path.lock held); the caller retires what this
 * returns, after unlocking.
 */
static struct link *
link_unref (struct link *l)
{
  return --l->refs == 0 ? l : NULL;
}

static struct link *
acquire (struct path *p)
{
  struct link *l;

  if (settings.reconnect_ms == 0)
    return p->cur;              /* never replaced */
  pthread_mutex_lock (&p->lock);
  l = p->cur;
  l->refs++;
  pthread_mutex_unlock (&p->lock);
  return l;
}

static void
release (struct path *p, struct link *l)
{
  if (settings.reconnect_ms == 0)
    return;
  pthread_mutex_lock (&p->lock);
  l = link_unref (l);
  pthread_mutex_unlock (&p->lock);
  retire (p, l);
}

/* Log, once per connection, why it failed: the requests it takes down
 * are resent, so their own errors are not logged.
 */
static void
log_failure (struct path *p, struct link *l, const char *why)
{
  int first;

  pthread_mutex_lock (&p->lock);
  first = !l->logged;
  l->logged = 1;
  pthread_mutex_unlock (&p->lock);
  if (first) {
    char *msg;

    if (asprintf (&msg, "%s; reconnecting for up to reconnect-delay=%g",
                  why ? why : "server connection failed",
                  settings.reconnect_ms / 1000.0) >= 0) {
      host_error (msg);
      free (msg);
    }
  }
}

/* Wait until deadline for a connection other than old (whose reference
 * the caller keeps), asking Go to dial one if no one is.  NULL if none
 * came in time.
 */
static struct link *
replacement (struct path *p, struct link *old, int64_t deadline)
{
  struct link *l = NULL;

  pthread_mutex_lock (&p->lock);
  while (p->cur == old && engine_now_ms () < deadline) {
    if (!p->redialing) {
      p->redialing = 1;
      pthread_mutex_unlock (&p->lock);
      nbdgoRedial (p->go_ref, deadline - engine_now_ms ());
      pthread_mutex_lock (&p->lock);
      continue;
    }
    engine_cond_wait (&p->changed, &p->lock, deadline);
  }
  if (p->cur != old) {
    l = p->cur;
    l->refs++;
  }
  pthread_mutex_unlock (&p->lock);
  return l;
}

static int
is_write (int op)
{
  return op == ENGINE_PWRITE || op == ENGINE_ZERO || op == ENGINE_TRIM;
}

/* Set *msg to "op: text" (text is freed). */
static void
set_msg (char **msg, int op, char *text)
{
  if (text && asprintf (msg, "%s: %s", op_names[op], text) == -1)
    *msg = NULL;
  free (text);
}

/* Every path, for stop_others. */
static pthread_mutex_t paths_lock = PTHREAD_MUTEX_INITIALIZER;
static struct path *paths;

/* l's server answered NBD_ESHUTDOWN: end politely every other current
 * connection to the same server (the same listener; when it is not
 * known, every connection made before), so that the server can exit.
 * Only with reconnect-delay, which their next requests then use.
 */
static void
stop_others (struct path *p, struct link *l)
{
  int64_t now = engine_now_ms ();
  struct path *q;
  struct link *o;
  int first, match;

  if (settings.reconnect_ms == 0)
    return;
  pthread_mutex_lock (&p->lock);
  first = !l->stopped_others;
  l->stopped_others = 1;
  pthread_mutex_unlock (&p->lock);
  if (!first)
    return;
  pthread_mutex_lock (&paths_lock);
  for (q = paths; q != NULL; q = q->next) {
    pthread_mutex_lock (&q->lock);
    o = q->cur;
    match = o != l && (l->server ? o->server == l->server :
                       o->server == 0 && o->made_ms <= now);
    if (match)
      o->refs++;
    pthread_mutex_unlock (&q->lock);
    if (match) {
      engine_shut_down (o->engine);
      release (q, o);
    }
  }
  pthread_mutex_unlock (&paths_lock);
}

/* l keeps more than its share of repair-memory: a flush of its own lets
 * go of what it covers (kept.h).  One at a time per connection.
 */
static void
flush_kept (struct disk *d, struct link *l)
{
  struct engine_request req = { .op = ENGINE_FLUSH };
  struct engine_result res;
  uint64_t upto;

  pthread_mutex_lock (&d->lock);
  if (l->fate->flushing) {
    pthread_mutex_unlock (&d->lock);
    return;
  }
  l->fate->flushing = 1;
  upto = kept_upto (d);
  pthread_mutex_unlock (&d->lock);
  engine_command (l->engine, &req, &res);
  free (res.msg);
  pthread_mutex_lock (&d->lock);
  if (res.outcome == ENGINE_OK)
    kept_flushed (l->fate, upto);
  l->fate->flushing = 0;
  pthread_cond_broadcast (&d->changed);
  pthread_mutex_unlock (&d->lock);
}

/* Before keeping count more bytes acknowledged on l: past repair-memory,
 * wait for l's own flush, or flush now if l keeps its share (kept.h).
 * Once: what other connections keep may stay past the bound.
 */
static void
make_room (struct disk *d, struct link *l, uint64_t count, int64_t bound)
{
  int flushed = 0;

  if (!kept_full (count))
    return;
  pthread_mutex_lock (&d->lock);
  while (kept_full (count)) {
    if (l->fate->flushing) {
      if (bound >= 0 && engine_now_ms () >= bound)
        break;
      disk_wait (d, bound);
      continue;
    }
    if (flushed || !kept_over_share (l->fate))
      break;
    pthread_mutex_unlock (&d->lock);
    flush_kept (d, l);
    flushed = 1;
    pthread_mutex_lock (&d->lock);
  }
  pthread_mutex_unlock (&d->lock);
}

/* What serve says of a request that succeeded. */
struct served {
  uint64_t gen;                 /* the generation of its connection */
  int unkept;                   /* a write that needed keeping was not */
};

/* Send req once on l and record what it means for the disk: a write's
 * doubt, or its data kept; a flush's cover.  Returns the outcome
 * (res filled in).
 */
static int
send_once (struct client *c, struct link *l, struct engine_request *req,
           struct sending *s, int64_t bound, struct engine_result *res,
           struct served *sv)
{
  struct path *p = c->path;
  struct disk *d = p->disk;
  struct blob *b = NULL;
  uint64_t upto = 0;
  int outcome, over = 0;

  if (req->op == ENGINE_FLUSH && p->keeps) {
    pthread_mutex_lock (&d->lock);
    upto = kept_upto (d);
    pthread_mutex_unlock (&d->lock);
  }
  outcome = engine_command (l->engine, req, res);
  if (s) {
    /* Copied before taking the lock, while nbdkit's buffer is ours. */
    if (outcome == ENGINE_OK && p->keeps && req->op == ENGINE_PWRITE &&
        !(req->flags & LIBNBD_CMD_FLAG_FUA)) {
      make_room (d, l, req->count, bound);
      b = blob_copy (req->buf, req->count);
    }
    pthread_mutex_lock (&d->lock);
    if (outcome == ENGINE_CONN_FAILED) {
      fate_ended_locked (l->fate);
      /* Recorded before this request answers (doubt.h). */
      if (res->doubt == ENGINE_IN_DOUBT &&
          doubt_add (l->fate, s->id, req->offset, req->count) == -1)
        res->doubt = -1;         /* not recorded: the disk is fenced */
    }
    if (outcome == ENGINE_OK && p->keeps) {
      sv->unkept = kept_write (l->fate, c->owner, req, b) == -1;
      over = kept_over_share (l->fate);
    }
    else
      blob_put (b);
    if (p->keeps)
      sending_end (d, s);
    pthread_mutex_unlock (&d->lock);
    if (over)
      flush_kept (d, l);
  }
  else if (outcome == ENGINE_OK && req->op == ENGINE_FLUSH && p->keeps) {
    pthread_mutex_lock (&d->lock);
    kept_flushed (l->fate, upto);
    pthread_mutex_unlock (&d->lock);
  }
  return outcome;
}

/* Before l serves anything, it repairs what a failed connection to the
 * disk may have lost (kept.h).  0, or the errno for the client (*text
 * says why); when l failed under the repair, ENGINE_CONN_FAILED in *res
 * (the request was not sent: it is not in doubt).
 */
static int
repair_first (struct path *p, struct link *l, int64_t bound,
              struct engine_result *res, char **text)
{
  if (!p->keeps || !kept_orphans (p->disk))
    return 0;
  switch (kept_repair (l->fate, l->engine, bound, text)) {
  case REPAIR_FAILED:
    return EIO;
  case REPAIR_CONN_FAILED:
    *res = (struct engine_result) {
      .outcome = ENGINE_CONN_FAILED, .errnum = EIO,
      .doubt = ENGINE_NOT_DONE, .msg = *text,
    };
    *text = NULL;
    fate_ended (l->fate);
    break;
  }
  return 0;
}

/* reconnect-delay's window from now_ms: how long a request may go on
 * after its connection failed, and a write wait for a doubt.
 */
static int64_t
window_from (int64_t now_ms)
{
  return now_ms + settings.reconnect_ms;
}

/* The failover step: l failed under a request (res says how).  Passes
 * a server's shutdown on to the other connections, and with
 * reconnect-delay logs the failure (once per connection) and waits for
 * the connection to go on with, until *window: the first failure starts
 * it again (libnbd fails every command at once when a connection dies,
 * so that is now).  Releases l; returns the next connection, or NULL:
 * none came, or there is no reconnect-delay (res->msg then says why).
 */
static struct link *
fail_over (struct path *p, struct link *l, struct engine_result *res,
           int64_t *window, int *failed)
{
  struct link *next = NULL;

  if (res->server_shutdown)
    stop_others (p, l);
  if (settings.reconnect_ms > 0) {
    if (!*failed)
      *window = window_from (engine_now_ms ());
    *failed = 1;
    log_failure (p, l, res->msg);
    free (res->msg);
    res->msg = NULL;
    /* Past the window a request is not sent again, even on a connection
     * someone else dialed: it ends within reconnect-delay plus twice
     * timeout.
     */
    if (engine_now_ms () < *window)
      next = replacement (p, l, *window);
  }
  release (p, l);
  return next;
}

/* Run a request, on a new connection as often as reconnect-delay
 * allows: repair, fence, send, fail over.  Returns 0 or the errno for
 * the client (*msg says why).
 */
static int
serve (struct client *c, struct engine_request *req, struct served *sv,
       char **msg)
{
  struct path *p = c->path;
  struct disk *d = p->disk;
  struct engine_result res;
  struct link *l = acquire (p);
  int64_t now = engine_now_ms ();
  int64_t window = window_from (now);
  int failed = 0;
  /* Waiting for another write or a repair keeps within the request's
   * bounds (reconnect-delay plus twice timeout, if timeout is set): it
   * leaves one timeout for its own send.
   */
  int64_t bound = settings.timeout_ms > 0 ?
    now + settings.reconnect_ms + settings.timeout_ms : -1;
  /* A write's place in the order of writes; its id is unique while it
   * runs.
   */
  struct sending s = { .offset = req->offset, .end = req->offset + req->count };
  struct sending *w = is_write (req->op) ? &s : NULL;
  char *text = NULL;
  int r = 0;

  s.id = (uintptr_t) &s;
  *sv = (struct served) { 0 };
  for (;;) {
    res = (struct engine_result) { .outcome = ENGINE_OK };
    if ((r = repair_first (p, l, bound, &res, &text)) != 0)
      break;
    if (res.outcome != ENGINE_CONN_FAILED) {
      if (w && (r = write_begin (d, w, p->keeps, window, bound, &text)) != 0)
        break;
      free (req->entries);
      req->entries = NULL;
      req->nr_entries = 0;
      if (send_once (c, l, req, w, bound, &res, sv) != ENGINE_CONN_FAILED)
        break;
      if (!w)
        fate_ended (l->fate);
      if (res.doubt == -1)      /* a doubt could not be recorded */
        break;
    }
    if ((l = fail_over (p, l, &res, &window, &failed)) == NULL) {
      if (settings.reconnect_ms > 0) {
        if (asprintf (&text, "no working server connection within "
                      "reconnect-delay=%g", settings.reconnect_ms / 1000.0) == -1)
          text = NULL;
        r = EIO;
      }
      break;
    }
  }
  if (l) {
    sv->gen = l->gen;
    release (p, l);
  }
  if (w)
    doubt_forget (d, w->id);
  if (r == 0 && res.outcome == ENGINE_OK)
    return 0;
  if (r == 0) {
    r = res.errnum;
    text = res.msg;
  }
  else
    free (res.msg);
  set_msg (msg, req->op, text);
  return r;
}

static uint32_t
fua (uint32_t flags)
{
  return (flags & NBDKITGO_FLAG_FUA) ? LIBNBD_CMD_FLAG_FUA : 0;
}

/* A write was acknowledged to c on generation gen. */
static void
unflushed (struct client *c, uint64_t gen)
{
  struct run *last;
  uint64_t n;

  pthread_mutex_lock (&c->lock);
  n = ++c->acked;
  last = c->nr_runs ? &c->runs[c->nr_runs - 1] : NULL;
  if (last && last->gen == gen)
    last->last = n;
  else {
    if (c->nr_runs == MAX_RUNS) {
      if (c->runs[1].gen > c->runs[0].gen)
        c->runs[1].gen = c->runs[0].gen;
      c->runs[1].first = c->runs[0].first;
      memmove (&c->runs[0], &c->runs[1], (MAX_RUNS - 1) * sizeof c->runs[0]);
      c->nr_runs--;
    }
    c->runs[c->nr_runs++] = (struct run) { .gen = gen, .first = n, .last = n };
  }
  pthread_mutex_unlock (&c->lock);
}

/* A flush that began after write number upto succeeded on generation
 * gen (c->lock held): 1 if it cannot cover one of those writes; else
 * they are covered, and forgotten.
 */
static int
covered (struct client *c, uint64_t upto, uint64_t gen)
{
  int i, kept = 0;

  for (i = 0; i < c->nr_runs && c->runs[i].first <= upto; ++i)
    if (c->runs[i].gen < gen)
      return 1;
  for (i = 0; i < c->nr_runs; ++i) {
    if (c->runs[i].last <= upto)
      continue;
    if (c->runs[i].first <= upto)
      c->runs[i].first = upto + 1;
    c->runs[kept++] = c->runs[i];
  }
  c->nr_runs = kept;
  return 0;
}

/* A write not kept (not a trim: one lost with a server's cache leaves
 * the old bytes, which a trim allows) is counted, unless it had FUA,
 * until a flush covers it.
 */
static int
serve_write (struct client *c, struct engine_request *req, char **msg)
{
  struct served sv;
  int r = serve (c, req, &sv, msg);

  if (r == 0 && c->tracks && req->op != ENGINE_TRIM &&
      !(req->flags & LIBNBD_CMD_FLAG_FUA) && (!c->path->keeps || sv.unkept))
    unflushed (c, sv.gen);
  return r;
}

/* A request of op without a buffer. */
static int
serve_op (void *ctx, int op, uint32_t count, uint64_t offset,
          uint32_t nbd_flags, char **msg)
{
  struct client *c = ctx;
  struct engine_request req = {
    .op = op, .count = count, .offset = offset, .flags = nbd_flags,
  };
  struct served sv;

  if (is_write (op))
    return serve_write (c, &req, msg);
  return serve (c, &req, &sv, msg);
}

static int
d_pread (void *ctx, void *buf, uint32_t count, uint64_t offset,
         uint32_t flags, char **msg)
{
  struct client *c = ctx;
  struct engine_request req = {
    .op = ENGINE_PREAD, .buf = buf, .count = count, .offset = offset,
  };
  struct served sv;

  return serve (c, &req, &sv, msg);
}

static int
d_pwrite (void *ctx, const void *buf, uint32_t count, uint64_t offset,
          uint32_t flags, char **msg)
{
  struct engine_request req = {
    .op = ENGINE_PWRITE, .buf = (void *) buf, .count = count,
    .offset = offset, .flags = fua (flags),
  };

  return serve_write (ctx, &req, msg);
}

static int
d_trim (void *ctx, uint32_t count, uint64_t offset, uint32_t flags,
        char **msg)
{
  return serve_op (ctx, ENGINE_TRIM, count, offset, fua (flags), msg);
}

/* Without MAY_TRIM from nbdkit the server must not punch a hole. */
static int
d_zero (void *ctx, uint32_t count, uint64_t offset, uint32_t flags,
        char **msg)
{
  uint32_t f = fua (flags);

  if (!(flags & NBDKITGO_FLAG_MAY_TRIM))
    f |= LIBNBD_CMD_FLAG_NO_HOLE;
  if (flags & NBDKITGO_FLAG_FAST_ZERO)
    f |= LIBNBD_CMD_FLAG_FAST_ZERO;
  return serve_op (ctx, ENGINE_ZERO, count, offset, f, msg);
}

/* A flush covers the writes acknowledged before it began, but only on
 * the connection it succeeded on: a repair has put there what a failed
 * one may have lost (see "Flushes" above).
 */
static int
d_flush (void *ctx, uint32_t flags, char **msg)
{
  struct client *c = ctx;
  struct engine_request req = { .op = ENGINE_FLUSH };
  struct served sv;
  uint64_t upto;
  int r, lost;
  const char *why = NULL;

  pthread_mutex_lock (&c->lock);
  upto = c->acked;
  pthread_mutex_unlock (&c->lock);

  r = serve (c, &req, &sv, msg);

  pthread_mutex_lock (&c->lock);
  if (r == 0 && c->tracks && !c->lost && covered (c, upto, sv.gen))
    c->lost = 1;
  lost = c->lost;
  pthread_mutex_unlock (&c->lock);
  if (lost)
    why = "flush: writes acknowledged on a server connection that has "
      "since failed may have been lost with the server's write cache (a "
      "flush on a new connection cannot cover them, and they were not "
      "kept to be written again: repair-memory): every flush of this "
      "client fails from now on";
  else if (atomic_load (&c->owner->lost) ||
           atomic_load (&c->path->disk->losses) != c->losses)
    why = "flush: a write acknowledged earlier was lost with the server's "
      "write cache and the server refused to take it again: every flush "
      "of this client fails from now on";
  if (why) {
    free (*msg);
    *msg = strdup (why);
    r = EIO;
  }
  return r;
}

static int
d_cache (void *ctx, uint32_t count, uint64_t offset, uint32_t flags,
         char **msg)
{
  return serve_op (ctx, ENGINE_CACHE, count, offset, 0, msg);
}

/* nbdkit's extent types are NBD's base:allocation flags, and the server's
 * extents follow each other from offset on.
 */
static int
d_extents (void *ctx, uint32_t count, uint64_t offset, uint32_t flags,
           struct nbdkit_extents *e, char **msg)
{
  struct client *c = ctx;
  struct engine_request req = {
    .op = ENGINE_BLOCK_STATUS, .count = count, .offset = offset,
    .flags = (flags & NBDKITGO_FLAG_REQ_ONE) ? LIBNBD_CMD_FLAG_REQ_ONE : 0,
    .context = LIBNBD_CONTEXT_BASE_ALLOCATION,
  };
  struct served sv;
  size_t i;
  int r;

  r = serve (c, &req, &sv, msg);
  if (r == 0 && req.nr_entries < 2) {
    *msg = strdup ("block_status: the server sent no extents");
    r = EIO;
  }
  for (i = 0; r == 0 && i + 1 < req.nr_entries; i += 2) {
    errno = 0;
    if (host_add_extent (e, offset, req.entries[i], req.entries[i + 1]) == -1)
      r = errno ? errno : EIO;  /* nbdkit has said why */
    offset += req.entries[i];
  }
  free (req.entries);
  return r;
}

void
datapath_configure (const struct datapath_settings *s)
{
  settings = *s;
}

struct path *
path_new (struct nbd_handle *nbd, const char *export, int server_flushes,
          uintptr_t go_ref)
{
  struct path *p = calloc (1, sizeof *p);

  if (p == NULL)
    return NULL;
  p->flushes = server_flushes;
  /* A server without flush makes every write stable before it answers:
   * nothing to keep.
   */
  p->keeps = server_flushes && settings.repair_memory > 0;
  p->go_ref = go_ref;
  if ((p->disk = disk_get (export)) == NULL) {
    free (p);
    errno = ENOMEM;
    return NULL;
  }
  if ((p->cur = link_new (p, nbd)) == NULL) {
    free (p);
    return NULL;
  }
  p->cur->gen = ++p->last_gen;
  pthread_mutex_init (&p->lock, NULL);
  engine_cond_init (&p->changed);
  pthread_mutex_lock (&paths_lock);
  p->next = paths;
  paths = p;
  pthread_mutex_unlock (&paths_lock);
  return p;
}

int
path_install (struct path *p, struct nbd_handle *nbd)
{
  struct link *l = link_new (p, nbd), *old = NULL;
  int err = errno;

  pthread_mutex_lock (&p->lock);
  if (l) {
    l->gen = ++p->last_gen;
    old = link_unref (p->cur);
    p->cur = l;
  }
  p->redialing = 0;
  pthread_cond_broadcast (&p->changed);
  pthread_mutex_unlock (&p->lock);
  retire (p, old);
  if (l == NULL) {
    errno = err;
    return -1;
  }
  return 0;
}

void
path_redial_failed (struct path *p)
{
  pthread_mutex_lock (&p->lock);
  p->redialing = 0;
  pthread_cond_broadcast (&p->changed);
  pthread_mutex_unlock (&p->lock);
}

void
path_free (struct path *p)
{
  struct path **pp;

  pthread_mutex_lock (&paths_lock);
  for (pp = &paths; *pp != p; pp = &(*pp)->next)
    ;
  *pp = p->next;
  pthread_mutex_unlock (&paths_lock);
  pthread_mutex_lock (&p->lock);
  while (p->closing > 0)
    pthread_cond_wait (&p->changed, &p->lock);
  pthread_mutex_unlock (&p->lock);
  link_close (p, p->cur);
  pthread_mutex_destroy (&p->lock);
  pthread_cond_destroy (&p->changed);
  free (p);
}

struct client *
client_new (struct path *p)
{
  struct client *c = calloc (1, sizeof *c);

  if (c == NULL)
    return NULL;
  if ((c->owner = owner_new ()) == NULL) {
    free (c);
    return NULL;
  }
  c->ops = (struct nbdkitgo_direct) {
    .ctx = c, .pread = d_pread, .pwrite = d_pwrite, .flush = d_flush,
    .trim = d_trim, .zero = d_zero, .cache = d_cache,
    .extents = d_extents,
  };
  c->path = p;
  c->losses = atomic_load (&p->disk->losses);
  /* Without reconnecting, a connection never follows another. */
  c->tracks = p->flushes && settings.reconnect_ms > 0;
  pthread_mutex_init (&c->lock, NULL);
  return c;
}

const struct nbdkitgo_direct *client_ops (struct client *c) { return &c->ops; }

void
client_free (struct client *c)
{
  if (c == NULL)
    return;
  owner_put (c->owner);
  pthread_mutex_destroy (&c->lock);
  free (c);
}
