/* SPDX-License-Identifier: BSD-3-Clause
 *
 * Writes in doubt (doubt.h states the rule and the invariants).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "doubt.h"
#include "engine.h"

struct fate {
  int refs;                     /* the creator's, and one per doubt */
  int can_end;
  int ended;
};

struct doubt {
  uint64_t offset, end;         /* [offset, end) */
  uint64_t id;                  /* the write's; 0 once its request is over */
  struct fate *fate;
  struct doubt *next;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t ended;    /* a fate ended; CLOCK_MONOTONIC */
static pthread_once_t ended_once = PTHREAD_ONCE_INIT;
static struct doubt *doubts;
/* Whether any doubt exists, read without the lock on every write: a
 * doubt is counted before its request answers, so a later write sees it.
 */
static _Atomic int nr_doubts;
/* A doubt could not be recorded: refuse every write from then on. */
static _Atomic int fence_all;

static void
init_ended (void)
{
  pthread_condattr_t attr;

  pthread_condattr_init (&attr);
  pthread_condattr_setclock (&attr, CLOCK_MONOTONIC);
  pthread_cond_init (&ended, &attr);
  pthread_condattr_destroy (&attr);
}

/* Drop a reference (lock held); the fate is freed with its last. */
static void
unref (struct fate *f)
{
  if (--f->refs == 0)
    free (f);
}

struct fate *
fate_new (int can_end)
{
  struct fate *f = calloc (1, sizeof *f);

  pthread_once (&ended_once, init_ended);
  if (f) {
    f->refs = 1;
    f->can_end = can_end;
  }
  return f;
}

void
fate_end (struct fate *f)
{
  struct doubt **pp, *d;

  if (f == NULL)
    return;
  pthread_mutex_lock (&lock);
  f->ended = 1;
  for (pp = &doubts; (d = *pp) != NULL; ) {
    if (d->fate == f) {
      *pp = d->next;
      unref (f);
      free (d);
      atomic_fetch_sub (&nr_doubts, 1);
    }
    else
      pp = &d->next;
  }
  pthread_cond_broadcast (&ended);
  pthread_mutex_unlock (&lock);
}

void
fate_put (struct fate *f)
{
  if (f == NULL)
    return;
  pthread_mutex_lock (&lock);
  unref (f);
  pthread_mutex_unlock (&lock);
}

int
doubt_add (struct fate *f, uint64_t id, uint64_t offset, uint64_t count)
{
  struct doubt *d = malloc (sizeof *d);

  if (d == NULL || f == NULL) {
    free (d);
    atomic_store (&fence_all, 1);
    return -1;
  }
  *d = (struct doubt) { .offset = offset, .end = offset + count, .id = id,
                        .fate = f };
  pthread_mutex_lock (&lock);
  if (f->ended)                 /* the server is gone already */
    free (d);
  else {
    f->refs++;
    d->next = doubts;
    doubts = d;
    atomic_fetch_add (&nr_doubts, 1);
  }
  pthread_mutex_unlock (&lock);
  return 0;
}

/* Merge the doubts for good whose requests are over into d (lock held),
 * so that repeated failures over the same bytes do not grow the list.
 */
static void
merge_for_good (struct doubt *d)
{
  struct doubt **pp, *o;
  int merged;

  do {
    merged = 0;
    for (pp = &doubts; (o = *pp) != NULL; ) {
      if (o != d && o->id == 0 && !o->fate->can_end &&
          o->offset <= d->end && d->offset <= o->end) {
        if (o->offset < d->offset)
          d->offset = o->offset;
        if (o->end > d->end)
          d->end = o->end;
        *pp = o->next;
        unref (o->fate);
        free (o);
        atomic_fetch_sub (&nr_doubts, 1);
        merged = 1;
      }
      else
        pp = &o->next;
    }
  } while (merged);
}

void
doubt_forget (uint64_t id)
{
  struct doubt *d;

  if (atomic_load (&nr_doubts) == 0)
    return;
  pthread_mutex_lock (&lock);
  for (d = doubts; d != NULL; d = d->next)
    if (d->id == id)
      d->id = 0;
  for (d = doubts; d != NULL; d = d->next)
    if (d->id == 0 && !d->fate->can_end)
      merge_for_good (d);
  pthread_mutex_unlock (&lock);
}

/* The first doubt, other than id's, that overlaps [offset, end). */
static struct doubt *
overlapping (uint64_t id, uint64_t offset, uint64_t end)
{
  struct doubt *d;

  for (d = doubts; d != NULL; d = d->next)
    if ((id == 0 || d->id != id) && d->offset < end && offset < d->end)
      return d;
  return NULL;
}

int
doubts_exist (void)
{
  return atomic_load (&nr_doubts) > 0 || atomic_load (&fence_all);
}

int
doubt_wait (uint64_t id, uint64_t offset, uint64_t count,
            int64_t deadline_ms, char **msg)
{
  struct timespec ts = { deadline_ms / 1000, (deadline_ms % 1000) * 1000000L };
  struct doubt *d;
  const char *why;

  if (atomic_load (&fence_all)) {
    *msg = NULL;
    if (asprintf (msg, "a write in doubt could not be recorded (out of "
                  "memory): refusing every write") == -1)
      *msg = NULL;
    return EIO;
  }
  if (atomic_load (&nr_doubts) == 0)
    return 0;
  pthread_mutex_lock (&lock);
  for (;;) {
    d = overlapping (id, offset, offset + count);
    if (d == NULL) {
      pthread_mutex_unlock (&lock);
      return 0;
    }
    if (!d->fate->can_end) {
      why = "for good: nothing shows that the server which had it is done";
      break;
    }
    if (engine_now_ms () >= deadline_ms) {
      why = "and the server that had it has not exited within "
        "reconnect-delay";
      break;
    }
    pthread_cond_timedwait (&ended, &lock, &ts);
  }
  if (asprintf (msg, "not sending a write to bytes %" PRIu64 "-%" PRIu64
                ": an earlier write to bytes %" PRIu64 "-%" PRIu64
                " was sent on a server connection that ended before the "
                "server answered, and the server may still carry it out "
                "over this one; it is in doubt %s",
                offset, offset + count - 1, d->offset, d->end - 1, why) == -1)
    *msg = NULL;
  pthread_mutex_unlock (&lock);
  return EIO;
}
