// SPDX-License-Identifier: BSD-3-Clause

package history

import (
	"fmt"
	"strings"
)

// A Cause is what the server's log says led to a rule 2 violation.
type Cause string

const (
	// CauseLostCache: the vouched write was acknowledged from a cache
	// that was lost (a crash, or the instance was replaced) before it
	// was written back, and a flush of its client then succeeded.
	CauseLostCache Cause = "acknowledged write lost with a cache, then a flush succeeded"
	// CauseStaleClosed: the value seen is a write of a connection that
	// closed (the proxy ended it, or the server closed it) before the
	// server answered it, which the server applied after the close, on
	// top of the newer write.
	CauseStaleClosed Cause = "stale write of a closed connection landed after the close"
	// CauseStaleReplaced: the value seen is a write a stopped, replaced
	// instance held, applied when it resumed, on top of the newer write.
	CauseStaleReplaced Cause = "stale write of a stopped, replaced instance landed on resuming"
	// CauseOther: neither.
	CauseOther Cause = "other"
)

// allCauses lists the causes in the order a summary gives them.
var allCauses = []Cause{CauseLostCache, CauseStaleClosed, CauseStaleReplaced, CauseOther}

// diagnose reads the server's log for why a rule 2 violation happened.
func (res *Result) diagnose(v Violation) (Cause, string) {
	if v.Rule != 2 || v.W == nil {
		return CauseOther, ""
	}
	b, w, x := v.Block, v.W, v.X
	// The stale value landed late, after W was issued.
	for i := range res.Log {
		e := &res.Log[i]
		if e.T < w.Inv || !e.touches(b) || !strings.Contains(e.Msg, "applied to") ||
			!strings.Contains(e.Msg, "after its connection closed") && !strings.Contains(e.Msg, "replaced instance") {
			continue
		}
		if x == nil || x.Kind == Write && !hasID(e.IDs, x.ID) || x.Kind != Write && len(e.IDs) > 0 {
			continue
		}
		what := e.format(res.History.T0)
		if strings.Contains(e.Msg, "replaced instance") {
			return CauseStaleReplaced, what
		}
		return CauseStaleClosed, what
	}
	// W's data went into a cache that was lost before a write-back.  (A
	// zero carries no id: it is the zero applied to the block while W
	// was in flight.)
	for i := range res.Log {
		e := &res.Log[i]
		if !e.touches(b) || !strings.Contains(e.Msg, "applied to cache") {
			continue
		}
		mine := hasID(e.IDs, w.ID)
		if w.Kind == Zero {
			mine = strings.HasPrefix(e.Msg, "zero") && e.T >= w.Inv && e.T <= w.Resp
		}
		if mine {
			if lost := res.cacheLost(e.Inst, e.T); lost != nil {
				return CauseLostCache, e.format(res.History.T0) + "\n      " + lost.format(res.History.T0)
			}
		}
	}
	return CauseOther, ""
}

// cacheLost finds where instance inst lost its cache after t with no
// write-back in between.
func (res *Result) cacheLost(inst int, t int64) *logEntry {
	for i := range res.Log {
		e := &res.Log[i]
		if e.Inst != inst || e.T < t {
			continue
		}
		switch {
		case strings.Contains(e.Msg, "written back"):
			return nil
		case strings.Contains(e.Msg, "dies (crash"), strings.Contains(e.Msg, "drops its cache"):
			return e
		}
	}
	return nil
}

func hasID(ids []int64, id int64) bool {
	for _, x := range ids {
		if x == id {
			return true
		}
	}
	return false
}

// causeText is the diagnosis for a report.
func (res *Result) causeText(v Violation) string {
	c, evidence := res.diagnose(v)
	if c == CauseOther {
		return ""
	}
	return fmt.Sprintf("  diagnosis (from the server's log): %s:\n      %s\n", c, strings.TrimSpace(evidence))
}
