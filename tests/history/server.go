// SPDX-License-Identifier: BSD-3-Clause

package history

import (
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// A Server is the adversarial NBD server of one schedule: one storage,
// the instances that serve it (one at a time is current: the link
// leads to it), and the chaos that drives them.  One lock guards it
// all: the server is never the bottleneck of a run (the Python clients
// are), and one lock makes every choice atomic with what it acts on.
type Server struct {
	mu    sync.Mutex
	cond  *sync.Cond // broadcast on every change a goroutine may wait for
	sched *Schedule
	rng   *rand.Rand
	dir   string
	link  string // what the proxy dials: a symbolic link to cur's socket
	size  int64
	flags uint16

	storage    []byte // stable storage: survives every instance
	insts      []*instance
	cur        *instance
	late       []*lateWrite // writes of closed connections, to land later
	lateStats  LateStats
	writes     map[int]int // writes acknowledged, per block
	maxWrites  int
	nextInst   int
	nextConn   int
	requests   int  // requests seen, every instance
	calm       bool // the final phase: every request served at once
	closed     bool
	chaos      *chaos
	log        []logEntry
	protoErrs  []string       // what the proxy sent that NBD does not allow
	errReplies map[string]int // error replies sent, by errorReplyName
}

// A lateWrite is a write an instance read on a connection that has
// closed since, without answering it: an instance that is alive may
// apply it at any later time (doc.go).  It lands on top of a newer write
// to its blocks once one has been acknowledged (acknowledged), when its
// instance shuts down gracefully, or in the final phase; a crash of its
// instance loses it; a stopped instance lands nothing until it resumes.
type lateWrite struct {
	r         *request
	inst      *instance
	done      bool
	closed    int64 // when its connection closed (CLOCK_MONOTONIC)
	deadline  int64 // with quiesce-time: it lands by then or never (0: none)
	resent    int64 // when a copy of it sent again was acknowledged; 0: none
	notBefore int64 // it lands only on a newer write read after this
	long      bool  // notBefore is seconds past timeout + reconnect-delay
	pass      int   // newer writes to let by before it lands on one
	picky     int   // newer writes not vouched at once to let by, hoping for one
}

// pickyPass is how many newer writes not vouched for at their reply a
// late write lets by, waiting for one that is: a read right after that
// one shows the stale write on top of a promise.
const pickyPass = 4

// latePass bounds how many newer writes a late write lets by before it
// lands on one: the later the newer write, the likelier its client
// issued it after the late write's own copy had ended.
const latePass = 3

// A long late write (one in longOdds) lands only on a newer write read
// more than timeout + reconnect-delay + longMin, plus up to longSpread,
// after its connection closed: no hold for a time after a connection
// ends, the server's own or the proxy's, keeps a newer write from being
// overwritten.
const (
	longOdds   = 2
	longMin    = 500 * time.Millisecond
	longSpread = 1500 * time.Millisecond
)

// lateWindow is how long a late write waits for a newer write once it
// may land on one, before the chaos phase may end (it then lands in the
// final phase).
const lateWindow = 500 * time.Millisecond

// settleSlack: once a request's bound (2 * timeout + reconnect-delay)
// and this have passed since a late write's connection closed, the
// proxy has ended that write's request, whatever became of it.
const settleSlack = 200 * time.Millisecond

// With quiesce-time=Q the adversary keeps to what the user declared:
// nothing read on a connection is carried out later than Q after the
// connection ended, less quiesceMargin, counted from when the server saw
// it end (conn.endAt).  The margin because the plugin starts its clock
// at its own sight of the end, which comes first when the proxy ended
// the connection.  A late write lands by then or is lost; a request a
// stopped instance resumes with past then is dropped unanswered
// (Server.apply); and every late write that has neither landed nor been
// lost by quiesceEdge before its deadline lands then, or is lost, the
// one or the other at random: a plugin whose doubt ends early sees its
// newer write overwritten there.  quiesce-time is drawn at least
// quiesceMargin long (schedule.go): a shorter one no server can keep,
// as it cannot see the end before the plugin does.
const (
	quiesceMargin = 200 * time.Millisecond
	quiesceEdge   = 20 * time.Millisecond
)

// LateStats counts what became of the late writes of a run.
type LateStats struct {
	Kept        int           // writes kept after their connection closed
	Long        int           // of those, long ones (lateWrite.long)
	OnNewer     int           // landed on a newer write just acknowledged
	LongOnNewer int           // of those, more than timeout + reconnect-delay after the close
	Longest     time.Duration // the longest from a close to a landing on a newer write
	Shutdown    int           // landed as their instance shut down gracefully
	Final       int           // landed in the final phase
	Lost        int           // lost with their instance (a crash)
	AtQuiesce   int           // landed as quiesce-time was about to pass
	Expired     int           // lost as quiesce-time passed
	Dropped     int           // requests not carried out: read before quiesce-time passed, taken after
}

// NewServer makes the server of a schedule in dir (which must be short:
// Unix socket paths are limited) and starts its first instance.
func NewServer(sched *Schedule, dir string) (*Server, error) {
	s := &Server{
		sched:      sched,
		rng:        rand.New(rand.NewSource(sched.Seed ^ 0x5eed)),
		dir:        dir,
		link:       filepath.Join(dir, "server"),
		size:       int64(sched.Blocks) * blockSize,
		storage:    make([]byte, sched.Blocks*blockSize),
		writes:     map[int]int{},
		errReplies: map[string]int{},
		// Every instance advertises the same flags: the proxy refuses a
		// new connection that shows another disk.
		flags: nbdFlagHasFlags | nbdFlagSendFUA | nbdFlagSendTrim | nbdFlagSendWriteZeroes,
	}
	if sched.Flush {
		s.flags |= nbdFlagSendFlush
	}
	s.cond = sync.NewCond(&s.mu)
	s.chaos = newChaos(s)
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, err := s.startInstance(); err != nil {
		return nil, err
	}
	return s, nil
}

// Link is the path the proxy's socket= names.
func (s *Server) Link() string { return s.link }

// ChaosDone is closed when every episode has ended and the final
// phase's count of requests has passed.
func (s *Server) ChaosDone() <-chan struct{} { return s.chaos.done }

// startInstance starts a new instance on the storage and points the link
// at it.
func (s *Server) startInstance() (*instance, error) {
	s.nextInst++
	in := &instance{s: s, id: s.nextInst, conns: map[*conn]bool{}, cache: map[int][]byte{}, dirtyBy: map[*conn]int{}}
	in.sock = filepath.Join(s.dir, fmt.Sprintf("i%d.sock", in.id))
	// Its process listens before the link leads to it.  (s.mu is held
	// while it starts, a few milliseconds: the server does nothing
	// meanwhile, which a slow server may do.)
	p, err := startProc(in.sock, in.accepted)
	if err != nil {
		return nil, err
	}
	in.proc = p
	// The switch is atomic (rename over the link): a dial reaches the
	// old instance or the new one, never nothing.
	tmp := s.link + ".new"
	os.Remove(tmp)
	if err := os.Symlink(in.sock, tmp); err != nil {
		p.kill()
		return nil, err
	}
	if err := os.Rename(tmp, s.link); err != nil {
		p.kill()
		return nil, err
	}
	s.insts = append(s.insts, in)
	s.cur = in
	s.logf(in, nil, "instance %d (process %d) starts on %s", in.id, p.pid(), in.sock)
	return in, nil
}

// ensureCurrent starts a new instance unless the current one serves.
func (s *Server) ensureCurrent() {
	if s.cur != nil && s.cur.state == running && !s.cur.replaced {
		return
	}
	if _, err := s.startInstance(); err != nil {
		s.protoErrs = append(s.protoErrs, "cannot start an instance: "+err.Error())
	}
}

// ---- Storage

// readBlocks is what a read of n blocks from first sees on in: its cache
// over the storage.
func (s *Server) readBlocks(in *instance, first, n int) []byte {
	out := make([]byte, 0, n*blockSize)
	for b := first; b < first+n; b++ {
		if d, ok := in.cache[b]; ok {
			out = append(out, d...)
		} else {
			out = append(out, s.storage[b*blockSize:(b+1)*blockSize]...)
		}
	}
	return out
}

// apply carries out a write, zero or trim on in: into its cache
// (write-back), else, or with FUA, onto the storage.  An instance that
// has been replaced has no cache any more: what it would cache is lost.
// Past quiesce-time it is not carried out: false (it must not be
// answered either: the proxy, still reading, would take the reply for
// the server's word).
func (s *Server) apply(in *instance, r *request, why string) bool {
	if r.applied {
		return true
	}
	if r.dropped || s.pastQuiesce(r.c) {
		if !r.dropped {
			r.dropped = true
			s.lateStats.Dropped++
			s.logBlocks(in, r.c, r.first, r.n, r.ids, "%s %s not carried out: its connection ended quiesce-time ago (%s)",
				r.op(), blocksString(r.first, r.n), why)
		}
		return false
	}
	r.applied = true
	if r.typ == nbdCmdTrim && s.rng.Intn(2) == 0 {
		s.logf(in, r.c, "%s %s left as it is (%s)", r.op(), blocksString(r.first, r.n), why)
		return true
	}
	stable := !s.sched.WriteBack || r.flags&nbdCmdFlagFUA != 0
	for i := 0; i < r.n; i++ {
		b := r.first + i
		d := zeroBlock
		if r.typ == nbdCmdWrite {
			d = r.data[i*blockSize : (i+1)*blockSize]
		}
		if s.sched.WriteBack && !in.replaced {
			if _, ok := in.cache[b]; ok && !stable {
				in.rewritten++
			}
			in.cache[b] = append([]byte(nil), d...)
			if !stable {
				in.dirtyBy[r.c]++
			}
		}
		if stable {
			copy(s.storage[b*blockSize:], d)
		}
	}
	where := "storage"
	if !stable {
		where = "cache"
		if in.replaced {
			where = "a dropped cache"
		}
	}
	s.logBlocks(in, r.c, r.first, r.n, r.ids, "%s %s applied to %s (%s)", r.op(), blocksString(r.first, r.n), where, why)
	return true
}

// writeBack puts in's cache on the storage (a flush, a graceful end).
func (s *Server) writeBack(in *instance, why string) {
	if len(in.cache) == 0 {
		return
	}
	for b, d := range in.cache {
		copy(s.storage[b*blockSize:], d)
	}
	s.logf(in, nil, "%d cached blocks written back (%s)", len(in.cache), why)
	in.cache, in.dirtyBy, in.rewritten = map[int][]byte{}, map[*conn]int{}, 0
}

// ---- Late writes: applied after their connection closed

// addLate keeps r, a write of a connection of in that has just closed
// unanswered, to land at any later time while in is alive.
func (s *Server) addLate(in *instance, r *request) {
	now := mono()
	closed := r.c.endAt
	if closed == 0 || closed > now {
		closed = now
	}
	lw := &lateWrite{r: r, inst: in, closed: closed, notBefore: now, pass: s.rng.Intn(latePass), picky: pickyPass}
	when := "on a newer write"
	if q := s.sched.quiesceWindow(); s.sched.Quiesce > 0 {
		lw.deadline = closed + int64(q)
		edge := lw.deadline - int64(quiesceEdge)
		if edge <= now {
			s.late = append(s.late, lw)
			s.lateStats.Kept++
			s.expire(lw, "its connection ended quiesce-time ago")
			return
		}
		// Long: late in its window, where a doubt that ended early shows.
		if s.rng.Intn(longOdds) == 0 {
			lw.long = true
			lw.notBefore = closed + int64(q)*int64(5+s.rng.Intn(5))/10
			if lw.notBefore < now {
				lw.notBefore = now
			}
			s.lateStats.Long++
		}
		when = fmt.Sprintf("on a newer write read %.2fs after the close or later, by %.2fs after it (quiesce-time)",
			float64(lw.notBefore-closed)/1e9, float64(lw.deadline-closed)/1e9)
		time.AfterFunc(time.Duration(edge-now), func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			s.quiesceDue(lw)
		})
	} else if s.rng.Intn(longOdds) == 0 {
		wait := s.sched.Timeout + s.sched.ReconnectDelay + longMin + time.Duration(s.rng.Int63n(int64(longSpread)))
		lw.long, lw.notBefore = true, now+int64(wait)
		s.lateStats.Long++
		when = fmt.Sprintf("on a newer write read %.1fs after the close or later", wait.Seconds())
	}
	s.late = append(s.late, lw)
	s.lateStats.Kept++
	s.logBlocks(in, r.c, r.first, r.n, r.ids, "%s %s kept after the close, to land %s", r.op(), blocksString(r.first, r.n), when)
}

// landLate applies a late write, once, unless quiesce-time has passed
// (then it is lost); it says whether it landed.
func (s *Server) landLate(lw *lateWrite, why string) bool {
	if lw.done {
		return false
	}
	if lw.deadline != 0 && mono() > lw.deadline {
		s.expire(lw, "quiesce-time passed first")
		return false
	}
	lw.done = true
	from := "late"
	if lw.inst.replaced {
		from = "late, from a replaced instance"
	}
	after := time.Duration(mono() - lw.closed)
	s.apply(lw.inst, lw.r, fmt.Sprintf("%s, %.3fs after its connection closed: %s", from, after.Seconds(), why))
	s.cond.Broadcast()
	return true
}

// quiesceDue: a late write's quiesce-time is about to pass; it lands
// now or never (a stopped instance lands nothing).
func (s *Server) quiesceDue(lw *lateWrite) {
	if lw.done || s.closed || s.calm {
		return
	}
	if lw.inst.state == stopped || s.rng.Intn(2) == 0 {
		s.expire(lw, "quiesce-time is passing")
		return
	}
	if s.landLate(lw, "quiesce-time is about to pass") {
		s.lateStats.AtQuiesce++
	}
}

// expire: a late write is lost, its quiesce-time passed.
func (s *Server) expire(lw *lateWrite, why string) {
	if lw.done {
		return
	}
	lw.done = true
	s.lateStats.Expired++
	r := lw.r
	s.logBlocks(lw.inst, r.c, r.first, r.n, r.ids, "%s %s lost: %s", r.op(), blocksString(r.first, r.n), why)
	s.cond.Broadcast()
}

// pastQuiesce says whether carrying out a request of c now would break
// quiesce-time.
func (s *Server) pastQuiesce(c *conn) bool {
	return s.sched.Quiesce > 0 && c.endAt != 0 && mono() > c.endAt+int64(s.sched.quiesceWindow())
}

// lateWait is when the late writes still waiting will have had their
// time to meet a newer write: lateWindow past the earliest moment a
// write read then may be newer (CLOCK_MONOTONIC; 0: none waits).
func (s *Server) lateWait() int64 {
	var until int64
	for _, lw := range s.late {
		if lw.done {
			continue
		}
		t := lw.notBefore
		switch {
		case lw.deadline != 0:
			// It lands or is lost by then.
			t = lw.deadline
		case lw.resent != 0:
			if lw.resent > t {
				t = lw.resent
			}
		case s.sched.ReconnectDelay > 0:
			if c := lw.closed + int64(s.sched.opBound()+settleSlack); c > t {
				t = c
			}
		}
		if t += int64(lateWindow); t > until {
			until = t
		}
	}
	return until
}

// loseLate: a late write's instance died with it.
func (s *Server) loseLate(lw *lateWrite) {
	if lw.done {
		return
	}
	lw.done = true
	s.lateStats.Lost++
	r := lw.r
	s.logBlocks(lw.inst, r.c, r.first, r.n, r.ids, "%s %s lost with the instance", r.op(), blocksString(r.first, r.n))
}

// newer says whether r, a write acknowledged over late write lw's
// blocks, is one to land lw on: read after lw's connection closed and
// after its notBefore, and, as far as the server can tell, issued after
// lw's own request ended: after the copy the proxy sent again was
// acknowledged; or, with no copy, without reconnect-delay (the proxy
// then fails it at once) or once the proxy's bound for a request has
// passed.
func (s *Server) newer(lw *lateWrite, r *request) bool {
	sc := s.sched
	switch {
	case r.recv <= lw.closed, r.recv <= lw.notBefore:
		return false
	case lw.resent != 0:
		return r.recv > lw.resent
	case sc.Quiesce > 0:
		// The plugin holds every write over bytes in doubt until its
		// quiesce-time has passed: one it sent earlier is newer.
		return true
	default:
		return sc.ReconnectDelay == 0 || r.recv > lw.closed+int64(sc.opBound()+settleSlack)
	}
}

// acknowledged is called once a write, zero or trim r has been applied
// and its reply sent on its way: the adversary's moment to land what
// it holds for those blocks on top of r, if r is newer (newer).  A late
// write that never meets one lands in the final phase.
func (s *Server) acknowledged(r *request) {
	for _, b := range r.blocks() {
		s.writes[b]++
		if s.writes[b] > s.maxWrites {
			s.maxWrites = s.writes[b]
		}
	}
	for _, lw := range s.late {
		switch {
		case lw.done || !overlaps(lw.r, r):
		case sameData(lw.r, r):
			lw.resent = mono()
		case lw.inst.state == stopped, !s.newer(lw, r):
		case lw.pass > 0:
			lw.pass--
		case !s.vouchedAtOnce(r) && lw.picky > 0:
			lw.picky--
		default:
			after := time.Duration(mono() - lw.closed)
			s.lateStats.OnNewer++
			if after > s.sched.Timeout+s.sched.ReconnectDelay {
				s.lateStats.LongOnNewer++
			}
			if after > s.lateStats.Longest {
				s.lateStats.Longest = after
			}
			s.landLate(lw, fmt.Sprintf("after a newer %s was acknowledged by instance %d", r.op(), r.c.inst.id))
		}
	}
	s.chaos.acknowledged(r)
}

// vouchedAtOnce says whether a client may rely on a write from its
// reply on: with FUA, or when the server has no flush.
func (s *Server) vouchedAtOnce(r *request) bool {
	return r.typ != nbdCmdTrim && (r.flags&nbdCmdFlagFUA != 0 || !s.sched.Flush)
}

// hotFraction: a block is hot when it has been written at least this
// fraction of the most written block's count.
const hotFraction = 2

// hotMin is how many writes the most written block needs before any
// block counts as hot.
const hotMin = 4

// hot says whether r writes a block written often: what the clients
// read and write again soon, where a stale write is seen.
func (s *Server) hot(r *request) bool {
	for _, b := range r.blocks() {
		if s.maxWrites >= hotMin && s.writes[b]*hotFraction >= s.maxWrites {
			return true
		}
	}
	return false
}

// overlaps says whether two requests touch a common block.
func overlaps(a, b *request) bool {
	return a.first < b.first+b.n && b.first < a.first+a.n
}

// sameData says whether two writes carry the same ops' data (a request
// sent again by the proxy): landing one on the other changes nothing.
func sameData(a, b *request) bool {
	if len(a.ids) == 0 || len(a.ids) != len(b.ids) {
		return false
	}
	for i := range a.ids {
		if a.ids[i] != b.ids[i] {
			return false
		}
	}
	return true
}

// ---- The final phase and the end

// Heal ends the chaos: stopped instances resume, old instances finish
// what they hold (or are dead already) and close, held requests are
// answered, late writes land, and a healthy instance serves; from now
// on every request is served at once.
func (s *Server) Heal() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calm = true
	s.logf(nil, nil, "final phase: the server heals")
	s.chaos.heal()
	for _, in := range s.insts {
		switch {
		case in.state == dead:
		case in.replaced:
			in.resumeReplaced("the final phase")
		case in.state == shuttingDown:
			in.finishShutdown()
		default:
			if in.state == stopped {
				in.resume("the final phase")
			}
			for c := range in.conns {
				for _, r := range append([]*request(nil), c.held...) {
					s.finish(r, 0, "the final phase")
				}
			}
		}
	}
	for _, lw := range s.late {
		if s.landLate(lw, "the final phase") {
			s.lateStats.Final++
		}
	}
	s.ensureCurrent()
	s.cond.Broadcast()
}

// Storage returns a copy of the storage, as it is.
func (s *Server) Storage() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]byte(nil), s.storage...)
}

// Close kills every instance and its process (a replaced one, or one
// whose graceful shutdown is done, may live on until then) and waits
// for the processes to be reaped; the storage stays readable.
func (s *Server) Close() {
	s.mu.Lock()
	s.closed = true
	s.chaos.heal()
	var procs []*instProc
	for _, in := range s.insts {
		if in.state != dead {
			in.die("the end of the run")
		}
		in.proc.kill()
		procs = append(procs, in.proc)
	}
	s.cond.Broadcast()
	s.mu.Unlock()
	limit := time.After(procStartLimit)
	for _, p := range procs {
		select {
		case <-p.exited:
		case <-limit:
			return
		}
	}
}

// LateLeft is how many late writes have neither landed nor been lost
// (none once the server has healed: the final phase reads the storage
// only when none is left).
func (s *Server) LateLeft() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, lw := range s.late {
		if !lw.done {
			n++
		}
	}
	return n
}

// Late says what became of the late writes.
func (s *Server) Late() LateStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lateStats
}

// ProtocolErrors is what the proxy sent that NBD does not allow.
func (s *Server) ProtocolErrors() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.protoErrs...)
}

// ErrorReplies counts the error replies the server sent, by why.
func (s *Server) ErrorReplies() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := map[string]int{}
	for k, n := range s.errReplies {
		m[k] = n
	}
	return m
}

// Log returns the server's log.
func (s *Server) Log() []logEntry {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]logEntry(nil), s.log...)
}

// Episodes returns what became of each episode.
func (s *Server) Episodes() []episodeRecord {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]episodeRecord(nil), s.chaos.records...)
}
