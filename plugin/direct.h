/* SPDX-License-Identifier: BSD-3-Clause
 *
 * The plugin's data path (direct.c): the struct nbdkitgo_direct that the
 * loader calls for every data request of a connection, over the current
 * server connection (an engine), which Go may replace.
 */
#ifndef PLUGIN_DIRECT_H
#define PLUGIN_DIRECT_H

#include <stdint.h>

#include "abi.h"
#include "engine.h"

struct path;

/* A path over e (which it owns from now on).  reconnect_ms: see
 * reconnect-delay (0: off); timeout_ms bounds closing connections;
 * go_ref is handed to nbdgoRedial.
 */
struct path *path_new (struct engine *e, int64_t reconnect_ms,
                       int64_t timeout_ms, uintptr_t go_ref);
const struct nbdkitgo_direct *path_ops (struct path *p);
int path_is_dead (struct path *p);
/* A redial succeeded: e replaces the current connection. */
void path_install (struct path *p, struct engine *e);
/* A redial gave up (its deadline passed). */
void path_redial_failed (struct path *p);
/* Close the connection and free p; no request may be running. */
void path_free (struct path *p);

#endif
