/* SPDX-License-Identifier: BSD-3-Clause
 *
 * Writes in doubt, and the fence that keeps later writes off them.
 *
 * The danger.  NBD cannot cancel a request, and a server may carry out a
 * write it has read at any later time, even after the connection it came
 * on has ended: qemu-nbd applies a pending write after it has closed the
 * connection, and a stopped server applies its writes when it resumes,
 * even after another server has taken its place on the same disk.  A
 * write sent on a connection that ended before the server answered it is
 * therefore *in doubt* (engine.h, ENGINE_IN_DOUBT).  Were a write over
 * the same bytes acknowledged meanwhile, the old copy could land on top
 * of it, and the client would never learn that its newer data was gone.
 * The server's having closed the connection is no sign that it is done
 * (qemu-nbd closes first).
 *
 * The rule, for the whole process (every connection of this nbdkit
 * reaches the same disk):
 *  - a write (pwrite, zero, trim) is sent only when no write in doubt
 *    overlaps it, other than earlier copies of itself: resending a write
 *    in doubt is safe, since its old copy holds the same bytes;
 *  - a doubt ends only when the server that had the write can no longer
 *    carry it out.  This process knows that only of a server it started
 *    (command=), once that server has exited.  Any other doubt is for
 *    good: nothing a server says on another connection proves that an
 *    older one is done;
 *  - a write that overlaps a doubt which can end waits for it within the
 *    request's bounds (reconnect-delay), then fails with EIO; a write
 *    that overlaps a doubt for good fails with EIO at once.
 * A refused write is not a lost write: its client is told.  Reads are not
 * held: they may return the old or the new bytes of a write in doubt,
 * both of which were written.
 *
 * Invariants.  One mutex protects the list of doubts and every fate; a
 * condition variable wakes writes waiting on a doubt that ended.  A
 * doubt is recorded before the request it belongs to answers its client
 * (direct.c), so that any write the client sends after that answer finds
 * it.  A fate lives while its creator or a doubt refers to it.  Doubts
 * for good whose requests are over are merged, so their number is bounded
 * by the number of separate ranges, not of failures.
 */
#ifndef NBDGO_DOUBT_H
#define NBDGO_DOUBT_H

#include <stdint.h>

/* What is known of a server connection whose writes may be in doubt. */
struct fate;

/* can_end: whether this process will learn that the server has exited
 * (fate_end).  NULL on ENOMEM.
 */
struct fate *fate_new (int can_end);
/* The server can no longer carry anything out: its doubts end. */
void fate_end (struct fate *f);
/* Drop the creator's reference. */
void fate_put (struct fate *f);

/* Record that write id (any number other than 0 that no other running
 * write has), sent under f, is in doubt.  -1 if it could not
 * be recorded (ENOMEM): every write is then refused, rather than risk
 * one.
 */
int doubt_add (struct fate *f, uint64_t id, uint64_t offset, uint64_t count);
/* Write id's request is over: its doubts no longer let anything through. */
void doubt_forget (uint64_t id);
/* Whether any write is in doubt, or writes are refused: cheap, for the
 * path of every write.
 */
int doubts_exist (void);
/* Wait until no doubt other than id's overlaps [offset, offset+count),
 * or until deadline_ms (engine_now_ms clock).  0 if none does, else EIO
 * with *msg (malloc'd) saying why.
 */
int doubt_wait (uint64_t id, uint64_t offset, uint64_t count,
                int64_t deadline_ms, char **msg);

#endif
