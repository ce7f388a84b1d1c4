/* See direct.h.  nbdkit's flags are mapped to NBD's here as nbd.go maps
 * them for the Go callbacks.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "direct.h"
#include "host.h"

static const char *const op_names[] = {
  [GONBD_PREAD] = "pread", [GONBD_PWRITE] = "pwrite",
  [GONBD_ZERO] = "zero", [GONBD_TRIM] = "trim",
  [GONBD_FLUSH] = "flush", [GONBD_CACHE] = "cache",
};

static uint32_t
fua (uint32_t flags)
{
  return (flags & NBDKITGO_FLAG_FUA) ? LIBNBD_CMD_FLAG_FUA : 0;
}

/* The verdict on a command that ended with e (errnum 0: success): 0,
 * an errno, or -1 for the Go callback to take over.
 */
static int
verdict (struct direct_path *d, struct gonbd *g, const char *op,
         struct gonbd_err e, char **msg)
{
  int failed_conn;

  if (e.errnum == 0)
    return 0;
  failed_conn = e.errnum == ETIMEDOUT || gonbd_is_dead (g);
  if (failed_conn && d->reconnect) {
    free (e.msg);
    return -1;                  /* Go waits for a new connection */
  }
  if (e.errnum == ETIMEDOUT)
    e.errnum = EIO;             /* NBD has no ETIMEDOUT */
  if (e.msg) {
    if (asprintf (msg, "%s: %s", op, e.msg) == -1)
      *msg = NULL;
    free (e.msg);
  }
  return e.errnum;
}

/* Run one command; 0, an errno, or -1 for the Go callback to take over. */
static int
run (void *ctx, int op, void *buf, uint64_t count, uint64_t offset,
     uint32_t nbd_flags, char **msg)
{
  struct direct_path *d = ctx;
  struct gonbd *g = atomic_load (&d->g);

  return verdict (d, g, op_names[op],
                  gonbd_command (g, op, buf, count, offset, nbd_flags), msg);
}

static int
d_pread (void *ctx, void *buf, uint32_t count, uint64_t offset,
         uint32_t flags, char **msg)
{
  return run (ctx, GONBD_PREAD, buf, count, offset, 0, msg);
}

static int
d_pwrite (void *ctx, const void *buf, uint32_t count, uint64_t offset,
          uint32_t flags, char **msg)
{
  return run (ctx, GONBD_PWRITE, (void *) buf, count, offset, fua (flags),
              msg);
}

static int
d_flush (void *ctx, uint32_t flags, char **msg)
{
  return run (ctx, GONBD_FLUSH, NULL, 0, 0, 0, msg);
}

static int
d_trim (void *ctx, uint32_t count, uint64_t offset, uint32_t flags,
        char **msg)
{
  return run (ctx, GONBD_TRIM, NULL, count, offset, fua (flags), msg);
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
  return run (ctx, GONBD_ZERO, NULL, count, offset, f, msg);
}

static int
d_cache (void *ctx, uint32_t count, uint64_t offset, uint32_t flags,
         char **msg)
{
  return run (ctx, GONBD_CACHE, NULL, count, offset, 0, msg);
}

/* nbdkit's extent types are NBD's base:allocation flags, and the server's
 * extents follow each other from offset on.
 */
static int
d_extents (void *ctx, uint32_t count, uint64_t offset, uint32_t flags,
           struct nbdkit_extents *e, char **msg)
{
  struct direct_path *d = ctx;
  struct gonbd *g = atomic_load (&d->g);
  struct gonbd_err err = { .msg = NULL, .errnum = 0 };
  uint32_t f = (flags & NBDKITGO_FLAG_REQ_ONE) ? LIBNBD_CMD_FLAG_REQ_ONE : 0;
  uint32_t *entries;
  size_t n, i;
  int r;

  gonbd_block_status (g, LIBNBD_CONTEXT_BASE_ALLOCATION, count, offset, f,
                      &entries, &n, &err);
  r = verdict (d, g, "block_status", err, msg);
  if (r == 0 && n < 2) {
    *msg = strdup ("block_status: the server sent no extents");
    r = EIO;
  }
  for (i = 0; r == 0 && i + 1 < n; i += 2) {
    errno = 0;
    if (host_add_extent (e, offset, entries[i], entries[i + 1]) == -1)
      r = errno ? errno : EIO;  /* nbdkit has said why */
    offset += entries[i];
  }
  free (entries);
  return r;
}

struct direct_path *
direct_new (struct gonbd *g, int reconnect)
{
  struct direct_path *d = calloc (1, sizeof *d);

  if (d == NULL)
    return NULL;
  d->ops = (struct nbdkitgo_direct) {
    .ctx = d, .pread = d_pread, .pwrite = d_pwrite, .flush = d_flush,
    .trim = d_trim, .zero = d_zero, .cache = d_cache,
    .extents = d_extents,
  };
  atomic_store (&d->g, g);
  d->reconnect = reconnect;
  return d;
}

void direct_set (struct direct_path *d, struct gonbd *g) { atomic_store (&d->g, g); }
void direct_free (struct direct_path *d) { free (d); }
