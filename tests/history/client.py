# SPDX-License-Identifier: BSD-3-Clause
# One client of a history schedule (history/clients.go runs it): a real
# libnbd client that keeps up to `depth` requests in flight through the
# proxy, and prints one JSON line per event on stdout:
#   {"k":"i", ...}       an op is issued: id, client, op, first block b,
#                        blocks n, fua, final; t = CLOCK_MONOTONIC ns just
#                        before it is sent
#   {"k":"c", ...}       an op ended: id, t when its end was seen, err
#                        (errno, 0: success), and for a read v, the value
#                        of each block (0: zero, -1: garbage, else the id
#                        of the op whose data it is) and bad (garbage, hex)
#   {"k":"client", ...}  a connection is made: a new client id c, what
#                        the server can do (can: flush, fua, trim, zero)
#   {"k":"unsent",...}   libnbd refused to send op id (the connection is
#                        gone): it ends at once with its errno
#   {"k":"connfail",...} a connection attempt failed
#   {"k":"done"}         the final phase is over
# A client whose connection died, or that keeps failing, reconnects as a
# new client id.  On "final" on stdin it stops issuing random ops, lets
# what is in flight end, flushes (once more if that fails) and reads
# every block.
import errno
import json
import os
import random
import select
import struct
import sys
import time

import nbd

cfg = json.loads(sys.argv[1])
BS = 4096
MAGIC = 0x4E42444849535421  # history/block.go
UNITS = BS // 32
ZERO = bytes(BS)
SEQ_BITS = 20  # history/history.go: opSeqBits
CLIENT_STRIDE = 10  # client ids of process k: k+1, k+11, k+21, ...
FINAL_READ_BLOCKS = 4
FINAL_DEPTH = 8
RECONNECT_PAUSE = 0.02  # between failed connection attempts
READBACK_WRITE = 0.4  # how often a write is read back at once
READBACK_FLUSH = 0.6  # how often a flush is followed by reading back
READBACK_AFTER_FLUSH = 4  # ranges read back after a flush, at most
READBACK_KEEP = 16  # writes remembered for reading back after a flush
# After a write failed with EIO, this process writes elsewhere for so
# many seconds, about the rest of the chaos phase (a real client that
# saw a range fail moves on, at least for a while): the plugin makes a
# write over bytes in doubt wait up to reconnect-delay before it fails,
# and every client coming back to the same hot block would stall the
# schedule for seconds each time.
AVOID_NS = 20 * 10**9
AVOID_TRIES = 4

rng = random.Random(cfg["seed"])
blocks, depth, hot = cfg["blocks"], cfg["depth"], cfg["hot"]
out_lines = []
avoid = {}  # block -> CLOCK_MONOTONIC ns until which writes go elsewhere


def now():
    return time.monotonic_ns()


def emit(rec):
    out_lines.append(json.dumps(rec, separators=(",", ":")))


def flush_out():
    if out_lines:
        sys.stdout.write("\n".join(out_lines) + "\n")
        sys.stdout.flush()
        out_lines.clear()


def block_data(opid, b):
    return struct.pack("<QQQQ", MAGIC, opid, b, MAGIC ^ opid ^ b) * UNITS


def value(data, b):
    """What block b holds: 0 (zero), an op id, or -1 (garbage) and its
    first bytes."""
    if data == ZERO:
        return 0, ""
    magic, opid, blk, chk = struct.unpack_from("<QQQQ", data)
    if (magic == MAGIC and chk == MAGIC ^ opid ^ blk and blk == b and opid > 0
            and data == data[:32] * UNITS):
        return opid, ""
    return -1, data[:32].hex()


class Stdin:
    """The driver's commands: "final"; end of file means the same."""
    open = True
    final = False

    def read(self):
        data = os.read(0, 4096)
        if not data:
            self.open = False
            self.final = True
        elif b"final" in data:
            self.final = True


stdin = Stdin()


class Client:
    def __init__(self, gen):
        self.cid = cfg["proc"] + 1 + CLIENT_STRIDE * gen
        self.seq = 0
        self.h = None
        self.inflight = {}
        self.fails = 0  # consecutive failed ops
        self.leave = False  # reconnect once what is in flight has ended
        self.retry = None  # a range to write again after a failed write
        self.readback = []  # ranges to read back: real clients verify
        self.written = []  # ranges written since the last flush was issued
        self.flushing = {}  # flush id -> ranges written before it was issued
        self.final = False
        self.results = {}  # final phase: op id -> (kind, err)

    def connect(self):
        while True:
            h = nbd.NBD()
            try:
                h.connect_unix(cfg["sock"])
            except nbd.Error as e:
                emit({"k": "connfail", "c": self.cid, "t": now(), "msg": str(e)})
                flush_out()
                del h
                time.sleep(RECONNECT_PAUSE)
                continue
            self.h = h
            self.can = {"flush": h.can_flush(), "fua": h.can_fua(),
                        "trim": h.can_trim(), "zero": h.can_zero()}
            emit({"k": "client", "c": self.cid, "t": now(), "size": h.get_size(), "can": self.can})
            return

    def close(self):
        try:
            self.h.aio_disconnect(0)
        except nbd.Error:
            pass
        self.h = None

    def dead(self):
        return self.h.aio_is_closed() or self.h.aio_is_dead()

    def issue(self, kind, first, n, fua):
        self.seq += 1
        opid = (self.cid << SEQ_BITS) | self.seq
        flags = nbd.CMD_FLAG_FUA if fua else 0
        buf, ba = None, None
        if kind == "write":
            buf = nbd.Buffer.from_bytearray(b"".join(block_data(opid, first + i) for i in range(n)))
        elif kind == "read":
            ba = bytearray(n * BS)
            buf = nbd.Buffer.from_buffer(ba)
        self.inflight[opid] = (kind, first, n, ba, buf)

        def done(err, opid=opid):
            self.complete(opid, err.value)
            return 1

        h = self.h
        if kind == "flush":
            self.flushing[opid], self.written = self.written, []
        rec = {"k": "i", "id": opid, "c": self.cid, "op": kind, "b": first, "n": n,
               "fua": int(fua), "final": int(self.final)}
        rec["t"] = now()
        emit(rec)
        try:
            if kind == "write":
                h.aio_pwrite(buf, first * BS, completion=done, flags=flags)
            elif kind == "read":
                h.aio_pread(buf, first * BS, completion=done)
            elif kind == "zero":
                h.aio_zero(n * BS, first * BS, completion=done, flags=flags)
            elif kind == "trim":
                h.aio_trim(n * BS, first * BS, completion=done)
            else:
                h.aio_flush(completion=done)
        except nbd.Error as e:
            # libnbd refused to send it (the connection is gone already).
            emit({"k": "unsent", "id": opid})
            self.complete(opid, e.errnum or errno.EIO)
        return opid

    def complete(self, opid, err):
        t = now()
        kind, first, n, ba, _ = self.inflight.pop(opid)
        rec = {"k": "c", "id": opid, "t": t, "err": err}
        if kind == "read" and err == 0:
            vals, bad = [], []
            for i in range(n):
                v, x = value(bytes(ba[i * BS:(i + 1) * BS]), first + i)
                vals.append(v)
                bad.append(x)
            rec["v"] = vals
            if any(bad):
                rec["bad"] = bad
        emit(rec)
        before = self.flushing.pop(opid, [])
        if self.final:
            self.results[opid] = (kind, err)
            return
        if err == 0:
            self.fails = 0
            # Read back what was written, at once or after a flush.
            if kind in ("write", "zero"):
                self.written = (self.written + [(first, n)])[-READBACK_KEEP:]
                if rng.random() < READBACK_WRITE:
                    self.readback.append((first, n))
            elif kind == "flush" and before and rng.random() < READBACK_FLUSH:
                self.readback += rng.sample(before, min(READBACK_AFTER_FLUSH, len(before)))
            return
        self.fails += 1
        # A real client writes again what failed to write, often, once;
        # after an EIO, then writes elsewhere for a while.
        if kind in ("write", "zero") and err != errno.ENOTCONN and not self.avoided(first, n) \
                and rng.random() < 0.5:
            self.retry = (first, n)
        if kind in ("write", "zero", "trim") and err == errno.EIO:
            for b in range(first, first + n):
                avoid[b] = now() + AVOID_NS
        if self.fails >= 2 or rng.random() < 0.3:
            self.leave = True

    def pick(self):
        """A random op: (kind, first block, blocks, fua)."""
        if self.retry:
            first, n = self.retry
            self.retry = None
            return "write", first, n, self.can["fua"] and rng.random() < 0.25
        if self.readback:
            first, n = self.readback.pop(0)
            return "read", first, n, False
        r = rng.random()
        if r < 0.35:
            kind = "read"
        elif r < 0.68:
            kind = "write"
        elif r < 0.76:
            kind = "zero" if self.can["zero"] else "write"
        elif r < 0.82:
            kind = "trim" if self.can["trim"] else "read"
        else:
            kind = "flush" if self.can["flush"] else "read"
        if kind == "flush":
            return kind, 0, 0, False
        for _ in range(AVOID_TRIES):
            first = rng.choice(hot) if rng.random() < 0.5 else rng.randrange(blocks)
            n = min(rng.choice((1, 1, 1, 2, 2, 3, 4)), blocks - first)
            if kind in ("read", "flush") or not self.avoided(first, n):
                break
        else:
            kind = "read"
        fua = kind in ("write", "zero") and self.can["fua"] and rng.random() < 0.25
        return kind, first, n, fua

    def avoided(self, first, n):
        """Whether a write there is to be avoided (AVOID_NS)."""
        t = now()
        return any(avoid.get(b, 0) > t for b in range(first, first + n))

    def wait(self):
        """Wait for the connection or stdin, and let libnbd work."""
        h = self.h
        if self.dead():
            return
        fd = h.aio_get_fd()
        d = h.aio_get_direction()
        rl = [fd] if d & nbd.AIO_DIRECTION_READ else []
        wl = [fd] if d & nbd.AIO_DIRECTION_WRITE else []
        if not rl and not wl:
            return
        if stdin.open:
            rl.append(0)
        r, w, _ = select.select(rl, wl, [])
        if 0 in r:
            stdin.read()
        try:
            if fd in r:
                h.aio_notify_read()
            if fd in w:
                h.aio_notify_write()
        except nbd.Error:
            pass

    def drain(self):
        """Let what is in flight end (libnbd ends it all when the
        connection dies)."""
        while self.inflight and not self.dead():
            self.wait()
            flush_out()
        for opid in list(self.inflight):
            self.complete(opid, errno.ENOTCONN)
        flush_out()

    def run(self):
        """Random ops until the connection should be left, or the final
        phase.  Returns True for the final phase."""
        while True:
            while not (self.leave or stdin.final) and len(self.inflight) < depth:
                self.issue(*self.pick())
            flush_out()
            if self.leave or stdin.final:
                self.drain()
                return stdin.final
            self.wait()
            if self.dead():
                self.drain()
                return stdin.final

    def run_final(self):
        """Flush (again if it fails), then read every block.  Returns
        False if the connection died first."""
        self.final = True
        if self.can["flush"]:
            for _ in range(2):
                f = self.issue("flush", 0, 0, False)
                self.drain()
                if self.results.get(f, ("", errno.EIO))[1] == 0 or self.dead():
                    break
        left = list(range(0, blocks, FINAL_READ_BLOCKS))
        while left and not self.dead():
            while left and len(self.inflight) < FINAL_DEPTH:
                first = left.pop()
                self.issue("read", first, min(FINAL_READ_BLOCKS, blocks - first), False)
            flush_out()
            self.wait()
        self.drain()
        return not self.dead()


def main():
    gen = 0
    final_attempts = 3
    while True:
        cl = Client(gen)
        gen += 1
        cl.connect()
        flush_out()
        if not stdin.final and not cl.run():
            cl.close()
            continue
        # The final phase wants a working connection: one whose last ops
        # failed is left for a new one (without reconnect-delay a failed
        # connection stays failed).
        if cl.fails and final_attempts > 1:
            final_attempts -= 1
            cl.close()
            continue
        if not cl.dead() and cl.run_final():
            cl.close()
            break
        cl.close()
        final_attempts -= 1
        if final_attempts == 0:
            break
    emit({"k": "done", "t": now()})
    flush_out()


main()
