/* SPDX-License-Identifier: BSD-3-Clause
 *
 * Who serves a server connection (peer.h says when it can be told).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <linux/unix_diag.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>

#include "peer.h"

#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77         /* Linux 6.5 */
#endif
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434      /* Linux 5.3 */
#endif

/* The inode of the socket at the other end of the Unix socket fd, as the
 * kernel's sock_diag tells it; 0 if it cannot.
 */
static unsigned
peer_inode (int fd)
{
  struct stat st;
  struct {
    struct nlmsghdr nlh;
    struct unix_diag_req req;
  } q;
  union {
    struct nlmsghdr nlh;
    char bytes[8192];
  } a;
  struct unix_diag_msg *m;
  struct rtattr *at;
  ssize_t n;
  int len, nl;
  unsigned ino = 0;

  if (fstat (fd, &st) == -1)
    return 0;
  nl = socket (AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
  if (nl == -1)
    return 0;
  memset (&q, 0, sizeof q);
  q.nlh.nlmsg_len = sizeof q;
  q.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
  q.nlh.nlmsg_flags = NLM_F_REQUEST;
  q.req.sdiag_family = AF_UNIX;
  q.req.udiag_states = -1;
  q.req.udiag_ino = st.st_ino;
  q.req.udiag_show = UDIAG_SHOW_PEER;
  q.req.udiag_cookie[0] = q.req.udiag_cookie[1] = INET_DIAG_NOCOOKIE;
  if (send (nl, &q, sizeof q, 0) == (ssize_t) sizeof q &&
      (n = recv (nl, &a, sizeof a, 0)) > 0 &&
      NLMSG_OK (&a.nlh, (size_t) n) &&
      a.nlh.nlmsg_type == SOCK_DIAG_BY_FAMILY) {
    m = NLMSG_DATA (&a.nlh);
    len = a.nlh.nlmsg_len - NLMSG_LENGTH (sizeof *m);
    for (at = (struct rtattr *) (m + 1); RTA_OK (at, len);
         at = RTA_NEXT (at, len))
      if (at->rta_type == UNIX_DIAG_PEER &&
          RTA_PAYLOAD (at) >= sizeof (unsigned))
        memcpy (&ino, RTA_DATA (at), sizeof ino);
  }
  close (nl);
  return ino;
}

/* Whether process pid holds the socket whose inode is ino. */
static int
holds (pid_t pid, unsigned ino)
{
  char dir[64], want[64], got[64];
  struct dirent *e;
  DIR *fds;
  ssize_t n;
  int found = 0;

  snprintf (dir, sizeof dir, "/proc/%d/fd", (int) pid);
  snprintf (want, sizeof want, "socket:[%u]", ino);
  if ((fds = opendir (dir)) == NULL)
    return 0;
  while (!found && (e = readdir (fds)) != NULL) {
    n = readlinkat (dirfd (fds), e->d_name, got, sizeof got - 1);
    if (n > 0) {
      got[n] = '\0';
      found = strcmp (got, want) == 0;
    }
  }
  closedir (fds);
  return found;
}

/* The one process other than this one that holds the socket whose
 * inode is ino, found by looking at every process's descriptors; 0 if
 * none or more than one does.
 */
static pid_t
sole_holder (unsigned ino)
{
  struct dirent *e;
  DIR *procs;
  pid_t found = 0, pid, self = getpid ();
  int many = 0;

  if ((procs = opendir ("/proc")) == NULL)
    return 0;
  while (!many && (e = readdir (procs)) != NULL) {
    if (e->d_name[0] < '1' || e->d_name[0] > '9')
      continue;
    pid = atoi (e->d_name);
    if (pid == self || !holds (pid, ino))
      continue;
    if (found)
      many = 1;
    found = pid;
  }
  closedir (procs);
  return many ? 0 : found;
}

/* Whether /proc is this process's PID namespace's: otherwise a pid
 * there and a pid to pidfd_open would name different processes.
 */
static int
proc_is_ours (void)
{
  char got[32], want[32];
  ssize_t n = readlink ("/proc/self", got, sizeof got - 1);

  if (n <= 0)
    return 0;
  got[n] = '\0';
  snprintf (want, sizeof want, "%d", (int) getpid ());
  return strcmp (got, want) == 0;
}

/* Whether process pid has no child: each of its threads' children file
 * is empty.  A kernel without those files tells nothing: no.
 */
static int
childless (pid_t pid)
{
  char dir[64], path[384], c;
  struct dirent *e;
  DIR *tasks;
  int fd, none = 1, seen = 0;

  snprintf (dir, sizeof dir, "/proc/%d/task", (int) pid);
  if ((tasks = opendir (dir)) == NULL)
    return 0;
  while (none && (e = readdir (tasks)) != NULL) {
    if (e->d_name[0] == '.')
      continue;
    snprintf (path, sizeof path, "%s/%s/children", dir, e->d_name);
    if ((fd = open (path, O_RDONLY | O_CLOEXEC)) == -1) {
      none = 0;
      break;
    }
    seen = 1;
    none = read (fd, &c, 1) == 0;
    close (fd);
  }
  closedir (tasks);
  return none && seen;
}

/* The pid a pidfd names, from /proc/self/fdinfo; 0 if none. */
static pid_t
pidfd_pid (int pidfd)
{
  char path[64], line[128];
  FILE *fp;
  int pid = 0;

  snprintf (path, sizeof path, "/proc/self/fdinfo/%d", pidfd);
  if ((fp = fopen (path, "re")) == NULL)
    return 0;
  while (fgets (line, sizeof line, fp))
    if (sscanf (line, "Pid: %d", &pid) == 1)
      break;
  fclose (fp);
  return pid > 0 ? pid : 0;
}

static int
exited (int pidfd)
{
  struct pollfd pfd = { .fd = pidfd, .events = POLLIN };

  return poll (&pfd, 1, 0) != 0;
}

int
peer_pidfd (int fd, pid_t *pid)
{
  struct ucred cred;
  socklen_t len;
  int domain, pidfd = -1;
  pid_t server;
  unsigned ino;

  *pid = 0;
  len = sizeof domain;
  if (getsockopt (fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) == -1 ||
      domain != AF_UNIX)
    return -1;
  len = sizeof cred;
  if (getsockopt (fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == -1)
    return -1;
  *pid = cred.pid > 0 ? cred.pid : 0;
  if ((ino = peer_inode (fd)) == 0 || !proc_is_ours ())
    return -1;
  /* The listener, if it serves this connection itself (nbdkit -f,
   * qemu-nbd); else the one process that holds the connection (nbdkit
   * in the background listened, then forked; a server that systemd
   * started by socket activation).
   */
  if (cred.pid > 1 && cred.pid != getpid () && holds (cred.pid, ino))
    server = cred.pid;
  else if ((server = sole_holder (ino)) == 0)
    return -1;
  *pid = server;
  if (server == 1)
    return -1;
  /* The pidfd first: the checks below then look at the process it
   * names, as long as that process is alive after them.
   */
  len = sizeof pidfd;
  if (server == cred.pid &&
      getsockopt (fd, SOL_SOCKET, SO_PEERPIDFD, &pidfd, &len) == 0) {
    if (pidfd_pid (pidfd) != server) {
      close (pidfd);
      return -1;
    }
  }
  else if ((pidfd = syscall (SYS_pidfd_open, server, 0)) == -1)
    return -1;
  fcntl (pidfd, F_SETFD, FD_CLOEXEC);
  if (!holds (server, ino) || !childless (server) || exited (pidfd)) {
    close (pidfd);
    return -1;
  }
  return pidfd;
}
