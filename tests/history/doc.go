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
// Each instance is a real process (proc.go: this test binary run again)
// that listens on its socket, accepts, passes each connection to the
// test process, which serves it, and keeps its own copy: so a plugin
// that learns of a server's death from the process that listened sees
// a crash (the process is killed, once the instance is dead and its
// connections ended) and the end of a graceful shutdown (it exits once
// its last connection closed) as it would with nbdkit; a replaced
// instance's process lives on, to land what it holds.
// Everything it does is something NBD allows: it applies a request now,
// later or never, replies now, later, never or with an error (EIO; and
// ESHUTDOWN while an instance or a connection shuts down), and it
// crashes, restarts, stops and resumes, is replaced while stopped, and
// closes connections on its own or once the proxy has ended them
// (chaos.go, drawn from the schedule's seed: schedule.go).  An error
// reply means the request was not carried out.  NBD cannot cancel a
// request: an instance that is alive may apply a write it read at any
// later time, even long after the connection it came on has closed,
// whether the proxy ended that connection or the server closed it on
// its own (qemu-nbd closes first and applies a pending write later).
//
// The checker proves what the plugin's man page promises (section
// CONNECTION FAILURES of nbdkit-nbd-go-plugin.pod), under the
// assumptions about servers that the man page states there, and no
// others:
//
//  1. A server that answers NBD_ESHUTDOWN did not carry out that
//     request; a server shutting down services the requests in flight
//     before it closes (it carries out, or fails, what it read); and one
//     that has answered NBD_ESHUTDOWN does not carry out, after it has
//     closed the connection, a request it did not answer.
//  2. A server that has been replaced while alive (the socket path now
//     leads to another one on the same disk) does not write back the
//     acknowledged data it held in its own volatile cache: it drops it.
//     The man page lists this under "What remains": the plugin cannot
//     stop it (the flush that fails tells the client its data was at
//     risk, but a stale cache written back could land on newer data at
//     any time).
//  3. A failed flush loses nothing: the data stays in the cache for the
//     next flush.  (A server that dropped its cache on a failed flush
//     would have to fail the next flush of every connection that wrote
//     to it, which no proxy could see for the other connections.)  The
//     man page's promise that a client's flush fails once its
//     acknowledged writes may be lost rests on it.
//
// Besides, a process does nothing once it has died, and the plugin may
// learn of that death (its exit evidence): a crashed instance (kill -9)
// loses its cache, what it held and its late writes, before its process
// is killed; and a stopped one (SIGSTOP) does nothing until it resumes.
// Nothing else is assumed: neither that a server which closed a
// connection, on its own or at the proxy's end of it, has applied or
// dropped what it read on it, nor any time by which it has; except, in
// a schedule that sets quiesce-time=Q, what the user declares with it:
// nothing read on a connection is carried out later than Q after the
// connection ended.  The server then keeps to Q less 200 ms, counted
// from its own sight of the end (the plugin counts from its own, which
// comes first when the proxy ended it): a late write lands by then or
// is lost, a stopped instance drops, unanswered, what it would carry
// out later, and a stop-replace resumes just before Q passes (server.go).
// No Q shorter than that margin is drawn: no server can keep it.  The
// plugin's rule that copes with this, writes in doubt, is the man
// page's (and plugin/datapath/doubt.h's).
//
// The chaos is sequenced on what the server sees (requests, their kind,
// blocks and flags, connections, ends of file); timers only bound how
// long an adversarial choice may last (a stopped instance resumes, a
// held reply is sent), so that a schedule always ends.  Within those
// bounds the server picks the worst moments it can see: it hangs,
// stops and drops connections at writes to blocks written often,
// crashes at a flush whose connection has writes in the cache, and
// lands a write of a closed connection (or one a stopped, replaced
// instance held) on a newer one to its blocks just acknowledged,
// preferably one vouched for at its reply.  A late write has no
// deadline: half of them land only on a newer write read 0.5 to 2 s
// past timeout + reconnect-delay after the close, so that no hold for a
// time after a connection ends would do, and the chaos phase lasts
// until each has had half a second to meet one.  One that meets none
// lands when its instance shuts down gracefully, or when the final
// phase begins, before the storage is read; a crash loses it.
//
// The adversary is fair (fair_test.go): with the clients on the server
// directly, nothing it does shows as a violation.  nbdkit's C nbd
// plugin, which fails a write whose connection died and lets the client
// write there again, is spared the late writes of closed connections
// (ProxyFeatures.InDoubt): with them it fails.
//
// A schedule's failed ops are counted by cause from nbdkit's log
// (failcause.go), and the server's error replies from its side.  In a
// schedule of crashes and graceful restarts only, with reconnect-delay=,
// the plugin can know each failed server is gone, so no client op may
// fail there: one that did fails the run (Result.checkNoFailedOps).
// The clients, after a write failed with EIO, write elsewhere for a
// while (client.py): a write over bytes in doubt waits up to
// reconnect-delay, and clients coming back to the same hot block would
// stall a schedule for seconds at a time.
//
// Run it with `make check-history` (see the Makefile; history_test.go
// lists the environment variables); `make check-history-weak` checks
// that builds weakened on purpose show violations (weak_test.go), and
// README.md says how an old build (d21d603) fares.
package history
