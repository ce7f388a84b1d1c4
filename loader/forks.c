/* SPDX-License-Identifier: BSD-3-Clause
 *
 * Will nbdkit fork after config_complete?
 *
 * nbdkit forks to go into the background (unless -f, --foreground,
 * --no-fork or --exit-with-parent), and for --run; with -s (--single,
 * --stdin) it serves stdin and never forks.  When it will not fork, the
 * loader may start Go at config_complete and skip the check child, which
 * saves a whole Go start-up (about 25 ms here).
 *
 * nbdkit does not tell plugins, so this reads its command line from
 * /proc/self/cmdline, conservatively: the answer is "no fork" only when
 * the options are understood; anything unexpected means "fork", which
 * is always safe (the check child), only slower.  Two facts about what
 * /proc shows:
 *
 *  - the original order: getopt_long permutes nbdkit's argv array, so
 *    options may follow the plugin name, but /proc shows the strings
 *    where they were;
 *  - nbdkit has since overwritten the '=' of each plugin key=value with
 *    a NUL, so a value shows as an argument of its own, and may look
 *    like an option ("arg=-f").
 *
 * So options are parsed up to the plugin name (the first non-option),
 * with the option table below, and after it anything that could be
 * --run (or an abbreviation of it) counts as --run.
 *
 * Which nbdkit: the table holds the options of nbdkit 1.32 to 1.42
 * (see below why one table serves them all).  A later nbdkit may have an
 * option the table does not know that forks, or that takes a value that
 * the table would read as the plugin name; so the "no fork" answer is
 * given only for an nbdkit from 1.32 to 1.42.  The version that counts
 * is that of the nbdkit running, not the one whose headers the loader
 * was built with (NBDKIT_VERSION_* in nbdkit-version.h): a distribution
 * upgrades nbdkit without rebuilding its plugins (Debian's package
 * depends on nbdkit >= 1.32).  nbdkit has no call that gives its
 * version, so it is asked: /proc/self/exe (this nbdkit's binary, even if
 * replaced on disk since) is run with --version, which prints "nbdkit
 * MAJOR.MINOR.MICRO".  That costs a few milliseconds, and only when the
 * command line says "no fork" (it saves a Go start-up, about 25 ms).  No
 * answer, or one that does not parse, or a version outside the range,
 * means "fork".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "forks.h"

enum effect { NONE, FOREGROUND, SINGLE, RUN };

struct long_option {
  const char *name;
  int has_arg;
  enum effect effect;
};

/* The nbdkit versions (1.MINOR) whose options the tables below hold. */
#define KNOWN_MINOR_FIRST 32
#define KNOWN_MINOR_LAST 42

/* The long options of nbdkit 1.32 to 1.42 (nbdkit --long-options,
 * nbdkit(1)): 1.32's, and those added up to 1.42 (keepalive, no-mc,
 * no-structured-replies, print-uri, timeout and their aliases), all
 * without effect on forking.  One table for all these versions is
 * sound: nbdkit parses its whole command line before it loads a plugin,
 * so an option that the running nbdkit lacks stops it before the loader
 * runs; and an abbreviation that is unique in this table is unique, or
 * unknown (nbdkit exits), in each version's.  --long-options and
 * --short-options are left out: they print and exit, and "unknown"
 * (fork) is safe for them.
 */
static const struct long_option long_options[] = {
  { "debug", 1, NONE }, { "dump-config", 0, NONE },
  { "dump-plugin", 0, NONE }, { "exit-with-parent", 0, FOREGROUND },
  { "export", 1, NONE }, { "export-name", 1, NONE },
  { "exportname", 1, NONE }, { "filter", 1, NONE },
  { "foreground", 0, FOREGROUND }, { "no-fork", 0, FOREGROUND },
  { "group", 1, NONE }, { "help", 0, NONE }, { "ip-addr", 1, NONE },
  { "ipaddr", 1, NONE }, { "ipv4-only", 0, NONE },
  { "ipv6-only", 0, NONE }, { "keep-alive", 0, NONE },
  { "keepalive", 0, NONE }, { "log", 1, NONE },
  { "mask-handshake", 1, NONE }, { "new-style", 0, NONE },
  { "newstyle", 0, NONE }, { "no-mc", 0, NONE },
  { "no-meta-contexts", 0, NONE }, { "no-sr", 0, NONE },
  { "no-structured-replies", 0, NONE },
  { "old-style", 0, NONE }, { "oldstyle", 0, NONE },
  { "pid-file", 1, NONE }, { "pidfile", 1, NONE }, { "port", 1, NONE },
  { "print-uri", 0, NONE }, { "print-url", 0, NONE },
  { "read-only", 0, NONE }, { "readonly", 0, NONE }, { "run", 1, RUN },
  { "selinux-label", 1, NONE }, { "show-uri", 0, NONE },
  { "show-url", 0, NONE }, { "single", 0, SINGLE },
  { "stdin", 0, SINGLE }, { "swap", 0, NONE }, { "threads", 1, NONE },
  { "time-out", 1, NONE }, { "timeout", 1, NONE },
  { "tls", 1, NONE }, { "tls-certificates", 1, NONE },
  { "tls-psk", 1, NONE }, { "tls-verify-peer", 0, NONE },
  { "unix", 1, NONE }, { "user", 1, NONE }, { "verbose", 0, NONE },
  { "version", 0, NONE }, { "vsock", 0, NONE },
};
#define NR_LONG_OPTIONS (sizeof long_options / sizeof long_options[0])

/* The short options (the same from 1.32 to 1.42): those that take a
 * value, and the rest.
 */
static const char short_with_arg[] = "DegiPptuU";
static const char short_flags[] = "46fnorsvV";

/* The option that name (len bytes) stands for, as getopt_long finds it:
 * an exact match, else the one option it abbreviates; NULL if none or
 * ambiguous.
 */
static const struct long_option *
find_long (const char *name, size_t len)
{
  const struct long_option *found = NULL;
  size_t i;

  for (i = 0; i < NR_LONG_OPTIONS; ++i) {
    if (strncmp (long_options[i].name, name, len) != 0)
      continue;
    if (long_options[i].name[len] == '\0')
      return &long_options[i];
    if (found)
      return NULL;
    found = &long_options[i];
  }
  return found;
}

/* Could arg, seen after the plugin name, be --run? */
static int
may_be_run (const char *arg)
{
  size_t len;

  if (strncmp (arg, "--", 2) != 0)
    return 0;
  arg += 2;
  len = strcspn (arg, "=");
  return len > 0 && strncmp ("run", arg, len < 3 ? len : 3) == 0;
}

/* Parse the NUL-separated args; 1 if nbdkit may fork, 0 if it will not. */
static int
args_may_fork (const char *p, const char *end)
{
  const struct long_option *o;
  const char *arg;
  int foreground = 0, single = 0, in_options = 1, skip_value = 0;
  size_t len, j;

  p += strlen (p) + 1;          /* argv[0] */
  for (; p < end; p += strlen (p) + 1) {
    arg = p;
    if (skip_value) {           /* the value of the option before */
      skip_value = 0;
      continue;
    }
    if (!in_options) {
      if (may_be_run (arg))
        return 1;
      continue;
    }
    if (arg[0] != '-' || arg[1] == '\0') {
      in_options = 0;           /* the plugin name */
      continue;
    }
    if (strcmp (arg, "--") == 0)
      return 1;                 /* unusual: do not guess */
    if (arg[1] == '-') {
      len = strcspn (arg + 2, "=");
      o = find_long (arg + 2, len);
      if (o == NULL)
        return 1;
      if (o->has_arg && arg[2 + len] == '\0')
        skip_value = 1;
      if (o->effect == RUN)
        return 1;
      foreground |= o->effect == FOREGROUND;
      single |= o->effect == SINGLE;
      continue;
    }
    for (j = 1; arg[j] != '\0'; ++j) {
      if (strchr (short_with_arg, arg[j])) {
        if (arg[j + 1] == '\0')
          skip_value = 1;
        break;                  /* the rest of arg is the value */
      }
      if (!strchr (short_flags, arg[j]))
        return 1;
      foreground |= arg[j] == 'f';
      single |= arg[j] == 's';
    }
  }
  return !(foreground || single);
}

/* The running nbdkit's version: /proc/self/exe --version.  0 and
 * *major, *minor set, or -1.
 */
static int
running_version (int *major, int *minor)
{
  static char *const argv[] = { "nbdkit", "--version", NULL };
  extern char **environ;
  posix_spawn_file_actions_t fa;
  char buf[256];
  ssize_t n = 0, r;
  int fds[2], status, err;
  pid_t pid;

  if (pipe2 (fds, O_CLOEXEC) == -1)
    return -1;
  /* With -s, nbdkit's stdin and stdout are the client's connection:
   * the child gets /dev/null and the pipe instead.
   */
  if (posix_spawn_file_actions_init (&fa) != 0) {
    close (fds[0]);
    close (fds[1]);
    return -1;
  }
  posix_spawn_file_actions_addopen (&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2 (&fa, fds[1], 1);
  posix_spawn_file_actions_addopen (&fa, 2, "/dev/null", O_WRONLY, 0);
  err = posix_spawn (&pid, "/proc/self/exe", &fa, NULL, argv, environ);
  posix_spawn_file_actions_destroy (&fa);
  close (fds[1]);
  if (err != 0) {
    close (fds[0]);
    return -1;
  }
  while (n < (ssize_t) sizeof buf - 1) {
    r = read (fds[0], buf + n, sizeof buf - 1 - n);
    if (r == -1 && errno == EINTR)
      continue;
    if (r <= 0)
      break;
    n += r;
  }
  close (fds[0]);
  while (waitpid (pid, &status, 0) == -1)
    if (errno != EINTR)
      return -1;
  buf[n] = '\0';
  if (!WIFEXITED (status) || WEXITSTATUS (status) != 0 ||
      sscanf (buf, "nbdkit %d.%d.", major, minor) != 2)
    return -1;
  return 0;
}

int
nbdkit_may_fork (const char **why)
{
  static char buf[65536];
  static char version_why[128];
  ssize_t n, r;
  int fd, major, minor;

  *why = "the command line may let nbdkit fork";
  fd = open ("/proc/self/cmdline", O_RDONLY | O_CLOEXEC);
  if (fd == -1)
    return 1;
  for (n = 0; n < (ssize_t) sizeof buf; n += r) {
    r = read (fd, buf + n, sizeof buf - n);
    if (r <= 0)
      break;
  }
  close (fd);
  if (n <= 0 || n == (ssize_t) sizeof buf || buf[n - 1] != '\0')
    return 1;                   /* unreadable or too long: do not guess */
  if (args_may_fork (buf, buf + n))
    return 1;

  if (running_version (&major, &minor) == -1) {
    *why = "the running nbdkit's version is unknown (/proc/self/exe --version)";
    return 1;
  }
  if (major != 1 || minor < KNOWN_MINOR_FIRST || minor > KNOWN_MINOR_LAST) {
    snprintf (version_why, sizeof version_why,
              "nbdkit %d.%d is not one whose options are known (1.%d to 1.%d)",
              major, minor, KNOWN_MINOR_FIRST, KNOWN_MINOR_LAST);
    *why = version_why;
    return 1;
  }
  snprintf (version_why, sizeof version_why,
            "nbdkit %d.%d will not fork", major, minor);
  *why = version_why;
  return 0;
}
