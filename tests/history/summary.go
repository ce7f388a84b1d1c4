// SPDX-License-Identifier: BSD-3-Clause

package history

import (
	"fmt"
	"sort"
	"strings"
	"syscall"
	"time"
)

// A Summary adds up a campaign of runs.
type Summary struct {
	Schedules                        int
	Shared, Reconnect, Timeout, Both int
	WriteBack, NoFlush               int
	Quiesce                          int            // schedules with quiesce-time=
	Repair                           map[string]int // schedules by repair-memory=
	Clients                          map[int]int    // schedules by number of clients
	Planned, Came                    map[EpisodeKind]int
	Ops, Failed, FailedFlushes, Lost int
	Unsent                           int
	Errnos                           map[int]int
	FailCauses                       map[string]int // failed requests by cause (nbdkit's log)
	ErrorReplies                     map[string]int // the server's error replies, by why
	Repairs, Rewritten               int            // the plugin's repairs, and the writes they wrote again
	Connections, ConnFails           int
	Late                             LateStats
	Violations                       map[int]int       // by rule
	Causes                           map[Cause][]int64 // seeds, by what caused a rule 2 violation
	ViolatingSeeds, FailingSeeds     []int64
	Work                             time.Duration // the runs' durations, added
}

// Add counts one run.
func (s *Summary) Add(res *Result) {
	if s.Clients == nil {
		s.Clients, s.Planned, s.Came = map[int]int{}, map[EpisodeKind]int{}, map[EpisodeKind]int{}
		s.Errnos, s.Violations, s.Causes = map[int]int{}, map[int]int{}, map[Cause][]int64{}
		s.FailCauses, s.ErrorReplies, s.Repair = map[string]int{}, map[string]int{}, map[string]int{}
	}
	sc := res.Sched
	s.Schedules++
	s.Work += res.Duration
	if sc.Shared {
		s.Shared++
	}
	if sc.ReconnectDelay > 0 {
		s.Reconnect++
	}
	if sc.Timeout > 0 {
		s.Timeout++
	}
	if sc.ReconnectDelay > 0 && sc.Timeout > 0 {
		s.Both++
	}
	if sc.WriteBack {
		s.WriteBack++
	}
	if !sc.Flush {
		s.NoFlush++
	}
	if sc.Quiesce > 0 {
		s.Quiesce++
	}
	s.Repair[sc.RepairMemory]++
	s.Clients[len(sc.Depths)]++
	for _, e := range sc.Episodes {
		s.Planned[e.Kind]++
	}
	for _, e := range res.Episodes {
		s.Came[e.Kind]++
	}
	s.Late.add(res.Late)
	s.Repairs += res.FailCauses.Repairs
	s.Rewritten += res.FailCauses.Rewritten
	for c, n := range res.FailCauses.Count {
		s.FailCauses[c] += n
	}
	for c, n := range res.ErrorReplies {
		s.ErrorReplies[c] += n
	}
	s.Connections += res.Clients
	s.ConnFails += res.ConnFails
	if res.History != nil {
		for _, o := range res.History.Ops {
			s.Ops++
			if o.Unsent {
				s.Unsent++
				continue
			}
			if o.failed() {
				s.Failed++
				s.Errnos[o.Errno]++
				if o.Kind == Flush {
					s.FailedFlushes++
				}
				if o.Lost {
					s.Lost++
				}
			}
		}
	}
	causes := map[Cause]bool{}
	for _, v := range res.Violations {
		s.Violations[v.Rule]++
		if v.Rule == 2 {
			c, _ := res.diagnose(v)
			causes[c] = true
		}
	}
	for _, c := range allCauses {
		if causes[c] {
			s.Causes[c] = append(s.Causes[c], sc.Seed)
		}
	}
	if len(res.Violations) > 0 {
		s.ViolatingSeeds = append(s.ViolatingSeeds, sc.Seed)
	}
	if len(res.Failures) > 0 {
		s.FailingSeeds = append(s.FailingSeeds, sc.Seed)
	}
}

// String writes the summary.
func (s *Summary) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "history check: %d schedules (%.0f s of runs)\n", s.Schedules, s.Work.Seconds())
	fmt.Fprintf(&b, "  parameters: shared=true %d, reconnect-delay %d, timeout %d (both %d), write-back %d, no flush %d\n",
		s.Shared, s.Reconnect, s.Timeout, s.Both, s.WriteBack, s.NoFlush)
	var cl []string
	for n := 1; n <= 4; n++ {
		cl = append(cl, fmt.Sprintf("%d:%d", n, s.Clients[n]))
	}
	fmt.Fprintf(&b, "  clients per schedule: %s; connections %d, failed connection attempts %d\n",
		strings.Join(cl, " "), s.Connections, s.ConnFails)
	var eps []string
	for _, k := range allEpisodeKinds {
		if s.Planned[k] > 0 {
			eps = append(eps, fmt.Sprintf("%s %d/%d", k, s.Came[k], s.Planned[k]))
		}
	}
	fmt.Fprintf(&b, "  episodes (came/planned): %s\n", strings.Join(eps, ", "))
	l := s.Late
	fmt.Fprintf(&b, "  late writes (kept after their connection closed) %d (%d long): landed on a newer write %d (%d more than timeout + reconnect-delay after the close, the longest %.1f s after), at a graceful shutdown %d, in the final phase %d; lost in a crash %d\n",
		l.Kept, l.Long, l.OnNewer, l.LongOnNewer, l.Longest.Seconds(), l.Shutdown, l.Final, l.Lost)
	fmt.Fprintf(&b, "  quiesce-time %d, repair-memory=0 %d, =64K %d: late writes landed as quiesce-time was passing %d, lost as it passed %d; requests dropped, taken past it %d\n",
		s.Quiesce, s.Repair["0"], s.Repair["64K"], l.AtQuiesce, l.Expired, l.Dropped)
	var errs []string
	var codes []int
	for e := range s.Errnos {
		codes = append(codes, e)
	}
	sort.Ints(codes)
	for _, e := range codes {
		errs = append(errs, fmt.Sprintf("%s %d", syscall.Errno(e).Error(), s.Errnos[e]))
	}
	fmt.Fprintf(&b, "  ops %d, failed %d (flushes %d; connection died under %d): %s; not sent (connection gone) %d\n",
		s.Ops, s.Failed, s.FailedFlushes, s.Lost, strings.Join(errs, ", "), s.Unsent)
	fmt.Fprintf(&b, "  failed ops by cause (nbdkit's log): %s; the server's error replies: %s; the plugin's repairs %d (%d writes written again)\n",
		countsString(s.FailCauses, allFailCauses), countsString(s.ErrorReplies, nil), s.Repairs, s.Rewritten)
	fmt.Fprintf(&b, "  violations: rule 1 %d, rule 2 %d, rule 3 %d", s.Violations[1], s.Violations[2], s.Violations[3])
	if len(s.ViolatingSeeds) > 0 {
		fmt.Fprintf(&b, "; seeds with violations: %v", s.ViolatingSeeds)
	}
	for _, c := range allCauses {
		if seeds := s.Causes[c]; len(seeds) > 0 {
			fmt.Fprintf(&b, "\n    %s: seeds %v", c, seeds)
		}
	}
	if len(s.FailingSeeds) > 0 {
		fmt.Fprintf(&b, "\n  runs that failed: seeds %v", s.FailingSeeds)
	}
	return b.String()
}

// add adds another run's counts.
func (l *LateStats) add(o LateStats) {
	l.Kept += o.Kept
	l.Long += o.Long
	l.OnNewer += o.OnNewer
	l.LongOnNewer += o.LongOnNewer
	if o.Longest > l.Longest {
		l.Longest = o.Longest
	}
	l.Shutdown += o.Shutdown
	l.Final += o.Final
	l.Lost += o.Lost
	l.AtQuiesce += o.AtQuiesce
	l.Expired += o.Expired
	l.Dropped += o.Dropped
}
