/* SPDX-License-Identifier: BSD-3-Clause
 *
 * The loader: the .so that nbdkit loads, for a plugin written in Go.
 *
 * A Go runtime does not survive fork(): after it, only the forking thread
 * exists in the child, and the runtime's own threads are gone for good
 * (Go issue 15538).  nbdkit forks after config_complete and get_ready
 * (daemon mode, --run), so no Go code may run in this process before
 * then.  Yet configuration errors must reach the user on stderr, with a
 * non-zero exit, before nbdkit daemonizes.  So:
 *
 *  - config only records key=value pairs;
 *  - config_complete forks a short-lived child that starts the Go
 *    library, replays the configuration through it, and exits with its
 *    verdict (its error messages go to the user's stderr);
 *  - after_fork, in the process that serves, starts the Go library for
 *    good and replays the configuration again.  nbdkit always calls
 *    after_fork, whether it forked or not.
 *
 * When nbdkit's command line shows it will not fork (-f, -s, ...: see
 * forks.c), config_complete starts Go in this process instead, and the
 * check child is not needed.
 *
 * The Go library travels inside this .so (embed.S) and is loaded from a
 * memfd, so the plugin is one file.  --dump-plugin does not fork, so it
 * starts Go directly.
 *
 * Which callbacks exist is fixed at build time from the Go plugin's
 * description (plugin-desc.h, written by nbdkit.WriteLoaderHeader):
 * nbdkit reads the callback table before any Go code may run.
 */

#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define NBDKIT_API_VERSION 2
#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL
#include <nbdkit-plugin.h>

#include "abi.h"
#include "forks.h"
#include "plugin-desc.h"

extern const unsigned char nbdkitgo_library[], nbdkitgo_library_end[];

/* abi.h copies nbdkit's constants for the Go library: check the copies. */
#define SAME(name) \
  _Static_assert (NBDKITGO_##name == NBDKIT_##name, "abi.h: " #name)
SAME (FLAG_MAY_TRIM);
SAME (FLAG_FUA);
SAME (FLAG_REQ_ONE);
SAME (FLAG_FAST_ZERO);
SAME (THREAD_MODEL_SERIALIZE_CONNECTIONS);
SAME (THREAD_MODEL_SERIALIZE_ALL_REQUESTS);
SAME (THREAD_MODEL_SERIALIZE_REQUESTS);
SAME (THREAD_MODEL_PARALLEL);
SAME (FUA_NONE);
SAME (FUA_EMULATE);
SAME (FUA_NATIVE);
SAME (CACHE_NONE);
SAME (CACHE_EMULATE);
SAME (CACHE_NATIVE);
SAME (EXTENT_HOLE);
SAME (EXTENT_ZERO);
#undef SAME

/* Libraries the Go plugin asked to map before nbdkit forks
 * (Plugin.Preload).
 */
#define PRELOAD_NAME(lib) lib,
static const char *const preload[] = { NBDKITGO_PRELOAD (PRELOAD_NAME) NULL };

/* Debug flags: nbdkit sets NAME_debug_FLAG by symbol name.  The asm label
 * lets NAME contain '-', which C identifiers cannot.
 */
#define DEFINE_FLAG(f) \
  NBDKIT_DLL_PUBLIC int debug_flag_##f __asm__ ("\"" NBDKITGO_NAME "_debug_" #f "\"");
NBDKITGO_DEBUG_FLAGS (DEFINE_FLAG)
#define FLAG_NAME(f) #f,
#define FLAG_PTR(f) &debug_flag_##f,
static const char *const debug_flag_names[] = {
  NBDKITGO_DEBUG_FLAGS (FLAG_NAME) NULL
};
static int *const debug_flags[] = { NBDKITGO_DEBUG_FLAGS (FLAG_PTR) NULL };

static const struct nbdkitgo_host host = {
  .error = nbdkit_error,
  .debug = nbdkit_debug,
  .set_error = nbdkit_set_error,
  .parse_size = nbdkit_parse_size,
  .absolute_path = nbdkit_absolute_path,
  .export_name = nbdkit_export_name,
  .add_export = nbdkit_add_export,
  .use_default_export = nbdkit_use_default_export,
  .add_extent = nbdkit_add_extent,
  .strdup_intern = nbdkit_strdup_intern,
  .debug_flag_names = debug_flag_names,
  .debug_flags = debug_flags,
};

static int library_fd = -1;            /* memfd holding the Go library */
static const struct nbdkitgo_ops *go;  /* set once Go runs in this process */

static struct config_item { char *key, *value; } *config;
static size_t nr_config;
static int config_cwd = -1;            /* working directory at config time */
static int thread_model = THREAD_MODEL; /* as the check child found it */

/* Copy the embedded library into a memfd.  Done once, before nbdkit
 * forks; the child processes inherit it.  MFD_CLOEXEC keeps it out of
 * --run commands.
 */
static void
loader_load (void)
{
  size_t len = nbdkitgo_library_end - nbdkitgo_library;
  size_t done = 0, i;
  ssize_t r;

  /* Map the libraries the Go library needs and is slow to load (as
   * the plugin listed them) now, before nbdkit forks, so that the check
   * child and the serving process both inherit them instead of each
   * paying for their dlopen.  The Go library's NEEDED entries then find
   * them already loaded.  A failure here is not ours to report: loading
   * the Go library will.
   */
  for (i = 0; preload[i]; ++i)
    dlopen (preload[i], RTLD_NOW | RTLD_LOCAL);

  library_fd = memfd_create ("nbdkit-go-library", MFD_CLOEXEC);
  if (library_fd == -1)
    return;
  while (done < len) {
    r = write (library_fd, nbdkitgo_library + done, len - done);
    if (r <= 0) {
      close (library_fd);
      library_fd = -1;
      return;
    }
    done += r;
  }
}

/* Start the Go library in this process and call its load. */
static int
start_go (void)
{
  char path[64];
  void *dl;
  nbdkitgo_start_fn start;

  if (go)
    return 0;
  if (library_fd == -1) {
    nbdkit_error ("cannot copy the Go library into memory: %m");
    return -1;
  }
  snprintf (path, sizeof path, "/proc/self/fd/%d", library_fd);
  dl = dlopen (path, RTLD_NOW | RTLD_LOCAL);
  if (dl == NULL) {
    nbdkit_error ("loading the Go library: %s", dlerror ());
    return -1;
  }
  start = (nbdkitgo_start_fn) dlsym (dl, NBDKITGO_START_SYMBOL);
  if (start == NULL || (go = start (&host)) == NULL ||
      go->abi_version != NBDKITGO_ABI_VERSION) {
    nbdkit_error ("the Go library does not match this loader");
    go = NULL;
    return -1;
  }
  go->load ();
  return 0;
}

/* Give the recorded configuration to Go, in the working directory
 * nbdkit had then (it may have changed directory since).
 */
static int
configure_go (void)
{
  int here = open (".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  int r = 0;
  size_t i;

  if (config_cwd >= 0 && fchdir (config_cwd) == -1) {
    nbdkit_error ("fchdir: %m");
    r = -1;
  }
  for (i = 0; r == 0 && i < nr_config; ++i)
    r = go->config (config[i].key, config[i].value);
  if (r == 0)
    r = go->config_complete ();
#if NBDKITGO_HAS_get_ready
  if (r == 0)
    r = go->get_ready ();
#endif
  if (here >= 0) {
    if (fchdir (here) == -1 && r == 0) {
      nbdkit_error ("fchdir: %m");
      r = -1;
    }
    close (here);
  }
  return r;
}

static int
loader_config (const char *key, const char *value)
{
  struct config_item *c;

  c = realloc (config, (nr_config + 1) * sizeof *config);
  if (c == NULL) {
    nbdkit_error ("realloc: %m");
    return -1;
  }
  config = c;
  config[nr_config].key = strdup (key);
  config[nr_config].value = strdup (value);
  if (!config[nr_config].key || !config[nr_config].value) {
    nbdkit_error ("strdup: %m");
    return -1;
  }
  nr_config++;
  return 0;
}

/* Start Go, give it the configuration, and ask its thread model: what
 * config_complete needs, in the check child or in this process.
 */
static int
start_and_configure (int *tm)
{
  if (start_go () == -1 || configure_go () == -1)
    return -1;
  *tm = THREAD_MODEL;
#if NBDKITGO_HAS_thread_model
  *tm = go->thread_model ();
  if (*tm == -1)
    return -1;
#endif
  return 0;
}

/* The check child: report the thread model through the pipe: that is
 * its verdict.  Writing nothing means failure (its messages went to
 * stderr first).
 */
static void __attribute__ ((noreturn))
check_child (int fd)
{
  int tm;

  if (start_and_configure (&tm) == -1)
    _exit (EXIT_FAILURE);
  fflush (stderr);
  if (write (fd, &tm, sizeof tm) != sizeof tm)
    _exit (EXIT_FAILURE);
  _exit (EXIT_SUCCESS);
}

static _Atomic pid_t check_pid = -1;
static int configured;                 /* Go has the configuration */

/* nbdkit will not fork: configure Go here and now. */
static int
configure_in_process (void)
{
  nbdkit_debug ("nbdkit will not fork: starting Go at config_complete");
  if (start_and_configure (&thread_model) == -1)
    return -1;
  configured = 1;
  return 0;
}

static int
loader_config_complete (void)
{
  const char *why;
  int fds[2], tm, may_fork;
  ssize_t r;

  config_cwd = open (".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  may_fork = nbdkit_may_fork (&why);
  nbdkit_debug ("%s", why);
  if (!may_fork)
    return configure_in_process ();
  if (pipe2 (fds, O_CLOEXEC) == -1) {
    nbdkit_error ("pipe2: %m");
    return -1;
  }
  fflush (NULL);
  check_pid = fork ();
  if (check_pid == -1) {
    nbdkit_error ("fork: %m");
    return -1;
  }
  if (check_pid == 0) {
    close (fds[0]);
    check_child (fds[1]);
  }
  close (fds[1]);
  do
    r = read (fds[0], &tm, sizeof tm);
  while (r == -1 && errno == EINTR);
  close (fds[0]);
  if (r == sizeof tm) {
    /* Success.  The child's exit (tearing down a Go runtime) is not
     * waited for here: it overlaps with nbdkit's start-up, and
     * after_fork reaps it.
     */
    thread_model = tm;
    return 0;
  }
  while (waitpid (check_pid, NULL, 0) == -1 && errno == EINTR)
    ;
  check_pid = -1;
  return -1;                    /* the child printed why */
}

/* Reap the check child if it is ours (in daemon mode it belonged to the
 * parent that exited, and init reaps it).  Its Go runtime takes a few
 * milliseconds to tear down, which start-up should not wait for: so
 * after_fork and open only look (WNOHANG), and unload waits.
 */
static void
reap_check_child (int options)
{
  pid_t pid = atomic_exchange (&check_pid, -1), r;

  if (pid <= 0)
    return;
  do
    r = waitpid (pid, NULL, options);
  while (r == -1 && errno == EINTR);
  if (r == 0)                   /* still running: look again later */
    atomic_store (&check_pid, pid);
}

static int
loader_after_fork (void)
{
  reap_check_child (WNOHANG);
  if (!configured && (start_go () == -1 || configure_go () == -1))
    return -1;
#if NBDKITGO_HAS_after_fork
  return go->after_fork ();
#else
  return 0;
#endif
}

static void
loader_unload (void)
{
  size_t i;

  reap_check_child (0);
  if (go)
    go->unload ();
  for (i = 0; i < nr_config; ++i) {
    free (config[i].key);
    free (config[i].value);
  }
  free (config);
}

static int loader_thread_model (void) { return thread_model; }
static int loader_get_ready (void) { return 0; /* run by configure_go */ }

static void
loader_dump_plugin (void)
{
  fflush (stdout);              /* keep our lines after nbdkit's */
  if (start_go () == 0)
    go->dump_plugin ();
  fflush (stdout);
}

/* The rest forward to Go, which is running by the time nbdkit calls
 * them.
 */
static void loader_cleanup (void) { if (go) go->cleanup (); }
static int loader_preconnect (int ro) { return go->preconnect (ro); }

static int
loader_list_exports (int ro, int tls, struct nbdkit_exports *e)
{
  return go->list_exports (ro, tls, e);
}

static const char *
loader_default_export (int ro, int tls)
{
  return go->default_export (ro, tls);
}

/* nbdkit's handle: the Go handle and the connection's direct data path,
 * if the Go plugin gave one (see struct nbdkitgo_direct in abi.h).
 */
struct handle {
  uintptr_t go;
  const struct nbdkitgo_direct *direct;
};

static void *
loader_open (int ro)
{
  struct handle *h;
  uintptr_t g;

  reap_check_child (WNOHANG);
  g = go->open (ro);

  if (g == 0)
    return NULL;
  h = malloc (sizeof *h);
  if (h == NULL) {
    nbdkit_error ("malloc: %m");
    go->close (g);
    return NULL;
  }
  h->go = g;
  h->direct = go->direct (g);
  return h;
}

#define H (((struct handle *) h)->go)
#define DIRECT(name) \
  (((struct handle *) h)->direct ? ((struct handle *) h)->direct->name : NULL)
#define CTX (((struct handle *) h)->direct->ctx)

static void
loader_close (void *h)
{
  go->close (H);
  free (h);
}

/* A direct data path function's verdict: 0 or an errno (>0). */
static int
direct_result (int r, const char *op, char *msg)
{
  if (r > 0) {
    if (msg)
      nbdkit_error ("%s", msg);
    else
      nbdkit_error ("%s: %s", op, strerror (r));
    nbdkit_set_error (r);
    r = -1;
  }
  free (msg);
  return r;
}

/* Serve a data request on the connection's direct path, unless it has
 * none or passes (-1); then in Go, if the Go plugin has that callback.
 */
#define SERVE(name, direct_args, go_args)                       \
  do {                                                          \
    char *msg = NULL;                                           \
    int r;                                                      \
    if (DIRECT (name)) {                                        \
      r = DIRECT (name) direct_args;                            \
      if (r != -1)                                              \
        return direct_result (r, #name, msg);                   \
      free (msg);                                               \
    }                                                           \
    if (NBDKITGO_GO_##name)                                     \
      return go->name go_args;                                  \
    return direct_result (EIO, #name,                           \
                          strdup (#name ": no data path"));     \
  } while (0)

static const char *loader_export_description (void *h) { return go->export_description (H); }
static int64_t loader_get_size (void *h) { return go->get_size (H); }

static int
loader_block_size (void *h, uint32_t *mn, uint32_t *pr, uint32_t *mx)
{
  return go->block_size (H, mn, pr, mx);
}

static int loader_can_write (void *h) { return go->can_write (H); }
static int loader_can_flush (void *h) { return go->can_flush (H); }
static int loader_is_rotational (void *h) { return go->is_rotational (H); }
static int loader_can_trim (void *h) { return go->can_trim (H); }
static int loader_can_zero (void *h) { return go->can_zero (H); }
static int loader_can_fast_zero (void *h) { return go->can_fast_zero (H); }
static int loader_can_extents (void *h) { return go->can_extents (H); }
static int loader_can_fua (void *h) { return go->can_fua (H); }
static int loader_can_multi_conn (void *h) { return go->can_multi_conn (H); }
static int loader_can_cache (void *h) { return go->can_cache (H); }

/* Data requests: the direct path first, if any, then Go. */

static int
loader_pread (void *h, void *buf, uint32_t count, uint64_t offset,
              uint32_t flags)
{
  SERVE (pread, (CTX, buf, count, offset, flags, &msg),
         (H, buf, count, offset, flags));
}

static int
loader_pwrite (void *h, const void *buf, uint32_t count, uint64_t offset,
               uint32_t flags)
{
  SERVE (pwrite, (CTX, buf, count, offset, flags, &msg),
         (H, buf, count, offset, flags));
}

static int
loader_flush (void *h, uint32_t flags)
{
  SERVE (flush, (CTX, flags, &msg), (H, flags));
}

static int
loader_trim (void *h, uint32_t count, uint64_t offset, uint32_t flags)
{
  SERVE (trim, (CTX, count, offset, flags, &msg), (H, count, offset, flags));
}

static int
loader_zero (void *h, uint32_t count, uint64_t offset, uint32_t flags)
{
  SERVE (zero, (CTX, count, offset, flags, &msg), (H, count, offset, flags));
}

static int
loader_extents (void *h, uint32_t count, uint64_t offset, uint32_t flags,
                struct nbdkit_extents *e)
{
  SERVE (extents, (CTX, count, offset, flags, e, &msg),
         (H, count, offset, flags, e));
}

static int
loader_cache (void *h, uint32_t count, uint64_t offset, uint32_t flags)
{
  SERVE (cache, (CTX, count, offset, flags, &msg), (H, count, offset, flags));
}
#undef H
#undef DIRECT
#undef CTX

/* IF(name) gives loader_name when the Go plugin implements name. */
#define IF(name) (NBDKITGO_HAS_##name ? loader_##name : NULL)

static struct nbdkit_plugin plugin = {
  .name = NBDKITGO_NAME,
  .longname = NBDKITGO_LONGNAME,
  .version = NBDKITGO_VERSION,
  .description = NBDKITGO_DESCRIPTION,
  .config_help = NBDKITGO_CONFIG_HELP,
  .magic_config_key = NBDKITGO_MAGIC_CONFIG_KEY,
  .load = loader_load,
  .unload = loader_unload,
  .config = loader_config,
  .config_complete = loader_config_complete,
  .after_fork = loader_after_fork,
  .thread_model = IF (thread_model),
  .get_ready = IF (get_ready),
  .dump_plugin = IF (dump_plugin),
  .cleanup = IF (cleanup),
  .preconnect = IF (preconnect),
  .list_exports = IF (list_exports),
  .default_export = IF (default_export),
  .open = IF (open),
  .close = IF (close),
  .export_description = IF (export_description),
  .get_size = IF (get_size),
  .block_size = IF (block_size),
  .can_write = IF (can_write),
  .can_flush = IF (can_flush),
  .is_rotational = IF (is_rotational),
  .can_trim = IF (can_trim),
  .can_zero = IF (can_zero),
  .can_fast_zero = IF (can_fast_zero),
  .can_extents = IF (can_extents),
  .can_fua = IF (can_fua),
  .can_multi_conn = IF (can_multi_conn),
  .can_cache = IF (can_cache),
  .pread = IF (pread),
  .pwrite = IF (pwrite),
  .flush = IF (flush),
  .trim = IF (trim),
  .zero = IF (zero),
  .extents = IF (extents),
  .cache = IF (cache),
  .errno_is_preserved = 0,      /* Go sets errors with nbdkit_set_error */
};

NBDKIT_REGISTER_PLUGIN (plugin)
