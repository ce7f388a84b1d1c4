// SPDX-License-Identifier: BSD-3-Clause

package history

import (
	"fmt"
	"math/rand"
	"os"
	"sort"
	"time"
)

// A Run is one schedule run against a proxy (or, with no plugin, with
// the clients on the server directly).
type Run struct {
	Seed     int64
	Plugin   string // the plugin's .so, CPlugin, or "" for no proxy
	Features ProxyFeatures
}

// How long a run's phases may take.  They bound, never pace: each phase
// ends on what it waits for.
const (
	// chaosLimit (plus three op bounds) ends the chaos phase of a
	// schedule whose episodes never all came.
	chaosLimit = 10 * time.Second
	// finalLimit (plus two op bounds) is how long the clients have for
	// the final phase once the server has healed.
	finalLimit = 30 * time.Second
	// boundSlack is rule 3's slack for a loaded machine.
	boundSlack = 3 * time.Second
	// hotBlocks is how many blocks the clients favour, so that ops
	// overlap often.
	hotBlocks = 6
	// proxyTail is how many lines of nbdkit's stderr a report shows.
	proxyTail = 30
)

// A Result is what a run found.
type Result struct {
	Sched       *Schedule
	History     *History
	Violations  []Violation
	Failures    []string // the run itself went wrong (a hang, a crash)
	Notes       []string // worth knowing, not wrong
	Episodes    []episodeRecord
	Log         []logEntry
	ProxyArgs   []string
	ProxyStderr string
	Duration    time.Duration
	Clients     int // client connections made
	ConnFails   int // failed connection attempts
	Late        LateStats
	// FailCauses: the failed requests by cause, from nbdkit's log;
	// ErrorReplies: the server's error replies, by why.
	FailCauses   FailCauses
	ErrorReplies map[string]int
}

// Execute runs the schedule and checks its history.
func (run Run) Execute() (*Result, error) {
	start := time.Now()
	sched := NewSchedule(run.Seed, run.Features)
	res := &Result{Sched: sched}
	dir, err := os.MkdirTemp("", "hist")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	t0 := mono()
	srv, err := NewServer(sched, dir)
	if err != nil {
		return nil, err
	}
	defer srv.Close()

	sock := srv.Link()
	var px *proxy
	if run.Plugin != "" {
		if px, err = startProxy(run.Plugin, dir, srv.Link(), sched.ProxyParams()); err != nil {
			return nil, err
		}
		defer px.kill()
		sock = px.sock
		res.ProxyArgs = px.args
	}
	clients, err := startClients(sched, sock)
	for _, cp := range clients {
		defer cp.kill()
	}
	if err != nil {
		return nil, err
	}

	// The chaos phase: until the server has run every episode, or a
	// client or the proxy ends early, which is a failure.
	bound := sched.opBound()
	chaosEnd := time.NewTimer(chaosLimit + 3*bound)
	defer chaosEnd.Stop()
	var proxyExited <-chan struct{}
	if px != nil {
		proxyExited = px.exited
	}
	select {
	case <-srv.ChaosDone():
	case <-chaosEnd.C:
		res.Notes = append(res.Notes, fmt.Sprintf("the chaos phase ended after %v, before every episode came", chaosLimit+3*bound))
	case <-proxyExited:
		res.Failures = append(res.Failures, fmt.Sprintf("nbdkit exited during the chaos phase: %v", px.err))
	case i := <-anyExited(clients):
		cp := clients[i]
		res.Failures = append(res.Failures, fmt.Sprintf("client %d exited during the chaos phase (%v): %s", cp.proc, cp.err, cp.stderr.String()))
	}

	// The final phase: a healthy server, every client flushes and reads
	// every block.
	srv.Heal()
	for _, cp := range clients {
		cp.final()
	}
	finalEnd := make(chan struct{})
	finalTimer := time.AfterFunc(finalLimit+2*bound, func() { close(finalEnd) })
	defer finalTimer.Stop()
	for _, cp := range clients {
		select {
		case <-cp.exited:
		case <-finalEnd:
		}
		if !cp.finished() {
			cp.kill()
			res.Failures = append(res.Failures, fmt.Sprintf("client %d did not finish the final phase within %v of the server healing (killed): %v %s",
				cp.proc, finalLimit+2*bound, cp.err, cp.stderr.String()))
		}
	}
	if px != nil {
		if px.stop(5*time.Second + sched.Timeout) {
			res.Failures = append(res.Failures, "nbdkit did not exit within 5 s (+ timeout) of SIGTERM")
		} else if !px.exitedCleanly() {
			res.Failures = append(res.Failures, fmt.Sprintf("nbdkit exited with %v", px.err))
		}
		res.ProxyStderr = px.tail(proxyTail)
		res.FailCauses = countFailCauses(px.stderr.String())
	}
	// Every late write has landed (Heal) or was lost with its instance
	// before the storage is read.
	if n := srv.LateLeft(); n > 0 {
		res.Failures = append(res.Failures, fmt.Sprintf("the server still held %d late writes at the end", n))
	}
	res.Late = srv.Late()
	res.ErrorReplies = srv.ErrorReplies()
	srv.Close()

	h := &History{T0: t0, Flush: sched.Flush, Timeout: int64(sched.Timeout)}
	h.Bound = int64(sched.opBound() + boundSlack)
	storage := srv.Storage()
	h.Final = make([]int64, sched.Blocks)
	h.BadFin = make([]string, sched.Blocks)
	for b := range h.Final {
		d := storage[b*blockSize : (b+1)*blockSize]
		if h.Final[b] = blockValue(d, b); h.Final[b] == valueGarbage {
			h.BadFin[b] = describeBlock(d)
		}
	}
	h.FinalOK = true
	for _, cp := range clients {
		cp.mu.Lock()
		h.Ops = append(h.Ops, cp.ops...)
		res.Clients += cp.clients
		res.ConnFails += cp.connFails
		for _, f := range cp.sawFlush {
			if f != sched.Flush {
				res.Failures = append(res.Failures, fmt.Sprintf("client %d saw can_flush=%v, the server advertises %v", cp.proc, f, sched.Flush))
				break
			}
		}
		for _, b := range cp.bad {
			res.Failures = append(res.Failures, fmt.Sprintf("client %d printed %s", cp.proc, b))
		}
		cp.mu.Unlock()
	}
	sort.Slice(h.Ops, func(i, j int) bool { return h.Ops[i].Inv < h.Ops[j].Inv })
	for _, e := range srv.ProtocolErrors() {
		res.Failures = append(res.Failures, "the proxy broke the protocol: "+e)
	}
	res.History = h
	res.checkNoFailedOps(run.Features)
	res.Violations = Check(h)
	res.Episodes = srv.Episodes()
	res.Log = srv.Log()
	res.Duration = time.Since(start)
	return res, nil
}

// startClients starts one client process per client of the schedule.
func startClients(sched *Schedule, sock string) ([]*clientProc, error) {
	rng := rand.New(rand.NewSource(sched.Seed ^ 0x407))
	hot := rng.Perm(sched.Blocks)[:hotBlocks]
	var cps []*clientProc
	for i, d := range sched.Depths {
		cp, err := startClient(clientConfig{Sock: sock, Proc: i, Seed: sched.Seed*16 + int64(i),
			Blocks: sched.Blocks, Depth: d, Hot: hot})
		if err != nil {
			return cps, err
		}
		cps = append(cps, cp)
	}
	return cps, nil
}

// anyExited yields the index of the first client that exits.
func anyExited(cps []*clientProc) <-chan int {
	ch := make(chan int, len(cps))
	for i, cp := range cps {
		go func(i int, cp *clientProc) {
			<-cp.exited
			ch <- i
		}(i, cp)
	}
	return ch
}

// finished says whether the client printed that it finished.
func (cp *clientProc) finished() bool {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return cp.done
}

// exitedCleanly says whether nbdkit exited with status 0 (after
// SIGTERM).
func (p *proxy) exitedCleanly() bool { return p.err == nil }
