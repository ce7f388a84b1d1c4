// SPDX-License-Identifier: BSD-3-Clause

// Package history is the project's history checker (`make
// check-history`): it runs schedules, each drawn from a seed, in which
// real libnbd clients (Python, one process per client) write, read,
// zero, trim and flush through the plugin in a real nbdkit, in front of
// an adversarial NBD server that lives in the test process; then it
// holds what the clients saw, and what the server's storage holds at
// the end, against the contract a client may rely on (checker.go).
//
// The server (server.go, instance.go, conn.go) keeps one storage per
// schedule and runs server instances on it, one Unix socket each; the
// proxy dials a symbolic link that is switched to the current instance.
// Everything it does is something NBD allows: it applies a request now,
// later or never, replies now, later, never or with an error, and it
// crashes, restarts, stops and resumes, is replaced while stopped, and
// closes connections before or after applying what they carried
// (chaos.go, drawn from the schedule's seed: schedule.go).  It assumes
// three things of real servers, and so must the plugin (its man page
// says so):
//
//   - A server instance that has been replaced while alive (the socket
//     path now leads to another one) never writes its cache back: it
//     drops it.  Otherwise no proxy could stop a stale cache landing on
//     newer data.
//   - A server that closes a connection the proxy ended with writes
//     still in flight (qemu-nbd does) applies them within half the
//     proxy's timeout= of closing it: without some bound, no proxy could
//     ever again acknowledge a write to those blocks.  It never does
//     this without timeout= (the proxy then never ends a connection).
//   - A failed flush loses nothing: the data stays in the cache for the
//     next flush.  A server that dropped its cache on a failed flush
//     would have to fail the next flush of every connection that wrote
//     to it, which no proxy can see.
//
// The chaos is sequenced on what the server sees (requests, their kind
// and blocks, connections); timers only bound how long an adversarial
// choice may last (a stopped instance resumes, a held reply is sent),
// so that a schedule always ends.
package history
