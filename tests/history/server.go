// SPDX-License-Identifier: BSD-3-Clause

package history

import (
	"fmt"
	"math/rand"
	"net"
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

	storage   []byte // stable storage: survives every instance
	insts     []*instance
	cur       *instance
	late      []*lateWrite // writes of closed connections, to land later
	writes    map[int]int  // writes acknowledged, per block
	maxWrites int
	nextInst  int
	nextConn  int
	requests  int  // requests seen, every instance
	calm      bool // the final phase: every request served at once
	closed    bool
	chaos     *chaos
	log       []logEntry
	protoErrs []string // what the proxy sent that NBD does not allow
}

// A lateWrite is a write a server still holds after closing the
// connection it came on (qemu-nbd does this): it lands when a newer
// write to its blocks has been acknowledged, or at its deadline.
type lateWrite struct {
	r      *request
	inst   *instance
	timer  *time.Timer
	done   bool
	closed int64 // when its connection closed (CLOCK_MONOTONIC)
	resent int64 // when a copy of it sent again was acknowledged; 0: none
	pass   int   // newer writes to let by before it lands on one
	picky  int   // newer writes not vouched at once to let by, hoping for one
}

// pickyPass is how many newer writes not vouched for at their reply a
// late write lets by, waiting for one that is: a read right after that
// one shows the stale write on top of a promise.
const pickyPass = 4

// latePass bounds how many newer writes a late write lets by before it
// lands on one: the later the newer write, the likelier its client
// issued it after the late write's own copy had ended.
const latePass = 3

// lateFraction of the proxy's timeout is the longest a closed
// connection's write may wait to land (doc.go: the assumption).  The
// server's own deadline is lateDeadlineFraction of it: a timer fires
// late on a loaded machine, never early, and the write must land
// inside the bound a proxy relies on.
const (
	lateFraction         = 2
	lateDeadlineFraction = 4
)

// NewServer makes the server of a schedule in dir (which must be short:
// Unix socket paths are limited) and starts its first instance.
func NewServer(sched *Schedule, dir string) (*Server, error) {
	s := &Server{
		sched:   sched,
		rng:     rand.New(rand.NewSource(sched.Seed ^ 0x5eed)),
		dir:     dir,
		link:    filepath.Join(dir, "server"),
		size:    int64(sched.Blocks) * blockSize,
		storage: make([]byte, sched.Blocks*blockSize),
		writes:  map[int]int{},
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
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: in.sock, Net: "unix"})
	if err != nil {
		return nil, err
	}
	in.ln = ln
	// The switch is atomic (rename over the link): a dial reaches the
	// old instance or the new one, never nothing.
	tmp := s.link + ".new"
	os.Remove(tmp)
	if err := os.Symlink(in.sock, tmp); err != nil {
		ln.Close()
		return nil, err
	}
	if err := os.Rename(tmp, s.link); err != nil {
		ln.Close()
		return nil, err
	}
	s.insts = append(s.insts, in)
	s.cur = in
	s.logf(in, nil, "instance %d starts on %s", in.id, in.sock)
	go in.accept()
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
func (s *Server) apply(in *instance, r *request, why string) {
	if r.applied {
		return
	}
	r.applied = true
	if r.typ == nbdCmdTrim && s.rng.Intn(2) == 0 {
		s.logf(in, r.c, "%s %s left as it is (%s)", r.op(), blocksString(r.first, r.n), why)
		return
	}
	stable := !s.sched.WriteBack || r.flags&nbdCmdFlagFUA != 0
	for i := 0; i < r.n; i++ {
		b := r.first + i
		d := zeroBlock
		if r.typ == nbdCmdWrite {
			d = r.data[i*blockSize : (i+1)*blockSize]
		}
		if s.sched.WriteBack && !in.replaced {
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
	in.cache, in.dirtyBy = map[int][]byte{}, map[*conn]int{}
}

// ---- Late writes (qemu-nbd's: applied after their connection closed)

// addLate keeps r, a write of a connection in has just closed, to land
// later: before lateFraction of the timeout has passed.
func (s *Server) addLate(in *instance, r *request) {
	lw := &lateWrite{r: r, inst: in, closed: mono(), pass: s.rng.Intn(latePass), picky: pickyPass}
	s.late = append(s.late, lw)
	d := s.sched.Timeout / lateDeadlineFraction
	lw.timer = time.AfterFunc(d, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.landLate(lw, "its deadline")
	})
	s.logBlocks(in, r.c, r.first, r.n, r.ids, "%s %s held after the close, lands within %v", r.op(), blocksString(r.first, r.n), d)
}

// landLate applies a late write, once.
func (s *Server) landLate(lw *lateWrite, why string) {
	if lw.done {
		return
	}
	lw.done = true
	lw.timer.Stop()
	from := "late, after its connection closed: "
	if lw.inst.replaced {
		from = "late, from a replaced instance, after its connection closed: "
	}
	s.apply(lw.inst, lw.r, from+why)
	s.cond.Broadcast()
}

// acknowledged is called once a write, zero or trim r has been applied
// and its reply sent on its way: the adversary's moment to land what
// it holds for those blocks on top of r, if r is newer: read after the
// copy of the late write the proxy sent again was acknowledged, or
// without reconnect-delay (the proxy then fails it, sends no copy) after
// the close.  (If no such write comes, it lands at its deadline.)
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
		case r.recv <= lw.closed, r.recv <= lw.resent,
			lw.resent == 0 && s.sched.ReconnectDelay > 0: // wait for the copy sent again
		case lw.pass > 0:
			lw.pass--
		case !s.vouchedAtOnce(r) && lw.picky > 0:
			lw.picky--
		default:
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
				for _, r := range c.held {
					s.finish(r, 0, "the final phase")
				}
			}
		}
	}
	for _, lw := range s.late {
		s.landLate(lw, "the final phase")
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

// Close kills every instance; the storage stays readable.
func (s *Server) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	s.chaos.heal()
	for _, in := range s.insts {
		if in.state != dead {
			in.die("the end of the run")
		}
	}
	for _, lw := range s.late {
		lw.timer.Stop()
	}
	s.cond.Broadcast()
}

// ProtocolErrors is what the proxy sent that NBD does not allow.
func (s *Server) ProtocolErrors() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.protoErrs...)
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
