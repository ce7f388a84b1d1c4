// SPDX-License-Identifier: BSD-3-Clause

package history

import (
	"fmt"
	"math/rand"
	"strings"
	"time"
)

// A Schedule is everything one run is made of, drawn from its seed: the
// proxy's parameters, the clients, what the server advertises and how
// it caches, and the server's episodes, in order.  A replay of a seed
// draws the same schedule; the interleaving of the clients' requests,
// and so the server's per-request draws, vary with the machine's
// timing.
type Schedule struct {
	Seed           int64
	Blocks         int           // disk size in blocks of blockSize
	Shared         bool          // proxy's shared=true
	ReconnectDelay time.Duration // proxy's reconnect-delay=, 0: off
	Timeout        time.Duration // proxy's timeout=, 0: off
	// Quiesce is the proxy's quiesce-time= (0: not set), which the
	// server keeps to (server.go); RepairMemory its repair-memory= (""
	// not set: the default).
	Quiesce      time.Duration
	RepairMemory string
	Depths       []int // requests in flight, per client
	Flush        bool  // the server advertises flush
	WriteBack    bool  // the server has a volatile cache
	// InDoubt: the server may apply a write it read on a connection at
	// any time after the connection closed unanswered (ProxyFeatures).
	InDoubt  bool
	Episodes []Episode
	EndAfter int // requests after the last episode before the final phase
}

// An Episode is one adversarial act of the server, which starts once
// the server has seen After requests since the previous one ended.
type Episode struct {
	Kind  EpisodeKind
	After int
}

// EpisodeKind names what the server does in an episode (chaos.go).
type EpisodeKind string

const (
	// Crash: the instance dies at a request (sockets closed, cache and
	// pending writes lost) and a new one starts on the storage.
	Crash EpisodeKind = "crash"
	// CrashOnFlush: a crash when a flush arrives while the cache holds
	// acknowledged writes (write-back only).
	CrashOnFlush EpisodeKind = "crash-on-flush"
	// GracefulRestart: as nbdkit on SIGTERM (requests read from then on
	// get ESHUTDOWN, those in progress complete or fail with ESHUTDOWN,
	// late writes are applied, the cache is written back, then it
	// closes and carries out nothing more), and a new instance starts.
	GracefulRestart EpisodeKind = "graceful-restart"
	// StopReplace: the instance stops (as SIGSTOP) with a write read but
	// not applied, and a new one on the same storage replaces it (and
	// drops the old one's cache); the old one resumes once the new one
	// has acknowledged a newer write to those blocks (or after a
	// while), and closes its connections after applying what it had, or
	// before: then it applies it at any later time.  Needs timeout=.
	StopReplace EpisodeKind = "stop-replace"
	// StopResume: the instance stops, and resumes when a new connection
	// reaches it (or after a while; briefly without timeout=).
	StopResume EpisodeKind = "stop-resume"
	// HangWrite: a write is neither applied nor answered until the proxy
	// ends its connection; then the server closes at once and applies it
	// at any later time (qemu-nbd), or finishes it and closes, or answers
	// ESHUTDOWN and closes.  Needs timeout=.
	HangWrite EpisodeKind = "hang-write"
	// DropConn: the server closes a connection on its own at a request
	// (a write to a hot block, mostly); the writes it read there and has
	// not answered, that one included, it applies first, drops, or
	// applies at any later time.
	DropConn EpisodeKind = "drop-conn"
	// LateReplies: for a while, some requests are answered late (applied
	// now or at the reply), out of order.
	LateReplies EpisodeKind = "late-replies"
	// ErrorReplies: for a while, some requests fail with EIO and are not
	// carried out.
	ErrorReplies EpisodeKind = "error-replies"
)

// allEpisodeKinds is every kind, in the order the summary lists them.
var allEpisodeKinds = []EpisodeKind{Crash, CrashOnFlush, GracefulRestart, StopReplace, StopResume,
	HangWrite, DropConn, LateReplies, ErrorReplies}

// maxEpisodes is the most episodes a schedule has.
const maxEpisodes = 4

// ProxyFeatures says what the proxy under test has: which of the
// plugin's parameters, and whether it keeps a write whose connection
// ended before the server answered it in doubt (the man page's rule:
// no other write over its bytes is sent).  Only then may the server
// apply such a write at any later time, as NBD allows: the plugin and
// clients on the server directly (their write's fate stays unknown)
// get that; nbdkit's C nbd plugin, which has none of these and fails
// such a write, does not: to it a connection closed unanswered leaves
// nothing to land later.
type ProxyFeatures struct {
	ReconnectDelay, Timeout, InDoubt bool
	// The proxy has quiesce-time= and repair-memory= (its --help says
	// so: detectFeatures).
	Quiesce, RepairMemory bool
}

// The values drawn for quiesce-time= and repair-memory=: none shorter
// than quiesceMargin (server.go), 0 (keep nothing), small enough that
// the plugin's own flushes come often, and the default.
var (
	quiesceTimes  = []time.Duration{300 * time.Millisecond, 500 * time.Millisecond, time.Second, 2 * time.Second}
	repairMemorys = []string{"", "0", "64K"}
)

// NewSchedule draws the schedule of a seed.
func NewSchedule(seed int64, f ProxyFeatures) *Schedule {
	rng := rand.New(rand.NewSource(seed))
	s := &Schedule{Seed: seed, InDoubt: f.InDoubt}
	s.Blocks = []int{64, 128, 256}[rng.Intn(3)]
	s.Shared = rng.Intn(10) < 3
	if f.ReconnectDelay && rng.Intn(10) >= 3 {
		s.ReconnectDelay = []time.Duration{time.Second, time.Second, 1500 * time.Millisecond,
			2 * time.Second, 3 * time.Second, 5 * time.Second}[rng.Intn(6)]
	}
	if f.Timeout && rng.Intn(10) >= 3 {
		s.Timeout = time.Duration(3+rng.Intn(13)) * 100 * time.Millisecond // 0.3 to 1.5 s
	}
	clients := 1 + rng.Intn(4)
	for i := 0; i < clients; i++ {
		s.Depths = append(s.Depths, 1+rng.Intn(4))
	}
	s.Flush = rng.Intn(10) < 8
	// Without flush a server must make every write stable before it
	// answers: a cache needs flush.
	s.WriteBack = s.Flush && rng.Intn(2) == 0
	kinds := s.possibleEpisodes()
	n := 1 + rng.Intn(maxEpisodes)
	for i := 0; i < n; i++ {
		s.Episodes = append(s.Episodes, Episode{Kind: kinds[rng.Intn(len(kinds))], After: 100 + rng.Intn(600)})
	}
	s.EndAfter = 300 + rng.Intn(700)
	// Drawn apart, so that a seed draws the same schedule otherwise
	// whether the proxy has them or not (an older build, the C plugin).
	xr := rand.New(rand.NewSource(seed ^ 0x9e1e5))
	if f.Quiesce && xr.Intn(10) < 4 {
		s.Quiesce = quiesceTimes[xr.Intn(len(quiesceTimes))]
	}
	if f.RepairMemory {
		s.RepairMemory = repairMemorys[xr.Intn(len(repairMemorys))]
	}
	return s
}

// quiesceWindow is how long after the server saw a connection end it
// may still carry out what it read there, with quiesce-time set
// (server.go).
func (s *Schedule) quiesceWindow() time.Duration {
	if w := s.Quiesce - quiesceMargin; w > 0 {
		return w
	}
	return 0
}

// possibleEpisodes lists the kinds this schedule's parameters allow,
// some more than once to weigh them.
func (s *Schedule) possibleEpisodes() []EpisodeKind {
	// One shared server connection without reconnect-delay stays failed
	// for good once it fails: only requests fail there.
	if s.Shared && s.ReconnectDelay == 0 {
		return []EpisodeKind{LateReplies, ErrorReplies}
	}
	kinds := []EpisodeKind{Crash, GracefulRestart, StopResume, DropConn, LateReplies, ErrorReplies}
	if s.WriteBack {
		kinds = append(kinds, CrashOnFlush, CrashOnFlush)
	}
	if s.Timeout > 0 {
		kinds = append(kinds, StopReplace, StopReplace, HangWrite, HangWrite)
	}
	return kinds
}

// ProxyParams are the plugin's parameters, after socket=.
func (s *Schedule) ProxyParams() []string {
	var p []string
	if s.Shared {
		p = append(p, "shared=true")
	}
	if s.ReconnectDelay > 0 {
		p = append(p, "reconnect-delay="+seconds(s.ReconnectDelay))
	}
	if s.Timeout > 0 {
		p = append(p, "timeout="+seconds(s.Timeout))
	}
	if s.Quiesce > 0 {
		p = append(p, "quiesce-time="+seconds(s.Quiesce))
	}
	if s.RepairMemory != "" {
		p = append(p, "repair-memory="+s.RepairMemory)
	}
	return p
}

// seconds writes d as the plugin reads it: seconds, maybe fractional.
func seconds(d time.Duration) string { return fmt.Sprintf("%g", d.Seconds()) }

// opBound is the longest an op may take with timeout= set (the
// contract's rule 3), without the slack for a loaded machine.
func (s *Schedule) opBound() time.Duration { return 2*s.Timeout + s.ReconnectDelay }

// String describes the schedule for a report.
func (s *Schedule) String() string {
	cache := "write-through"
	if s.WriteBack {
		cache = "write-back"
	}
	params := strings.Join(s.ProxyParams(), " ")
	if params == "" {
		params = "(defaults)"
	}
	var eps []string
	for _, e := range s.Episodes {
		eps = append(eps, fmt.Sprintf("%s after %d requests", e.Kind, e.After))
	}
	if !s.InDoubt {
		cache += ", applies no write after its connection closed"
	}
	return fmt.Sprintf("seed=%d proxy: %s; server: %d blocks, flush=%v, %s; clients: depths %v;\n"+
		"  episodes: %s; final phase %d requests after the last",
		s.Seed, params, s.Blocks, s.Flush, cache, s.Depths, strings.Join(eps, ", "), s.EndAfter)
}
