/* SPDX-License-Identifier: BSD-3-Clause
 *
 * C side of the nbdkit binding: calls into nbdkit through the host table
 * the loader handed over.  Each wrapper is a thin, non-variadic C
 * function that cgo can call; when the table is missing (the package's
 * own Go tests, which run outside nbdkit) each one degrades gracefully.
 */
#ifndef NBDKITGO_HOST_H
#define NBDKITGO_HOST_H

#include <stdint.h>
#include "abi.h"

extern const struct nbdkitgo_host *nbdkitgo_host;

int host_present (void);
void host_error (const char *msg);
void host_debug (const char *msg);
void host_set_error (int err);
int64_t host_parse_size (const char *str);
char *host_absolute_path (const char *path);
const char *host_export_name (void);
int host_add_export (struct nbdkit_exports *e, const char *name,
                     const char *description);
int host_use_default_export (struct nbdkit_exports *e);
int host_add_extent (struct nbdkit_extents *e, uint64_t offset,
                     uint64_t length, uint32_t type);
const char *host_strdup_intern (const char *str);
int host_debug_flag (const char *name);

#endif
