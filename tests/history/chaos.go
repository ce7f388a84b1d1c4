// SPDX-License-Identifier: BSD-3-Clause

package history

import (
	"fmt"
	"math/rand"
	"time"
)

// chaos runs a schedule's episodes, one after the other, on the
// requests the server reads (s.mu held in every method).  Outside an
// episode a request is served at once.
type chaos struct {
	s       *Server
	rng     *rand.Rand
	next    int // the next episode to start
	since   int // requests since the previous episode ended
	act     *active
	records []episodeRecord
	done    chan struct{}
	over    bool        // done is closed
	recheck *time.Timer // checkDone again once late writes have had their time
}

// An episodeRecord says what became of an episode, for the report and
// the summary.
type episodeRecord struct {
	Kind           EpisodeKind
	Started, Ended int64 // CLOCK_MONOTONIC; Ended 0: cut short by the final phase
	Note           string
}

// active is the episode under way.
type active struct {
	kind     EpisodeKind
	rec      int // its record
	left     int // requests before it acts, or in its window
	inst     *instance
	target   *request   // the write a stop holds
	hung     []*request // the writes a hang holds
	deferred *request   // the request a stop-resume read as it stopped
	timers   []*time.Timer
	acted    bool  // an episode that acts once has: it lets requests by
	passed   int   // writes let by: waiting for a hot one, or a newer one
	armed    int64 // a stop-replace resumes on a newer write read after this
	picky    int   // newer writes not vouched at once it lets by
	anyReq   bool  // a drop-conn acts at any request, not waiting for a write
}

// hotPatience is how many writes a hang or a stop lets by waiting for a
// write to a hot block, before it takes any.
const hotPatience = 30

// crashDirty is how many of its connection's blocks a crash-on-flush
// wants in the cache (it takes fewer after hotPatience flushes).
const crashDirty = 3

// maxHung is the most writes one hang-write episode holds.
const maxHung = 3

// How long an adversarial choice may last, so that a schedule ends:
// past these the server gives in.
const (
	stopSlack = 500 * time.Millisecond // a stop with timeout=: past 2T+R
	hangSlack = time.Second            // a hung write the proxy never gave up on
	briefStop = 200 * time.Millisecond // a stop without timeout=, at most
)

func newChaos(s *Server) *chaos {
	return &chaos{s: s, rng: rand.New(rand.NewSource(s.sched.Seed ^ 0xc4a05)), done: make(chan struct{})}
}

// onRequest serves a request, or lets the episode under way have it.
func (ch *chaos) onRequest(c *conn, r *request) {
	ch.since++
	sc := ch.s.sched
	if ch.act == nil && ch.next < len(sc.Episodes) && ch.since >= sc.Episodes[ch.next].After {
		ch.start(sc.Episodes[ch.next].Kind)
	}
	if ch.act == nil || !ch.act.onRequest(ch, c, r) {
		ch.s.process(r, "at once")
	}
	ch.checkDone()
}

// start begins an episode.
func (ch *chaos) start(kind EpisodeKind) {
	ch.records = append(ch.records, episodeRecord{Kind: kind, Started: mono()})
	a := &active{kind: kind, rec: len(ch.records) - 1}
	switch kind {
	case Crash, GracefulRestart, StopResume:
		a.left = 1 + ch.rng.Intn(10)
	case DropConn:
		a.left = 1 + ch.rng.Intn(10)
		a.anyReq = ch.rng.Intn(4) == 0
	case HangWrite:
		a.left = 1 + ch.rng.Intn(maxHung)
	case LateReplies:
		a.left = 5 + ch.rng.Intn(16)
	case ErrorReplies:
		a.left = 3 + ch.rng.Intn(8)
	}
	ch.act = a
	ch.s.logKey(nil, nil, "episode %s begins", kind)
}

// end ends the episode under way.
func (ch *chaos) end(format string, args ...interface{}) {
	a := ch.act
	if a == nil {
		return
	}
	for _, t := range a.timers {
		t.Stop()
	}
	rec := &ch.records[a.rec]
	rec.Ended, rec.Note = mono(), fmt.Sprintf(format, args...)
	ch.s.logKey(nil, nil, "episode %s ends: %s", a.kind, rec.Note)
	ch.act = nil
	ch.since = 0
	ch.next++
	ch.checkDone()
}

// checkDone closes done once every episode has ended, EndAfter more
// requests have come, and every late write has had its time to meet a
// newer write (Server.lateWait).
func (ch *chaos) checkDone() {
	sc := ch.s.sched
	if ch.over || ch.act != nil || ch.next < len(sc.Episodes) || ch.since < sc.EndAfter {
		return
	}
	if until := ch.s.lateWait(); until > mono() {
		if ch.recheck == nil {
			ch.recheck = time.AfterFunc(time.Duration(until-mono()), func() {
				ch.s.mu.Lock()
				defer ch.s.mu.Unlock()
				ch.recheck = nil
				if !ch.s.closed {
					ch.checkDone()
				}
			})
		}
		return
	}
	ch.over = true
	close(ch.done)
}

// after runs f under the lock after d, unless the run or the episode is
// over by then.
func (ch *chaos) after(a *active, d time.Duration, f func()) {
	a.timers = append(a.timers, time.AfterFunc(d, func() {
		ch.s.mu.Lock()
		defer ch.s.mu.Unlock()
		if ch.act == a && !ch.s.calm && !ch.s.closed {
			f()
		}
	}))
}

// wantsWrite says whether a hang or a stop takes r: a write to a hot
// block, or any write once enough have passed.
func (a *active) wantsWrite(s *Server, r *request) bool {
	if !r.writeLike() {
		return false
	}
	if s.hot(r) || a.passed >= hotPatience {
		return true
	}
	a.passed++
	return false
}

// onRequest is the episode's say on a request: true if it took it.
func (a *active) onRequest(ch *chaos, c *conn, r *request) bool {
	s, sc, in := ch.s, ch.s.sched, c.inst
	if a.acted {
		return false
	}
	switch a.kind {
	case Crash:
		if a.left--; a.left > 0 {
			return false
		}
		// With a cache, preferably when it holds a block written twice
		// (see CrashOnFlush).
		if sc.WriteBack && in.rewritten == 0 && a.passed < hotPatience {
			a.passed++
			return false
		}
		a.acted = true
		s.logKey(in, c, "crashes at %s %s", r.op(), blocksString(r.first, r.n))
		in.die("crash")
		s.ensureCurrent()
		ch.end("instance %d crashed at a %s", in.id, r.op())
		return true

	case CrashOnFlush:
		// At a flush whose own connection's acknowledged writes are in
		// the cache: its client will rely on them once a flush succeeds.
		// Best with a block written twice in the cache: a plugin that
		// writes the lost writes again must write the newer last.
		if r.typ != nbdCmdFlush || in.dirtyBy[c] == 0 {
			return false
		}
		if (in.dirtyBy[c] < crashDirty || in.rewritten == 0) && a.passed < hotPatience {
			a.passed++
			return false
		}
		a.acted = true
		s.logKey(in, c, "crashes at a flush, %d acknowledged blocks in its cache", len(in.cache))
		in.die("crash at a flush")
		s.ensureCurrent()
		ch.end("instance %d crashed at a flush, losing its cache", in.id)
		return true

	case GracefulRestart:
		if a.left--; a.left > 0 {
			return false
		}
		a.acted = true
		in.onClosed = func() {
			s.ensureCurrent()
			ch.end("instance %d shut down gracefully, instance %d replaces it", in.id, s.cur.id)
		}
		s.reply(r, nbdESHUTDOWN)
		s.logf(in, c, "%s answered ESHUTDOWN, not carried out", r.op())
		in.beginShutdown(ch.rng.Intn(4))
		return true

	case StopReplace:
		// A replaced instance's cache never reaches the storage: with one,
		// only a FUA write it held can land.
		if !a.wantsWrite(s, r) || sc.WriteBack && r.flags&nbdCmdFlagFUA == 0 && a.passed < 2*hotPatience {
			if r.writeLike() && a.passed >= hotPatience {
				a.passed++
			}
			return false
		}
		a.acted = true
		a.inst, a.target = in, r
		s.hold(r, 0, 0, "stop-replace: read, not applied")
		in.stop("stop-replace")
		in.replace()
		// A newer write is one the proxy sent once it may have given up
		// on the stopped instance's: after timeout and reconnect-delay;
		// with quiesce-time, after timeout (the plugin holds every write
		// over the bytes until its quiesce-time passed: one it sends
		// earlier shows a doubt that ended early).
		a.armed = mono() + int64(sc.Timeout+sc.ReconnectDelay)
		if sc.Quiesce > 0 {
			a.armed = mono() + int64(sc.Timeout)
		}
		a.passed, a.picky = ch.rng.Intn(latePass), pickyPass
		ch.after(a, 2*sc.Timeout+sc.ReconnectDelay+stopSlack, func() {
			ch.resumeReplaced("its time is up")
		})
		return true

	case StopResume:
		if a.left--; a.left > 0 {
			return false
		}
		a.acted = true
		a.inst, a.deferred = in, r
		in.stop("stop-resume")
		d := time.Duration(20+ch.rng.Intn(181)) * time.Millisecond
		if sc.Timeout > 0 {
			d = 2*sc.Timeout + sc.ReconnectDelay + stopSlack
		}
		ch.after(a, d, func() { ch.resume(fmt.Sprintf("after %v", d)) })
		return true

	case HangWrite:
		if c.eof || !a.wantsWrite(s, r) {
			return false
		}
		c.hangs = true
		a.hung = append(a.hung, r)
		a.acted = len(a.hung) == a.left
		s.hold(r, 0, 0, "hang-write: until the proxy ends the connection")
		if len(a.hung) == 1 {
			ch.after(a, 2*sc.Timeout+sc.ReconnectDelay+hangSlack, func() {
				for _, h := range a.hung {
					s.finish(h, 0, "the proxy never ended the connection")
				}
				ch.end("the proxy did not end the connection of a hung write")
			})
		}
		return true

	case DropConn:
		// At a write to a hot block, mostly: what it read unanswered may
		// then land long after on a newer write there.
		if a.left--; a.left > 0 || !a.anyReq && !a.wantsWrite(s, r) {
			return false
		}
		a.acted = true
		// What it read and has not answered: applied now, dropped, or
		// (to a proxy that keeps such writes in doubt) applied at any
		// later time.
		fate := ch.rng.Intn(4)
		if !sc.InDoubt {
			fate = ch.rng.Intn(2)
		}
		unanswered := []*request{r}
		for _, h := range c.held {
			if !h.done {
				unanswered = append(unanswered, h)
			}
		}
		var late []*request
		writes := 0
		for _, h := range unanswered {
			if h.writeLike() && !h.applied {
				writes++
			}
			switch {
			case !h.writeLike() || h.applied:
			case fate == 0:
				s.apply(in, h, "before the server closes the connection")
			case fate >= 2:
				late = append(late, h)
			}
		}
		what := []string{"applied first", "dropped", "land later", "land later"}[fate]
		at := r.op()
		if r.n > 0 {
			at += " " + blocksString(r.first, r.n)
		}
		s.logKey(in, c, "closes the connection at %s; the %d writes it read unanswered: %s", at, writes, what)
		c.closeNow("drop-conn")
		for _, h := range late {
			s.addLate(in, h)
		}
		ch.end("instance %d closed connection %d, writes read unanswered: %s", in.id, c.id, what)
		return true

	case LateReplies:
		took := ch.rng.Intn(2) == 0
		if took {
			now := ch.rng.Intn(2) == 0
			if now && r.writeLike() {
				s.apply(in, r, "now, answered later")
			}
			if now && r.typ == nbdCmdFlush && sc.WriteBack {
				s.writeBack(in, "flush now, answered later")
			}
			s.hold(r, 1+ch.rng.Intn(6), ch.lateDelay(), "late reply")
		}
		if a.left--; a.left <= 0 {
			ch.end("its window of requests passed")
		}
		return took

	case ErrorReplies:
		took := ch.rng.Intn(2) == 0
		if took {
			s.reply(r, nbdEIO)
			s.logf(in, c, "%s %s answered EIO, not carried out", r.op(), blocksString(r.first, r.n))
		}
		if a.left--; a.left <= 0 {
			ch.end("its window of requests passed")
		}
		return took
	}
	return false
}

// lateDelay is how long a late reply may wait at most.  With timeout=
// some wait past it, so that the proxy ends the connection; not with one
// shared connection and no reconnect-delay, which would then be lost.
func (ch *chaos) lateDelay() time.Duration {
	sc := ch.s.sched
	t := sc.Timeout
	switch {
	case t == 0:
		return time.Duration(5+ch.rng.Intn(46)) * time.Millisecond
	case sc.Shared && sc.ReconnectDelay == 0:
		return t/10 + time.Duration(ch.rng.Int63n(int64(3*t/10)))
	default:
		return t/5 + time.Duration(ch.rng.Int63n(int64(13*t/10)))
	}
}

// resume ends a stop-resume: the instance goes on, with the request it
// read as it stopped.
func (ch *chaos) resume(why string) {
	a := ch.act
	if a == nil || a.kind != StopResume {
		return
	}
	a.inst.resume(why)
	if r := a.deferred; r != nil && !r.c.closed && a.inst.state == running {
		ch.s.process(r, "read before the stop")
	}
	ch.end("instance %d resumed: %s", a.inst.id, why)
}

// resumeReplaced ends a stop-replace: the old instance resumes for its
// last act.
func (ch *chaos) resumeReplaced(why string) {
	a := ch.act
	if a == nil || a.kind != StopReplace {
		return
	}
	a.inst.resumeReplaced(why)
	ch.end("instance %d resumed and closed: %s", a.inst.id, why)
}

// accepted: a stopped instance that sees a new connection resumes.
func (ch *chaos) accepted(in *instance) {
	if a := ch.act; a != nil && a.kind == StopResume && a.inst == in && ch.s.sched.Timeout > 0 {
		ch.resume("a new connection came")
	}
}

// acknowledged: once another instance has acknowledged a newer write to
// the blocks a stopped, replaced instance holds a write for, that
// instance resumes and its write lands on top.
func (ch *chaos) acknowledged(r *request) {
	a := ch.act
	if a != nil && a.kind == StopReplace && a.target != nil && r.c.inst != a.inst &&
		overlaps(a.target, r) && !sameData(a.target, r) && r.recv > a.armed {
		if a.passed > 0 {
			a.passed--
			return
		}
		if !ch.s.vouchedAtOnce(r) && a.picky > 0 {
			a.picky--
			return
		}
		ch.resumeReplaced(fmt.Sprintf("instance %d acknowledged a newer %s to %s", r.c.inst.id, r.op(), blocksString(r.first, r.n)))
	}
}

// endOfFile: once the proxy has ended the connections of every hung
// write, the hang is over (and takes no more writes).
func (ch *chaos) endOfFile(c *conn) {
	a := ch.act
	if a == nil || a.kind != HangWrite || len(a.hung) == 0 {
		return
	}
	for _, r := range a.hung {
		if !r.c.eof {
			return
		}
	}
	ch.end("the proxy ended the connections of the %d hung writes", len(a.hung))
}

// endSeen: the server has seen connection c end (its endAt is set).
// With quiesce-time, a stopped, replaced instance whose held write came
// on c resumes just before quiesce-time passes, the latest it may land
// that write (server.go): so the stop keeps to quiesce-time, and a
// plugin whose doubt ended early has had all that time to send a newer
// write.
func (ch *chaos) endSeen(c *conn) {
	a, sc := ch.act, ch.s.sched
	if a == nil || a.kind != StopReplace || a.target == nil || a.target.c != c || sc.Quiesce == 0 {
		return
	}
	d := sc.quiesceWindow() - quiesceEdge
	if d < 0 {
		d = 0
	}
	ch.after(a, d, func() { ch.resumeReplaced("quiesce-time is about to pass") })
}

// heal ends the chaos for the final phase: an episode under way ends
// (a stopped instance resumes with what it read).
func (ch *chaos) heal() {
	a := ch.act
	if a == nil {
		return
	}
	switch a.kind {
	case StopResume:
		ch.resume("the final phase")
	case StopReplace:
		ch.resumeReplaced("the final phase")
	default:
		ch.end("cut short by the final phase")
	}
	if ch.act != nil {
		ch.act = nil
	}
	ch.records[len(ch.records)-1].Ended = 0
}
