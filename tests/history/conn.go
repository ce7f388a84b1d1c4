// SPDX-License-Identifier: BSD-3-Clause

package history

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// A conn is one connection of an instance: a goroutine reads requests
// (serve) and one sends replies (writer), so that a reply the chaos
// holds never holds up the others, and the lock is never held on a
// socket.
type conn struct {
	inst     *instance
	id       int
	nc       *net.UnixConn
	copy     int // the instance process's copy of it (proc.go)
	noZeroes bool
	hangs    bool       // it holds a hung write: at the end of file, close first
	eof      bool       // the proxy has ended it
	out      [][]byte   // replies to send
	held     []*request // read, not yet answered
	inbox    []inItem   // read from the socket, not yet taken by the instance
	closing  bool       // close once out is sent
	closed   bool
	// endAt is when the server first saw the connection end: the
	// proxy's end of file reached the socket, or the server closed it
	// (CLOCK_MONOTONIC; 0: it has not ended).  quiesce-time counts from
	// it.
	endAt int64
}

// An inItem is a request read from the socket, or how reading ended.
type inItem struct {
	r   *request
	err error
}

// A request is one NBD request as the server read it.
type request struct {
	c      *conn
	typ    uint16
	flags  uint16
	handle uint64
	off    uint64
	length uint32
	data   []byte
	first  int     // first block
	n      int     // blocks
	ids    []int64 // the ops whose data a write carries, per block
	recv   int64   // when it was read (CLOCK_MONOTONIC)

	applied bool
	dropped bool        // not carried out: quiesce-time had passed (Server.apply)
	done    bool        // answered, or given up with its connection
	release int         // instance request count that releases it; 0: none
	timer   *time.Timer // releases it at the latest
}

// writeLike says whether the request changes the disk.
func (r *request) writeLike() bool {
	return r.typ == nbdCmdWrite || r.typ == nbdCmdWriteZeroes || r.typ == nbdCmdTrim
}

// blocks lists the blocks the request covers.
func (r *request) blocks() []int {
	var bs []int
	for i := 0; i < r.n; i++ {
		bs = append(bs, r.first+i)
	}
	return bs
}

// op names the request for the log.
func (r *request) op() string {
	s := cmdName(r.typ)
	if r.flags&nbdCmdFlagFUA != 0 {
		s += "+fua"
	}
	return s
}

// serve runs a connection: the handshake, then requests until the
// connection ends.
func (c *conn) serve() {
	s := c.inst.s
	if err := c.handshake(); err != nil {
		s.mu.Lock()
		if !c.closed && !errors.Is(err, errGone) {
			s.logf(c.inst, c, "handshake ends: %v", err)
		}
		c.closeNow("handshake ended")
		s.mu.Unlock()
		return
	}
	go c.writer()
	go c.reader()
	for {
		s.mu.Lock()
		for len(c.inbox) == 0 && !c.closed && !s.closed && c.inst.state != dead {
			s.cond.Wait()
		}
		if !c.waitRunning() {
			s.mu.Unlock()
			return
		}
		it := c.inbox[0]
		c.inbox = c.inbox[1:]
		if it.err != nil {
			s.endOfFile(c, it.err)
			s.mu.Unlock()
			return
		}
		s.onRequest(c, it.r)
		s.mu.Unlock()
	}
}

// reader reads the socket ahead of the instance, which takes what it
// read in order (serve), not while it is stopped: so that the server
// knows when the proxy ended the connection (endAt) even then, which
// quiesce-time counts from.  What is in the inbox, the instance has not
// read (a stopped one reads nothing): as if it were in the socket.
func (c *conn) reader() {
	s := c.inst.s
	for {
		r, err := c.readRequest()
		s.mu.Lock()
		if c.closed {
			s.mu.Unlock()
			return
		}
		if err != nil && c.endAt == 0 {
			c.endAt = mono()
			s.chaos.endSeen(c)
		}
		c.inbox = append(c.inbox, inItem{r, err})
		s.cond.Broadcast()
		s.mu.Unlock()
		if err != nil {
			return
		}
	}
}

// errGone says the connection or its instance went while it waited.
var errGone = errors.New("connection gone")

// waitRunning waits while the instance is stopped; it says whether the
// connection may go on (s.mu held).
func (c *conn) waitRunning() bool {
	s := c.inst.s
	for c.inst.state == stopped && !c.closed && !s.closed {
		s.cond.Wait()
	}
	return !c.closed && !s.closed && c.inst.state != dead
}

// ---- Handshake: fixed newstyle

func (c *conn) handshake() error {
	s := c.inst.s
	wait := func() error {
		s.mu.Lock()
		defer s.mu.Unlock()
		if !c.waitRunning() || c.inst.state != running {
			return errGone
		}
		return nil
	}
	if err := wait(); err != nil {
		return err
	}
	var err error
	c.noZeroes, err = serveHandshake(c.nc, s.size, s.flags, wait)
	return err
}

// serveHandshake is the server's side of the fixed newstyle handshake,
// up to transmission: the export is the disk of size bytes with the
// transmission flags.  wait, before each option, may end it.
func serveHandshake(nc net.Conn, size int64, flags uint16, wait func() error) (noZeroes bool, err error) {
	var hello [18]byte
	binary.BigEndian.PutUint64(hello[0:], nbdMagic)
	binary.BigEndian.PutUint64(hello[8:], nbdOptMagic)
	binary.BigEndian.PutUint16(hello[16:], nbdFlagFixedNewstyle|nbdFlagNoZeroes)
	if _, err := nc.Write(hello[:]); err != nil {
		return false, err
	}
	var cflags [4]byte
	if _, err := io.ReadFull(nc, cflags[:]); err != nil {
		return false, err
	}
	noZeroes = binary.BigEndian.Uint32(cflags[:])&nbdFlagNoZeroes != 0
	for {
		var h [16]byte
		if _, err := io.ReadFull(nc, h[:]); err != nil {
			return noZeroes, err
		}
		opt, n := binary.BigEndian.Uint32(h[8:]), binary.BigEndian.Uint32(h[12:])
		if binary.BigEndian.Uint64(h[:]) != nbdOptMagic || n > nbdMaxOptionBytes {
			return noZeroes, fmt.Errorf("bad option header %x", h)
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(nc, data); err != nil {
			return noZeroes, err
		}
		if err := wait(); err != nil {
			return noZeroes, err
		}
		switch opt {
		case nbdOptGo, nbdOptInfo:
			if !validGoData(data) {
				if err := optReply(nc, opt, nbdRepErrInvalid, nil); err != nil {
					return noZeroes, err
				}
				continue
			}
			var info [12]byte
			binary.BigEndian.PutUint16(info[0:], nbdInfoExport)
			binary.BigEndian.PutUint64(info[2:], uint64(size))
			binary.BigEndian.PutUint16(info[10:], flags)
			if err := optReply(nc, opt, nbdRepInfo, info[:]); err != nil {
				return noZeroes, err
			}
			if err := optReply(nc, opt, nbdRepAck, nil); err != nil {
				return noZeroes, err
			}
			if opt == nbdOptGo {
				return noZeroes, nil
			}
		case nbdOptExportName:
			b := make([]byte, 10, 10+124)
			binary.BigEndian.PutUint64(b[0:], uint64(size))
			binary.BigEndian.PutUint16(b[8:], flags)
			if !noZeroes {
				b = b[:10+124]
			}
			_, err := nc.Write(b)
			return noZeroes, err
		case nbdOptAbort:
			optReply(nc, opt, nbdRepAck, nil)
			return noZeroes, errGone
		default:
			// Structured replies, meta contexts, TLS, lists: not
			// implemented, which NBD allows.
			if err := optReply(nc, opt, nbdRepErrUnsup, nil); err != nil {
				return noZeroes, err
			}
		}
	}
}

// validGoData checks NBD_OPT_GO/INFO's data: a name, then a list of
// information requests (which the server may ignore).
func validGoData(d []byte) bool {
	if len(d) < 6 {
		return false
	}
	name := binary.BigEndian.Uint32(d)
	if uint64(len(d)) < 4+uint64(name)+2 {
		return false
	}
	reqs := binary.BigEndian.Uint16(d[4+name:])
	return uint64(len(d)) == 4+uint64(name)+2+2*uint64(reqs)
}

func optReply(nc net.Conn, opt, typ uint32, data []byte) error {
	b := make([]byte, 20+len(data))
	binary.BigEndian.PutUint64(b[0:], nbdRepMagic)
	binary.BigEndian.PutUint32(b[8:], opt)
	binary.BigEndian.PutUint32(b[12:], typ)
	binary.BigEndian.PutUint32(b[16:], uint32(len(data)))
	copy(b[20:], data)
	_, err := nc.Write(b)
	return err
}

// ---- Transmission

// readRequest reads one request; io.EOF when the proxy has ended the
// connection.
func (c *conn) readRequest() (*request, error) {
	var h [28]byte
	if _, err := io.ReadFull(c.nc, h[:]); err != nil {
		return nil, err
	}
	r := &request{
		c:      c,
		flags:  binary.BigEndian.Uint16(h[4:]),
		typ:    binary.BigEndian.Uint16(h[6:]),
		handle: binary.BigEndian.Uint64(h[8:]),
		off:    binary.BigEndian.Uint64(h[16:]),
		length: binary.BigEndian.Uint32(h[24:]),
	}
	if binary.BigEndian.Uint32(h[:]) != nbdReqMagic {
		return nil, fmt.Errorf("%w: bad request magic %x", errProtocol, h[:4])
	}
	if r.typ == nbdCmdWrite {
		if r.length > nbdMaxRequest {
			return nil, fmt.Errorf("%w: write of %d bytes", errProtocol, r.length)
		}
		r.data = make([]byte, r.length)
		if _, err := io.ReadFull(c.nc, r.data); err != nil {
			return nil, err
		}
	}
	r.first, r.n = int(r.off/blockSize), int(r.length/blockSize)
	if r.typ == nbdCmdWrite && r.valid(c.inst.s.size) {
		for i := 0; i < r.n; i++ {
			id, _ := blockHeader(r.data[i*blockSize:])
			r.ids = append(r.ids, id)
		}
	}
	return r, nil
}

// errProtocol marks what the proxy sent that NBD does not allow.
var errProtocol = errors.New("protocol error")

// valid says whether a data request lies on whole blocks of the disk
// (the clients only send such).
func (r *request) valid(size int64) bool {
	return r.off%blockSize == 0 && r.length%blockSize == 0 && r.length > 0 &&
		r.off+uint64(r.length) <= uint64(size)
}

// writer sends the replies, except while the instance is stopped.
func (c *conn) writer() {
	s := c.inst.s
	for {
		s.mu.Lock()
		for !c.closed && (c.inst.state == stopped || len(c.out) == 0 && !c.closing) {
			s.cond.Wait()
		}
		if c.closed {
			s.mu.Unlock()
			return
		}
		if len(c.out) == 0 {
			c.closeNow("closed after its replies")
			s.mu.Unlock()
			return
		}
		batch := c.out
		c.out = nil
		s.mu.Unlock()
		for _, b := range batch {
			if _, err := c.nc.Write(b); err != nil {
				break // the proxy is gone: what it misses it will never see
			}
		}
	}
}

// closeNow closes the connection at once: whatever it held is given up
// (s.mu held).
func (c *conn) closeNow(why string) {
	if c.closed {
		return
	}
	s := c.inst.s
	c.closed = true
	if c.endAt == 0 {
		c.endAt = mono()
	}
	shutdownConn(c.nc)
	c.inst.proc.closeCopy(c.copy)
	delete(c.inst.conns, c)
	for _, r := range c.held {
		r.done = true
		if r.timer != nil {
			r.timer.Stop()
		}
	}
	if len(c.held) > 0 {
		s.logf(c.inst, c, "closes (%s), %d requests unanswered", why, len(c.held))
	} else {
		s.logf(c.inst, c, "closes (%s)", why)
	}
	c.held = nil
	c.inbox = nil
	c.inst.exitIfIdle()
	s.cond.Broadcast()
}

// closeAfterReplies closes the connection once its replies are sent.
func (c *conn) closeAfterReplies() {
	c.closing = true
	c.inst.s.cond.Broadcast()
}

// ---- What the server does with requests (s.mu held)

// onRequest takes a request the instance has read.
func (s *Server) onRequest(c *conn, r *request) {
	in := c.inst
	r.recv = mono()
	s.requests++
	in.requests++
	if r.typ == nbdCmdWrite {
		s.logBlocks(in, c, r.first, r.n, r.ids, "%s %s received", r.op(), blocksString(r.first, r.n))
	} else if r.n > 0 {
		s.logBlocks(in, c, r.first, r.n, nil, "%s %s received", r.op(), blocksString(r.first, r.n))
	} else {
		s.logf(in, c, "%s received", r.op())
	}
	switch {
	case r.typ == nbdCmdDisc:
		// The proxy says goodbye (no reply): finish what is held, then
		// close.
		for _, h := range append([]*request(nil), c.held...) {
			s.finish(h, 0, "before the goodbye")
		}
		c.closeAfterReplies()
		return
	case in.state == shuttingDown:
		s.reply(r, nbdESHUTDOWN)
		s.logf(in, c, "%s answered ESHUTDOWN, not carried out", r.op())
		in.answeredShutdown()
		return
	case r.typ != nbdCmdFlush && !r.valid(s.size),
		r.typ != nbdCmdRead && r.typ != nbdCmdWrite && r.typ != nbdCmdFlush &&
			r.typ != nbdCmdTrim && r.typ != nbdCmdWriteZeroes:
		s.protoErrs = append(s.protoErrs, fmt.Sprintf("%s off %d len %d: not on whole blocks of the disk, or not advertised", r.op(), r.off, r.length))
		s.reply(r, nbdEINVAL)
		return
	case r.typ == nbdCmdFlush && !s.sched.Flush:
		s.protoErrs = append(s.protoErrs, "flush sent, but the server does not advertise it")
		s.reply(r, nbdEINVAL)
		return
	}
	if s.calm {
		s.process(r, "at once")
	} else {
		s.chaos.onRequest(c, r)
	}
	s.releaseDue(in)
}

// process carries the request out and answers it.
func (s *Server) process(r *request, why string) {
	in := r.c.inst
	switch {
	case r.writeLike():
		if !s.apply(in, r, why) {
			r.done = true // unanswered: see apply
			return
		}
	case r.typ == nbdCmdFlush:
		if s.sched.WriteBack && !in.replaced {
			s.writeBack(in, "flush")
		}
	}
	s.reply(r, 0)
	if r.writeLike() {
		s.acknowledged(r)
	}
}

// hold keeps a request unanswered until release more requests have
// reached the instance (0: no count), or d has passed (0: no limit).
func (s *Server) hold(r *request, release int, d time.Duration, why string) {
	c := r.c
	c.held = append(c.held, r)
	if release > 0 {
		r.release = c.inst.requests + release
	}
	if d > 0 {
		r.timer = time.AfterFunc(d, func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			for c.inst.state == stopped && !r.done && !s.closed {
				s.cond.Wait()
			}
			s.finish(r, 0, fmt.Sprintf("released after %v", d))
		})
	}
	s.logBlocks(c.inst, c, r.first, r.n, r.ids, "%s %s held (%s)", r.op(), blocksString(r.first, r.n), why)
}

// releaseDue finishes the held requests whose count has come.
func (s *Server) releaseDue(in *instance) {
	for c := range in.conns {
		for _, r := range append([]*request(nil), c.held...) {
			if r.release > 0 && in.requests >= r.release {
				s.finish(r, 0, "released after its count of requests")
			}
		}
	}
}

// finish answers a held request: carried out (errno 0), or failed with
// errno and not carried out.
func (s *Server) finish(r *request, errno uint32, why string) {
	if r.done || r.c.closed {
		return
	}
	c := r.c
	for i, h := range c.held {
		if h == r {
			c.held = append(c.held[:i], c.held[i+1:]...)
			break
		}
	}
	if r.timer != nil {
		r.timer.Stop()
	}
	if errno != 0 {
		s.reply(r, errno)
		s.logf(c.inst, c, "%s %s answered error %d, not carried out (%s)", r.op(), blocksString(r.first, r.n), errno, why)
		return
	}
	s.logf(c.inst, c, "%s %s answered late (%s)", r.op(), blocksString(r.first, r.n), why)
	s.process(r, "late: "+why)
}

// reply queues a simple reply; a read's data is read now.
func (s *Server) reply(r *request, errno uint32) {
	r.done = true
	c := r.c
	if c.closed {
		return
	}
	if errno != 0 {
		s.errReplies[errorReplyName(errno)]++
	}
	var data []byte
	if r.typ == nbdCmdRead && errno == 0 {
		data = s.readBlocks(c.inst, r.first, r.n)
	}
	b := make([]byte, 16, 16+len(data))
	binary.BigEndian.PutUint32(b[0:], nbdReplyMagic)
	binary.BigEndian.PutUint32(b[4:], errno)
	binary.BigEndian.PutUint64(b[8:], r.handle)
	c.out = append(c.out, append(b, data...))
	s.cond.Broadcast()
}

// endOfFile: the proxy has ended the connection (it shut down its
// sending half, or closed it), or it failed.  What the server still
// held, it finishes and then closes; or it answers ESHUTDOWN and closes;
// or it closes at once and applies the held writes at any later time,
// as qemu-nbd does (not to a proxy without the in-doubt rule:
// Schedule.InDoubt).
func (s *Server) endOfFile(c *conn, err error) {
	in := c.inst
	if errors.Is(err, errProtocol) {
		s.protoErrs = append(s.protoErrs, err.Error())
	}
	var pending []*request
	for _, r := range c.held {
		if !r.done {
			pending = append(pending, r)
		}
	}
	s.logKey(in, c, "end of file from the proxy (%v), %d requests held", err, len(pending))
	c.eof = true
	s.chaos.endOfFile(c)
	if len(pending) == 0 || s.calm || in.state != running {
		for _, r := range pending {
			s.finish(r, 0, "finished after the end of file")
		}
		c.closeAfterReplies()
		return
	}
	// Of ten: close first (qemu-nbd), finish then close, or ESHUTDOWN.
	closeFirst, finish := 5, 8
	if c.hangs {
		closeFirst, finish = 7, 9
	}
	choice := s.rng.Intn(10)
	if !s.sched.InDoubt {
		choice = closeFirst + s.rng.Intn(10-closeFirst)
	}
	switch {
	case choice < closeFirst:
		s.logKey(in, c, "closes at once; the held writes land later (qemu-nbd)")
		c.closeNow("closed at the end of file")
		for _, r := range pending {
			if r.writeLike() && !r.applied {
				s.addLate(in, r)
			}
		}
	case choice < finish:
		s.logKey(in, c, "finishes what it held, then closes")
		for _, r := range pending {
			s.finish(r, 0, "finished after the end of file")
		}
		c.closeAfterReplies()
	default:
		s.logKey(in, c, "answers ESHUTDOWN to what it held, then closes (nbdkit)")
		for _, r := range pending {
			if r.applied {
				s.finish(r, 0, "applied before the end of file")
			} else {
				s.finish(r, nbdESHUTDOWN, "the end of file")
			}
		}
		c.closeAfterReplies()
	}
}
