/* SPDX-License-Identifier: BSD-3-Clause
 *
 * The interface between the C loader (loader/loader.c) and the Go library
 * it loads.  The loader is what nbdkit dlopens; the Go library is loaded
 * later, into the process that serves (see loader.c for why).
 *
 * Handles cross this boundary as uintptr_t (runtime/cgo.Handle values),
 * never as Go pointers.
 */
#ifndef NBDKITGO_ABI_H
#define NBDKITGO_ABI_H

#include <stdint.h>

#define NBDKITGO_ABI_VERSION 3

struct nbdkit_extents;
struct nbdkit_exports;

/* nbdkit's helpers live in the nbdkit executable.  The loader, which
 * links against them normally, hands the Go library this table, so the
 * Go library has no unresolved symbols (and its tests link as ordinary
 * programs).
 */
struct nbdkitgo_host {
  void (*error) (const char *fs, ...);
  void (*debug) (const char *fs, ...);
  void (*set_error) (int err);
  int64_t (*parse_size) (const char *str);
  char *(*absolute_path) (const char *path);
  const char *(*export_name) (void);
  int (*add_export) (struct nbdkit_exports *, const char *name,
                     const char *description);
  int (*use_default_export) (struct nbdkit_exports *);
  int (*add_extent) (struct nbdkit_extents *, uint64_t offset,
                     uint64_t length, uint32_t type);
  const char *(*strdup_intern) (const char *str);
  /* Debug flags (-D NAME.FLAG=N): a NULL-terminated list of names and
   * the matching ints in the loader.
   */
  const char *const *debug_flag_names;
  int *const *debug_flags;
};

/* nbdkit's constants (nbdkit-common.h), copied because the Go library
 * does not include nbdkit's headers.  The loader checks them against
 * nbdkit's (_Static_assert in loader.c), the Go package its constants
 * against these (nbdkit/abi.go), so a copy that drifts fails to build.
 */
/* Request flags, also for direct data paths. */
#define NBDKITGO_FLAG_MAY_TRIM  (1 << 0)
#define NBDKITGO_FLAG_FUA       (1 << 1)
#define NBDKITGO_FLAG_REQ_ONE   (1 << 2)
#define NBDKITGO_FLAG_FAST_ZERO (1 << 3)
/* Thread models. */
#define NBDKITGO_THREAD_MODEL_SERIALIZE_CONNECTIONS  0
#define NBDKITGO_THREAD_MODEL_SERIALIZE_ALL_REQUESTS 1
#define NBDKITGO_THREAD_MODEL_SERIALIZE_REQUESTS     2
#define NBDKITGO_THREAD_MODEL_PARALLEL               3
/* can_fua and can_cache answers. */
#define NBDKITGO_FUA_NONE      0
#define NBDKITGO_FUA_EMULATE   1
#define NBDKITGO_FUA_NATIVE    2
#define NBDKITGO_CACHE_NONE    0
#define NBDKITGO_CACHE_EMULATE 1
#define NBDKITGO_CACHE_NATIVE  2
/* Extent types. */
#define NBDKITGO_EXTENT_HOLE (1 << 0)
#define NBDKITGO_EXTENT_ZERO (1 << 1)

/* A direct data path: C functions a Go plugin may attach to a
 * connection (Plugin.Direct) so that the loader serves data requests
 * without entering Go.  Each returns 0 on success; an errno to fail the
 * request with (*msg, if set, is a malloc'd message the loader logs and
 * frees); or -1 to hand the request to the Go callback instead.  A NULL
 * entry always goes to Go.
 */
struct nbdkitgo_direct {
  void *ctx;
  int (*pread) (void *ctx, void *buf, uint32_t count, uint64_t offset,
                uint32_t flags, char **msg);
  int (*pwrite) (void *ctx, const void *buf, uint32_t count,
                 uint64_t offset, uint32_t flags, char **msg);
  int (*flush) (void *ctx, uint32_t flags, char **msg);
  int (*trim) (void *ctx, uint32_t count, uint64_t offset, uint32_t flags,
               char **msg);
  int (*zero) (void *ctx, uint32_t count, uint64_t offset, uint32_t flags,
               char **msg);
  int (*cache) (void *ctx, uint32_t count, uint64_t offset, uint32_t flags,
                char **msg);
  int (*extents) (void *ctx, uint32_t count, uint64_t offset, uint32_t flags,
                  struct nbdkit_extents *e, char **msg);
};

/* The Go library's callbacks, with nbdkit's signatures except for the
 * handle.  An entry is used only if the descriptor says the Go plugin
 * implements it.
 */
struct nbdkitgo_ops {
  int abi_version;
  void (*load) (void);
  void (*unload) (void);
  void (*dump_plugin) (void);
  int (*config) (const char *key, const char *value);
  int (*config_complete) (void);
  int (*thread_model) (void);
  int (*get_ready) (void);
  int (*after_fork) (void);
  void (*cleanup) (void);
  int (*preconnect) (int readonly);
  int (*list_exports) (int readonly, int is_tls, struct nbdkit_exports *);
  const char *(*default_export) (int readonly, int is_tls);
  uintptr_t (*open) (int readonly);
  void (*close) (uintptr_t h);
  const char *(*export_description) (uintptr_t h);
  int64_t (*get_size) (uintptr_t h);
  int (*block_size) (uintptr_t h, uint32_t *minimum, uint32_t *preferred,
                     uint32_t *maximum);
  int (*can_write) (uintptr_t h);
  int (*can_flush) (uintptr_t h);
  int (*is_rotational) (uintptr_t h);
  int (*can_trim) (uintptr_t h);
  int (*can_zero) (uintptr_t h);
  int (*can_fast_zero) (uintptr_t h);
  int (*can_extents) (uintptr_t h);
  int (*can_fua) (uintptr_t h);
  int (*can_multi_conn) (uintptr_t h);
  int (*can_cache) (uintptr_t h);
  int (*pread) (uintptr_t h, void *buf, uint32_t count, uint64_t offset,
                uint32_t flags);
  int (*pwrite) (uintptr_t h, const void *buf, uint32_t count,
                 uint64_t offset, uint32_t flags);
  int (*flush) (uintptr_t h, uint32_t flags);
  int (*trim) (uintptr_t h, uint32_t count, uint64_t offset, uint32_t flags);
  int (*zero) (uintptr_t h, uint32_t count, uint64_t offset, uint32_t flags);
  int (*extents) (uintptr_t h, uint32_t count, uint64_t offset,
                  uint32_t flags, struct nbdkit_extents *);
  int (*cache) (uintptr_t h, uint32_t count, uint64_t offset, uint32_t flags);
  /* The connection's direct data path, or NULL: asked once, after open. */
  const struct nbdkitgo_direct *(*direct) (uintptr_t h);
};

/* The one symbol the loader looks up in the Go library. */
typedef const struct nbdkitgo_ops *
  (*nbdkitgo_start_fn) (const struct nbdkitgo_host *host);
#define NBDKITGO_START_SYMBOL "nbdkitgo_start"

#endif /* NBDKITGO_ABI_H */
