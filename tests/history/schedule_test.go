// SPDX-License-Identifier: BSD-3-Clause

package history

import (
	"reflect"
	"testing"
)

// A seed draws one schedule, and only what its parameters allow: a
// replay is a replay, and no episode asks of a proxy what it cannot do.
func TestSchedules(t *testing.T) {
	all := ProxyFeatures{ReconnectDelay: true, Timeout: true, InDoubt: true}
	seen := map[EpisodeKind]bool{}
	for seed := int64(1); seed <= 500; seed++ {
		s := NewSchedule(seed, all)
		if !reflect.DeepEqual(s, NewSchedule(seed, all)) {
			t.Fatalf("seed %d draws two schedules", seed)
		}
		if s.WriteBack && !s.Flush {
			t.Errorf("seed %d: a write-back cache without flush", seed)
		}
		if len(s.Depths) < 1 || len(s.Depths) > 4 || len(s.Episodes) < 1 || len(s.Episodes) > maxEpisodes {
			t.Errorf("seed %d: %d clients, %d episodes", seed, len(s.Depths), len(s.Episodes))
		}
		if s.Timeout != 0 && (s.Timeout < 300e6 || s.Timeout > 1500e6) ||
			s.ReconnectDelay != 0 && (s.ReconnectDelay < 1e9 || s.ReconnectDelay > 5e9) {
			t.Errorf("seed %d: timeout %v, reconnect-delay %v", seed, s.Timeout, s.ReconnectDelay)
		}
		for _, e := range s.Episodes {
			seen[e.Kind] = true
			switch {
			case (e.Kind == StopReplace || e.Kind == HangWrite) && s.Timeout == 0:
				t.Errorf("seed %d: %s without timeout=: nothing would end its requests", seed, e.Kind)
			case e.Kind == CrashOnFlush && !s.WriteBack:
				t.Errorf("seed %d: %s without a cache", seed, e.Kind)
			case s.Shared && s.ReconnectDelay == 0 && e.Kind != LateReplies && e.Kind != ErrorReplies:
				t.Errorf("seed %d: %s would fail the one shared connection for good", seed, e.Kind)
			}
		}
	}
	for _, k := range allEpisodeKinds {
		if !seen[k] {
			t.Errorf("no seed of 500 draws %s", k)
		}
	}
	for seed := int64(1); seed <= 100; seed++ {
		if s := NewSchedule(seed, ProxyFeatures{}); s.Timeout != 0 || s.ReconnectDelay != 0 || s.InDoubt ||
			s.Quiesce != 0 || s.RepairMemory != "" {
			t.Errorf("seed %d: parameters the proxy has not: %v", seed, s.ProxyParams())
		}
	}
	// quiesce-time= and repair-memory= are drawn apart: a seed draws the
	// same schedule otherwise, for a proxy with them or without.
	newer := all
	newer.Quiesce, newer.RepairMemory = true, true
	quiesce, repair := 0, map[string]int{}
	for seed := int64(1); seed <= 500; seed++ {
		s := NewSchedule(seed, newer)
		if s.Quiesce > 0 {
			quiesce++
			if s.Quiesce <= quiesceMargin {
				t.Errorf("seed %d: quiesce-time=%v, no longer than the margin %v", seed, s.Quiesce, quiesceMargin)
			}
		}
		repair[s.RepairMemory]++
		s.Quiesce, s.RepairMemory = 0, ""
		if !reflect.DeepEqual(s, NewSchedule(seed, all)) {
			t.Fatalf("seed %d draws another schedule when the proxy has quiesce-time= and repair-memory=", seed)
		}
	}
	if quiesce == 0 || repair[""] == 0 || repair["0"] == 0 || repair["64K"] == 0 {
		t.Errorf("of 500 seeds: quiesce-time %d, repair-memory %v", quiesce, repair)
	}
}
