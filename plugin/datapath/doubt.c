/* SPDX-License-Identifier: BSD-3-Clause
 *
 * Writes in doubt (doubt.h states the rule and the invariants).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>

#include "doubt.h"
#include "engine.h"

struct doubt {
  uint64_t offset, end;         /* [offset, end) */
  uint64_t id;                  /* the write's; 0 once its request is over */
  struct fate *fate;
  struct doubt *next;
};

/* Whether a doubt of f can ever end. */
static int
can_end (struct fate *f)
{
  return settings.server_exits || f->pidfd >= 0 || settings.quiesce_ms >= 0;
}

static void
unlink_doubt (struct disk *d, struct doubt **pp)
{
  struct doubt *o = *pp;

  *pp = o->next;
  fate_unref (o->fate);
  free (o);
  atomic_fetch_sub (&d->nr_doubts, 1);
}

int
doubt_add (struct fate *f, uint64_t id, uint64_t offset, uint64_t count)
{
  struct disk *d = f->disk;
  struct doubt *o;

  if (fate_done (f))            /* the server is gone already */
    return 0;
  if ((o = malloc (sizeof *o)) == NULL) {
    atomic_store (&d->fence_all, 1);
    return -1;
  }
  *o = (struct doubt) { .offset = offset, .end = offset + count, .id = id,
                        .fate = f, .next = d->doubts };
  f->refs++;
  d->doubts = o;
  atomic_fetch_add (&d->nr_doubts, 1);
  return 0;
}

void
doubts_sweep (struct disk *d)
{
  struct doubt **pp;

  for (pp = &d->doubts; *pp != NULL; ) {
    if (fate_done ((*pp)->fate))
      unlink_doubt (d, pp);
    else
      pp = &(*pp)->next;
  }
}

/* Merge the doubts for good whose requests are over into o (lock held),
 * so that repeated failures over the same bytes do not grow the list.
 */
static void
merge_for_good (struct disk *d, struct doubt *o)
{
  struct doubt **pp, *x;
  int merged;

  do {
    merged = 0;
    for (pp = &d->doubts; (x = *pp) != NULL; ) {
      if (x != o && x->id == 0 && !can_end (x->fate) &&
          x->offset <= o->end && o->offset <= x->end) {
        if (x->offset < o->offset)
          o->offset = x->offset;
        if (x->end > o->end)
          o->end = x->end;
        unlink_doubt (d, pp);
        merged = 1;
      }
      else
        pp = &x->next;
    }
  } while (merged);
}

void
doubt_forget (struct disk *d, uint64_t id)
{
  struct doubt *o;

  if (atomic_load (&d->nr_doubts) == 0)
    return;
  pthread_mutex_lock (&d->lock);
  for (o = d->doubts; o != NULL; o = o->next)
    if (o->id == id)
      o->id = 0;
  doubts_sweep (d);
  for (o = d->doubts; o != NULL; o = o->next)
    if (o->id == 0 && !can_end (o->fate))
      merge_for_good (d, o);
  pthread_mutex_unlock (&d->lock);
}

/* The first doubt, other than id's, that overlaps [offset, end) and has
 * not ended; those found ended are removed (lock held).
 */
static struct doubt *
overlapping (struct disk *d, uint64_t id, uint64_t offset, uint64_t end)
{
  struct doubt **pp, *o;

  for (pp = &d->doubts; (o = *pp) != NULL; ) {
    if ((id == 0 || o->id != id) && o->offset < end && offset < o->end) {
      if (!fate_done (o->fate))
        return o;
      unlink_doubt (d, pp);
      continue;
    }
    pp = &o->next;
  }
  return NULL;
}

/* Wait for o's fate until deadline_ms (lock held, and let go meanwhile):
 * on its server's process when there is one, which says when it exits;
 * else on the disk's condition, broadcast when a fate ends.
 */
static void
wait_for (struct disk *d, struct doubt *o, int64_t deadline_ms)
{
  struct fate *f = o->fate;
  struct pollfd pfd = { .fd = f->pidfd, .events = POLLIN };
  int64_t left;

  if (f->pidfd < 0) {
    disk_wait (d, deadline_ms);
    return;
  }
  left = deadline_ms - engine_now_ms ();
  if (left <= 0)
    return;
  f->refs++;                    /* o may go while the lock is let go */
  pthread_mutex_unlock (&d->lock);
  poll (&pfd, 1, left > 1000000 ? 1000000 : (int) left);
  pthread_mutex_lock (&d->lock);
  fate_unref (f);
}

/* Why a write over o cannot be sent; NULL if it may wait for it. */
static const char *
refusal (struct doubt *o, int64_t deadline_ms, int64_t now)
{
  struct fate *f = o->fate;
  int64_t until;

  if (!can_end (f))
    return "for good: nothing shows that the server which had it is done";
  /* With only the user's declaration to go by, the end is known. */
  if (!settings.server_exits && f->pidfd < 0) {
    until = f->ended_ms + settings.quiesce_ms;
    if (until > deadline_ms)
      return "until quiesce-time after its connection ended, which is "
        "past this request's reconnect-delay";
  }
  if (now >= deadline_ms)
    return "and the server that had it has not been seen to finish within "
      "reconnect-delay";
  return NULL;
}

int
write_begin (struct disk *d, struct sending *s, int order,
             int64_t doubt_deadline_ms, int64_t order_deadline_ms,
             char **msg)
{
  struct doubt *o;
  const char *why;
  int64_t until;

  *msg = NULL;
  if (!order && atomic_load (&d->nr_doubts) == 0 &&
      !atomic_load (&d->fence_all))
    return 0;
  pthread_mutex_lock (&d->lock);
  for (;;) {
    if (atomic_load (&d->fence_all)) {
      pthread_mutex_unlock (&d->lock);
      if (asprintf (msg, "a write in doubt could not be recorded (out of "
                    "memory): refusing every write") == -1)
        *msg = NULL;
      return EIO;
    }
    /* A write being sent comes first: it may leave a doubt. */
    if (order && sending_add (d, s, order_deadline_ms) == -1) {
      pthread_mutex_unlock (&d->lock);
      if (asprintf (msg, "not sending a write to bytes %" PRIu64 "-%" PRIu64
                    ": an earlier write over them has not ended within "
                    "this request's bounds", s->offset, s->end - 1) == -1)
        *msg = NULL;
      return EIO;
    }
    o = overlapping (d, s->id, s->offset, s->end);
    if (o == NULL)
      break;
    if (order)
      sending_end (d, s);       /* not sent yet: let others by */
    if ((why = refusal (o, doubt_deadline_ms, engine_now_ms ())) != NULL) {
      if (asprintf (msg, "not sending a write to bytes %" PRIu64 "-%" PRIu64
                    ": an earlier write to bytes %" PRIu64 "-%" PRIu64
                    " was sent on a server connection that ended before "
                    "the server answered, and the server may still carry "
                    "it out over this one; it is in doubt %s",
                    s->offset, s->end - 1, o->offset, o->end - 1, why) == -1)
        *msg = NULL;
      pthread_mutex_unlock (&d->lock);
      return EIO;
    }
    until = doubt_deadline_ms;
    if (!settings.server_exits && settings.quiesce_ms >= 0 &&
        o->fate->ended_ms + settings.quiesce_ms < until)
      until = o->fate->ended_ms + settings.quiesce_ms;
    wait_for (d, o, until);
  }
  pthread_mutex_unlock (&d->lock);
  return 0;
}
