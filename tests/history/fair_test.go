// SPDX-License-Identifier: BSD-3-Clause

package history

import (
	"fmt"
	"os"
	"strconv"
	"sync"
	"testing"
)

// The adversary is fair: where nothing is sent twice, nothing it does
// may show as a violation.  With the clients on the server directly,
// and through nbdkit's C nbd plugin (no reconnect-delay, no timeout: a
// failed connection stays failed), every schedule passes.  (That a
// proxy with reconnect-delay and timeout can pass too rests on the
// assumptions in doc.go.)
const fairSchedules = 4

func TestFairNoProxy(t *testing.T) {
	if !pythonHasNbd() {
		t.Skip("needs python3's nbd module, python3-libnbd (not installed)")
	}
	fair(t, Run{})
}

func TestFairCPlugin(t *testing.T) {
	needTools(t)
	fair(t, Run{Plugin: CPlugin})
}

func fair(t *testing.T, run Run) {
	for seed := int64(1); seed <= fairSchedules; seed++ {
		run.Seed = seed
		res, err := run.Execute()
		if err != nil {
			t.Fatalf("seed %d: %v", seed, err)
		}
		judge(t, res)
	}
}

// The model proxy (modelproxy_test.go) has reconnect-delay and timeout
// and follows the rules doc.go's assumptions call for: it must pass
// every schedule the plugin gets.  HISTORY_MODEL_SCHEDULES runs more
// (from seed 1).
func TestFairModelProxy(t *testing.T) {
	if !pythonHasNbd() {
		t.Skip("needs python3's nbd module, python3-libnbd (not installed)")
	}
	n := fairSchedules
	if s := os.Getenv("HISTORY_MODEL_SCHEDULES"); s != "" {
		var err error
		if n, err = strconv.Atoi(s); err != nil {
			t.Fatalf("HISTORY_MODEL_SCHEDULES=%q: not a number", s)
		}
	}
	var mu sync.Mutex
	var sum Summary
	t.Run("schedules", func(t *testing.T) {
		for seed := int64(1); seed <= int64(n); seed++ {
			run := Run{Seed: seed, Features: ProxyFeatures{ReconnectDelay: true, Timeout: true}, InProcess: startModelProxy}
			t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
				t.Parallel()
				res, err := run.Execute()
				if err != nil {
					t.Fatalf("seed %d: %v", run.Seed, err)
				}
				mu.Lock()
				sum.Add(res)
				mu.Unlock()
				judge(t, res)
			})
		}
	})
	t.Logf("the model proxy:\n%s", sum.String())
}
