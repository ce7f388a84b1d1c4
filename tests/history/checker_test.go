// SPDX-License-Identifier: BSD-3-Clause

package history

import (
	"strings"
	"testing"
)

// Hand-written histories, each clean or breaking one rule, so that the
// checker is seen to fail.  Times are in milliseconds.

const ms = int64(1e6)

// id makes an op id of a client.
func id(client, n int) int64 { return int64(client)<<opSeqBits | int64(n) }

// op makes an op that ended: errno 0 is success; vals are a read's.
func op(client, n int, kind OpKind, first, blocks int, inv, resp int64, errno int, vals ...int64) *Op {
	return &Op{ID: id(client, n), Client: client, Kind: kind, First: first, N: blocks,
		Inv: inv * ms, Resp: resp * ms, Ended: true, Errno: errno, Values: vals}
}

func fua(o *Op) *Op { o.FUA = true; return o }

func lost(o *Op) *Op { o.Lost = true; return o }

func unended(o *Op) *Op { o.Ended = false; o.Resp = 0; return o }

// history makes a history of 8 blocks, all zero at the end unless final
// is given (block, value pairs).
func history(flush bool, ops []*Op, final ...int64) *History {
	h := &History{Flush: flush, Ops: ops, Final: make([]int64, 8), FinalOK: true}
	for i := 0; i+1 < len(final); i += 2 {
		h.Final[final[i]] = final[i+1]
	}
	return h
}

// expect checks that the history breaks exactly the rules given (each
// once), and that each violation's text holds the words given for it.
func expect(t *testing.T, name string, h *History, want ...string) {
	t.Helper()
	got := Check(h)
	var texts []string
	for _, v := range got {
		texts = append(texts, v.What)
	}
	if len(got) != len(want) {
		t.Errorf("%s: %d violations, want %d:\n  %s", name, len(got), len(want), strings.Join(texts, "\n  "))
		return
	}
	for i, w := range want {
		if !strings.Contains(got[i].What, w) {
			t.Errorf("%s: violation %q, want one saying %q", name, got[i].What, w)
		}
	}
}

const (
	X, W, F, G, R, Z = 1, 2, 3, 4, 5, 6 // op numbers, client 1
)

func TestRule1ReadsReturnWrittenData(t *testing.T) {
	x := op(1, X, Write, 2, 2, 0, 10, 0)
	expect(t, "the data of a write", history(false, []*Op{x, op(1, R, Read, 2, 2, 20, 30, 0, id(1, X), id(1, X))}, 2, id(1, X), 3, id(1, X)))
	expect(t, "zero, never written", history(false, []*Op{op(1, R, Read, 5, 1, 20, 30, 0, valueZero)}))
	expect(t, "a write still in flight", history(false, []*Op{unended(op(1, X, Write, 2, 1, 0, 0, 0)), op(1, R, Read, 2, 1, 20, 30, 0, id(1, X))}, 2, id(1, X)))

	r := op(1, R, Read, 2, 1, 20, 30, 0, valueGarbage)
	r.Bad = []string{"first bytes 00ff"}
	expect(t, "garbage", history(false, []*Op{r}), "data no op wrote (first bytes 00ff)")
	expect(t, "an op no client issued", history(false, []*Op{op(1, R, Read, 2, 1, 20, 30, 0, id(9, 9))}), "an op no client issued")
	expect(t, "another block's data", history(false, []*Op{x, op(1, R, Read, 5, 1, 20, 30, 0, id(1, X))}, 2, id(1, X), 3, id(1, X)), "which did not write it")
	expect(t, "data from the future", history(false, []*Op{op(1, X, Write, 2, 1, 40, 50, 0), op(1, R, Read, 2, 1, 20, 30, 0, id(1, X))}, 2, id(1, X)), "issued after the read ended")
	expect(t, "a failed read is not checked", history(false, []*Op{op(1, R, Read, 2, 1, 20, 30, 5, valueGarbage)}))
	h := history(false, nil)
	h.Final[4], h.BadFin = valueGarbage, []string{4: "first bytes 41"}
	expect(t, "garbage in the final storage", h, "the final storage: block 4 holds data no op wrote")
}

func TestRule2DurabilityAndOrder(t *testing.T) {
	x := op(1, X, Write, 3, 1, 0, 5, 0) // older than W: X ≺ W
	xid := id(1, X)

	// Vouched by its own reply: FUA, or no flush advertised.
	w := fua(op(2, W, Write, 3, 1, 10, 20, 0))
	expect(t, "FUA write read back", history(true, []*Op{x, w, op(1, R, Read, 3, 1, 30, 40, 0, id(2, W))}, 3, id(2, W)))
	expect(t, "FUA write lost, an older write read", history(true, []*Op{x, w, op(1, R, Read, 3, 1, 30, 40, 0, xid)}, 3, id(2, W)),
		"read c1#5: block 3 holds c1#1 (c1#1, which ended before c2#2 was issued) after c2#2, vouched for by its own reply")
	expect(t, "read issued before the vouch", history(true, []*Op{x, w, op(1, R, Read, 3, 1, 15, 40, 0, xid)}, 3, id(2, W)))
	expect(t, "an older value in the final storage", history(true, []*Op{x, w}, 3, xid),
		"the final storage: block 3 holds c1#1")
	expect(t, "no flush: every write is vouched at its reply", history(false, []*Op{x, op(2, W, Write, 3, 1, 10, 20, 0)}, 3, xid),
		"vouched for by its own reply")
	expect(t, "a write concurrent with W", history(true, []*Op{op(1, X, Write, 3, 1, 0, 25, 0), w}, 3, xid))
	expect(t, "a failed write is never vouched", history(true, []*Op{x, fua(op(2, W, Write, 3, 1, 10, 20, 5))}, 3, xid))

	// Vouched by a flush of W's client.
	wb := op(2, W, Write, 3, 1, 10, 20, 0)
	flushOK := op(2, F, Flush, 0, 0, 30, 40, 0)
	expect(t, "flushed write read back", history(true, []*Op{x, wb, flushOK}, 3, id(2, W)))
	expect(t, "flushed write lost (a flush succeeded after the server lost it)", history(true, []*Op{x, wb, flushOK}, 3, xid),
		"after c2#2, vouched for by flush c2#3, ended")
	expect(t, "read before the flush ended", history(true, []*Op{x, wb, flushOK, op(1, R, Read, 3, 1, 35, 45, 0, xid)}, 3, id(2, W)))
	expect(t, "read issued as the flush ended (not after)", history(true, []*Op{x, wb, flushOK, op(1, R, Read, 3, 1, 40, 45, 0, xid)}, 3, id(2, W)))
	expect(t, "read after the flush ended", history(true, []*Op{x, wb, flushOK, op(1, R, Read, 3, 1, 41, 45, 0, xid)}, 3, id(2, W)),
		"read c1#5: block 3 holds c1#1")
	expect(t, "a flush of another client vouches nothing", history(true, []*Op{x, wb, op(3, F, Flush, 0, 0, 30, 40, 0)}, 3, xid))
	expect(t, "a flush issued before W ended vouches nothing", history(true, []*Op{x, wb, op(2, F, Flush, 0, 0, 15, 40, 0)}, 3, xid))
	expect(t, "a failed flush first excuses W for good", history(true,
		[]*Op{x, wb, op(2, G, Flush, 0, 0, 25, 28, 5), flushOK}, 3, xid))
	expect(t, "a flush whose connection died excuses W", history(true,
		[]*Op{x, wb, lost(op(2, G, Flush, 0, 0, 25, 28, 107)), flushOK}, 3, xid))
	expect(t, "a failed flush before W excuses nothing", history(true,
		[]*Op{x, op(2, G, Flush, 0, 0, 1, 8, 5), wb, flushOK}, 3, xid), "vouched for by flush c2#3")

	// A stale write landing: it failed (or was acknowledged) before B was
	// issued, and B was vouched for.
	a := op(1, X, Write, 3, 1, 0, 30, 5)
	b := fua(op(2, W, Write, 3, 1, 40, 50, 0))
	expect(t, "a failed write landing after a newer one", history(true, []*Op{a, b}, 3, xid),
		"the final storage: block 3 holds c1#1 (c1#1, which ended before c2#2 was issued)")
	expect(t, "a write whose connection died may land any time", history(true, []*Op{lost(op(1, X, Write, 3, 1, 0, 30, 107)), b}, 3, xid))
	expect(t, "a write that never ended may land any time", history(true, []*Op{unended(op(1, X, Write, 3, 1, 0, 30, 0)), b}, 3, xid))

	// Zero values: the initial contents, or a zero or trim.
	expect(t, "the initial contents over a vouched write", history(true, []*Op{w}), "holds the initial contents (zero) after c2#2")
	expect(t, "an older zero over a vouched write", history(true, []*Op{op(1, Z, Zero, 3, 1, 0, 5, 0), w}),
		"holds zero (c1#6, which ended before c2#2 was issued)")
	expect(t, "a concurrent trim", history(true, []*Op{op(1, Z, Trim, 3, 1, 15, 25, 0), w}))
	expect(t, "a failed zero may have been carried out", history(true, []*Op{op(1, Z, Zero, 3, 1, 15, 25, 5), w}))
	expect(t, "a zero issued after the read ended is no excuse", history(true,
		[]*Op{w, op(1, Z, Zero, 3, 1, 50, 55, 0), op(1, R, Read, 3, 1, 30, 40, 0, valueZero)}, 3, id(2, W)), "read c1#5: block 3 holds the initial contents")
	expect(t, "a vouched zero read back", history(true, []*Op{x, fua(op(2, W, Zero, 3, 1, 10, 20, 0))}))
	expect(t, "a vouched zero lost", history(true, []*Op{x, fua(op(2, W, Zero, 3, 1, 10, 20, 0))}, 3, xid), "holds c1#1")
	expect(t, "trim is never vouched", history(true, []*Op{x, fua(op(2, W, Trim, 3, 1, 10, 20, 0))}, 3, xid))
	expect(t, "a block trimmed after W is unspecified", history(true, []*Op{x, w, op(2, Z, Trim, 3, 1, 25, 28, 0),
		op(1, R, Read, 3, 1, 30, 40, 0, xid)}, 3, xid))
	expect(t, "a trim issued after the read ended is no excuse", history(true, []*Op{x, w, op(2, Z, Trim, 3, 1, 45, 48, 0),
		op(1, R, Read, 3, 1, 30, 40, 0, xid)}, 3, id(2, W)), "read c1#5: block 3 holds c1#1")
	expect(t, "a trim before W is overwritten", history(true, []*Op{op(2, Z, Trim, 3, 1, 1, 4, 0), x, w}, 3, xid), "the final storage: block 3 holds c1#1")

	// One stale value seen by many reads is one violation, counted.
	h := history(true, []*Op{x, w, op(1, R, Read, 3, 1, 30, 40, 0, xid), op(1, R+1, Read, 3, 1, 50, 60, 0, xid)}, 3, id(2, W))
	if v := Check(h); len(v) != 1 || v[0].Count != 2 {
		t.Errorf("two reads of one stale value: %+v, want one violation counted twice", v)
	}
}

func TestRule3Bounds(t *testing.T) {
	bound := func(ops ...*Op) *History {
		h := history(true, ops)
		h.Timeout, h.Bound = 300*ms, 1000*ms
		return h
	}
	expect(t, "within the bound", bound(op(1, X, Read, 0, 1, 0, 999, 5, valueZero)))
	expect(t, "beyond the bound", bound(op(1, X, Write, 0, 1, 0, 1001, 5)), "c1#1 took 1.00s, beyond the bound of 1.0s")
	expect(t, "never ended", bound(unended(op(1, X, Flush, 0, 0, 0, 0, 0))), "c1#1 never ended")
	h := history(true, []*Op{op(1, X, Write, 0, 1, 0, 5000, 0)})
	expect(t, "no bound without timeout=", h)
}

// The block format is the one client.py writes and reads.
func TestBlockFormat(t *testing.T) {
	d := blockData(id(3, 7), 5)
	if v := blockValue(d, 5); v != id(3, 7) {
		t.Errorf("blockValue of c3#7's block 5 = %d", v)
	}
	if v := blockValue(d, 6); v != valueGarbage {
		t.Errorf("block 5's data read in block 6 = %d, want garbage", v)
	}
	torn := append(append([]byte(nil), d[:blockSize/2]...), blockData(id(3, 8), 5)[blockSize/2:]...)
	if v := blockValue(torn, 5); v != valueGarbage {
		t.Errorf("a block of two writes = %d, want garbage", v)
	}
	if v := blockValue(zeroBlock, 1); v != valueZero {
		t.Errorf("zeroes = %d", v)
	}
	if !pythonHasNbd() {
		t.Skip("needs python3's nbd module, python3-libnbd (not installed)")
	}
	// client.py's functions, without running its main.
	script := strings.Replace(clientScript, "\nmain()\n", "\n", 1)
	script = strings.Replace(script, "cfg = json.loads(sys.argv[1])", `cfg = {"seed": 1, "blocks": 8, "depth": 1, "hot": [0], "proc": 0, "sock": ""}`, 1)
	out, err := runPython(script + `
d = block_data(` + strings.TrimSpace(itoa(id(3, 7))) + `, 5)
print(d.hex()[:64], value(d, 5)[0], value(d, 6)[0], value(bytes(4096), 1)[0])
`)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{hexString(d[:32]), itoa(id(3, 7)), "-1", "0"}
	if got := strings.Fields(out); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("client.py says %q, want %q", got, want)
	}
}
