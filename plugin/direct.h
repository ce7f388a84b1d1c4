/* SPDX-License-Identifier: BSD-3-Clause
 *
 * The plugin's data path (direct.c): for each nbdkit connection a
 * client, whose struct nbdkitgo_direct the loader calls for every data
 * request, over a path: the current server connection (an engine),
 * which Go may replace, shared by every client in shared mode.
 */
#ifndef PLUGIN_DIRECT_H
#define PLUGIN_DIRECT_H

#include <stdint.h>

#include "abi.h"

struct path;
struct client;
struct nbd_handle;

/* The settings every path shares, given once, before the first path. */
struct datapath_settings {
  int64_t reconnect_ms;         /* reconnect-delay=; 0: off */
  int64_t timeout_ms;           /* timeout=, per command and for closing a
                                   connection; 0: none */
  int64_t repair_memory;        /* repair-memory=: bytes of kept data */
  int64_t quiesce_ms;           /* quiesce-time=; -1: not declared */
  int server_exits;             /* closing a connection ends its server
                                   (command=) */
};
void datapath_configure (const struct datapath_settings *s);

/* A path to export's disk over nbd, a connected handle, which it owns
 * from then on.  server_flushes: the server accepts flush (so it may
 * cache acknowledged writes); go_ref is handed to nbdgoRedial.  NULL
 * with errno set on failure; nbd is then still the caller's.
 */
struct path *path_new (struct nbd_handle *nbd, const char *export,
                       int server_flushes, uintptr_t go_ref);
/* A redial succeeded: nbd replaces the current connection, which is
 * closed in the background once no request uses it.  Never waits.
 * 0, or -1 with errno set; nbd is then still the caller's (and the
 * redial counts as failed).
 */
int path_install (struct path *p, struct nbd_handle *nbd);
/* A redial gave up (its deadline passed). */
void path_redial_failed (struct path *p);
/* Close the connection and free p; no request may be running, and no
 * client may be left.  Waits for the server's goodbye (within timeout=)
 * and for connections being closed in the background.
 */
void path_free (struct path *p);

/* An nbdkit connection's data path over p. */
struct client *client_new (struct path *p);
const struct nbdkitgo_direct *client_ops (struct client *c);
void client_free (struct client *c);

#endif
