/* Will nbdkit fork after config_complete?
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
 * with the option table of nbdkit 1.32, and after it anything that could
 * be --run (or an abbreviation of it) counts as --run.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "forks.h"

enum effect { NONE, FOREGROUND, SINGLE, RUN };

struct long_option {
  const char *name;
  int has_arg;
  enum effect effect;
};

/* nbdkit 1.32's long options (nbdkit --long-options, nbdkit(1)). */
static const struct long_option long_options[] = {
  { "debug", 1, NONE }, { "dump-config", 0, NONE },
  { "dump-plugin", 0, NONE }, { "exit-with-parent", 0, FOREGROUND },
  { "export", 1, NONE }, { "export-name", 1, NONE },
  { "exportname", 1, NONE }, { "filter", 1, NONE },
  { "foreground", 0, FOREGROUND }, { "no-fork", 0, FOREGROUND },
  { "group", 1, NONE }, { "help", 0, NONE }, { "ip-addr", 1, NONE },
  { "ipaddr", 1, NONE }, { "ipv4-only", 0, NONE },
  { "ipv6-only", 0, NONE }, { "log", 1, NONE },
  { "mask-handshake", 1, NONE }, { "new-style", 0, NONE },
  { "newstyle", 0, NONE }, { "no-sr", 0, NONE },
  { "old-style", 0, NONE }, { "oldstyle", 0, NONE },
  { "pid-file", 1, NONE }, { "pidfile", 1, NONE }, { "port", 1, NONE },
  { "read-only", 0, NONE }, { "readonly", 0, NONE }, { "run", 1, RUN },
  { "selinux-label", 1, NONE }, { "single", 0, SINGLE },
  { "stdin", 0, SINGLE }, { "swap", 0, NONE }, { "threads", 1, NONE },
  { "tls", 1, NONE }, { "tls-certificates", 1, NONE },
  { "tls-psk", 1, NONE }, { "tls-verify-peer", 0, NONE },
  { "unix", 1, NONE }, { "user", 1, NONE }, { "verbose", 0, NONE },
  { "version", 0, NONE }, { "vsock", 0, NONE },
};
#define NR_LONG_OPTIONS (sizeof long_options / sizeof long_options[0])

/* nbdkit 1.32's short options: those that take a value, and the rest. */
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

int
nbdkit_may_fork (void)
{
  static char buf[65536];
  ssize_t n, r;
  int fd;

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
  return args_may_fork (buf, buf + n);
}
