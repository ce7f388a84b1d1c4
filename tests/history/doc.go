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
// later or never, replies now, later, never or with an error (EIO; and
// ESHUTDOWN while an instance or a connection shuts down), and it
// crashes, restarts, stops and resumes, is replaced while stopped, and
// closes connections before or after applying what they carried
// (chaos.go, drawn from the schedule's seed: schedule.go).  An error
// reply means the request was not carried out.
//
// Against such a server no proxy could keep the contract without these
// assumptions, which the plugin must state (its man page) and rely on
// no further:
//
//  1. A server instance that has been replaced while alive (the socket
//     path now leads to another one) never writes its cache back: it
//     drops it.  Otherwise a stale cache could land on newer data at any
//     time.
//  2. A server that closes a connection the proxy ended (shut down its
//     sending half) may apply the writes it read on it until it closes
//     it, and for up to half the proxy's timeout= after (qemu-nbd closes
//     first and finishes its writes afterwards).  Without some bound no
//     proxy could ever again acknowledge a write to those blocks.  This
//     happens only with timeout=: without it a proxy ends a connection
//     only once nothing is in flight on it.
//  3. A server that closes a connection on its own (it crashes, shuts
//     down, drops it) has applied, or dropped for good, everything it
//     read on it by then.
//  4. A failed flush loses nothing: the data stays in the cache for the
//     next flush.  (A server that dropped its cache on a failed flush
//     would have to fail the next flush of every connection that wrote
//     to it, which no proxy could see for the other connections.)
//  5. A stopped server (SIGSTOP) does nothing until it resumes.
//
// What a proxy must then do is shown by the tests' model proxy
// (modelproxy_test.go), which passes every schedule: hold every client's
// writes while a connection it ended may still land some; once a
// client's acknowledged writes were on a connection that died before a
// flush covered them, fail every flush of that client connection, those
// in flight too (rule 2 excuses a lost write only by a failed flush
// issued after the client saw the write's reply, and a proxy cannot
// tell which flush that is); end every request within 2 * timeout +
// reconnect-delay.
//
// The chaos is sequenced on what the server sees (requests, their kind,
// blocks and flags, connections, ends of file); timers only bound how
// long an adversarial choice may last (a stopped instance resumes, a
// held reply is sent, a late write lands), so that a schedule always
// ends, and a replaced instance's write waits timeout + reconnect-delay
// before it may land on a newer one.  Within those bounds the server
// picks the worst moments it can see: it hangs and stops at writes to
// blocks written often, crashes at a flush whose connection has writes
// in the cache, and lands a stale write on a newer one that was just
// acknowledged, preferably one vouched for at its reply.
//
// Run it with `make check-history` (see the Makefile; history_test.go
// lists the environment variables).
package history
