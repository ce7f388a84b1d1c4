/* The plugin's direct data path (see struct nbdkitgo_direct in
 * nbdkit/abi.h): nbdkit's data requests go from the loader straight to
 * the libnbd binding's command engine, without entering Go.  Anything
 * unusual (a failed connection to reconnect, a timeout) is passed back
 * to the Go callbacks.
 */
#ifndef PLUGIN_DIRECT_H
#define PLUGIN_DIRECT_H

#include <stdatomic.h>

#include "abi.h"
#include "gonbd.h"

struct direct_path {
  struct nbdkitgo_direct ops;    /* ops.ctx points back here */
  _Atomic (struct gonbd *) g;   /* the current server connection */
  int reconnect;                /* Go handles failed connections */
};

struct direct_path *direct_new (struct gonbd *g, int reconnect);
void direct_set (struct direct_path *d, struct gonbd *g);
void direct_free (struct direct_path *d);

#endif
