/* SPDX-License-Identifier: BSD-3-Clause
 *
 * The table of Go callbacks handed to the loader.  The functions are the
 * //export-ed ones of callbacks.go; only pwrite needs a cast, because Go
 * cannot spell "const void *".
 */
#include "abi.h"
#include "_cgo_export.h"

typedef int (*pwrite_fn) (uintptr_t, const void *, uint32_t, uint64_t,
                          uint32_t);

const struct nbdkitgo_ops nbdkitgo_ops = {
  .abi_version = NBDKITGO_ABI_VERSION,
  .load = nbdkitgo_load,
  .unload = nbdkitgo_unload,
  .dump_plugin = nbdkitgo_dump_plugin,
  .config = (int (*) (const char *, const char *)) nbdkitgo_config,
  .config_complete = nbdkitgo_config_complete,
  .thread_model = nbdkitgo_thread_model,
  .get_ready = nbdkitgo_get_ready,
  .after_fork = nbdkitgo_after_fork,
  .cleanup = nbdkitgo_cleanup,
  .preconnect = nbdkitgo_preconnect,
  .list_exports = nbdkitgo_list_exports,
  .default_export = (const char *(*) (int, int)) nbdkitgo_default_export,
  .open = nbdkitgo_open,
  .close = nbdkitgo_close,
  .export_description = (const char *(*) (uintptr_t)) nbdkitgo_export_description,
  .get_size = nbdkitgo_get_size,
  .block_size = nbdkitgo_block_size,
  .can_write = nbdkitgo_can_write,
  .can_flush = nbdkitgo_can_flush,
  .is_rotational = nbdkitgo_is_rotational,
  .can_trim = nbdkitgo_can_trim,
  .can_zero = nbdkitgo_can_zero,
  .can_fast_zero = nbdkitgo_can_fast_zero,
  .can_extents = nbdkitgo_can_extents,
  .can_fua = nbdkitgo_can_fua,
  .can_multi_conn = nbdkitgo_can_multi_conn,
  .can_cache = nbdkitgo_can_cache,
  .pread = nbdkitgo_pread,
  .pwrite = (pwrite_fn) nbdkitgo_pwrite,
  .flush = nbdkitgo_flush,
  .trim = nbdkitgo_trim,
  .zero = nbdkitgo_zero,
  .extents = nbdkitgo_extents,
  .cache = nbdkitgo_cache,
  .direct = (const struct nbdkitgo_direct *(*) (uintptr_t)) nbdkitgo_direct,
};
