// SPDX-License-Identifier: BSD-3-Clause

// Package chans holds what the test harnesses (tests, tests/history)
// share about channels.
package chans

// Closed says whether ch has been closed, without waiting: for a
// process's "it has exited" channel, whether it has exited.
func Closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
