/* SPDX-License-Identifier: BSD-3-Clause
 *
 * Connecting with a deadline.  libnbd's synchronous connect calls wait
 * as long as the server takes, which for a server that accepts and then
 * stalls is forever.  These start the aio variant of the call and run
 * the state machine here, in the same thread (so libnbd's error is still
 * ours to capture), until the handshake is done, fails, or the handle's
 * timeout passes.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gonbd.h"

static int
timed_out (struct gonbd_err *err, const char *what)
{
  err->msg = strdup (what);
  err->errnum = ETIMEDOUT;
  return -1;
}

/* Capture libnbd's error as the error of call: the messages name the
 * aio call that ran the state machine ("nbd_aio_notify_write: connect:
 * Connection refused"), which says nothing to the user.
 */
static void
capture_as (struct gonbd_err *err, const char *call)
{
  const char *rest;
  char *msg;

  gonbd_capture (err);
  if (err->msg == NULL || strncmp (err->msg, "nbd_aio_", 8) != 0 ||
      (rest = strstr (err->msg, ": ")) == NULL)
    return;
  if (asprintf (&msg, "%s%s", call, rest) >= 0) {
    free (err->msg);
    err->msg = msg;
  }
}

/* Run the state machine of call until done() says so, the connection
 * dies, or the deadline (ms, -1: none) passes.
 */
static int
run_until (struct gonbd *g, const char *call, int (*done) (struct gonbd *),
           int64_t deadline, const char *what, struct gonbd_err *err)
{
  struct pollfd pfd;
  unsigned dir;
  int timeout, r;

  for (;;) {
    if (done (g))
      return 0;
    if (nbd_aio_is_dead (g->nbd) || nbd_aio_is_closed (g->nbd)) {
      capture_as (err, call);
      if (err->errnum == 0)
        err->errnum = ENOTCONN;
      return -1;
    }
    timeout = -1;
    if (deadline >= 0) {
      int64_t left = deadline - gonbd_now_ms ();
      if (left <= 0)
        return timed_out (err, what);
      timeout = left > 1000 ? 1000 : (int) left;
    }
    pfd.fd = nbd_aio_get_fd (g->nbd);
    dir = nbd_aio_get_direction (g->nbd);
    pfd.events = ((dir & LIBNBD_AIO_DIRECTION_READ) ? POLLIN : 0) |
                 ((dir & LIBNBD_AIO_DIRECTION_WRITE) ? POLLOUT : 0);
    r = poll (&pfd, 1, timeout);
    if (r == -1 && errno != EINTR) {
      err->errnum = errno;
      return -1;
    }
    if (r <= 0)
      continue;
    /* By the direction libnbd waits in: a connect that fails shows as
     * POLLERR/POLLHUP, which libnbd must hear about as a write event to
     * read the socket's error.
     */
    if ((dir & LIBNBD_AIO_DIRECTION_READ) &&
        (pfd.revents & (POLLIN | POLLHUP | POLLERR)))
      r = nbd_aio_notify_read (g->nbd);
    else if ((dir & LIBNBD_AIO_DIRECTION_WRITE) &&
             (pfd.revents & (POLLOUT | POLLHUP | POLLERR)))
      r = nbd_aio_notify_write (g->nbd);
    else
      r = 0;
    if (r == -1) {
      capture_as (err, call);
      return -1;
    }
  }
}

/* Connected: in transmission, or stopped in option mode. */
static int
connected (struct gonbd *g)
{
  return nbd_aio_is_ready (g->nbd) || nbd_aio_is_negotiating (g->nbd);
}

/* Start an aio connect (r is its result) and wait for the handshake. */
static int
finish_connect (struct gonbd *g, const char *call, int r,
                struct gonbd_err *err)
{
  if (r == -1) {
    capture_as (err, call);
    return -1;
  }
  return run_until (g, call, connected, gonbd_deadline (g),
                    "connecting to the server timed out", err);
}

int
gonbd_connect_unix (struct gonbd *g, const char *path, struct gonbd_err *err)
{
  return finish_connect (g, "nbd_connect_unix", nbd_aio_connect_unix (g->nbd, path), err);
}

int
gonbd_connect_tcp (struct gonbd *g, const char *host, const char *port,
                   struct gonbd_err *err)
{
  return finish_connect (g, "nbd_connect_tcp", nbd_aio_connect_tcp (g->nbd, host, port), err);
}

int
gonbd_connect_vsock (struct gonbd *g, uint32_t cid, uint32_t port,
                     struct gonbd_err *err)
{
  return finish_connect (g, "nbd_connect_vsock", nbd_aio_connect_vsock (g->nbd, cid, port), err);
}

int
gonbd_connect_uri (struct gonbd *g, const char *uri, struct gonbd_err *err)
{
  return finish_connect (g, "nbd_connect_uri", nbd_aio_connect_uri (g->nbd, uri), err);
}

int
gonbd_connect_socket (struct gonbd *g, int fd, struct gonbd_err *err)
{
  return finish_connect (g, "nbd_connect_socket", nbd_aio_connect_socket (g->nbd, fd), err);
}

int
gonbd_connect_systemd_socket_activation (struct gonbd *g, char **argv,
                                         struct gonbd_err *err)
{
  return finish_connect (g, "nbd_connect_systemd_socket_activation",
      nbd_aio_connect_systemd_socket_activation (g->nbd, argv), err);
}

/* opt_go: the server's answer ends option mode, or, if it refuses the
 * export, leaves the handle negotiating with the error in opt_error.
 */
static int
on_opt_go (void *user_data, int *error)
{
  struct gonbd *g = user_data;

  g->opt_error = *error;
  g->opt_done = 1;
  return 1;
}

static int
opt_answered (struct gonbd *g)
{
  return g->opt_done;
}

int
gonbd_opt_go (struct gonbd *g, struct gonbd_err *err)
{
  g->opt_done = g->opt_error = 0;
  if (nbd_aio_opt_go (g->nbd, (nbd_completion_callback) {
        .callback = on_opt_go, .user_data = g }) == -1) {
    gonbd_capture (err);
    return -1;
  }
  if (run_until (g, "nbd_opt_go", opt_answered, gonbd_deadline (g),
                 "negotiating with the server timed out", err) == -1)
    return -1;
  if (g->opt_error || !nbd_aio_is_ready (g->nbd)) {
    err->msg = strdup ("nbd_opt_go: the server refused the export");
    err->errnum = g->opt_error ? g->opt_error : ENOENT;
    return -1;
  }
  return 0;
}
