/* SPDX-License-Identifier: BSD-3-Clause
 *
 * The data path's seam: every function Go calls (seam.go), and nothing
 * else.  Each setting is given once (datapath_configure); a connected
 * libnbd handle handed to path_new or path_install is the data path's
 * from then on.
 *
 * Words, as every file here and in Go uses them:
 *  - client: one nbdkit client's connection to nbdkit (struct client),
 *    whose struct nbdkitgo_direct the loader calls for every data
 *    request; in Go datapath.Client, within package plugin's client.
 *  - server connection: one connection of the plugin to the server;
 *    struct link (serve.c) holds it, with the requests using it.
 *  - engine: the command engine on one server connection (engine.h),
 *    which many threads use at once.
 *  - path: the way of a client's requests to the server (struct path):
 *    its current server connection, replaced when it fails (with
 *    reconnect-delay); every client shares one with shared=true.  In Go
 *    datapath.Path; package plugin's upstream is a path with what its
 *    first server connection said about the disk.
 *  - disk: one export of the server, across every server connection to
 *    it (disk.h); one per export name with dynamic-export.
 *  - fate: a server connection's record on its disk, which outlives it
 *    (disk.h): what ends its writes in doubt, the writes it kept.
 *  - a write in doubt: sent on a server connection that ended before the
 *    server answered; a doubt (doubt.c) is the record of one.  The rule
 *    is stated once, in doubt.h.
 *  - a kept write: one acknowledged and not yet covered by a flush,
 *    kept so that a repair can write it again (kept.h).
 */
#ifndef NBDGO_DATAPATH_H
#define NBDGO_DATAPATH_H

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
 * closed in the background once no request uses it.  Does not wait for
 * a server, unless no thread can be started to close the old connection
 * (it is then closed here, within timeout=).  0, or -1 with errno set;
 * nbd is then still the caller's (and the redial counts as failed).
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
