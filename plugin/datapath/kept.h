/* SPDX-License-Identifier: BSD-3-Clause
 *
 * Kept writes, and the repair that heals a lost write cache.
 *
 * The danger.  A server that accepts flush may hold acknowledged writes
 * in a volatile cache, and a flush on a new connection covers only what
 * the new connection's server has: after a server connection failed, a
 * flush that succeeded would vouch for writes the old server may have
 * lost with its cache.  Failing every later flush keeps that promise,
 * but a filesystem whose flush fails goes read-only, and most restarts
 * lose nothing (a kill -9 of nbdkit's file plugin leaves its writes in
 * the kernel's page cache).
 *
 * The rule.  Each disk keeps the data of the writes acknowledged on it
 * that no flush has covered yet: the newest per range (writes that
 * overlap are sent one at a time, disk.h, so the newest is what the
 * server applied last), zeroes as ranges; a trim, a write with FUA and
 * a write not kept let go of what they cover.  A successful flush lets
 * go of what it covers: what its connection acknowledged before it was
 * sent.  When a server connection ends other than politely, what it
 * acknowledged becomes an orphan; before any server connection of the
 * disk serves a request (reads too), it repairs the orphans: reads each
 * range back, writes again what differs, and takes them as its own,
 * so that its next flush covers them truthfully.  A repair takes its
 * ranges in the order of writes, so no other write over them goes
 * first.  What could not be written again (the server refused it) is
 * lost: the flushes of the client that wrote it fail from then on.
 *
 * Memory.  Kept data is bounded by repair-memory= (process-wide): a
 * server connection keeping more than its share of half of it sends a
 * flush of its own (kept_over_share); a write that would take the
 * total past the bound waits for that flush (kept_full); past twice the
 * bound (other connections keeping the rest, and not flushing) a write
 * is not kept, and its client falls back to the rule of
 * repair-memory=0 (serve.c).
 *
 * Invariants (besides disk.h's).  Kept writes do not overlap; each is
 * in its disk's tree, by offset, and on its fate's list, oldest first.
 * disk.orphans counts the kept writes of failed fates.  Only a repair
 * holding their range on disk.sending changes or frees the kept writes
 * of a failed fate (or a write over them, which waits for that range).
 */
#ifndef NBDGO_KEPT_H
#define NBDGO_KEPT_H

#include <stdint.h>

#include "disk.h"
#include "engine.h"

/* A copy of a write's data, or NULL when it cannot be kept (out of
 * memory, or past twice repair-memory).  Counted against the bound from
 * now on: kept_write takes it, or blob_put lets it go.
 */
struct blob *blob_copy (const void *buf, uint64_t count);
void blob_put (struct blob *b);

/* Write req (ENGINE_PWRITE with blob b, ENGINE_ZERO, ENGINE_TRIM) was
 * acknowledged on a connection of f, for owner o (d->lock held): keep
 * it unless it had FUA or is a trim, and let go of what it covers.
 * Takes b.  0 if kept or nothing needed keeping, -1 if a write that
 * needed keeping could not be kept.
 */
int kept_write (struct fate *f, struct owner *o,
                const struct engine_request *req, struct blob *b);
/* The number of the last write kept on f's disk (d->lock held): a flush
 * sent after this is read covers the writes of its connection up to it.
 */
uint64_t kept_upto (struct disk *d);
/* A flush on a connection of f, sent after kept write number upto,
 * succeeded (d->lock held).
 */
void kept_flushed (struct fate *f, uint64_t upto);
/* f's connection ended other than politely: its kept writes are
 * orphans (d->lock held).
 */
void kept_fail (struct fate *f);
/* f's connection was closed politely: let go of its kept writes. */
void kept_drop (struct fate *f);
/* Whether f keeps more than its share of half of repair-memory (d->lock
 * held): it should flush.
 */
int kept_over_share (struct fate *f);
/* Whether keeping count more bytes would pass repair-memory. */
int kept_full (uint64_t count);

/* Whether d has orphans to repair: cheap, for every request. */
int kept_orphans (struct disk *d);

enum repair_outcome {
  REPAIR_DONE,                  /* no orphan left */
  REPAIR_CONN_FAILED,           /* f's connection failed under it: *msg
                                   (malloc'd, or NULL) says how */
  REPAIR_FAILED,                /* *msg says why (malloc'd, or NULL) */
};
/* Repair d's orphans over e, f's connection (d->lock not held), or wait
 * for another thread's repair, until deadline_ms (-1: no limit).
 */
int kept_repair (struct fate *f, struct engine *e, int64_t deadline_ms,
                 char **msg);

#endif
