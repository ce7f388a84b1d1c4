/* SPDX-License-Identifier: BSD-3-Clause
 *
 * A stress test of the command engine (plugin/datapath/engine.c), meant to be
 * built with -fsanitize=thread (make check-engine).  It starts real
 * nbdkit servers on Unix sockets in a temporary directory and runs:
 *
 *  1. mixed:    many threads, mixed commands on one handle, each thread
 *               verifying what it reads back from its own region; the
 *               server delays every request and fails some with EIO
 *               (the error filter): those must be ENGINE_ERROR/EIO and
 *               the connection must stay up;
 *  2. kill:     SIGKILL the server while threads run: every command
 *               ends promptly, CONN_FAILED once the server is gone, the
 *               commands it had are in doubt (ENGINE_IN_DOUBT), later
 *               ones not sent (ENGINE_NOT_DONE), the engine is dead and
 *               engine_close is quick;
 *  3. timeout:  a server slower than timeout_ms: every command fails,
 *               timed_out, EIO, in doubt, within the bound; later ones
 *               are not sent;
 *  4. shutdown: SIGTERM the server while threads run: nbdkit answers
 *               NBD_ESHUTDOWN and closes; the engine says goodbye
 *               (NBD_CMD_DISC), and no command is left in doubt;
 *  5. close:    engine_close with the server stopped (SIGSTOP) returns
 *               within its bound;
 *  6. race:     a timeout ends the connection while replies still stream
 *               in, with the gap between the engine's marking it ended
 *               and its shutting the socket down widened (shutdown() is
 *               interposed, below): every read that succeeds holds what
 *               the disk holds, and none fails before the shutdown.  A
 *               regression test of issue 18, defect 4: the engine at
 *               d21d603 took writes that the server failed in that gap
 *               for a failed connection, and the data path then read the
 *               socket from under libnbd (engine_server_closed), shifting
 *               its stream: reads succeeded with the wrong bytes, or
 *               libnbd failed the connection on a garbled reply.
 *
 * Every loop is bounded in count and time, and alarm() fails a run that
 * hangs.  The exit status is non-zero if any check failed.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <libnbd.h>

#include "engine.h"

#define WATCHDOG_S 170          /* the whole run; make check-engine */
#define DISK_SIZE (64 << 20)
#define BLOCK 4096

static atomic_long nr_commands, nr_passed, nr_failed;
static char tmpdir[] = "/tmp/engine-stress.XXXXXX";
static const char *scenario = "setup";
/* What a bound in time allows beyond its value: the machine may be
 * loaded (shared CI runners, TSan's slowdown).  ENGINE_STRESS_SLACK_MS.
 */
static int64_t slack_ms = 2000;

#define CHECK(cond, ...) check ((cond), __FILE__, __LINE__, __VA_ARGS__)

static int
check (int ok, const char *file, int line, const char *fmt, ...)
{
  va_list ap;

  if (ok) {
    atomic_fetch_add (&nr_passed, 1);
    return 1;
  }
  atomic_fetch_add (&nr_failed, 1);
  flockfile (stderr);
  fprintf (stderr, "FAIL [%s] %s:%d: ", scenario, file, line);
  va_start (ap, fmt);
  vfprintf (stderr, fmt, ap);
  va_end (ap);
  fputc ('\n', stderr);
  funlockfile (stderr);
  return 0;
}

static void
die (const char *fmt, ...)
{
  va_list ap;

  fprintf (stderr, "engine stress: fatal [%s]: ", scenario);
  va_start (ap, fmt);
  vfprintf (stderr, fmt, ap);
  va_end (ap);
  fputc ('\n', stderr);
  exit (1);
}

static void
on_alarm (int sig)
{
  static const char msg[] = "engine stress: FAIL: watchdog: the run hangs\n";

  (void) sig;
  if (write (2, msg, sizeof msg - 1) == -1) { /* nothing to do */ }
  _exit (2);                    /* the servers die with us (PDEATHSIG) */
}

static void
sleep_ms (int ms)
{
  struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

  while (nanosleep (&ts, &ts) == -1 && errno == EINTR)
    ;
}

/* shutdown(), interposed for the race scenario: the engine ends a
 * connection by marking it ended and then shutting its socket down, and
 * the first shutdown once race_widen is armed sleeps RACE_WIDEN_MS first,
 * which widens the gap between the two from a few instructions to one
 * that every round hits.  Any other call goes straight through.
 * race_window: 0 before that sleep, 1 during it, 2 after (set before the
 * real shutdown, so that a failure it causes is seen as after).
 */
#define RACE_WIDEN_MS 200

static int (*real_shutdown) (int, int); /* set in main, before threads */
static atomic_int race_widen, race_window;

int
shutdown (int fd, int how)
{
  if (atomic_exchange (&race_widen, 0)) {
    atomic_store (&race_window, 1);
    sleep_ms (RACE_WIDEN_MS);
    atomic_store (&race_window, 2);
  }
  return real_shutdown (fd, how);
}

/* Commands that succeeded in the running scenario: the servers are
 * killed or signalled once the threads are seen at work, not after a
 * guessed pause.
 */
static _Atomic long progress;

static void
wait_progress (long n)
{
  while (atomic_load (&progress) < n)
    sleep_ms (2);               /* the watchdog bounds this */
}

/* Wait until pid is stopped (SIGSTOP has taken effect). */
static void
wait_stopped (pid_t pid)
{
  char path[64], stat[256], *p;
  FILE *f;

  snprintf (path, sizeof path, "/proc/%d/stat", (int) pid);
  for (;;) {
    f = fopen (path, "r");
    if (f == NULL)
      die ("%s: %m", path);
    p = fgets (stat, sizeof stat, f) ? strrchr (stat, ')') : NULL;
    fclose (f);
    if (p && (p[2] == 'T' || p[2] == 't'))
      return;
    sleep_ms (2);
  }
}

static uint64_t
rnd (uint64_t *s)               /* xorshift64* */
{
  *s ^= *s >> 12;
  *s ^= *s << 25;
  *s ^= *s >> 27;
  return *s * 2685821657736338717ULL;
}

/* Servers */

struct server {
  pid_t pid;
  char sock[256];
};

/* Start nbdkit -f -U SOCK ARGS... and wait until it accepts a handle;
 * the connected handle is returned (NULL: it was not wanted).
 */
static void
server_start (struct server *s, const char *name, const char *const *args)
{
  const char *argv[32];
  int i, n = 0;

  snprintf (s->sock, sizeof s->sock, "%s/%s.sock", tmpdir, name);
  unlink (s->sock);
  argv[n++] = "nbdkit";
  argv[n++] = "-f";
  argv[n++] = "-U";
  argv[n++] = s->sock;
  for (i = 0; args[i] && n < 31; ++i)
    argv[n++] = args[i];
  argv[n] = NULL;
  fflush (NULL);
  s->pid = fork ();
  if (s->pid == -1)
    die ("fork: %m");
  if (s->pid == 0) {
    /* Its messages (injected errors, aborted delays) go to a log. */
    char log[300];
    int fd;

    snprintf (log, sizeof log, "%s/%s.log", tmpdir, name);
    fd = open (log, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0)
      dup2 (fd, 2);
    prctl (PR_SET_PDEATHSIG, SIGKILL);
    execvp ("nbdkit", (char **) argv);
    _exit (127);
  }
}

static struct nbd_handle *
server_connect (struct server *s)
{
  int64_t end = engine_now_ms () + 15000;
  struct nbd_handle *h;
  int status;

  for (;;) {
    if (waitpid (s->pid, &status, WNOHANG) == s->pid)
      die ("nbdkit (%s) exited with status 0x%x", s->sock, status);
    h = nbd_create ();
    if (h == NULL)
      die ("nbd_create: %s", nbd_get_error ());
    if (nbd_add_meta_context (h, LIBNBD_CONTEXT_BASE_ALLOCATION) == -1)
      die ("nbd_add_meta_context: %s", nbd_get_error ());
    if (access (s->sock, F_OK) == 0 && nbd_connect_unix (h, s->sock) == 0)
      return h;
    nbd_close (h);
    if (engine_now_ms () > end)
      die ("cannot connect to nbdkit on %s", s->sock);
    sleep_ms (20);
  }
}

static void
server_stop (struct server *s, int sig)
{
  int status;

  if (s->pid <= 0)
    return;
  kill (s->pid, sig);
  kill (s->pid, SIGCONT);
  if (waitpid (s->pid, &status, 0) != s->pid)
    die ("waitpid: %m");
  s->pid = 0;
  unlink (s->sock);
}

static struct engine *
new_engine (struct nbd_handle *h, int64_t timeout_ms)
{
  struct engine *e = engine_new (h, timeout_ms);

  if (e == NULL)
    die ("engine_new: %m");
  return e;
}

/* Close an engine whose connection is dead: that is quick. */
static void
close_dead (struct engine *e)
{
  int64_t t0 = engine_now_ms ();

  engine_close (e);
  CHECK (engine_now_ms () - t0 < 100 + slack_ms,
         "engine_close of a dead connection took %" PRId64 " ms",
         engine_now_ms () - t0);
}

/* Run one command, counted; the result's message is freed here. */
static int
run (struct engine *e, struct engine_request *req, struct engine_result *res)
{
  atomic_fetch_add (&nr_commands, 1);
  engine_command (e, req, res);
  free (res->msg);
  res->msg = NULL;
  return res->outcome;
}

static const char *
outcome_name (int o)
{
  return o == ENGINE_OK ? "OK" : o == ENGINE_ERROR ? "ERROR" :
    o == ENGINE_CONN_FAILED ? "CONN_FAILED" : "?";
}

static const char *
op_name (int op)
{
  static const char *names[] = { "pread", "pwrite", "zero", "trim", "flush",
                                 "cache", "block_status" };
  return op >= 0 && op <= ENGINE_BLOCK_STATUS ? names[op] : "?";
}

/* Scenario 1: mixed commands on a server with delays and errors. */

#define MIX_THREADS 24
#define MIX_OPS 1500
#define MIX_SECONDS 60          /* each thread stops early after this */

struct caps { int trim, zero, flush, cache, fua; };

struct mix_thread {
  pthread_t tid;
  int idx;
  struct engine *e;
  struct caps caps;
  uint64_t base, size;          /* its region */
  unsigned char *shadow;        /* what the region holds */
  unsigned char *valid;         /* per block: shadow is known */
  long errors_eio, ops;
};

static void
mix_invalidate (struct mix_thread *t, uint64_t off, uint64_t len)
{
  uint64_t b;

  for (b = off / BLOCK; b < (off + len + BLOCK - 1) / BLOCK; ++b)
    t->valid[b] = 0;
}

/* After a modifying command: a success sets the shadow, a failure makes
 * the range unknown (the server may or may not have applied it).
 */
static void
mix_written (struct mix_thread *t, int ok, uint64_t off, uint64_t len,
             const void *data)
{
  uint64_t b;

  if (!ok || data == NULL) {
    mix_invalidate (t, off, len);
    return;
  }
  memcpy (t->shadow + off, data, len);
  /* Only whole blocks become known: a partial block keeps its state,
   * and its known part is now right too.
   */
  for (b = off / BLOCK; b < (off + len + BLOCK - 1) / BLOCK; ++b)
    if (b * BLOCK >= off && (b + 1) * BLOCK <= off + len)
      t->valid[b] = 1;
}

static void
mix_verify (struct mix_thread *t, const unsigned char *buf, uint64_t off,
            uint64_t len)
{
  uint64_t b, lo, hi;

  for (b = off / BLOCK; b < (off + len + BLOCK - 1) / BLOCK; ++b) {
    if (!t->valid[b])
      continue;
    lo = b * BLOCK > off ? b * BLOCK : off;
    hi = (b + 1) * BLOCK < off + len ? (b + 1) * BLOCK : off + len;
    if (!CHECK (memcmp (buf + (lo - off), t->shadow + lo, hi - lo) == 0,
                "thread %d: read back wrong data at region offset %" PRIu64
                " (block %" PRIu64 ")", t->idx, lo, b))
      return;
  }
  atomic_fetch_add (&nr_passed, 1);
}

/* Whether a capability the server lacks explains a refusal. */
static int
mix_unsupported (struct mix_thread *t, int op)
{
  switch (op) {
  case ENGINE_TRIM: return !t->caps.trim;
  case ENGINE_ZERO: return !t->caps.zero;
  case ENGINE_FLUSH: return !t->caps.flush;
  case ENGINE_CACHE: return !t->caps.cache;
  default: return 0;
  }
}

static void *
mix_run (void *arg)
{
  struct mix_thread *t = arg;
  uint64_t seed = 0x9e3779b97f4a7c15ULL * (t->idx + 1);
  int64_t stop = engine_now_ms () + MIX_SECONDS * 1000;
  unsigned char *buf = malloc (1 << 20);
  struct engine_request req;
  struct engine_result res;
  uint64_t off, len, i, r;
  int op, ok;

  if (buf == NULL)
    die ("malloc");
  for (t->ops = 0; t->ops < MIX_OPS && engine_now_ms () < stop; ++t->ops) {
    r = rnd (&seed) % 100;
    op = r < 30 ? ENGINE_PWRITE : r < 60 ? ENGINE_PREAD : r < 68 ?
      ENGINE_ZERO : r < 75 ? ENGINE_TRIM : r < 80 ? ENGINE_FLUSH : r < 86 ?
      ENGINE_CACHE : ENGINE_BLOCK_STATUS;
    /* Mostly small, sometimes unaligned, a few 1 MiB (more than a Unix
     * socket buffer: libnbd sends those in pieces).
     */
    r = rnd (&seed) % 100;
    len = r < 3 ? (1 << 20) : r < 20 ? 512 + rnd (&seed) % 70000 :
      BLOCK * (1 + rnd (&seed) % 16);
    if (len > t->size)
      len = t->size;
    off = rnd (&seed) % (t->size - len + 1);
    if (rnd (&seed) % 2)
      off &= ~(uint64_t) (BLOCK - 1);
    memset (&req, 0, sizeof req);
    req.op = op;
    req.count = len;
    req.offset = t->base + off;
    switch (op) {
    case ENGINE_PWRITE:
      for (i = 0; i < len; i += 8) {
        uint64_t v = rnd (&seed);
        memcpy (buf + i, &v, len - i < 8 ? len - i : 8);
      }
      req.buf = buf;
      if (t->caps.fua && rnd (&seed) % 8 == 0)
        req.flags = LIBNBD_CMD_FLAG_FUA;
      break;
    case ENGINE_PREAD:
      memset (buf, 0xa5, len);
      req.buf = buf;
      break;
    case ENGINE_FLUSH:
      req.count = req.offset = 0;
      break;
    case ENGINE_BLOCK_STATUS:
      req.context = LIBNBD_CONTEXT_BASE_ALLOCATION;
      break;
    }

    run (t->e, &req, &res);
    ok = res.outcome == ENGINE_OK;
    if (res.outcome == ENGINE_ERROR && res.errnum == EIO)
      t->errors_eio++;
    if (!ok) {
      /* The error filter's EIO, or libnbd refusing a command the server
       * does not support (EINVAL); never a failed connection.
       */
      CHECK (res.outcome == ENGINE_ERROR &&
             (res.errnum == EIO ||
              (res.errnum == EINVAL && mix_unsupported (t, op))),
             "thread %d: %s: %s errnum %d (%s) on a healthy connection",
             t->idx, op_name (op), outcome_name (res.outcome), res.errnum,
             strerror (res.errnum));
      CHECK (!res.timed_out, "thread %d: %s: timed_out", t->idx,
             op_name (op));
    }
    else
      CHECK (mix_unsupported (t, op) == 0,
             "thread %d: %s succeeded but the server does not support it",
             t->idx, op_name (op));

    switch (op) {
    case ENGINE_PWRITE: mix_written (t, ok, off, len, buf); break;
    case ENGINE_ZERO:
      memset (buf, 0, len);
      mix_written (t, ok, off, len, buf);
      break;
    case ENGINE_TRIM: mix_invalidate (t, off, len); break; /* unspecified */
    case ENGINE_PREAD:
      if (ok)
        mix_verify (t, buf, off, len);
      break;
    case ENGINE_BLOCK_STATUS:
      if (ok) {
        uint64_t sum = 0;
        size_t j;

        for (j = 0; j + 1 < req.nr_entries; j += 2)
          sum += req.entries[j];
        CHECK (req.nr_entries >= 2 && req.nr_entries % 2 == 0 &&
               req.entries[0] > 0 && sum > 0,
               "thread %d: block status: %zu entries, %" PRIu64 " bytes",
               t->idx, req.nr_entries, sum);
      }
      free (req.entries);
      break;
    }
  }
  free (buf);
  return NULL;
}

static void
scenario_mixed (void)
{
  static const char *const args[] = {
    "--filter=error", "--filter=delay", "memory", "64M",
    "rdelay=1ms", "wdelay=1ms", "delay-extents=1ms", "delay-cache=1ms",
    "error=EIO", "error-rate=1%", NULL
  };
  struct mix_thread t[MIX_THREADS];
  struct server s;
  struct nbd_handle *h;
  struct engine *e;
  struct caps caps;
  uint64_t size = (DISK_SIZE / MIX_THREADS) & ~(uint64_t) (BLOCK - 1);
  long eio = 0, ops = 0;
  int i;

  scenario = "mixed";
  server_start (&s, "mixed", args);
  h = server_connect (&s);
  caps.trim = nbd_can_trim (h) == 1;
  caps.zero = nbd_can_zero (h) == 1;
  caps.flush = nbd_can_flush (h) == 1;
  caps.cache = nbd_can_cache (h) == 1;
  caps.fua = nbd_can_fua (h) == 1;
  CHECK (nbd_can_meta_context (h, LIBNBD_CONTEXT_BASE_ALLOCATION) == 1,
         "the server does not offer base:allocation");
  e = new_engine (h, 0);
  for (i = 0; i < MIX_THREADS; ++i) {
    t[i] = (struct mix_thread) {
      .idx = i, .e = e, .caps = caps, .base = i * size, .size = size,
      .shadow = calloc (1, size), .valid = calloc (1, size / BLOCK),
    };
    if (!t[i].shadow || !t[i].valid)
      die ("calloc");
    /* The memory plugin starts out zero. */
    memset (t[i].valid, 1, size / BLOCK);
    if (pthread_create (&t[i].tid, NULL, mix_run, &t[i]) != 0)
      die ("pthread_create");
  }
  for (i = 0; i < MIX_THREADS; ++i) {
    pthread_join (t[i].tid, NULL);
    eio += t[i].errors_eio;
    ops += t[i].ops;
    free (t[i].shadow);
    free (t[i].valid);
  }
  CHECK (eio > 0, "no command met the error filter's EIO in %ld commands",
         ops);
  CHECK (engine_is_dead (e) == 0, "the connection died");
  engine_close (e);
  server_stop (&s, SIGTERM);
  printf ("  mixed: %d threads, %ld commands, %ld server EIO\n",
          MIX_THREADS, ops, eio);
}

/* Scenario 2: SIGKILL the server while threads run. */

#define KILL_THREADS 16
#define KILL_PROMPT_MS (500 + slack_ms) /* a command ends this soon after death */

static atomic_int server_gone;  /* the server has been killed and reaped */
static _Atomic int64_t gone_ms;

struct kill_thread {
  pthread_t tid;
  int idx;
  struct engine *e;
  long ops_before, ops_ok_after_failed, in_doubt;
  int saw_failure;
};

static void *
kill_run (void *arg)
{
  struct kill_thread *t = arg;
  uint64_t seed = 0x51ed27a3ULL * (t->idx + 1);
  uint64_t region = DISK_SIZE / KILL_THREADS;
  unsigned char *buf = calloc (1, 1 << 20);
  int64_t stop = engine_now_ms () + 20000, start, end;
  struct engine_request req;
  struct engine_result res;
  int after = 0, gone, known_dead, op;

  if (buf == NULL)
    die ("calloc");
  /* Until the connection fails, then 3 more commands; bounded. */
  for (long n = 0; n < 200000 && after < 4 && engine_now_ms () < stop; ++n) {
    op = rnd (&seed) % 3 == 0 ? ENGINE_PWRITE :
      rnd (&seed) % 5 == 0 ? ENGINE_FLUSH : ENGINE_PREAD;
    memset (&req, 0, sizeof req);
    req.op = op;
    req.buf = buf;
    req.count = rnd (&seed) % 16 == 0 ? (1 << 20) : BLOCK;
    req.offset = t->idx * region + (rnd (&seed) % 8) * BLOCK;
    if (op == ENGINE_FLUSH)
      req.count = req.offset = 0;
    gone = atomic_load (&server_gone);
    known_dead = engine_is_dead (t->e);
    start = engine_now_ms ();
    run (t->e, &req, &res);
    end = engine_now_ms ();

    if (gone) {
      CHECK (res.outcome == ENGINE_CONN_FAILED,
             "thread %d: %s started after the server died ended %s",
             t->idx, op_name (op), outcome_name (res.outcome));
    }
    /* Once the engine knows, nothing is sent.  (Before, a command may
     * be sent to a socket whose server is gone: then it is in doubt.)
     */
    if (known_dead) {
      CHECK (res.outcome == ENGINE_CONN_FAILED &&
             res.doubt == ENGINE_NOT_DONE,
             "thread %d: %s started on a dead connection ended %s, "
             "doubt %d", t->idx, op_name (op), outcome_name (res.outcome),
             res.doubt);
    }
    if (res.outcome == ENGINE_CONN_FAILED && res.doubt == ENGINE_IN_DOUBT)
      t->in_doubt++;
    if (res.outcome == ENGINE_CONN_FAILED) {
      int64_t g = atomic_load (&gone_ms);

      t->saw_failure = 1;
      after++;
      CHECK (!res.timed_out, "thread %d: timed_out without a timeout",
             t->idx);
      CHECK (res.errnum != 0, "thread %d: CONN_FAILED with errnum 0", t->idx);
      /* Once dead, no command waits: it ends soon after the later of
       * its start and the death.
       */
      CHECK (end - (g > start ? g : start) <= KILL_PROMPT_MS,
             "thread %d: %s took %" PRId64 " ms to fail", t->idx,
             op_name (op), end - (g > start ? g : start));
    }
    else {
      CHECK (res.outcome == ENGINE_OK,
             "thread %d: %s ended %s errnum %d", t->idx, op_name (op),
             outcome_name (res.outcome), res.errnum);
      if (after)
        t->ops_ok_after_failed++;
      else
        t->ops_before++;
      atomic_fetch_add (&progress, 1);
    }
  }
  CHECK (t->saw_failure, "thread %d never saw the connection fail", t->idx);
  CHECK (t->ops_ok_after_failed == 0,
         "thread %d: %ld commands succeeded after one saw CONN_FAILED",
         t->idx, t->ops_ok_after_failed);
  free (buf);
  return NULL;
}

static void
scenario_kill (int round)
{
  static const char *const args[] = {
    "--filter=delay", "memory", "64M", "rdelay=2ms", "wdelay=2ms", NULL
  };
  struct kill_thread t[KILL_THREADS];
  struct server s;
  struct engine *e;
  long before = 0, in_doubt = 0;
  int i, status;

  scenario = "kill";
  atomic_store (&progress, 0);
  atomic_store (&server_gone, 0);
  atomic_store (&gone_ms, 0);
  server_start (&s, "kill", args);
  e = new_engine (server_connect (&s), 0);
  for (i = 0; i < KILL_THREADS; ++i) {
    t[i] = (struct kill_thread) { .idx = i, .e = e };
    if (pthread_create (&t[i].tid, NULL, kill_run, &t[i]) != 0)
      die ("pthread_create");
  }
  wait_progress (300 + 100 * round);
  kill (s.pid, SIGKILL);
  if (waitpid (s.pid, &status, 0) != s.pid)
    die ("waitpid: %m");
  s.pid = 0;
  atomic_store (&gone_ms, engine_now_ms ());
  atomic_store (&server_gone, 1);
  for (i = 0; i < KILL_THREADS; ++i) {
    pthread_join (t[i].tid, NULL);
    before += t[i].ops_before;
    in_doubt += t[i].in_doubt;
  }
  CHECK (before > 0, "no command succeeded before the kill");
  /* 16 threads keep a command each in flight on a server that delays
   * every one: some were in flight when it died, and nothing said they
   * were not carried out.
   */
  CHECK (in_doubt > 0, "no command was in doubt after the kill");
  CHECK (engine_is_dead (e) == 1, "engine_is_dead is not 1 after the kill");
  close_dead (e);
  unlink (s.sock);
  printf ("  kill #%d: %d threads, %ld commands succeeded before the kill\n",
          round, KILL_THREADS, before);
}

/* Scenario 3: timeouts. */

#define TO_THREADS 12
#define TIMEOUT_MS 200

struct to_thread {
  pthread_t tid;
  int idx;
  struct engine *e;
  pthread_barrier_t *barrier;
  _Atomic int64_t *go_ms;       /* when the first thread started */
  int64_t bound_ms;             /* each command ends within this */
};

static void *
to_run (void *arg)
{
  struct to_thread *t = arg;
  unsigned char buf[BLOCK];
  struct engine_request req = {
    .op = ENGINE_PREAD, .buf = buf, .count = sizeof buf,
    .offset = t->idx * (uint64_t) BLOCK,
  };
  struct engine_result res;
  int64_t start, took, first = 0;

  memset (buf, 0xa5, sizeof buf);
  pthread_barrier_wait (t->barrier);
  start = engine_now_ms ();
  atomic_compare_exchange_strong (t->go_ms, &first, start);
  run (t->e, &req, &res);
  took = engine_now_ms () - start;
  if (res.outcome == ENGINE_CONN_FAILED && res.doubt == ENGINE_NOT_DONE &&
      start - atomic_load (t->go_ms) >= TIMEOUT_MS - 5) {
    /* The machine held this thread back past the others' deadline:
     * refused, rightly; nothing to check about timing.
     */
    CHECK (res.timed_out == 1, "thread %d: refused, not timed out", t->idx);
    return NULL;
  }
  CHECK (took <= t->bound_ms, "thread %d: the read took %" PRId64
         " ms, bound %" PRId64, t->idx, took, t->bound_ms);
  CHECK (res.outcome == ENGINE_CONN_FAILED && res.timed_out == 1 &&
         res.errnum == EIO && res.doubt == ENGINE_IN_DOUBT,
         "thread %d: ended %s timed_out %d errnum %d doubt %d, want "
         "CONN_FAILED, timed out, EIO, in doubt", t->idx,
         outcome_name (res.outcome), res.timed_out, res.errnum, res.doubt);
  /* The first command's deadline ends the connection for all. */
  CHECK (engine_now_ms () - atomic_load (t->go_ms) >= TIMEOUT_MS - 20,
         "thread %d: failed %" PRId64 " ms after the first command began, "
         "before the timeout", t->idx,
         engine_now_ms () - atomic_load (t->go_ms));
  /* Nothing is sent after the end. */
  start = engine_now_ms ();
  run (t->e, &req, &res);
  CHECK (res.outcome == ENGINE_CONN_FAILED && res.doubt == ENGINE_NOT_DONE,
         "thread %d: a command after the end ended %s doubt %d",
         t->idx, outcome_name (res.outcome), res.doubt);
  CHECK (engine_now_ms () - start < 100 + slack_ms,
         "thread %d: a command after the end took %" PRId64 " ms",
         t->idx, engine_now_ms () - start);
  return NULL;
}

/* args: the server. */
static void
scenario_timeout (const char *name, const char *const *args)
{
  struct to_thread t[TO_THREADS];
  pthread_barrier_t barrier;
  _Atomic int64_t go_ms = 0;
  struct server s;
  struct engine *e;
  int i;

  scenario = name;
  server_start (&s, name, args);
  e = new_engine (server_connect (&s), TIMEOUT_MS);
  pthread_barrier_init (&barrier, NULL, TO_THREADS);
  for (i = 0; i < TO_THREADS; ++i) {
    t[i] = (struct to_thread) {
      .idx = i, .e = e, .barrier = &barrier, .go_ms = &go_ms,
      .bound_ms = TIMEOUT_MS + slack_ms,
    };
    if (pthread_create (&t[i].tid, NULL, to_run, &t[i]) != 0)
      die ("pthread_create");
  }
  for (i = 0; i < TO_THREADS; ++i)
    pthread_join (t[i].tid, NULL);
  pthread_barrier_destroy (&barrier);
  CHECK (engine_is_dead (e) == 1, "engine_is_dead is not 1 after a timeout");
  close_dead (e);
  server_stop (&s, SIGKILL);
  printf ("  %s: %d threads\n", name, TO_THREADS);
}

/* Scenario 4: SIGTERM the server while threads run.  Fewer threads than
 * nbdkit's 16 per connection, so that some of its threads wait to read
 * and answer what comes after the signal with NBD_ESHUTDOWN.
 */

#define SHUT_THREADS 8

struct shut_thread {
  pthread_t tid;
  int idx;
  struct engine *e;
  long ok, shutdown, not_done, in_doubt;
};

static void *
shut_run (void *arg)
{
  struct shut_thread *t = arg;
  unsigned char buf[BLOCK];
  struct engine_request req;
  struct engine_result res;
  int64_t stop = engine_now_ms () + 20000;

  memset (buf, t->idx, sizeof buf);
  while (engine_now_ms () < stop) {
    req = (struct engine_request) {
      .op = t->ok % 2 ? ENGINE_PWRITE : ENGINE_PREAD, .buf = buf,
      .count = BLOCK, .offset = t->idx * (uint64_t) BLOCK,
    };
    run (t->e, &req, &res);
    if (res.outcome == ENGINE_OK) {
      t->ok++;
      atomic_fetch_add (&progress, 1);
      continue;
    }
    CHECK (res.outcome == ENGINE_CONN_FAILED,
           "thread %d: %s ended %s errnum %d", t->idx, op_name (req.op),
           outcome_name (res.outcome), res.errnum);
    if (res.errnum == ESHUTDOWN)
      t->shutdown++;
    if (res.doubt == ENGINE_IN_DOUBT)
      t->in_doubt++;
    else
      t->not_done++;
    if (!engine_is_dead (t->e))
      continue;
    /* Dead: every later command is refused at once. */
    run (t->e, &req, &res);
    CHECK (res.outcome == ENGINE_CONN_FAILED && res.doubt == ENGINE_NOT_DONE,
           "thread %d: after the end a command ended %s doubt %d", t->idx,
           outcome_name (res.outcome), res.doubt);
    break;
  }
  return NULL;
}

static void
scenario_shutdown (void)
{
  static const char *const args[] = {
    "--filter=delay", "memory", "64M", "rdelay=2ms", "wdelay=2ms", NULL
  };
  struct shut_thread t[SHUT_THREADS];
  struct server s;
  struct engine *e;
  long ok = 0, shutdown = 0, in_doubt = 0;
  int i, status;

  scenario = "shutdown";
  atomic_store (&progress, 0);
  server_start (&s, "shutdown", args);
  e = new_engine (server_connect (&s), 0);
  for (i = 0; i < SHUT_THREADS; ++i) {
    t[i] = (struct shut_thread) { .idx = i, .e = e };
    if (pthread_create (&t[i].tid, NULL, shut_run, &t[i]) != 0)
      die ("pthread_create");
  }
  wait_progress (300);
  kill (s.pid, SIGTERM);
  if (waitpid (s.pid, &status, 0) != s.pid)
    die ("waitpid: %m");
  s.pid = 0;
  for (i = 0; i < SHUT_THREADS; ++i) {
    pthread_join (t[i].tid, NULL);
    ok += t[i].ok;
    shutdown += t[i].shutdown;
    in_doubt += t[i].in_doubt;
  }
  CHECK (ok > 0, "no command succeeded before the signal");
  CHECK (shutdown > 0, "no command was answered NBD_ESHUTDOWN");
  CHECK (in_doubt == 0, "%ld commands were left in doubt by a server "
         "that announced its shutdown and closed", in_doubt);
  CHECK (engine_is_dead (e) == 1, "engine_is_dead is not 1 after shutdown");
  close_dead (e);
  unlink (s.sock);
  printf ("  shutdown: %d threads, %ld commands, %ld answered NBD_ESHUTDOWN\n",
          SHUT_THREADS, ok, shutdown);
}

/* Scenario 5: engine_close with the server stopped. */
static void
scenario_close (void)
{
  static const char *const args[] = { "memory", "64M", NULL };
  unsigned char buf[BLOCK] = { 0 };
  struct engine_request req = {
    .op = ENGINE_PWRITE, .buf = buf, .count = sizeof buf,
  };
  struct engine_result res;
  struct server s;
  struct engine *e;
  int64_t t0, took;

  scenario = "close";
  server_start (&s, "close", args);
  e = new_engine (server_connect (&s), 300);
  CHECK (run (e, &req, &res) == ENGINE_OK, "a write ended %s",
         outcome_name (res.outcome));
  kill (s.pid, SIGSTOP);
  wait_stopped (s.pid);
  t0 = engine_now_ms ();
  engine_close (e);
  took = engine_now_ms () - t0;
  CHECK (took >= 250 && took <= 300 + slack_ms,
         "engine_close (300) with the server stopped took %" PRId64 " ms",
         took);
  server_stop (&s, SIGTERM);    /* also resumes it */
  printf ("  close: engine_close (300) with the server stopped: %" PRId64
          " ms\n", took);
}

/* Scenario 6: the connection ended while replies stream in.
 *
 * The server (the pattern plugin, made writable by the cow filter: each
 * 8-byte word of the disk holds its offset) answers reads at once, fails
 * every write with EIO, and holds block status for 5 s.  Readers stream
 * 1 MiB reads, writers get their EIO, and the stallers' block status
 * times out, which ends the connection: the engine marks it ended, then
 * shuts the socket down, and shutdown() sleeps in between (RACE_WIDEN_MS)
 * while the leader goes on reading the replies already on their way.
 * Every read that succeeds must hold what the disk holds, and no read may
 * fail before the socket is shut down: until then the connection is
 * whole, and libnbd alone reads it.
 *
 * d21d603's engine said a write the server failed in that window ended
 * CONN_FAILED (it took the connection for dead), and its thread then
 * calls engine_server_closed if the engine has one, as d21d603's data
 * path (serve.c) did for a write that was sent and failed with the
 * connection.  The engine now says ERROR: the server answered, and
 * libnbd still reads the connection.  That engine then read
 * the socket from under libnbd: a read completed with bytes of other
 * replies, or libnbd took the middle of a reply for a header and failed
 * the connection.  The engine now has no engine_server_closed and only
 * libnbd reads the socket.  To see d21d603's engine fail, build this file
 * against it (its engine_result has not_sent for doubt) and run only this
 * scenario:
 *   mkdir /tmp/old
 *   git show d21d603:plugin/engine.c >/tmp/old/engine.c
 *   git show d21d603:plugin/engine.h >/tmp/old/engine.h
 *   f='-fsanitize=thread -g -O1 -Wno-tsan -I/tmp/old'
 *   cc $f -c -o /tmp/old/engine.o /tmp/old/engine.c
 *   cc $f -Ddoubt=not_sent -DENGINE_NOT_DONE=1 -DENGINE_IN_DOUBT=0 \
 *     '-Dengine_close(e)=engine_close (e, 0)' -o /tmp/old/stress \
 *     tests/engine/stress.c /tmp/old/engine.o -lnbd -lpthread
 *   ENGINE_STRESS_ONLY=race /tmp/old/stress
 * (ENGINE_NOT_DONE is 1 there only to compile the other scenarios; its
 * engine_close took the timeout.)
 */

#define RACE_READERS 12
#define RACE_WRITERS 4
#define RACE_STALLERS 3
#define RACE_THREADS (RACE_READERS + RACE_WRITERS + RACE_STALLERS)
#define RACE_ROUNDS 5
#define RACE_TIMEOUT_MS 300
#define RACE_READ (1 << 20)

/* d21d603's engine.c defines it; the engine now does not. */
extern int engine_server_closed (struct engine *, int64_t)
  __attribute__((weak));

/* What the disk holds at off: each 8-byte word its offset, big endian. */
static void
race_fill (unsigned char *buf, uint64_t off, size_t len)
{
  uint64_t w;
  size_t i;

  for (i = 0; i < len; i += 8) {
    w = htobe64 (off + i);
    memcpy (buf + i, &w, 8);
  }
}

/* The first byte where buf differs from want, or len. */
static size_t
race_first_wrong (const unsigned char *buf, const unsigned char *want,
                  size_t len)
{
  size_t i;

  if (memcmp (buf, want, len) == 0) /* TSan checks each byte a loop reads */
    return len;
  for (i = 0; i < len && buf[i] == want[i]; ++i)
    ;
  return i;
}

/* This round: writes that had been sent and failed in the window; the
 * stallers that have sent their command.
 */
static atomic_long race_failed;
static atomic_int race_stalled;

struct race_thread {
  pthread_t tid;
  int idx, writer;
  struct engine *e;
  long read_after;              /* reads ended in the window after such a
                                   write */
  long wrong, broken;
};

/* Readers and writers, until the connection fails; bounded.  Each reader
 * reads its own MiB, so that bytes of another reply are told apart.
 */
static void *
race_run (void *arg)
{
  struct race_thread *t = arg;
  uint64_t seed = 0x2545f4914f6cdd1dULL * (t->idx + 1);
  unsigned char *buf = malloc (RACE_READ), *want = malloc (RACE_READ);
  int64_t stop = engine_now_ms () + 20000;
  struct engine_request req;
  struct engine_result res;
  size_t i;
  long n;

  if (buf == NULL || want == NULL)
    die ("malloc");
  race_fill (want, t->idx * (uint64_t) RACE_READ, RACE_READ);
  for (n = 0; n < 1000000 && engine_now_ms () < stop; ++n) {
    memset (&req, 0, sizeof req);
    req.buf = buf;
    if (t->writer) {
      /* What the disk holds: should one get through, nothing changes. */
      req.op = ENGINE_PWRITE;
      req.count = BLOCK;
      req.offset = (rnd (&seed) % (DISK_SIZE / BLOCK)) * BLOCK;
      race_fill (buf, req.offset, BLOCK);
    }
    else {
      req.op = ENGINE_PREAD;
      req.count = RACE_READ;
      req.offset = t->idx * (uint64_t) RACE_READ;
      memset (buf, 0xa5, RACE_READ);
    }
    run (t->e, &req, &res);

    if (res.outcome == ENGINE_OK) {
      if (t->writer)
        CHECK (0, "thread %d: a write succeeded; the server fails every "
               "write", t->idx);
      else {
        i = race_first_wrong (buf, want, RACE_READ);
        if (!CHECK (i == RACE_READ, "thread %d: a read at %" PRIu64
                    " succeeded with the wrong data from byte %zu",
                    t->idx, req.offset, i))
          t->wrong++;
        if (atomic_load (&race_window) == 1 && atomic_load (&race_failed))
          t->read_after++;
      }
      atomic_fetch_add (&progress, 1);
      continue;
    }
    if (res.outcome == ENGINE_ERROR) {
      CHECK (t->writer && res.errnum == EIO,
             "thread %d: %s ended ERROR errnum %d", t->idx,
             op_name (req.op), res.errnum);
      /* The server's answer, while the connection is being ended. */
      if (atomic_load (&race_window) == 1)
        atomic_fetch_add (&race_failed, 1);
      continue;
    }
    /* The connection failed: for a read that had been sent, not before
     * the window closed (race_round checks).
     */
    if (!t->writer && res.doubt == ENGINE_IN_DOUBT &&
        atomic_load (&race_window) == 1) {
      t->broken++;
      if (atomic_load (&race_failed))
        t->read_after++;
    }
    /* While libnbd still reads the connection, a write the server
     * answered is not a failed connection: d21d603 said it was, and its
     * data path then read the socket (engine_server_closed) from under
     * libnbd.  A write sent before the window can only have been
     * answered; one sent in it is refused, not sent.
     */
    if (t->writer && res.doubt == ENGINE_IN_DOUBT) {
      if (atomic_load (&race_window) == 1) {
        atomic_fetch_add (&race_failed, 1);
        CHECK (0, "thread %d: a write the server answered in the window "
               "ended CONN_FAILED, in doubt", t->idx);
      }
      if (engine_server_closed)
        engine_server_closed (t->e, engine_now_ms () + RACE_WIDEN_MS);
    }
    break;
  }
  free (buf);
  free (want);
  return NULL;
}

/* A command the server holds for 5 s, sent once the readers are at work
 * (or the connection has ended already): the first one's timeout ends
 * the connection.  But a leader whose own command times out ends the
 * connection itself and reads no reply meanwhile, and a leader keeps the
 * role until its own command is done; the role goes to the waiter that
 * began to wait last, so the stallers sent after the first one keep it
 * from leading once they wait.
 */
static void *
race_stall (void *arg)
{
  struct race_thread *t = arg;
  struct engine_request req = {
    .op = ENGINE_BLOCK_STATUS, .count = BLOCK, .offset = 0,
    .context = LIBNBD_CONTEXT_BASE_ALLOCATION,
  };
  struct engine_result res;
  int k = t->idx - RACE_READERS - RACE_WRITERS;

  while (atomic_load (&progress) < 2 * RACE_READERS && !engine_is_dead (t->e))
    sleep_ms (2);
  while (atomic_load (&race_stalled) < k && !engine_is_dead (t->e))
    sched_yield ();
  atomic_fetch_add (&race_stalled, 1);
  run (t->e, &req, &res);
  free (req.entries);
  CHECK (res.outcome == ENGINE_CONN_FAILED && res.timed_out,
         "thread %d: block status ended %s timed_out %d, want CONN_FAILED, "
         "timed out", t->idx, outcome_name (res.outcome), res.timed_out);
  return NULL;
}

/* One round, on a server of its own: nbdkit 1.32 may abort (an assertion
 * in raw_send_socket) once the connection has ended under its replies.
 * Whether the window was exercised: a write that had been sent failed in
 * it, and then a read still ended in it.
 */
static int
race_round (int round, long *wrong, long *broken)
{
  static const char *const args[] = {
    "--filter=error", "--filter=delay", "--filter=cow", "pattern", "64M",
    "error-pwrite=EIO", "error-pwrite-rate=100%", "delay-extents=5", NULL
  };
  struct race_thread t[RACE_THREADS];
  struct server s;
  struct engine *e;
  long read_after = 0, round_broken = 0;
  int i;

  atomic_store (&progress, 0);
  atomic_store (&race_window, 0);
  atomic_store (&race_failed, 0);
  atomic_store (&race_stalled, 0);
  /* Whichever command times out first (a staller's, or one the machine
   * held back) ends the connection the widened way.
   */
  atomic_store (&race_widen, 1);
  server_start (&s, "race", args);
  e = new_engine (server_connect (&s), RACE_TIMEOUT_MS);
  for (i = 0; i < RACE_THREADS; ++i) {
    t[i] = (struct race_thread) {
      .idx = i, .e = e,
      .writer = i >= RACE_READERS && i < RACE_READERS + RACE_WRITERS,
    };
    if (pthread_create (&t[i].tid, NULL,
                        i < RACE_READERS + RACE_WRITERS ? race_run :
                        race_stall, &t[i]) != 0)
      die ("pthread_create");
  }
  for (i = 0; i < RACE_THREADS; ++i) {
    pthread_join (t[i].tid, NULL);
    read_after += t[i].read_after;
    round_broken += t[i].broken;
    *wrong += t[i].wrong;
  }
  *broken += round_broken;
  CHECK (round_broken == 0, "round %d: %ld reads failed before the engine "
         "shut the socket down: the stream broke under libnbd", round,
         round_broken);
  CHECK (atomic_load (&race_window) == 2,
         "round %d: the engine did not shut the socket down after the "
         "timeout", round);
  atomic_store (&race_widen, 0);
  CHECK (engine_is_dead (e) == 1, "engine_is_dead is not 1 after a timeout");
  close_dead (e);
  server_stop (&s, SIGKILL);
  return atomic_load (&race_failed) > 0 && read_after > 0;
}

static void
scenario_race (void)
{
  long wrong = 0, broken = 0;
  int i, exercised = 0;

  scenario = "race";
  for (i = 0; i < RACE_ROUNDS; ++i)
    exercised += race_round (i, &wrong, &broken);
  CHECK (exercised > 0, "in no round did a read end after a write had "
         "failed in the widened window");
  printf ("  race: %d threads, %d rounds, %d with reads after a write "
          "failed in the window; %ld reads with wrong data, %ld broken\n",
          RACE_THREADS, RACE_ROUNDS, exercised, wrong, broken);
}

static const char *const slow_server[] = {
  "--filter=delay", "memory", "64M", "delay-read=2", NULL
};

/* ENGINE_STRESS_ONLY=PREFIX runs only the scenarios named so. */
static int
wanted (const char *name)
{
  const char *only = getenv ("ENGINE_STRESS_ONLY");

  return only == NULL || strncmp (name, only, strlen (only)) == 0;
}

int
main (void)
{
  int64_t t0 = engine_now_ms ();
  int i;

  if (getenv ("ENGINE_STRESS_SLACK_MS"))
    slack_ms = atoll (getenv ("ENGINE_STRESS_SLACK_MS"));
  signal (SIGALRM, on_alarm);
  signal (SIGPIPE, SIG_IGN);
  alarm (WATCHDOG_S);
  setvbuf (stdout, NULL, _IOLBF, 0);
  if (mkdtemp (tmpdir) == NULL)
    die ("mkdtemp: %m");
  real_shutdown = (int (*) (int, int)) dlsym (RTLD_NEXT, "shutdown");
  if (real_shutdown == NULL)
    die ("dlsym shutdown: %s", dlerror ());

  if (wanted ("mixed"))
    scenario_mixed ();
  for (i = 0; i < 3 && wanted ("kill"); ++i)
    scenario_kill (i);
  /* The read waits 2 s, the connection ends at 200 ms. */
  if (wanted ("timeout"))
    scenario_timeout ("timeout", slow_server);
  for (i = 0; i < 3 && wanted ("shutdown"); ++i)
    scenario_shutdown ();
  if (wanted ("close"))
    scenario_close ();
  if (wanted ("race"))
    scenario_race ();

  /* The servers' logs are kept when something failed. */
  if (atomic_load (&nr_failed) == 0) {
    static const char *const names[] = {
      "mixed", "kill", "timeout", "shutdown", "close", "race",
    };
    char path[300];

    for (i = 0; i < (int) (sizeof names / sizeof names[0]); ++i) {
      snprintf (path, sizeof path, "%s/%s.log", tmpdir, names[i]);
      unlink (path);
    }
    rmdir (tmpdir);
  }
  else
    fprintf (stderr, "engine stress: the servers' logs are in %s\n", tmpdir);
  printf ("engine stress: %ld commands, %ld passed checks, %ld failed "
          "(%.1f s)\n", atomic_load (&nr_commands), atomic_load (&nr_passed),
          atomic_load (&nr_failed), (engine_now_ms () - t0) / 1000.0);
  return atomic_load (&nr_failed) ? 1 : 0;
}
