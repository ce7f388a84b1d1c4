/* SPDX-License-Identifier: BSD-3-Clause
 *
 * See host.h.  Every wrapper checks for the table so that Go tests of
 * this package (no nbdkit, no loader) fail cleanly instead of crashing.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "host.h"

const struct nbdkitgo_host *nbdkitgo_host;

#define H nbdkitgo_host

int host_present (void) { return H != NULL; }

/* nbdkit_error and nbdkit_debug are printf-like: pass the message as
 * an argument so that '%' in it is never interpreted.
 */
void
host_error (const char *msg)
{
  if (H) H->error ("%s", msg);
  else fprintf (stderr, "error: %s\n", msg);
}

void
host_debug (const char *msg)
{
  if (H) H->debug ("%s", msg);
}

void host_set_error (int err) { if (H) H->set_error (err); }

int64_t host_parse_size (const char *str) { return H ? H->parse_size (str) : -1; }

char *
host_absolute_path (const char *path)
{
  return H ? H->absolute_path (path) : NULL;
}

const char *host_export_name (void) { return H ? H->export_name () : NULL; }

int
host_add_export (struct nbdkit_exports *e, const char *name,
                 const char *description)
{
  return H ? H->add_export (e, name, description) : -1;
}

int
host_use_default_export (struct nbdkit_exports *e)
{
  return H ? H->use_default_export (e) : -1;
}

int
host_add_extent (struct nbdkit_extents *e, uint64_t offset,
                 uint64_t length, uint32_t type)
{
  return H ? H->add_extent (e, offset, length, type) : -1;
}

const char *
host_strdup_intern (const char *str)
{
  return H ? H->strdup_intern (str) : NULL;
}

int
host_debug_flag (const char *name)
{
  size_t i;

  if (!H || !H->debug_flag_names)
    return 0;
  for (i = 0; H->debug_flag_names[i]; ++i)
    if (strcmp (H->debug_flag_names[i], name) == 0)
      return *H->debug_flags[i];
  return 0;
}
