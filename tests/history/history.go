// SPDX-License-Identifier: BSD-3-Clause

package history

import (
	"fmt"
	"math"
	"strings"
	"syscall"
)

// OpKind is what an op does.
type OpKind string

const (
	Read  OpKind = "read"
	Write OpKind = "write"
	Zero  OpKind = "zero"
	Trim  OpKind = "trim"
	Flush OpKind = "flush"
)

// An Op is one request a client made, as the client saw it: Inv just
// before it was sent, Resp when its end was seen, on CLOCK_MONOTONIC.
type Op struct {
	ID     int64
	Client int
	Kind   OpKind
	First  int // first block
	N      int // blocks (0 for flush)
	FUA    bool
	Inv    int64
	Resp   int64 // 0 while it has not ended
	Ended  bool
	Errno  int  // 0: success
	Lost   bool // its connection died under it: no reply was seen (ENOTCONN)
	Unsent bool // libnbd refused to send it: the connection was gone
	Final  bool // made in the final phase
	Values []int64
	Bad    []string // per block of a read: what a garbage block looked like
}

// never is the end of an op that has not ended: after everything.
const never = math.MaxInt64

// ok says whether the op ended with success.
func (o *Op) ok() bool { return o.Ended && o.Errno == 0 }

// failed says whether the op ended with an error.
func (o *Op) failed() bool { return o.Ended && o.Errno != 0 }

// end is the op's end for strict precedence: when its reply was seen.
// An op whose reply was never seen (it has not ended, or its connection
// died under it) may still be carried out at any time.
func (o *Op) end() int64 {
	if !o.Ended || o.Lost {
		return never
	}
	return o.Resp
}

// touches says whether the op covers block b.
func (o *Op) touches(b int) bool { return o.N > 0 && b >= o.First && b < o.First+o.N }

// writes says whether the op may leave data in a block.
func (o *Op) writes() bool { return o.Kind == Write || o.Kind == Zero || o.Kind == Trim }

// precedes is the contract's X ≺ Y: X ended (with success or failure)
// before Y was issued.
func precedes(x, y *Op) bool { return x.end() < y.Inv }

// opName names an op by its client and number: c<client>#<n>.
func opName(id int64) string { return fmt.Sprintf("c%d#%d", id>>opSeqBits, id&(1<<opSeqBits-1)) }

// opSeqBits is how many low bits of an op's id number the ops of a
// client (client.py makes the ids).
const opSeqBits = 20

// A History is what one schedule's clients did and saw, and what the
// storage held at the end.
type History struct {
	T0      int64 // the schedule's start, for relative times
	Flush   bool  // the server advertised flush
	Timeout int64 // the proxy's timeout=, ns; 0: off
	Bound   int64 // rule 3: the longest an op may take, ns (with timeout=)
	Ops     []*Op
	Final   []int64  // the final storage: value per block
	FinalOK bool     // the final storage was read
	BadFin  []string // per block: what a garbage block looked like
	byID    map[int64]*Op
}

// index makes the table of ops by id.
func (h *History) index() {
	h.byID = make(map[int64]*Op, len(h.Ops))
	for _, o := range h.Ops {
		h.byID[o.ID] = o
	}
}

// describe writes an op for a report, its times relative to t0.
func (o *Op) describe(t0 int64) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s %s", relTime(o.Inv, t0), opName(o.ID), o.Kind)
	if o.FUA {
		b.WriteString("+fua")
	}
	if o.N > 0 {
		b.WriteString(" " + blocksString(o.First, o.N))
	}
	switch {
	case !o.Ended:
		b.WriteString(" ... never ended")
	case o.Lost:
		fmt.Fprintf(&b, " ... %s connection died (no reply)", relTime(o.Resp, t0))
	case o.Unsent:
		fmt.Fprintf(&b, " ... %s not sent: %s", relTime(o.Resp, t0), errnoName(o.Errno))
	case o.Errno != 0:
		fmt.Fprintf(&b, " ... %s failed: %s", relTime(o.Resp, t0), errnoName(o.Errno))
	default:
		fmt.Fprintf(&b, " ... %s ok", relTime(o.Resp, t0))
	}
	if o.Kind == Read && o.ok() {
		var vs []string
		for _, v := range o.Values {
			vs = append(vs, valueName(v))
		}
		b.WriteString(" [" + strings.Join(vs, " ") + "]")
	}
	if o.Final {
		b.WriteString(" (final phase)")
	}
	return b.String()
}

// valueName names a block's value.
func valueName(v int64) string {
	switch v {
	case valueZero:
		return "zero"
	case valueGarbage:
		return "garbage"
	}
	return opName(v)
}

// errnoName names an errno as a client sees it.
func errnoName(e int) string {
	return fmt.Sprintf("%s (%d)", syscall.Errno(e).Error(), e)
}
