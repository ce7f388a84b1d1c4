// SPDX-License-Identifier: BSD-3-Clause

package history

import (
	"fmt"
	"sort"
)

// Check holds a history against the contract and returns its
// violations, each with the few ops that show it.
//
//  1. Reads return only data that was written: zero (the initial
//     contents, or a zero/trim), or the data of a write to that block
//     invoked before the read ended.  The final storage is held to the
//     same.
//  2. Durability and order: once a successful write or zero W is
//     vouched for (at its reply with FUA or without flush advertised,
//     else at the reply of the first successful flush its client issued
//     after W ended, unless a flush of that client failed in between),
//     every read of its blocks issued later, and the final storage, hold
//     a value from an op that does not strictly precede W; except in a
//     block trimmed by a trim that does not strictly precede W, issued
//     before the read ended: NBD leaves a trimmed block's contents
//     unspecified until it is written again (a repair need not bring W
//     back there, and a server may show older data).
//  3. Bounds: with timeout=T, every op ends within 2T + reconnect-delay
//     plus a slack.
func Check(h *History) []Violation {
	h.index()
	var vs violations
	checkWritten(h, &vs)
	checkDurable(h, &vs)
	checkBounds(h, &vs)
	return vs.list
}

// A Violation is one way the history breaks the contract.
type Violation struct {
	Rule  int
	Block int // -1: none
	What  string
	Ops   []*Op // the ops that show it
	Final bool  // seen in the final storage
	Count int   // how many reads or blocks showed the same
	// Rule 2: the vouched write, the flush that vouched for it (nil: its
	// reply), the op whose value was seen (nil: the initial contents),
	// the read that saw it (nil: the final storage).
	W, F, X, R *Op
}

// violations collects violations, one per kind of evidence: the same
// stale value seen by many reads is reported once, counted.
type violations struct {
	list []Violation
	seen map[string]int
}

func (vs *violations) add(key string, v Violation) {
	if vs.seen == nil {
		vs.seen = map[string]int{}
	}
	if i, ok := vs.seen[key]; ok {
		vs.list[i].Count++
		return
	}
	v.Count = 1
	vs.seen[key] = len(vs.list)
	vs.list = append(vs.list, v)
}

// ---- Rule 1

func checkWritten(h *History, vs *violations) {
	for _, r := range h.Ops {
		if r.Kind != Read || !r.ok() {
			continue
		}
		for i, v := range r.Values {
			checkValue(h, vs, r, r.First+i, v, r.bad(i))
		}
	}
	if h.FinalOK {
		for b, v := range h.Final {
			bad := ""
			if b < len(h.BadFin) {
				bad = h.BadFin[b]
			}
			checkValue(h, vs, nil, b, v, bad)
		}
	}
}

// bad is what the read saw in its i-th block, if garbage.
func (o *Op) bad(i int) string {
	if i < len(o.Bad) {
		return o.Bad[i]
	}
	return ""
}

// checkValue checks one value that read r (nil: the final storage) saw
// in block b.
func checkValue(h *History, vs *violations, r *Op, b int, v int64, bad string) {
	where, ops, resp := "the final storage", []*Op{}, int64(never)
	if r != nil {
		where, ops, resp = "read "+opName(r.ID), []*Op{r}, r.Resp
	}
	key := func(what string) string { return fmt.Sprintf("1/%d/%d/%s/%v", b, v, what, r == nil) }
	switch {
	case v == valueZero:
	case v == valueGarbage:
		vs.add(key("garbage"), Violation{Rule: 1, Block: b, Final: r == nil, Ops: ops,
			What: fmt.Sprintf("%s: block %d holds data no op wrote (%s)", where, b, bad)})
	default:
		x := h.byID[v]
		switch {
		case x == nil:
			vs.add(key("unknown"), Violation{Rule: 1, Block: b, Final: r == nil, Ops: ops,
				What: fmt.Sprintf("%s: block %d holds the data of %s, an op no client issued", where, b, opName(v))})
		case x.Kind != Write || !x.touches(b):
			vs.add(key("misplaced"), Violation{Rule: 1, Block: b, Final: r == nil, Ops: append(ops, x),
				What: fmt.Sprintf("%s: block %d holds the data of %s, which did not write it", where, b, opName(v))})
		case x.Inv >= resp:
			vs.add(key("future"), Violation{Rule: 1, Block: b, Final: r == nil, Ops: append(ops, x),
				What: fmt.Sprintf("%s: block %d holds the data of %s, issued after the read ended", where, b, opName(v))})
		}
	}
}

// ---- Rule 2

// A vouch is a successful write or zero W of a block, and when it became
// vouched for (V), by which flush (nil: by its own reply).
type vouch struct {
	w, f *Op
	v    int64
}

func checkDurable(h *History, vs *violations) {
	perBlock := vouches(h)
	// Every block's vouches by V, with the running maximum of W.Inv: the
	// vouched write issued last among those vouched by a time is the
	// strictest test of a value seen after it (X ≺ W grows with W.Inv).
	best := map[int][]vouch{}
	for b, list := range perBlock {
		sort.Slice(list, func(i, j int) bool { return list[i].v < list[j].v })
		run := make([]vouch, len(list))
		for i, x := range list {
			run[i] = x
			if i > 0 && run[i-1].w.Inv > x.w.Inv {
				run[i].w, run[i].f = run[i-1].w, run[i-1].f
			}
		}
		best[b] = run
	}
	// strictest returns the vouched write of b issued last among those
	// vouched for before t.
	strictest := func(b int, t int64) *vouch {
		run := best[b]
		i := sort.Search(len(run), func(i int) bool { return run[i].v >= t })
		if i == 0 {
			return nil
		}
		return &run[i-1]
	}
	zeroes := zeroesByBlock(h)
	check := func(r *Op, b int, v int64) {
		inv, resp := int64(never), int64(never)
		if r != nil {
			inv, resp = r.Inv, r.Resp
		}
		w := strictest(b, inv)
		if w == nil || v == valueGarbage {
			return
		}
		// The op whose value this is: the writer, or among zeroes and
		// trims the one that ended last (initial contents: none).
		var x *Op
		if v != valueZero {
			if x = h.byID[v]; x == nil {
				return // rule 1's
			}
		} else {
			for _, z := range zeroes[b] {
				if z.Inv < resp && (x == nil || z.end() > x.end()) {
					x = z
				}
			}
		}
		if x != nil && !precedes(x, w.w) {
			return
		}
		for _, z := range zeroes[b] {
			if z.Kind == Trim && !precedes(z, w.w) && z.Inv < resp {
				return
			}
		}
		where, ops := "the final storage", []*Op{w.w}
		if w.f != nil {
			ops = append(ops, w.f)
		}
		if x != nil {
			ops = append(ops, x)
		}
		if r != nil {
			where = "read " + opName(r.ID)
			ops = append(ops, r)
		}
		older := "the initial contents (zero)"
		if x != nil {
			older = fmt.Sprintf("%s (%s, which ended before %s was issued)", valueName(v), opName(x.ID), opName(w.w.ID))
		}
		how := "its own reply"
		if w.f != nil {
			how = "flush " + opName(w.f.ID)
		}
		key := fmt.Sprintf("2/%d/%d/%d/%v", b, v, w.w.ID, r == nil)
		vs.add(key, Violation{Rule: 2, Block: b, Final: r == nil, Ops: ops, W: w.w, F: w.f, X: x, R: r,
			What: fmt.Sprintf("%s: block %d holds %s after %s, vouched for by %s, ended",
				where, b, older, opName(w.w.ID), how)})
	}
	for _, r := range h.Ops {
		if r.Kind == Read && r.ok() {
			for i, v := range r.Values {
				check(r, r.First+i, v)
			}
		}
	}
	if h.FinalOK {
		for b, v := range h.Final {
			check(nil, b, v)
		}
	}
}

// vouches finds, per block, the successful writes and zeroes that are
// vouched for, and when.
func vouches(h *History) map[int][]vouch {
	flushes := map[int][]*Op{}
	for _, o := range h.Ops {
		if o.Kind == Flush && o.Ended {
			flushes[o.Client] = append(flushes[o.Client], o)
		}
	}
	for _, fs := range flushes {
		sort.Slice(fs, func(i, j int) bool { return fs[i].Inv < fs[j].Inv })
	}
	out := map[int][]vouch{}
	for _, w := range h.Ops {
		if (w.Kind != Write && w.Kind != Zero) || !w.ok() {
			continue
		}
		x := vouch{w: w, v: w.Resp}
		if h.Flush && !w.FUA {
			var ok bool
			if x.f, ok = vouchingFlush(flushes[w.Client], w); !ok {
				continue
			}
			x.v = x.f.Resp
		}
		for b := w.First; b < w.First+w.N; b++ {
			out[b] = append(out[b], x)
		}
	}
	return out
}

// vouchingFlush is the first flush (by issue) of W's client issued after
// W ended, if it succeeded; a flush that failed first excuses W for
// good: the client was told data may be lost.
func vouchingFlush(fs []*Op, w *Op) (*Op, bool) {
	for _, f := range fs {
		if f.Inv <= w.Resp {
			continue
		}
		if f.failed() {
			return nil, false
		}
		return f, true
	}
	return nil, false
}

// zeroesByBlock lists the zeroes and trims of every block, whatever their
// outcome: a failed one may have been carried out.
func zeroesByBlock(h *History) map[int][]*Op {
	out := map[int][]*Op{}
	for _, o := range h.Ops {
		if o.Kind == Zero || o.Kind == Trim {
			for b := o.First; b < o.First+o.N; b++ {
				out[b] = append(out[b], o)
			}
		}
	}
	return out
}

// ---- Rule 3

func checkBounds(h *History, vs *violations) {
	if h.Timeout == 0 {
		return
	}
	for _, o := range h.Ops {
		switch {
		case !o.Ended:
			vs.add("3/never/"+opName(o.ID), Violation{Rule: 3, Block: -1, Ops: []*Op{o},
				What: fmt.Sprintf("%s never ended (bound %.1fs)", opName(o.ID), float64(h.Bound)/1e9)})
		case o.Resp-o.Inv > h.Bound:
			vs.add("3/late/"+opName(o.ID), Violation{Rule: 3, Block: -1, Ops: []*Op{o},
				What: fmt.Sprintf("%s took %.2fs, beyond the bound of %.1fs", opName(o.ID),
					float64(o.Resp-o.Inv)/1e9, float64(h.Bound)/1e9)})
		}
	}
}
