// SPDX-License-Identifier: BSD-3-Clause

package history

import (
	"fmt"
	"sort"
	"strings"
)

// reportLogLines bounds the server's lines in a report.
const reportLogLines = 80

// Report writes a violation as a reader needs it: the seed, the proxy's
// parameters, the episodes, the few ops that show it (times from the
// schedule's start), the server's lines about its block and ops, and
// nbdkit's stderr tail.
func (res *Result) Report(v Violation) string {
	h := res.History
	var b strings.Builder
	fmt.Fprintf(&b, "VIOLATION of rule %d, seed %d: %s\n", v.Rule, res.Sched.Seed, v.What)
	if v.Count > 1 {
		fmt.Fprintf(&b, "  (the same seen %d times)\n", v.Count)
	}
	fmt.Fprintf(&b, "  schedule: %s\n", res.Sched)
	if len(res.ProxyArgs) > 0 {
		fmt.Fprintf(&b, "  proxy: nbdkit %s\n", strings.Join(res.ProxyArgs, " "))
	}
	b.WriteString(res.episodesText(h.T0))
	b.WriteString("  the ops that show it:\n")
	ops := append([]*Op(nil), v.Ops...)
	sort.Slice(ops, func(i, j int) bool { return ops[i].Inv < ops[j].Inv })
	var ids []int64
	for _, o := range ops {
		fmt.Fprintf(&b, "    %s\n", o.describe(h.T0))
		ids = append(ids, o.ID)
		for _, val := range o.Values {
			if val > 0 {
				ids = append(ids, val)
			}
		}
	}
	if v.Final && v.Block >= 0 {
		fmt.Fprintf(&b, "    final storage: block %d holds %s\n", v.Block, valueName(h.Final[v.Block]))
		ids = append(ids, h.Final[v.Block])
	}
	b.WriteString(res.causeText(v))
	b.WriteString(res.failText())
	b.WriteString(res.logText(v.Block, ids))
	if res.ProxyStderr != "" {
		fmt.Fprintf(&b, "  nbdkit's stderr (tail):\n%s\n", indent(res.ProxyStderr, "    "))
	}
	return b.String()
}

// episodesText lists what became of the episodes.
func (res *Result) episodesText(t0 int64) string {
	var b strings.Builder
	b.WriteString("  episodes:\n")
	for _, e := range res.Episodes {
		end := "cut short by the final phase"
		if e.Ended != 0 {
			end = "to " + strings.TrimSpace(relTime(e.Ended, t0))
		}
		fmt.Fprintf(&b, "    %s from %s %s: %s\n", e.Kind, strings.TrimSpace(relTime(e.Started, t0)), end, e.Note)
	}
	if len(res.Episodes) < len(res.Sched.Episodes) {
		fmt.Fprintf(&b, "    (%d episodes never came)\n", len(res.Sched.Episodes)-len(res.Episodes))
	}
	return b.String()
}

// logText is the server's log about block blk (-1: none) and the ops,
// with every change of instance and every act of an episode.
func (res *Result) logText(blk int, ids []int64) string {
	var lines []string
	for i := range res.Log {
		e := &res.Log[i]
		onBlock := blk >= 0 && e.touches(blk) && !strings.HasSuffix(e.Msg, "received")
		if e.Key || onBlock || e.touches(-1, ids...) {
			lines = append(lines, "    "+e.format(res.History.T0))
		}
	}
	if len(lines) > reportLogLines {
		cut := len(lines) - reportLogLines
		lines = append(append(lines[:reportLogLines/4:reportLogLines/4], fmt.Sprintf("    [%d lines]", cut)),
			lines[len(lines)-(reportLogLines-reportLogLines/4):]...)
	}
	return "  the server, on that block and those ops:\n" + strings.Join(lines, "\n") + "\n"
}

// indent puts prefix before every line of s.
func indent(s, prefix string) string {
	return prefix + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n"+prefix)
}

// Dump writes the whole history and the server's log, for a look
// beyond the report.
func (res *Result) Dump() string {
	var b strings.Builder
	fmt.Fprintf(&b, "schedule: %s\n", res.Sched)
	b.WriteString(res.episodesText(res.History.T0))
	b.WriteString(res.failText())
	b.WriteString("ops:\n")
	for _, o := range res.History.Ops {
		fmt.Fprintf(&b, "  %s\n", o.describe(res.History.T0))
	}
	b.WriteString("final storage:\n")
	for blk, v := range res.History.Final {
		fmt.Fprintf(&b, "  block %d: %s\n", blk, valueName(v))
	}
	b.WriteString("server log:\n")
	for i := range res.Log {
		fmt.Fprintf(&b, "  %s\n", res.Log[i].format(res.History.T0))
	}
	fmt.Fprintf(&b, "nbdkit's stderr (tail):\n%s\n", res.ProxyStderr)
	return b.String()
}
