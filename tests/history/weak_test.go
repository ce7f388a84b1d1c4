// SPDX-License-Identifier: BSD-3-Clause

package history

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// The checker catches a plugin weakened on purpose (`make
// check-history-weak` builds them: the C data path honours two
// defines):
//
//	NBDGO_WEAKEN_DOUBT   a doubt ends as soon as its connection ended
//	NBDGO_WEAKEN_REPAIR  a repair writes the oldest acknowledged write
//	                     of a range again, not the newest
//
// HISTORY_WEAK lists them, NAME=PATH separated by spaces (doubt= and
// repair= pick the schedules that can show each); HISTORY_SCHEDULES
// bounds how many schedules each may take (default weakSchedules).
// Each build must show a violation: the test stops at its first one,
// and fails when a build showed none.  The schedules drawn from seeds
// on HISTORY_FIRST_SEED (default 1) that can show it are run, two at a
// time.
const weakSchedules = 40

// weakShows says which schedules can show each weakening: a late write
// lands on a newer one only with a write in doubt (a connection that
// closed with writes unanswered: drop-conn, hang-write, stop-replace,
// a stop-resume that outlasts timeout=); a repair writes only after a
// crash lost writes from a cache, and keeps them only with
// repair-memory.
var weakShows = map[string]func(s *Schedule) bool{
	"doubt": func(s *Schedule) bool {
		return s.InDoubt && s.hasEpisode(DropConn, HangWrite, StopReplace) ||
			s.Timeout > 0 && s.hasEpisode(StopResume)
	},
	"repair": func(s *Schedule) bool {
		return s.WriteBack && s.ReconnectDelay > 0 && s.RepairMemory != "0" && s.hasEpisode(Crash, CrashOnFlush)
	},
}

func (s *Schedule) hasEpisode(kinds ...EpisodeKind) bool {
	for _, e := range s.Episodes {
		for _, k := range kinds {
			if e.Kind == k {
				return true
			}
		}
	}
	return false
}

func TestWeakBuilds(t *testing.T) {
	spec := os.Getenv("HISTORY_WEAK")
	if spec == "" {
		t.Skip("HISTORY_WEAK names no weakened build (make check-history-weak)")
	}
	needTools(t)
	max := int(weakSchedules)
	if os.Getenv("HISTORY_SCHEDULES") != "" {
		max = len(campaignSeeds(t))
	}
	first := int64(1)
	if os.Getenv("HISTORY_FIRST_SEED") != "" {
		first = campaignSeeds(t)[0]
	}
	for _, item := range strings.Fields(spec) {
		name, path, ok := strings.Cut(item, "=")
		shows := weakShows[name]
		if !ok || shows == nil {
			t.Fatalf("HISTORY_WEAK: %q is not doubt=PATH or repair=PATH", item)
		}
		path, err := filepath.Abs(path)
		if err != nil {
			t.Fatal(err)
		}
		t.Run(name, func(t *testing.T) { weakCampaign(t, name, path, shows, first, max) })
	}
}

// weakCampaign runs up to max schedules that can show the weakening,
// two at a time, until one shows a violation.
func weakCampaign(t *testing.T, name, plugin string, shows func(*Schedule) bool, first int64, max int) {
	if _, err := os.Stat(plugin); err != nil {
		t.Fatalf("%s is not built", plugin)
	}
	f, err := detectFeatures(plugin)
	if err != nil {
		t.Fatal(err)
	}
	seeds := make(chan int64)
	go func() {
		defer close(seeds)
		for seed, n := first, 0; n < max; seed++ {
			if shows(NewSchedule(seed, f)) {
				seeds <- seed
				n++
			}
		}
	}()
	var mu sync.Mutex
	var caught []*Result
	var sum Summary
	var wg sync.WaitGroup
	for w := 0; w < 2; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for seed := range seeds {
				mu.Lock()
				done := len(caught) > 0
				mu.Unlock()
				if done {
					continue // drain: the build is caught
				}
				res, err := Run{Seed: seed, Plugin: plugin, Features: f}.Execute()
				if err != nil {
					t.Errorf("seed %d: %v", seed, err)
					continue
				}
				progress(res)
				mu.Lock()
				sum.Add(res)
				if len(res.Violations) > 0 {
					caught = append(caught, res)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	fmt.Printf("weakened build %s (%s):\n%s\n", name, plugin, sum.String())
	if len(caught) == 0 {
		t.Errorf("weakened build %s: no violation in %d schedules that can show it: the checker does not catch it", name, sum.Schedules)
		return
	}
	res := caught[0]
	fmt.Printf("weakened build %s caught at seed %d (replay: make check-history PLUGIN=%s SEED=%d):\n%s\n",
		name, res.Sched.Seed, plugin, res.Sched.Seed, res.Report(res.Violations[0]))
}
