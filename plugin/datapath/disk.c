/* SPDX-License-Identifier: BSD-3-Clause
 *
 * Disks, their fates, and the order of writes (disk.h states the
 * invariants).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "disk.h"
#include "doubt.h"
#include "engine.h"
#include "kept.h"

struct datapath_settings settings = { .quiesce_ms = -1 };

/* The disks by name: one per export ever used, never freed (doubts for
 * good outlive every connection, and a disk is small).
 */
static pthread_mutex_t registry = PTHREAD_MUTEX_INITIALIZER;
static struct disk *disks;

struct disk *
disk_get (const char *name)
{
  struct disk *d;

  pthread_mutex_lock (&registry);
  for (d = disks; d != NULL; d = d->next)
    if (strcmp (d->name, name) == 0)
      break;
  if (d == NULL && (d = calloc (1, sizeof *d)) != NULL) {
    if ((d->name = strdup (name)) == NULL) {
      free (d);
      d = NULL;
    }
    else {
      pthread_mutex_init (&d->lock, NULL);
      engine_cond_init (&d->changed);
      d->next = disks;
      disks = d;
    }
  }
  pthread_mutex_unlock (&registry);
  return d;
}

void
disk_wait (struct disk *d, int64_t deadline_ms)
{
  engine_cond_wait (&d->changed, &d->lock, deadline_ms);
}

/* ---- Fates */

struct fate *
fate_new (struct disk *d, int pidfd)
{
  struct fate *f = calloc (1, sizeof *f);

  if (f == NULL) {
    if (pidfd >= 0)
      close (pidfd);
    return NULL;
  }
  pthread_mutex_lock (&d->lock);
  f->disk = d;
  f->refs = 1;
  f->gen = ++d->last_gen;
  f->pidfd = pidfd;
  f->ended_ms = -1;
  pthread_mutex_unlock (&d->lock);
  return f;
}

void
fate_ended_locked (struct fate *f)
{
  if (f->ended_ms < 0) {
    f->ended_ms = engine_now_ms ();
    kept_fail (f);
  }
}

void
fate_ended (struct fate *f)
{
  pthread_mutex_lock (&f->disk->lock);
  fate_ended_locked (f);
  pthread_mutex_unlock (&f->disk->lock);
}

void
fate_end (struct fate *f)
{
  struct disk *d = f->disk;

  pthread_mutex_lock (&d->lock);
  f->done = 1;
  doubts_sweep (d);
  pthread_cond_broadcast (&d->changed);
  pthread_mutex_unlock (&d->lock);
}

void
fate_unref (struct fate *f)
{
  if (--f->refs > 0)
    return;
  if (f->pidfd >= 0)
    close (f->pidfd);
  free (f);
}

void
fate_put (struct fate *f)
{
  struct disk *d = f->disk;

  pthread_mutex_lock (&d->lock);
  /* A connection closed politely leaves its kept writes to no one: its
   * client has gone, and the server has them (kept.h).
   */
  if (f->ended_ms < 0)
    kept_drop (f);
  fate_unref (f);
  pthread_mutex_unlock (&d->lock);
}

/* Whether the server process of f has exited: its pidfd is readable. */
static int
process_exited (int pidfd)
{
  struct pollfd pfd = { .fd = pidfd, .events = POLLIN };

  return poll (&pfd, 1, 0) == 1;
}

int
fate_done (struct fate *f)
{
  if (f->done)
    return 1;
#ifdef NBDGO_WEAKEN_DOUBT
  /* Weakened on purpose, for the history checker to catch: a guess. */
  if (f->ended_ms >= 0)
    return f->done = 1;
#endif
  if (f->pidfd >= 0 && process_exited (f->pidfd))
    return f->done = 1;
  if (settings.quiesce_ms >= 0 && f->ended_ms >= 0 &&
      engine_now_ms () >= f->ended_ms + settings.quiesce_ms)
    return f->done = 1;
  return 0;
}

/* ---- Owners */

struct owner *
owner_new (void)
{
  struct owner *o = calloc (1, sizeof *o);

  if (o)
    o->refs = 1;
  return o;
}

void
owner_ref (struct owner *o)
{
  atomic_fetch_add (&o->refs, 1);
}

void
owner_put (struct owner *o)
{
  if (o && atomic_fetch_sub (&o->refs, 1) == 1)
    free (o);
}

/* ---- The order of writes */

static struct sending *
sending_overlap (struct disk *d, uint64_t id, uint64_t offset, uint64_t end)
{
  struct sending *s;

  for (s = d->sending; s != NULL; s = s->next)
    if (s->id != id && s->offset < end && offset < s->end)
      return s;
  return NULL;
}

static void
sending_push (struct disk *d, struct sending *s)
{
  s->next = d->sending;
  d->sending = s;
}

int
sending_add (struct disk *d, struct sending *s, int64_t deadline_ms)
{
  while (sending_overlap (d, s->id, s->offset, s->end)) {
    if (deadline_ms >= 0 && engine_now_ms () >= deadline_ms)
      return -1;
    disk_wait (d, deadline_ms);
  }
  sending_push (d, s);
  return 0;
}

void
sending_end (struct disk *d, struct sending *s)
{
  struct sending **pp;

  for (pp = &d->sending; *pp != NULL; pp = &(*pp)->next)
    if (*pp == s) {
      *pp = s->next;
      pthread_cond_broadcast (&d->changed);
      return;
    }
}
