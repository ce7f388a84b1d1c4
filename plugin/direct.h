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
#include "engine.h"

struct path;
struct client;

/* The settings of repair-memory=, quiesce-time= (-1: not given) and
 * reconnect-delay=, before the first path.
 */
void direct_settings (int64_t repair_memory, int64_t quiesce_ms,
                      int64_t reconnect_ms);

/* A path over e (which it owns from now on) to export's disk.
 * reconnect_ms: see reconnect-delay (0: off); timeout_ms bounds closing
 * connections; server_exits: closing a connection ends its server
 * (command=); server_flushes: the server accepts flush (so it may cache
 * acknowledged writes); go_ref is handed to nbdgoRedial.
 */
struct path *path_new (struct engine *e, const char *export,
                       int64_t reconnect_ms, int64_t timeout_ms,
                       int server_exits, int server_flushes,
                       uintptr_t go_ref);
/* A redial succeeded: e replaces the current connection, which is
 * closed in the background once no request uses it.  Never waits.
 */
void path_install (struct path *p, struct engine *e);
/* A redial gave up (its deadline passed). */
void path_redial_failed (struct path *p);
/* Close the connection and free p; no request may be running, and no
 * client may be left.
 */
void path_free (struct path *p);

/* An nbdkit connection's data path over p. */
struct client *client_new (struct path *p);
const struct nbdkitgo_direct *client_ops (struct client *c);
void client_free (struct client *c);

#endif
