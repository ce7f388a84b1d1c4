// SPDX-License-Identifier: BSD-3-Clause

package history

import "testing"

// The adversary is fair: nothing it does shows as a violation unless a
// proxy made it one.  With the clients on the server directly it may do
// everything it does to the plugin (a write whose connection died under
// it never ends for its client: it may land at any time); through
// nbdkit's C nbd plugin (no reconnect-delay, no timeout: a failed
// connection stays failed; nothing is sent twice) everything but apply
// a write after a connection closed unanswered (ProxyFeatures: the C
// plugin fails such a write, and the contract holds it to that).
// Every schedule passes.  That the plugin passes the whole adversary is
// the campaign's verdict (TestHistory).
const fairSchedules = 4

func TestFairNoProxy(t *testing.T) {
	if !pythonHasNbd() {
		t.Skip("needs python3's nbd module, python3-libnbd (not installed)")
	}
	// Quiesce: the server keeps to quiesce-time where a schedule draws
	// it (which only the proxy would read): a fair adversary still.
	fair(t, Run{Features: ProxyFeatures{InDoubt: true, Quiesce: true}})
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
