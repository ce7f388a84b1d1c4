// SPDX-License-Identifier: BSD-3-Clause

package history

import (
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
)

// Why client ops failed.  The plugin logs one error line for each
// request it fails (nbdkit's stderr), saying why: the lines are counted
// by cause, so that a campaign shows what its failed ops were made of.
// The server's own error replies are counted from its side
// (Server.ErrorReplies): it knows which requests it failed.

// The causes of failed requests, as the plugin's messages say them.
const (
	FailInDoubt    = "in doubt"
	FailOverlap    = "an overlapping write in flight did not end in time"
	FailNoConn     = "no server connection within reconnect-delay"
	FailTimeout    = "timeout"
	FailLost       = "lost with the cache, or the repair failed"
	FailShutdown   = "server shutting down (NBD_ESHUTDOWN)"
	FailConnFailed = "server connection failed"
	FailServer     = "server error reply"
	FailOther      = "other"
)

// allFailCauses lists the causes in the order a summary gives them.
var allFailCauses = []string{FailInDoubt, FailOverlap, FailNoConn, FailTimeout, FailLost, FailShutdown,
	FailConnFailed, FailServer, FailOther}

// failCauseLines keeps this many lines of each cause for a report.
const failCauseLines = 3

// failPatterns: the first that a message contains names its cause.  "in
// doubt" first: a refusal over bytes in doubt also names
// reconnect-delay.
var failPatterns = []struct{ cause, substr string }{
	{FailInDoubt, "in doubt"},
	{FailOverlap, "an earlier write over them has not ended"},
	{FailNoConn, "no working server connection within reconnect-delay"},
	{FailTimeout, "did not answer within timeout"},
	{FailLost, "may have been lost"},
	{FailLost, "was lost with the server's write cache"},
	{FailLost, "repair"},
	{FailLost, "have lost"},
	{FailShutdown, "NBD_ESHUTDOWN"},
	{FailConnFailed, "server connection failed"},
}

// errorLine is nbdkit's error line: "nbdkit: NAME.N: error: MSG"; the
// plugin starts the message of a failed request with the request's
// name.  Other error lines are notices: a server connection failed (the
// plugin reconnects), one refused at its opening, a repair done.
var errorLine = regexp.MustCompile(`^nbdkit: [^:]*: error: ((pread|pwrite|zero|trim|flush|cache|extents|block_status): .*)$`)

// repairLine is the plugin's notice of a repair that wrote again what
// the server had lost (kept.c).
var repairLine = regexp.MustCompile(`error: repair: the server had lost ([0-9]+) of ([0-9]+) unflushed writes`)

// serverErrors are the messages of the errors an NBD server can send,
// which the plugin passes on as "OP: MESSAGE".
var serverErrors = func() map[string]bool {
	m := map[string]bool{}
	for _, e := range []syscall.Errno{syscall.EPERM, syscall.EIO, syscall.ENOMEM, syscall.EINVAL,
		syscall.ENOSPC, syscall.EOVERFLOW, syscall.ENOTSUP, syscall.ESHUTDOWN} {
		m[strings.ToLower(e.Error())] = true // Go's are strerror's, in lower case
	}
	return m
}()

// failCauseOf is the cause of a failed request that one line of
// nbdkit's stderr gives, or "" for a line that is no request's failure:
// not an error, the notice of a failed server connection the plugin
// reconnects after (it fails no request by itself), or a connection
// refused at its opening (the client sees a failed connection attempt).
func failCauseOf(line string) string {
	m := errorLine.FindStringSubmatch(line)
	if m == nil {
		return ""
	}
	msg := m[1]
	for _, p := range failPatterns {
		if strings.Contains(msg, p.substr) {
			return p.cause
		}
	}
	if i := strings.Index(msg, ": "); i > 0 && serverErrors[strings.ToLower(msg[i+2:])] {
		// The server's NBD_ESHUTDOWN, passed on as it is.
		if strings.EqualFold(msg[i+2:], syscall.ESHUTDOWN.Error()) {
			return FailShutdown
		}
		return FailServer
	}
	return FailOther
}

// FailCauses counts the failed requests of one run by cause, with the
// first lines of each.
type FailCauses struct {
	Count map[string]int
	Lines map[string][]string
	First []string // the first failLines lines, whatever their cause
	Total int
	// Repairs: the plugin's repairs that wrote again what the server
	// had lost, and how many writes they wrote again.
	Repairs, Rewritten int
}

// failLines is how many lines, and ops, a failure about failed ops
// names.
const failLines = 20

// countFailCauses reads nbdkit's whole stderr.
func countFailCauses(stderr string) FailCauses {
	fc := FailCauses{Count: map[string]int{}, Lines: map[string][]string{}}
	for _, line := range strings.Split(stderr, "\n") {
		if m := repairLine.FindStringSubmatch(line); m != nil {
			n, _ := strconv.Atoi(m[1])
			fc.Repairs++
			fc.Rewritten += n
		}
		c := failCauseOf(line)
		if c == "" {
			continue
		}
		fc.Count[c]++
		fc.Total++
		if len(fc.First) < failLines {
			fc.First = append(fc.First, line)
		}
		if len(fc.Lines[c]) < failCauseLines {
			fc.Lines[c] = append(fc.Lines[c], line)
		}
	}
	return fc
}

// String writes the counts, most frequent first: "in doubt 12, timeout 3".
func (fc FailCauses) String() string {
	return countsString(fc.Count, allFailCauses)
}

// countsString writes counts in the order of names, the most frequent
// first; names not in the list come last.
func countsString(counts map[string]int, names []string) string {
	order := map[string]int{}
	for i, n := range names {
		order[n] = i
	}
	var keys []string
	for k, n := range counts {
		if n > 0 {
			keys = append(keys, k)
		}
	}
	sort.Slice(keys, func(i, j int) bool {
		a, b := keys[i], keys[j]
		if counts[a] != counts[b] {
			return counts[a] > counts[b]
		}
		oa, oka := order[a]
		ob, okb := order[b]
		if oka != okb {
			return oka
		}
		if oa != ob {
			return oa < ob
		}
		return a < b
	})
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %d", k, counts[k]))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// errorReplyName names an error reply of the server by why it sends it:
// each errno has one reason.
func errorReplyName(errno uint32) string {
	switch errno {
	case nbdEIO:
		return "EIO (error-replies)"
	case nbdEINVAL:
		return "EINVAL (the proxy broke the protocol)"
	case nbdESHUTDOWN:
		return "ESHUTDOWN (shutting down)"
	}
	return fmt.Sprintf("error %d", errno)
}

// failText is the failed ops' causes for a report: the counts from
// nbdkit's log and the server's error replies, and a few lines of each
// cause.
func (res *Result) failText() string {
	var b strings.Builder
	fmt.Fprintf(&b, "  failed ops: %d; by cause (nbdkit's log): %s; the server's error replies: %s; repairs %d (%d writes written again)\n",
		res.failedOps(), res.FailCauses, countsString(res.ErrorReplies, nil), res.FailCauses.Repairs, res.FailCauses.Rewritten)
	for _, c := range allFailCauses {
		for _, l := range res.FailCauses.Lines[c] {
			fmt.Fprintf(&b, "    %s\n", l)
		}
	}
	return b.String()
}

// knowsServerGone says whether, in this schedule, the plugin can know
// each server that failed is gone, so that no client op need fail: the
// episodes only crash (the process is killed: exit evidence) or restart
// gracefully (NBD_ESHUTDOWN: nothing in doubt, and the process exits),
// reconnect-delay= is set (a request is sent again on the new server),
// and the plugin keeps what its flushes may need (repair-memory=0 with
// flush fails a flush after a failure on purpose).  This plugin only:
// the C plugin has no reconnect-delay=.
func (s *Schedule) knowsServerGone(f ProxyFeatures) bool {
	if !f.InDoubt || !f.ReconnectDelay || s.ReconnectDelay == 0 || s.RepairMemory == "0" && s.Flush {
		return false
	}
	for _, e := range s.Episodes {
		if e.Kind != Crash && e.Kind != CrashOnFlush && e.Kind != GracefulRestart {
			return false
		}
	}
	return true
}

// checkNoFailedOps is the failure of a schedule that knowsServerGone
// and had failed ops, naming them and nbdkit's lines.  A timeout the
// server did not cause (it held nothing: the machine was slow) leaves
// a request in doubt for good: then only a note.
func (res *Result) checkNoFailedOps(f ProxyFeatures) {
	if !res.Sched.knowsServerGone(f) || res.History == nil {
		return
	}
	var ops []string
	n := 0
	for _, o := range res.History.Ops {
		if o.failed() {
			if n++; n <= failLines {
				ops = append(ops, "    "+o.describe(res.History.T0))
			}
		}
	}
	if n == 0 {
		return
	}
	if len(ops) < n {
		ops = append(ops, fmt.Sprintf("    [%d more]", n-len(ops)))
	}
	what := fmt.Sprintf("%d client ops failed in a schedule of crashes and graceful restarts only, with reconnect-delay: "+
		"the plugin can know each failed server is gone, and no op need fail.  By cause: %s.\n  The ops:\n%s\n  nbdkit's lines:\n%s",
		n, res.FailCauses, strings.Join(ops, "\n"), indent(strings.Join(res.FailCauses.First, "\n"), "    "))
	if res.FailCauses.Count[FailTimeout] > 0 {
		res.Notes = append(res.Notes, "a timeout fired though the server held no reply (a slow machine): not held against the plugin: "+what)
		return
	}
	res.Failures = append(res.Failures, what)
}

// failedOps counts the client ops that failed.
func (res *Result) failedOps() int {
	n := 0
	if res.History != nil {
		for _, o := range res.History.Ops {
			if o.failed() {
				n++
			}
		}
	}
	return n
}
