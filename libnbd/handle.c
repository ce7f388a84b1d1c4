/* SPDX-License-Identifier: BSD-3-Clause
 *
 * Wrappers around libnbd's handle calls: see gonbd.h for why each one
 * captures the error itself.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gonbd.h"
#include "_cgo_export.h"

/* Copy libnbd's thread-local error of the call that just failed. */
void
gonbd_capture (struct gonbd_err *err)
{
  const char *msg = nbd_get_error ();

  err->msg = strdup (msg ? msg : "unknown libnbd error");
  err->errnum = nbd_get_errno ();
}

struct gonbd *
gonbd_create (struct gonbd_err *err)
{
  struct gonbd *g = calloc (1, sizeof *g);

  if (g == NULL) {
    err->errnum = errno;
    return NULL;
  }
  g->nbd = nbd_create ();
  if (g->nbd == NULL) {
    gonbd_capture (err);
    free (g);
    return NULL;
  }
  return g;
}

void
gonbd_close (struct gonbd *g)
{
  nbd_close (g->nbd);
  free (g);
}

/* Hand the libnbd handle over to its new owner and free the rest. */
struct nbd_handle *
gonbd_release (struct gonbd *g)
{
  struct nbd_handle *nbd = g->nbd;

  free (g);
  return nbd;
}

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

/* One wrapper per call that returns -1 on error. */
#define WRAP(name, params, args)                                 \
  int gonbd_##name params                                        \
  {                                                              \
    int r = nbd_##name args;                                     \
    if (r == -1)                                                 \
      gonbd_capture (err);                                       \
    return r;                                                    \
  }

WRAP (set_export_name, (struct gonbd *g, const char *name, struct gonbd_err *err),
      (g->nbd, name))
WRAP (add_meta_context, (struct gonbd *g, const char *name, struct gonbd_err *err),
      (g->nbd, name))
WRAP (set_full_info, (struct gonbd *g, int b, struct gonbd_err *err),
      (g->nbd, b))
WRAP (set_pread_initialize, (struct gonbd *g, int b, struct gonbd_err *err),
      (g->nbd, b))
WRAP (set_opt_mode, (struct gonbd *g, int b, struct gonbd_err *err),
      (g->nbd, b))
WRAP (set_tls, (struct gonbd *g, int mode, struct gonbd_err *err),
      (g->nbd, mode))
WRAP (set_tls_certificates, (struct gonbd *g, const char *dir, struct gonbd_err *err),
      (g->nbd, dir))
WRAP (set_tls_verify_peer, (struct gonbd *g, int b, struct gonbd_err *err),
      (g->nbd, b))
WRAP (set_tls_username, (struct gonbd *g, const char *name, struct gonbd_err *err),
      (g->nbd, name))
WRAP (set_tls_psk_file, (struct gonbd *g, const char *file, struct gonbd_err *err),
      (g->nbd, file))
WRAP (opt_info, (struct gonbd *g, struct gonbd_err *err), (g->nbd))
WRAP (opt_abort, (struct gonbd *g, struct gonbd_err *err), (g->nbd))
WRAP (can_meta_context, (struct gonbd *g, const char *name, struct gonbd_err *err),
      (g->nbd, name))

int64_t
gonbd_get_size (struct gonbd *g, struct gonbd_err *err)
{
  int64_t r = nbd_get_size (g->nbd);
  if (r == -1)
    gonbd_capture (err);
  return r;
}

int64_t
gonbd_get_block_size (struct gonbd *g, int which, struct gonbd_err *err)
{
  int64_t r = nbd_get_block_size (g->nbd, which);
  if (r == -1)
    gonbd_capture (err);
  return r;
}

int
gonbd_get_flag (struct gonbd *g, int which, struct gonbd_err *err)
{
  int r;

  switch (which) {
  case GONBD_IS_READ_ONLY: r = nbd_is_read_only (g->nbd); break;
  case GONBD_CAN_FLUSH: r = nbd_can_flush (g->nbd); break;
  case GONBD_CAN_FUA: r = nbd_can_fua (g->nbd); break;
  case GONBD_IS_ROTATIONAL: r = nbd_is_rotational (g->nbd); break;
  case GONBD_CAN_TRIM: r = nbd_can_trim (g->nbd); break;
  case GONBD_CAN_ZERO: r = nbd_can_zero (g->nbd); break;
  case GONBD_CAN_FAST_ZERO: r = nbd_can_fast_zero (g->nbd); break;
  case GONBD_CAN_MULTI_CONN: r = nbd_can_multi_conn (g->nbd); break;
  case GONBD_CAN_CACHE: r = nbd_can_cache (g->nbd); break;
  default: err->errnum = EINVAL; return -1;
  }
  if (r == -1)
    gonbd_capture (err);
  return r;
}

char *
gonbd_get_export_description (struct gonbd *g, struct gonbd_err *err)
{
  char *r = nbd_get_export_description (g->nbd);
  if (r == NULL)
    gonbd_capture (err);
  return r;
}

char *
gonbd_get_canonical_export_name (struct gonbd *g, struct gonbd_err *err)
{
  char *r = nbd_get_canonical_export_name (g->nbd);
  if (r == NULL)
    gonbd_capture (err);
  return r;
}

int gonbd_supports_tls (struct gonbd *g) { return nbd_supports_tls (g->nbd); }
int gonbd_supports_uri (struct gonbd *g) { return nbd_supports_uri (g->nbd); }

/* Whether the connection has failed or been closed. */
int
gonbd_is_dead (struct gonbd *g)
{
  return nbd_aio_is_dead (g->nbd) == 1 || nbd_aio_is_closed (g->nbd) == 1;
}

/* Debug messages go to a Go function (gonbdDebug), named by a cgo.Handle. */
static int
debug_to_go (void *user_data, const char *context, const char *msg)
{
  gonbdDebug ((uintptr_t) user_data, (char *) context, (char *) msg);
  return 0;
}

/* libnbd calls this once the callback can no longer be called (it was
 * replaced, the handle closed, wherever it went after Release, or the
 * call failed): the cgo.Handle is deleted then, not before.
 */
static void
debug_free (void *user_data)
{
  gonbdDebugFree ((uintptr_t) user_data);
}

int
gonbd_set_debug (struct gonbd *g, int b, uintptr_t go_callback,
                 struct gonbd_err *err)
{
  if (b && go_callback &&
      nbd_set_debug_callback (g->nbd, (nbd_debug_callback) {
          .callback = debug_to_go, .user_data = (void *) go_callback,
          .free = debug_free }) == -1) {
    gonbd_capture (err);
    return -1;
  }
  if (nbd_set_debug (g->nbd, b) == -1) {
    gonbd_capture (err);
    return -1;
  }
  return 0;
}

/* Listed exports go to a Go function (gonbdListed), named by a cgo.Handle. */
static int
list_to_go (void *user_data, const char *name, const char *description)
{
  gonbdListed ((uintptr_t) user_data, (char *) name, (char *) description);
  return 0;
}

int
gonbd_opt_list (struct gonbd *g, uintptr_t go_list, struct gonbd_err *err)
{
  int r = nbd_opt_list (g->nbd, (nbd_list_callback) {
      .callback = list_to_go, .user_data = (void *) go_list });
  if (r == -1)
    gonbd_capture (err);
  return r;
}
