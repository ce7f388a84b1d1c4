/* SPDX-License-Identifier: BSD-3-Clause
 *
 * A disk: what the data path knows of one export of the server, across
 * every server connection that reaches it (every client's, and each
 * replacement).  Without dynamic-export there is one disk; with it, one
 * per export name.  Three things are kept per disk, under one lock:
 *
 *  - The order of writes (disk.c).  Writes that overlap are sent one at
 *    a time, in the order they come: NBD leaves the order of concurrent
 *    overlapping writes undefined, and the plugin keeps the one it picks,
 *    so that "the newest write of a range" (kept.c) is what the server
 *    applied last.  A repair (kept.c) takes its ranges in the same order.
 *
 *  - Writes in doubt (doubt.c, which states the rule): a write sent on a
 *    connection that ended before the server answered may still be
 *    carried out by that server; no other write over its bytes is sent
 *    while the doubt lasts.  A doubt ends on evidence that the server can
 *    no longer carry it out (see struct fate).
 *
 *  - Kept writes (kept.c): the data of writes acknowledged that no flush
 *    has covered yet, so that after a connection failed they can be
 *    checked on the next one and written again if the server lost them.
 *
 * A fate is the record of one server connection on its disk: what ends
 * the doubts of the writes sent on it, and the writes kept that it
 * acknowledged.  It outlives the connection (serve.c's struct link)
 * while doubts or kept writes refer to it.
 *
 * Invariants.  disk.lock protects everything in struct disk and struct
 * fate but the fields marked otherwise; disk.changed (CLOCK_MONOTONIC)
 * is broadcast when a write being sent ends, a doubt ends, a repair
 * ends or kept data is let go of.  A write is on disk.sending from just
 * before it is sent until its outcome is recorded (its doubt, or its
 * data kept), so that the next overlapping write finds either.  A fate
 * lives while its link, a doubt or a kept write refers to it; a disk
 * for the life of the process.  Lock order: a path's lock, then a
 * disk's.
 */
#ifndef NBDGO_DISK_H
#define NBDGO_DISK_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "datapath.h"

struct kept;
struct doubt;

/* A write (or a repair's range) being sent, on disk.sending; it lives
 * in its sender's frame.
 */
struct sending {
  uint64_t id;                  /* unique while it runs */
  uint64_t offset, end;
  struct sending *next;
};

/* The settings, as Go gave them (datapath.h, datapath_configure). */
extern struct datapath_settings settings;

/* An nbdkit connection, as its kept writes know it: a repair that
 * fails loses its writes, and its flushes must then fail.
 */
struct owner {
  _Atomic int refs;             /* the client's, and one per kept write */
  _Atomic int lost;
};

struct fate {
  struct disk *disk;
  int refs;                     /* its link's, one per doubt, per kept write */
  uint64_t gen;                 /* numbers the disk's fates, for messages */
  /* What ends its doubts (doubt.c, fate_done). */
  int pidfd;                    /* the server's process (peer.c), or -1 */
  int64_t ended_ms;             /* when its connection was seen to end; -1 */
  int done;                     /* nothing sent on it can be carried out */
  /* Kept writes it acknowledged, oldest first (kept.c). */
  struct kept *first, *last;
  int64_t nr_kept;
  int64_t kept_bytes;
  int failed;                   /* its kept writes may be lost: repair them */
  int flushing;                 /* a flush of the plugin's own is on it */
};

struct disk {
  char *name;                   /* the export */
  struct disk *next;            /* in the registry */

  pthread_mutex_t lock;
  pthread_cond_t changed;
  uint64_t last_gen;            /* of its fates */

  struct sending *sending;      /* writes being sent (disk.c) */

  struct doubt *doubts;         /* doubt.c */
  _Atomic int nr_doubts;        /* read without the lock on every write */
  _Atomic int fence_all;        /* a doubt could not be recorded */

  struct kept *root;            /* kept writes by offset (kept.c) */
  uint64_t kept_seq;            /* numbers writes as they are kept */
  int nr_fates_keeping;         /* fates with kept data */
  _Atomic int64_t orphans;      /* kept writes of failed fates */
  int repairing;                /* a repair is under way */
  _Atomic int losses;           /* kept writes a repair lost, whose
                                   owner is gone: every flush fails */
};

/* The disk of an export, shared by every path to it, for the life of
 * the process; NULL on ENOMEM.
 */
struct disk *disk_get (const char *name);

/* A fate for a new server connection to d.  pidfd (-1: none) is the
 * server's process, owned by the fate from now on.  NULL on ENOMEM.
 */
struct fate *fate_new (struct disk *d, int pidfd);
/* The connection ended other than politely (it failed, or was ended),
 * at the first call: its doubts' quiesce-time starts, its kept writes
 * become orphans.  _locked: d->lock held.
 */
void fate_ended (struct fate *f);
void fate_ended_locked (struct fate *f);
/* Nothing sent on f can be carried out any more (the server it started
 * has exited): its doubts end.
 */
void fate_end (struct fate *f);
/* Drop the link's reference. */
void fate_put (struct fate *f);
/* Drop a reference, d->lock held; the fate is freed with its last. */
void fate_unref (struct fate *f);
/* Whether nothing sent on f can still be carried out (d->lock held). */
int fate_done (struct fate *f);

struct owner *owner_new (void);
void owner_ref (struct owner *o);
void owner_put (struct owner *o);

/* The order of writes (d->lock held).  sending_add puts s on
 * d->sending once no other write being sent overlaps it: 0, or -1 past
 * deadline_ms (-1: no limit).  sending_end takes it off.  Writes come
 * through doubt.h's write_begin, which also waits for doubts; a repair
 * (kept.c) comes here directly: it writes data older than any doubt
 * over it.
 */
int sending_add (struct disk *d, struct sending *s, int64_t deadline_ms);
void sending_end (struct disk *d, struct sending *s);

/* Wait on d->changed until deadline_ms (-1: no limit), d->lock held. */
void disk_wait (struct disk *d, int64_t deadline_ms);

#endif
