// SPDX-License-Identifier: BSD-3-Clause

package history

import (
	"net"
	"time"
)

// An instance is one server process on the storage: its own socket,
// connections and (write-back) cache.  The process (proc.go) listens and
// holds a copy of each connection; what it does with them, the test
// process does.
type instance struct {
	s        *Server
	id       int
	sock     string
	proc     *instProc
	exitIdle bool           // its graceful shutdown is done: the process exits once no connection is left
	cache    map[int][]byte // write-back: blocks acknowledged, not yet on the storage
	dirtyBy  map[*conn]int  // blocks each connection put in the cache
	// rewritten counts writes over a block the cache already held
	// unwritten-back: two acknowledged writes there since the last
	// write-back, which a repair must not write again in the wrong order.
	rewritten int
	conns     map[*conn]bool
	state     instState
	replaced  bool // the link leads to another instance: it never serves again
	requests  int  // requests it has read

	// A graceful shutdown answers shutdownLeft more requests with
	// ESHUTDOWN, or waits shutdownLinger, then closes and calls onClosed.
	shutdownLeft  int
	shutdownTimer *time.Timer
	onClosed      func()
}

type instState int

const (
	running instState = iota
	stopped
	shuttingDown
	dead
)

// shutdownLinger bounds how long a shutting-down instance waits for
// requests to answer with ESHUTDOWN when none come.
const shutdownLinger = 50 * time.Millisecond

// accepted takes a connection the instance's process accepted (copy
// names the process's own copy of it).
func (in *instance) accepted(nc *net.UnixConn, copy int) {
	s := in.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if in.state == dead || in.state == shuttingDown || s.closed {
		shutdownConn(nc)
		in.proc.closeCopy(copy)
		return
	}
	s.nextConn++
	c := &conn{inst: in, id: s.nextConn, nc: nc, copy: copy}
	in.conns[c] = true
	s.logf(in, c, "connection accepted")
	s.chaos.accepted(in)
	go c.serve()
}

// exitIfIdle ends the process of an instance whose graceful shutdown is
// done, once its last connection has closed: as nbdkit exits after
// SIGTERM.  Only then may the plugin learn of its exit.
func (in *instance) exitIfIdle() {
	if in.exitIdle && len(in.conns) == 0 && in.proc.alive() {
		in.exitIdle = false
		in.proc.exit()
		in.s.logKey(in, nil, "process %d exits", in.proc.pid())
	}
}

// stop stops the instance, as SIGSTOP does: it reads nothing, answers
// nothing and applies nothing until it resumes.
func (in *instance) stop(why string) {
	in.state = stopped
	in.s.logKey(in, nil, "stopped (%s)", why)
}

// resume lets a stopped instance go on.
func (in *instance) resume(why string) {
	if in.state != stopped {
		return
	}
	in.state = running
	in.s.logKey(in, nil, "resumes (%s)", why)
	in.s.cond.Broadcast()
}

// die ends the instance at once, as a crash (kill -9) does: its
// connections close abruptly, and its cache, its held requests and its
// late writes are lost.  In that order: it is dead first (nothing of it
// is carried out from then on), its connections end, and then its
// process is killed, so that once the plugin can learn of the death
// nothing of the instance can land any more.
func (in *instance) die(why string) {
	s := in.s
	in.state = dead
	in.proc.dying()
	for c := range in.conns {
		c.closeNow("the instance died")
	}
	lost := len(in.cache)
	in.cache, in.dirtyBy, in.rewritten = map[int][]byte{}, map[*conn]int{}, 0
	for _, lw := range s.late {
		if lw.inst == in {
			s.loseLate(lw)
		}
	}
	if in.shutdownTimer != nil {
		in.shutdownTimer.Stop()
	}
	in.exitIdle = false
	in.proc.kill()
	s.logKey(in, nil, "dies (%s): process %d killed; %d cached blocks lost", why, in.proc.pid(), lost)
	s.cond.Broadcast()
}

// beginShutdown starts a shutdown as nbdkit's on SIGTERM: no new
// connections; the requests in progress complete, or (those not carried
// out yet, on some shutdowns) fail with ESHUTDOWN; its late writes land;
// the next left requests are answered ESHUTDOWN and not carried out;
// then finishShutdown.  Nothing it read is carried out after it closed.
func (in *instance) beginShutdown(left int) {
	s := in.s
	in.state = shuttingDown
	in.proc.unlisten()
	fail := s.rng.Intn(2) == 0
	held := "complete"
	if fail {
		held = "fail with ESHUTDOWN unless carried out"
	}
	s.logKey(in, nil, "graceful shutdown begins (%d more requests get ESHUTDOWN; those in progress %s)", left, held)
	for c := range in.conns {
		for _, r := range append([]*request(nil), c.held...) {
			if fail && !r.applied {
				s.finish(r, nbdESHUTDOWN, "in progress at the shutdown")
			} else {
				s.finish(r, 0, "in progress at the shutdown")
			}
		}
	}
	for _, lw := range s.late {
		if lw.inst == in && s.landLate(lw, "the instance shuts down") {
			s.lateStats.Shutdown++
		}
	}
	in.shutdownLeft = left
	if left == 0 {
		in.finishShutdown()
		return
	}
	in.shutdownTimer = time.AfterFunc(shutdownLinger, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		in.finishShutdown()
	})
}

// answeredShutdown counts a request answered ESHUTDOWN.
func (in *instance) answeredShutdown() {
	in.shutdownLeft--
	if in.shutdownLeft <= 0 {
		in.finishShutdown()
	}
}

// finishShutdown writes the cache back and closes every connection once
// its replies are sent.
func (in *instance) finishShutdown() {
	if in.state != shuttingDown {
		return
	}
	s := in.s
	if in.shutdownTimer != nil {
		in.shutdownTimer.Stop()
	}
	s.writeBack(in, "graceful shutdown")
	for c := range in.conns {
		c.closeAfterReplies()
	}
	in.state = dead
	s.logKey(in, nil, "graceful shutdown done: closed")
	in.exitIdle = true
	in.exitIfIdle()
	s.cond.Broadcast()
	if f := in.onClosed; f != nil {
		in.onClosed = nil
		f()
	}
}

// replace starts a new instance on the storage and points the link at
// it, while this one lives on (stopped).  It drops its cache: a replaced
// instance never writes it back (doc.go).
func (in *instance) replace() {
	s := in.s
	in.replaced = true
	s.logKey(in, nil, "replaced; drops its cache of %d blocks", len(in.cache))
	in.cache, in.dirtyBy, in.rewritten = map[int][]byte{}, map[*conn]int{}, 0
	s.ensureCurrent()
}

// resumeReplaced resumes a replaced instance for its last act: it
// closes its connections, after applying the writes it held, or before
// (as qemu-nbd may): then they land at any later time, while it lives
// on to land them (its state is dead: it serves nothing more).  In the
// final phase they land at once.
func (in *instance) resumeReplaced(why string) {
	s := in.s
	if in.state == dead {
		return
	}
	in.state = running
	closeFirst := !s.calm && s.sched.InDoubt && s.rng.Intn(2) == 0
	if closeFirst {
		s.logKey(in, nil, "resumes (%s), closes its connections; the writes it held land later", why)
	} else {
		s.logKey(in, nil, "resumes (%s), applies the writes it held, then closes its connections", why)
	}
	var late []*request
	for c := range in.conns {
		for _, r := range c.held {
			if r.writeLike() && !r.applied {
				if closeFirst {
					late = append(late, r)
				} else {
					s.apply(in, r, "held by a replaced instance")
				}
			}
		}
		c.closeNow("the replaced instance closes")
	}
	for _, r := range late {
		s.addLate(in, r)
	}
	// Its process lives on, to land them: the plugin must keep them in
	// doubt.
	in.state = dead
	in.proc.unlisten()
	s.cond.Broadcast()
}
