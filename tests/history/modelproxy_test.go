// SPDX-License-Identifier: BSD-3-Clause

package history

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// The model proxy: the rules a proxy with reconnect-delay and timeout
// must follow against this server, carried out as plainly as possible,
// in the test process.  If it passes, the adversary asks nothing
// impossible of the plugin: doc.go's assumptions are enough.  It is no
// pattern for speed (one lock for everything).
//
//   - Timeout: a request unanswered for T ends its connection (the
//     sending half is shut down; replies are still read until the
//     server closes it).  Every request ends within 2T + R.
//   - Order: writes in flight on a connection the proxy ended may land
//     until the server closes it, and up to T/2 after (doc.go).  Until
//     then no write, zero or trim of any client is sent; those that
//     cannot wait fail with EIO.  A connection the server closes on its
//     own leaves nothing behind: its requests are sent again at once.
//   - Durability: when a connection dies, every client with writes
//     acknowledged on it and not covered by a flush on it is told so:
//     its flushes fail from then on, those in flight too.
//   - Reads and flushes are sent again at once; ESHUTDOWN means not
//     carried out: the connection is ended and the request sent again.
//   - Without reconnect-delay a failed connection stays failed.
type mproxy struct {
	mu        sync.Mutex
	cond      *sync.Cond
	sched     *Schedule
	link      string
	ln        *net.UnixListener
	size      int64
	flags     uint16
	shared    *mslot
	clients   map[*mclient]bool
	links     map[*mlink]bool
	unsettled int       // ended connections whose writes may still land
	settleAt  time.Time // and, once they closed, until then
	closed    bool
	trace     []string // HISTORY_MODEL_TRACE: what it did
}

func (p *mproxy) tracef(format string, args ...interface{}) {
	if os.Getenv("HISTORY_MODEL_TRACE") != "" {
		p.trace = append(p.trace, fmt.Sprintf("%d ", mono())+fmt.Sprintf(format, args...))
	}
}

// An mslot is where a client's requests go: its own connection, or the
// shared one.
type mslot struct {
	up       *mlink
	failedAt time.Time // when it last failed; zero: it has not
	dialing  bool
	broken   bool // no reconnect-delay: failed for good
}

// An mlink is one connection to the server.
type mlink struct {
	nc        *net.UnixConn
	wmu       sync.Mutex
	next      uint64
	pending   map[uint64]*mattempt
	lengths   map[uint64]uint32 // reads' lengths, to parse their replies
	dead      bool              // failed, or ended: takes no requests
	unsettled bool              // ended with writes in flight, not yet closed
}

type mclient struct {
	p       *mproxy
	nc      net.Conn
	wmu     sync.Mutex
	slot    *mslot
	acks    map[*mlink]int64 // writes and zeroes acknowledged, without FUA
	flushed map[*mlink]int64 // of those, covered by a successful flush
	// lost: writes it saw acknowledged may be lost, so every flush from
	// now on fails, those in flight too.  Not just the next one: the
	// contract excuses a lost write only if a flush the client issued
	// after it saw the write's reply failed, and a proxy cannot tell
	// which flush that is (a flush sent just before the client read the
	// reply arrives after it was sent).  The client must reconnect.
	lost bool
}

type mreq struct {
	typ, flags uint16
	off        uint64
	length     uint32
	data       []byte
}

func (r *mreq) writeLike() bool {
	return r.typ == nbdCmdWrite || r.typ == nbdCmdWriteZeroes || r.typ == nbdCmdTrim
}

// An mattempt is one sending of a request.
type mattempt struct {
	r       *mreq
	c       *mclient
	covered int64 // a flush: the acknowledged writes it covers
	done    chan mreply
}

type mreply struct {
	errno uint32
	data  []byte
	dead  bool // the connection failed or was ended first
}

// mSlack keeps a request's own end inside the bound.
const mSlack = 100 * time.Millisecond

// mRetry paces attempts to connect.
const mRetry = 20 * time.Millisecond

// startModelProxy is a Run.InProcess.
func startModelProxy(sched *Schedule, dir, link string) (string, func(), error) {
	p := &mproxy{sched: sched, link: link, clients: map[*mclient]bool{}, links: map[*mlink]bool{}}
	p.cond = sync.NewCond(&p.mu)
	first, err := p.dial(time.Time{})
	if err != nil {
		return "", nil, err
	}
	p.links[first] = true
	go p.read(first)
	if sched.Shared {
		p.shared = &mslot{up: first}
	} else {
		p.mu.Lock()
		p.end(first)
		p.mu.Unlock()
	}
	sock := filepath.Join(dir, "model.sock")
	if p.ln, err = net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"}); err != nil {
		return "", nil, err
	}
	go func() {
		for {
			nc, err := p.ln.Accept()
			if err != nil {
				return
			}
			go p.serve(nc)
		}
	}()
	return sock, p.stop, nil
}

func (p *mproxy) stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if f := os.Getenv("HISTORY_MODEL_TRACE"); f != "" {
		os.WriteFile(f, []byte(strings.Join(p.trace, "\n")), 0o644)
	}
	p.closed = true
	p.ln.Close()
	for c := range p.clients {
		c.nc.Close()
	}
	for up := range p.links {
		up.nc.Close()
	}
	p.cond.Broadcast()
}

// ---- The client side

func (p *mproxy) serve(nc net.Conn) {
	if _, err := serveHandshake(nc, p.size, p.flags, nil); err != nil {
		nc.Close()
		return
	}
	c := &mclient{p: p, nc: nc, slot: p.shared, acks: map[*mlink]int64{}, flushed: map[*mlink]int64{}}
	if c.slot == nil {
		c.slot = &mslot{}
	}
	p.mu.Lock()
	p.clients[c] = true
	p.mu.Unlock()
	var wg sync.WaitGroup
	for {
		var h [28]byte
		if _, err := io.ReadFull(nc, h[:]); err != nil {
			break
		}
		r := &mreq{flags: binary.BigEndian.Uint16(h[4:]), typ: binary.BigEndian.Uint16(h[6:]),
			off: binary.BigEndian.Uint64(h[16:]), length: binary.BigEndian.Uint32(h[24:])}
		handle := binary.BigEndian.Uint64(h[8:])
		if r.typ == nbdCmdDisc {
			break
		}
		if r.typ == nbdCmdWrite {
			r.data = make([]byte, r.length)
			if _, err := io.ReadFull(nc, r.data); err != nil {
				break
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errno, data := c.do(r)
			c.reply(handle, errno, data)
		}()
	}
	wg.Wait()
	nc.Close()
	p.mu.Lock()
	delete(p.clients, c)
	if c.slot != p.shared && c.slot.up != nil {
		p.end(c.slot.up)
	}
	p.mu.Unlock()
}

func (c *mclient) reply(handle uint64, errno uint32, data []byte) {
	b := make([]byte, 16, 16+len(data))
	binary.BigEndian.PutUint32(b[0:], nbdReplyMagic)
	binary.BigEndian.PutUint32(b[4:], errno)
	binary.BigEndian.PutUint64(b[8:], handle)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.nc.Write(append(b, data...))
}

// do carries out one request of a client, however many sendings it
// takes.
func (c *mclient) do(r *mreq) (uint32, []byte) {
	p := c.p
	t, rd := p.sched.Timeout, p.sched.ReconnectDelay
	var deadline time.Time
	if t > 0 {
		deadline = time.Now().Add(2*t + rd - mSlack)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for {
		switch {
		case p.closed, !deadline.IsZero() && time.Now().After(deadline):
			return nbdEIO, nil
		case r.typ == nbdCmdFlush && c.lost:
			p.tracef("client %p: flush fails", c)
			return nbdEIO, nil
		case r.writeLike() && p.barrier():
			p.waitUntil(deadline, p.settleAt)
			continue
		}
		up := p.connection(c.slot, deadline)
		if up == nil {
			return nbdEIO, nil
		}
		att := p.send(up, c, r)
		p.mu.Unlock()
		rep, late := await(att, t, deadline)
		p.mu.Lock()
		switch {
		case late:
			p.end(up)
		case rep.dead:
		case rep.errno == nbdESHUTDOWN:
			p.end(up)
		default:
			return rep.errno, rep.data
		}
	}
}

// await waits for an attempt's reply, at most t (0: no limit) and not
// past the deadline; late says it did not come.
func await(att *mattempt, t time.Duration, deadline time.Time) (rep mreply, late bool) {
	if t == 0 {
		return <-att.done, false
	}
	if d := time.Until(deadline); d < t {
		t = d
	}
	timer := time.NewTimer(t)
	defer timer.Stop()
	select {
	case rep = <-att.done:
		return rep, false
	case <-timer.C:
		return mreply{}, true
	}
}

// barrier says whether writes must wait: a write the proxy gave up on
// may still land.
func (p *mproxy) barrier() bool {
	return p.unsettled > 0 || time.Now().Before(p.settleAt)
}

// waitUntil waits for a change, or until the earlier of two times (zero:
// none).
func (p *mproxy) waitUntil(a, b time.Time) {
	t := a
	if t.IsZero() || !b.IsZero() && b.Before(t) {
		t = b
	}
	if !t.IsZero() {
		timer := time.AfterFunc(time.Until(t), func() {
			p.mu.Lock()
			p.cond.Broadcast()
			p.mu.Unlock()
		})
		defer timer.Stop()
	}
	p.cond.Wait()
}

// ---- The server side

// connection returns the slot's working connection, connecting (again)
// if needed, for up to reconnect-delay since it failed.
func (p *mproxy) connection(s *mslot, deadline time.Time) *mlink {
	rd := p.sched.ReconnectDelay
	for {
		switch {
		case p.closed, s.broken:
			return nil
		case s.up != nil && !s.up.dead:
			return s.up
		case s.dialing:
			p.waitUntil(deadline, time.Time{})
			if !deadline.IsZero() && time.Now().After(deadline) {
				return nil
			}
			continue
		}
		s.dialing = true
		p.mu.Unlock()
		up, err := p.dial(deadline)
		p.mu.Lock()
		s.dialing = false
		p.cond.Broadcast()
		if err == nil {
			if p.closed {
				up.nc.Close()
				return nil
			}
			s.up, s.failedAt = up, time.Time{}
			p.links[up] = true
			go p.read(up)
			return up
		}
		now := time.Now()
		if s.failedAt.IsZero() {
			s.failedAt = now
		}
		if now.After(s.failedAt.Add(rd)) || !deadline.IsZero() && now.After(deadline) {
			s.failedAt = time.Time{} // the next request starts a new attempt
			return nil
		}
		p.waitUntil(now.Add(mRetry), deadline)
	}
}

// dial connects to the server and does the client's side of the
// handshake, within the timeout; the disk must be the one it served.
func (p *mproxy) dial(deadline time.Time) (*mlink, error) {
	nc, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: p.link, Net: "unix"})
	if err != nil {
		return nil, err
	}
	if t := p.sched.Timeout; t > 0 {
		d := time.Now().Add(t)
		if !deadline.IsZero() && deadline.Before(d) {
			d = deadline
		}
		nc.SetDeadline(d)
	}
	size, flags, err := clientHandshake(nc)
	if err == nil && p.size != 0 && (size != p.size || flags != p.flags) {
		err = fmt.Errorf("another disk: size %d flags %#x", size, flags)
	}
	if err != nil {
		nc.Close()
		return nil, err
	}
	nc.SetDeadline(time.Time{})
	p.mu.Lock()
	p.size, p.flags = size, flags
	p.mu.Unlock()
	return &mlink{nc: nc, pending: map[uint64]*mattempt{}, lengths: map[uint64]uint32{}}, nil
}

// clientHandshake is the client's side of fixed newstyle: NBD_OPT_GO for
// the default export.
func clientHandshake(nc net.Conn) (int64, uint16, error) {
	var hello [18]byte
	if _, err := io.ReadFull(nc, hello[:]); err != nil {
		return 0, 0, err
	}
	if binary.BigEndian.Uint64(hello[0:]) != nbdMagic || binary.BigEndian.Uint64(hello[8:]) != nbdOptMagic {
		return 0, 0, errors.New("not a newstyle server")
	}
	var out [4 + 16 + 6]byte
	binary.BigEndian.PutUint32(out[0:], nbdFlagFixedNewstyle|nbdFlagNoZeroes)
	binary.BigEndian.PutUint64(out[4:], nbdOptMagic)
	binary.BigEndian.PutUint32(out[12:], nbdOptGo)
	binary.BigEndian.PutUint32(out[16:], 6) // no name, no information requests
	if _, err := nc.Write(out[:]); err != nil {
		return 0, 0, err
	}
	var size int64
	var flags uint16
	for {
		var h [20]byte
		if _, err := io.ReadFull(nc, h[:]); err != nil {
			return 0, 0, err
		}
		typ, n := binary.BigEndian.Uint32(h[12:]), binary.BigEndian.Uint32(h[16:])
		data := make([]byte, n)
		if _, err := io.ReadFull(nc, data); err != nil {
			return 0, 0, err
		}
		switch {
		case typ == nbdRepInfo && n >= 12 && binary.BigEndian.Uint16(data) == nbdInfoExport:
			size, flags = int64(binary.BigEndian.Uint64(data[2:])), binary.BigEndian.Uint16(data[10:])
		case typ == nbdRepAck:
			return size, flags, nil
		case typ&(1<<31) != 0:
			return 0, 0, fmt.Errorf("NBD_OPT_GO refused: %#x", typ)
		}
	}
}

// send sends a request on a connection (p.mu held, released while
// writing).
func (p *mproxy) send(up *mlink, c *mclient, r *mreq) *mattempt {
	up.next++
	h := up.next
	p.tracef("link %p send %d %s off %d of %p", up, h, cmdName(r.typ), r.off/blockSize, c)
	att := &mattempt{r: r, c: c, covered: c.acks[up], done: make(chan mreply, 1)}
	up.pending[h] = att
	if r.typ == nbdCmdRead {
		up.lengths[h] = r.length
	}
	b := make([]byte, 28, 28+len(r.data))
	binary.BigEndian.PutUint32(b[0:], nbdReqMagic)
	binary.BigEndian.PutUint16(b[4:], r.flags)
	binary.BigEndian.PutUint16(b[6:], r.typ)
	binary.BigEndian.PutUint64(b[8:], h)
	binary.BigEndian.PutUint64(b[16:], r.off)
	binary.BigEndian.PutUint32(b[24:], r.length)
	b = append(b, r.data...)
	p.mu.Unlock()
	up.wmu.Lock()
	up.nc.Write(b) // a failure shows as the connection's end, to read
	up.wmu.Unlock()
	p.mu.Lock()
	return att
}

// read takes a connection's replies until the server closes it.  What a
// reply acknowledges is counted here, before the connection's end can
// be: a client must not miss that a write it saw acknowledged was lost.
func (p *mproxy) read(up *mlink) {
	for {
		var h [16]byte
		if _, err := io.ReadFull(up.nc, h[:]); err != nil || binary.BigEndian.Uint32(h[:]) != nbdReplyMagic {
			break
		}
		errno, handle := binary.BigEndian.Uint32(h[4:]), binary.BigEndian.Uint64(h[8:])
		p.mu.Lock()
		n, isRead := up.lengths[handle]
		delete(up.lengths, handle)
		p.mu.Unlock()
		var data []byte
		if isRead && errno == 0 {
			data = make([]byte, n)
			if _, err := io.ReadFull(up.nc, data); err != nil {
				break
			}
		}
		p.mu.Lock()
		if att := up.pending[handle]; att != nil {
			p.tracef("link %p reply %d to %s of %p: errno %d", up, handle, cmdName(att.r.typ), att.c, errno)
			delete(up.pending, handle)
			if errno == 0 {
				switch r, c := att.r, att.c; {
				case (r.typ == nbdCmdWrite || r.typ == nbdCmdWriteZeroes) && r.flags&nbdCmdFlagFUA == 0:
					c.acks[up]++
				case r.typ == nbdCmdFlush && att.covered > c.flushed[up]:
					c.flushed[up] = att.covered
				}
			}
			att.done <- mreply{errno: errno, data: data}
		}
		p.mu.Unlock()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !up.dead {
		p.died(up) // the server closed it: nothing of it lands later
	}
	if up.unsettled {
		up.unsettled = false
		p.unsettled--
		if s := time.Now().Add(p.sched.Timeout / lateFraction); s.After(p.settleAt) {
			p.settleAt = s
		}
	}
	up.nc.Close()
	delete(p.links, up)
	p.cond.Broadcast()
}

// end ends a connection: its sending half is shut down; what was in
// flight is sent again elsewhere; if writes were, they may land until
// the server has closed it, and a while after.
func (p *mproxy) end(up *mlink) {
	if up.dead {
		return
	}
	for _, att := range up.pending {
		if att.r.writeLike() && !up.unsettled {
			up.unsettled = true
			p.unsettled++
		}
	}
	up.nc.CloseWrite()
	p.died(up)
}

// died: the connection takes no more requests.
func (p *mproxy) died(up *mlink) {
	p.tracef("link %p died", up)
	up.dead = true
	for h, att := range up.pending {
		att.done <- mreply{dead: true}
		delete(up.pending, h)
	}
	for c := range p.clients {
		if c.acks[up] > c.flushed[up] {
			p.tracef("client %p: writes lost, its flushes fail (%d acks, %d flushed)", c, c.acks[up], c.flushed[up])
			c.lost = true
		}
	}
	slots := []*mslot{p.shared}
	for c := range p.clients {
		slots = append(slots, c.slot)
	}
	for _, s := range slots {
		if s != nil && s.up == up {
			s.up = nil
			if s.failedAt.IsZero() {
				s.failedAt = time.Now()
			}
			s.broken = p.sched.ReconnectDelay == 0
		}
	}
	p.cond.Broadcast()
}
