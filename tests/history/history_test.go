// SPDX-License-Identifier: BSD-3-Clause

package history

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// The campaign is set by the environment (the Makefile's check-history
// sets it from SCHEDULES=, PLUGIN=, SEED=, FIRST_SEED=):
//
//	HISTORY_PLUGIN     the plugin's .so (default: the tree's), "nbd" for
//	                   nbdkit's C plugin, "none" for no proxy at all
//	HISTORY_SCHEDULES  how many schedules (default defaultSchedules)
//	HISTORY_FIRST_SEED the first seed (default 1); seeds follow on
//	HISTORY_SEED       run this one seed only (a replay)
//	HISTORY_DUMP       set: write every history to a file, not only failing ones
const defaultSchedules = 20

// maxReports bounds the violations reported in full per schedule.
const maxReports = 4

// TestMain runs the tests, or, in an instance's process (proc.go), the
// instance.
func TestMain(m *testing.M) {
	if sock := os.Getenv(instanceEnv); sock != "" {
		instanceMain(sock)
	}
	os.Exit(m.Run())
}

func TestHistory(t *testing.T) {
	run := Run{Plugin: os.Getenv("HISTORY_PLUGIN"), Features: ProxyFeatures{ReconnectDelay: true, Timeout: true, InDoubt: true}}
	switch run.Plugin {
	case "":
		p, err := filepath.Abs("../../nbdkit-nbd-go-plugin.so")
		if err != nil {
			t.Fatal(err)
		}
		run.Plugin = p
	case CPlugin:
		run.Features = ProxyFeatures{}
	case "none":
		run.Plugin, run.Features = "", ProxyFeatures{InDoubt: true, Quiesce: true}
	default:
		p, err := filepath.Abs(run.Plugin)
		if err != nil {
			t.Fatal(err)
		}
		run.Plugin = p
	}
	needTools(t)
	if run.Plugin != "" && run.Plugin != CPlugin {
		if _, err := os.Stat(run.Plugin); err != nil {
			t.Fatalf("%s is not built: run make first", run.Plugin)
		}
		f, err := detectFeatures(run.Plugin)
		if err != nil {
			t.Fatal(err)
		}
		run.Features = f
	}
	seeds := campaignSeeds(t)
	results := make([]*Result, len(seeds))
	t.Run("schedules", func(t *testing.T) {
		for i, seed := range seeds {
			i, r := i, run
			r.Seed = seed
			t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
				t.Parallel()
				res, err := r.Execute()
				if err != nil {
					t.Fatalf("seed %d: %v", r.Seed, err)
				}
				results[i] = res
				progress(res)
				judge(t, res)
			})
		}
	})
	var sum Summary
	for _, res := range results {
		if res != nil {
			sum.Add(res)
		}
	}
	fmt.Println(sum.String())
}

// needTools skips, naming the tool, unless nbdkit and python3's nbd
// module are installed.
func needTools(t *testing.T) {
	if _, err := exec.LookPath("nbdkit"); err != nil {
		t.Skip("needs nbdkit (not installed)")
	}
	if !pythonHasNbd() {
		t.Skip("needs python3's nbd module, python3-libnbd (not installed)")
	}
}

// campaignSeeds are the seeds the environment asks for.
func campaignSeeds(t *testing.T) []int64 {
	num := func(name string, def int64) int64 {
		s := os.Getenv(name)
		if s == "" {
			return def
		}
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			t.Fatalf("%s=%q: not a number", name, s)
		}
		return n
	}
	if os.Getenv("HISTORY_SEED") != "" {
		return []int64{num("HISTORY_SEED", 0)}
	}
	first, n := num("HISTORY_FIRST_SEED", 1), num("HISTORY_SCHEDULES", defaultSchedules)
	var seeds []int64
	for i := int64(0); i < n; i++ {
		seeds = append(seeds, first+i)
	}
	return seeds
}

var printMu sync.Mutex

// progress prints one line per schedule as it ends.
func progress(res *Result) {
	failed := fmt.Sprintf("%d failed", res.failedOps())
	if res.FailCauses.Total > 0 {
		failed += ": " + res.FailCauses.String()
	}
	printMu.Lock()
	defer printMu.Unlock()
	fmt.Printf("seed %d: %.1fs, %d ops (%s), %d violations, %d failures; %v %v\n",
		res.Sched.Seed, res.Duration.Seconds(), len(res.History.Ops), failed, len(res.Violations),
		len(res.Failures), res.Sched.ProxyParams(), kinds(res.Sched))
	for _, n := range res.Notes {
		fmt.Printf("seed %d: note: %s\n", res.Sched.Seed, strings.SplitN(n, "\n", 2)[0])
	}
}

func kinds(s *Schedule) []EpisodeKind {
	var k []EpisodeKind
	for _, e := range s.Episodes {
		k = append(k, e.Kind)
	}
	return k
}

// judge fails the test on a violation or a failed run, with the reports
// and a file holding the whole history.
func judge(t *testing.T, res *Result) {
	if len(res.Violations) == 0 && len(res.Failures) == 0 {
		if os.Getenv("HISTORY_DUMP") != "" {
			if f, err := os.CreateTemp("", fmt.Sprintf("nbd-history-seed%d-*.txt", res.Sched.Seed)); err == nil {
				f.WriteString(res.Dump())
				f.Close()
				fmt.Printf("seed %d: the whole history: %s\n", res.Sched.Seed, f.Name())
			}
		}
		return
	}
	dump := ""
	if f, err := os.CreateTemp("", fmt.Sprintf("nbd-history-seed%d-*.txt", res.Sched.Seed)); err == nil {
		f.WriteString(res.Dump())
		f.Close()
		dump = f.Name()
	}
	for i, v := range res.Violations {
		if i == maxReports {
			t.Errorf("seed %d: %d more violations (all in %s)", res.Sched.Seed, len(res.Violations)-maxReports, dump)
			break
		}
		t.Errorf("%s", res.Report(v))
	}
	for _, f := range res.Failures {
		t.Errorf("seed %d: the run failed: %s\n  schedule: %s", res.Sched.Seed, f, res.Sched)
	}
	t.Errorf("seed %d: the whole history and the server's log: %s; replay: make check-history SEED=%d", res.Sched.Seed, dump, res.Sched.Seed)
}
