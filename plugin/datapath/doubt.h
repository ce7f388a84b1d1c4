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
 * The rule, per disk (disk.h):
 *  - a write (pwrite, zero, trim) is sent only when no write in doubt
 *    overlaps it, other than earlier copies of itself: resending a write
 *    in doubt is safe, since its old copy holds the same bytes;
 *  - a doubt ends on evidence that the server which had the write can no
 *    longer carry it out (fate_done): its process has exited (a server
 *    on a Unix socket of this host whose process the plugin could tell
 *    for certain: peer.h); quiesce-time= has passed since its connection
 *    ended (the user's declaration); or the server command= started has
 *    exited.  Without any of these a doubt is for good: nothing a server
 *    says on another connection proves that an older one is done;
 *  - a write that overlaps a doubt which will end waits for it within
 *    the request's window (reconnect-delay), then goes; one that overlaps
 *    a doubt for good, or one that will outlast the window, fails with
 *    EIO at once.
 * A refused write is not a lost write: its client is told.  Reads are not
 * held: they may return the old or the new bytes of a write in doubt,
 * both of which were written.
 *
 * Invariants (besides disk.h's).  A doubt is recorded under disk.lock
 * before its write leaves disk.sending, so that the next overlapping
 * write finds it.  Doubts for good whose requests are over are merged,
 * so their number is bounded by the number of separate ranges, not of
 * failures; doubts whose fate is done are removed as they are found.
 */
#ifndef NBDGO_DOUBT_H
#define NBDGO_DOUBT_H

#include <stdint.h>

#include "disk.h"

/* Record that write id (unique while it runs), sent on a connection of
 * f, is in doubt (d->lock held).  -1 on ENOMEM: every write of the disk
 * is then refused, rather than risk one.
 */
int doubt_add (struct fate *f, uint64_t id, uint64_t offset, uint64_t count);
/* Write id's request is over: its doubts no longer let its copies by. */
void doubt_forget (struct disk *d, uint64_t id);
/* Remove the doubts whose fate is done (d->lock held). */
void doubts_sweep (struct disk *d);

/* The fence every write passes before it is sent.  Waits until no
 * doubt other than s->id's overlaps s (until doubt_deadline_ms) and, if
 * order is set, no write being sent does (until order_deadline_ms, -1:
 * no limit), then puts s on d->sending (if order): 0.  Else EIO, with
 * *msg (malloc'd) saying why.
 */
int write_begin (struct disk *d, struct sending *s, int order,
                 int64_t doubt_deadline_ms, int64_t order_deadline_ms,
                 char **msg);

#endif
