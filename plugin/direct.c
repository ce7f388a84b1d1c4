/* SPDX-License-Identifier: BSD-3-Clause
 *
 * The data path: every data request (read, write, zero, trim, flush,
 * cache, extents) goes from the loader to these functions, and from here
 * to the server through the command engine (engine.h), without entering
 * Go.  This is the one place where nbdkit's request flags become NBD's
 * and where a request meets a failed connection.
 *
 * Server connections.  A path has a current connection (a link: an
 * engine and the number of requests using it).  Without
 * reconnect-delay it is the first one for the path's whole life, and
 * requests use it without counting.  With reconnect-delay a request that
 * finds the connection failed waits for a new one (Go dials it: see
 * upstream.go, nbdgoRedial) and runs again on it; each request counts
 * itself on the link it uses, under lock, so that a replaced connection
 * is closed (its socket, eventfd and, for command=, its server process
 * freed) as soon as the last request using it has let go.
 *
 * Resending is sound because a request whose reply never came may or may
 * not have happened, and NBD's commands may be repeated.  Except for
 * order: a write resent while the server may still apply the first copy
 * could land under a later write.  So a write (pwrite, zero, trim) that
 * was sent on a failed connection is resent only once the server has
 * closed that connection (engine_server_closed); if it does not within
 * reconnect-delay, the write fails with EIO.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "direct.h"
#include "host.h"
#include "_cgo_export.h"

/* One server connection and the requests using it (under path.lock). */
struct link {
  struct engine *engine;
  int refs;                     /* the path's own, plus one per request */
  int logged;                   /* its failure has been logged */
};

struct path {
  struct nbdkitgo_direct ops;   /* ops.ctx points back here */
  int64_t reconnect_ms;         /* reconnect-delay; 0: off */
  int64_t timeout_ms;           /* bounds closing, as each command */
  uintptr_t go_ref;             /* the Go upstream, for nbdgoRedial */

  pthread_mutex_t lock;         /* protects cur, link refs, redialing */
  pthread_cond_t changed;       /* cur changed, or a redial ended */
  struct link *cur;
  int redialing;
};

static const char *const op_names[] = {
  [ENGINE_PREAD] = "pread", [ENGINE_PWRITE] = "pwrite",
  [ENGINE_ZERO] = "zero", [ENGINE_TRIM] = "trim",
  [ENGINE_FLUSH] = "flush", [ENGINE_CACHE] = "cache",
  [ENGINE_BLOCK_STATUS] = "block_status",
};

static struct link *
link_new (struct engine *e)
{
  struct link *l = malloc (sizeof *l);

  if (l) {
    l->engine = e;
    l->refs = 1;
    l->logged = 0;
  }
  return l;
}

/* Drop one reference (path.lock held); the caller closes what this
 * returns, after unlocking.
 */
static struct link *
unref (struct link *l)
{
  return --l->refs == 0 ? l : NULL;
}

static void
link_close (struct path *p, struct link *l)
{
  if (l) {
    engine_close (l->engine, p->timeout_ms);
    free (l);
  }
}

static struct link *
acquire (struct path *p)
{
  struct link *l;

  if (p->reconnect_ms == 0)
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
  if (p->reconnect_ms == 0)
    return;
  pthread_mutex_lock (&p->lock);
  l = unref (l);
  pthread_mutex_unlock (&p->lock);
  link_close (p, l);
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
                  p->reconnect_ms / 1000.0) >= 0) {
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
  struct timespec ts = { deadline / 1000, (deadline % 1000) * 1000000L };
  struct link *l = NULL;

  pthread_mutex_lock (&p->lock);
  while (p->cur == old && engine_now_ms () < deadline) {
    if (!p->redialing) {
      p->redialing = 1;
      pthread_mutex_unlock (&p->lock);
      nbdgoRedial (p->go_ref, deadline);
      pthread_mutex_lock (&p->lock);
      continue;
    }
    pthread_cond_timedwait (&p->changed, &p->lock, &ts);
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

/* Run a request, on a new connection as often as reconnect-delay
 * allows.  Returns 0 or the errno for the client (*msg says why).
 */
static int
serve (struct path *p, struct engine_request *req, char **msg)
{
  struct engine_result res;
  struct link *l = acquire (p), *next;
  int64_t deadline = -1;
  char *text;

  for (;;) {
    free (req->entries);
    req->entries = NULL;
    req->nr_entries = 0;
    if (engine_command (l->engine, req, &res) != ENGINE_CONN_FAILED ||
        p->reconnect_ms == 0)
      break;
    /* reconnect-delay counts from the failure: libnbd fails every
     * command at once when the connection dies or is ended, and
     * refuses new ones, so that is now.
     */
    if (deadline < 0)
      deadline = engine_now_ms () + p->reconnect_ms;
    log_failure (p, l, res.msg);
    if (is_write (req->op) && !res.not_sent &&
        !engine_server_closed (l->engine, deadline)) {
      free (res.msg);
      res.errnum = EIO;
      res.msg = strdup ("the server connection failed and the server did "
                        "not close it within reconnect-delay; not resending "
                        "the write, which the server may still apply");
      break;
    }
    next = replacement (p, l, deadline);
    release (p, l);
    if (next == NULL) {
      free (res.msg);
      if (asprintf (&text, "no working server connection within "
                    "reconnect-delay=%g", p->reconnect_ms / 1000.0) == -1)
        text = NULL;
      set_msg (msg, req->op, text);
      return EIO;
    }
    free (res.msg);
    l = next;
  }
  release (p, l);
  if (res.outcome == ENGINE_OK)
    return 0;
  set_msg (msg, req->op, res.msg);
  return res.errnum;
}

static uint32_t
fua (uint32_t flags)
{
  return (flags & NBDKITGO_FLAG_FUA) ? LIBNBD_CMD_FLAG_FUA : 0;
}

/* A request of op without a buffer. */
static int
serve_op (void *ctx, int op, uint32_t count, uint64_t offset,
          uint32_t nbd_flags, char **msg)
{
  struct engine_request req = {
    .op = op, .count = count, .offset = offset, .flags = nbd_flags,
  };

  return serve (ctx, &req, msg);
}

static int
d_pread (void *ctx, void *buf, uint32_t count, uint64_t offset,
         uint32_t flags, char **msg)
{
  struct engine_request req = {
    .op = ENGINE_PREAD, .buf = buf, .count = count, .offset = offset,
  };

  return serve (ctx, &req, msg);
}

static int
d_pwrite (void *ctx, const void *buf, uint32_t count, uint64_t offset,
          uint32_t flags, char **msg)
{
  struct engine_request req = {
    .op = ENGINE_PWRITE, .buf = (void *) buf, .count = count,
    .offset = offset, .flags = fua (flags),
  };

  return serve (ctx, &req, msg);
}

static int
d_flush (void *ctx, uint32_t flags, char **msg)
{
  return serve_op (ctx, ENGINE_FLUSH, 0, 0, 0, msg);
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
  struct engine_request req = {
    .op = ENGINE_BLOCK_STATUS, .count = count, .offset = offset,
    .flags = (flags & NBDKITGO_FLAG_REQ_ONE) ? LIBNBD_CMD_FLAG_REQ_ONE : 0,
    .context = LIBNBD_CONTEXT_BASE_ALLOCATION,
  };
  size_t i;
  int r;

  r = serve (ctx, &req, msg);
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

struct path *
path_new (struct engine *e, int64_t reconnect_ms, int64_t timeout_ms,
          uintptr_t go_ref)
{
  struct path *p = calloc (1, sizeof *p);
  pthread_condattr_t attr;

  if (p == NULL || (p->cur = link_new (e)) == NULL) {
    free (p);
    return NULL;
  }
  p->ops = (struct nbdkitgo_direct) {
    .ctx = p, .pread = d_pread, .pwrite = d_pwrite, .flush = d_flush,
    .trim = d_trim, .zero = d_zero, .cache = d_cache,
    .extents = d_extents,
  };
  p->reconnect_ms = reconnect_ms;
  p->timeout_ms = timeout_ms;
  p->go_ref = go_ref;
  pthread_mutex_init (&p->lock, NULL);
  pthread_condattr_init (&attr);
  pthread_condattr_setclock (&attr, CLOCK_MONOTONIC);
  pthread_cond_init (&p->changed, &attr);
  pthread_condattr_destroy (&attr);
  return p;
}

const struct nbdkitgo_direct *path_ops (struct path *p) { return &p->ops; }

int
path_is_dead (struct path *p)
{
  return engine_is_dead (p->cur->engine);
}

void
path_install (struct path *p, struct engine *e)
{
  struct link *l = link_new (e), *old = NULL;

  pthread_mutex_lock (&p->lock);
  if (l) {
    old = unref (p->cur);
    p->cur = l;
  }
  p->redialing = 0;
  pthread_cond_broadcast (&p->changed);
  pthread_mutex_unlock (&p->lock);
  if (l == NULL)
    engine_close (e, p->timeout_ms);
  link_close (p, old);
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
  link_close (p, p->cur);
  pthread_mutex_destroy (&p->lock);
  pthread_cond_destroy (&p->changed);
  free (p);
}
