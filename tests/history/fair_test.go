// SPDX-License-Identifier: BSD-3-Clause

package history

import (
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
