package plugin

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"nbdkit-nbd-go-plugin/libnbd"
	"nbdkit-nbd-go-plugin/nbdkit"
)

// upstream is a server connection as the callbacks see it.  Without
// reconnect-delay it is one libnbd handle for its whole life, as in the
// C plugin.  With reconnect-delay, a connection that fails (EOF, reset,
// protocol error, timeout) is replaced in the background, and requests
// wait for the new one and are sent on it again.
type upstream struct {
	export string
	h      atomic.Pointer[libnbd.Handle]
	// facts is what nbdkit told clients about the disk; a new connection
	// must show the same, or it is not used.
	facts serverFacts

	// direct serves data requests without entering Go (direct.c).
	direct *directPath

	mu        sync.Mutex
	closed    bool // a redial still running must not install a handle
	redialing bool
	changed   chan struct{}    // closed when a redial ends
	retired   []*libnbd.Handle // failed handles, closed with the upstream
}

// newUpstream connects to the server and reads what it offers.
func newUpstream(export string) (*upstream, error) {
	h, err := dialUpstream(export, false)
	if err != nil {
		return nil, err
	}
	facts, err := readFacts(h)
	if err != nil {
		h.Close()
		return nil, err
	}
	u := &upstream{export: export, facts: facts, changed: make(chan struct{})}
	u.h.Store(h)
	u.direct = newDirectPath(h, cfg.reconnectDelay > 0)
	return u, nil
}

// close ends the server connection politely and frees every handle.
func (u *upstream) close() {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.closed = true
	h := u.h.Load()
	h.Shutdown()
	h.Close()
	for _, r := range u.retired {
		r.Close()
	}
	u.retired = nil
	if u.direct != nil {
		u.direct.free()
		u.direct = nil
	}
}

// do runs op on the current connection.  With reconnect-delay, if the
// connection failed under op, it waits for a new connection and runs op
// again: NBD commands may be repeated, since one whose reply was never
// seen may or may not have happened anyway.
func (u *upstream) do(op func(h *libnbd.Handle) error) error {
	h := u.h.Load()
	err := op(h)
	if err == nil {
		return nil
	}
	if cfg.reconnectDelay == 0 || !h.Dead() {
		return wireError(err)
	}
	deadline := time.Now().Add(cfg.reconnectDelay)
	for {
		nbdkit.Debugf("server connection failed (%v): waiting for a new one", err)
		if h, err = u.replacement(h, deadline); err != nil {
			return err
		}
		if err = op(h); err == nil || !h.Dead() {
			return wireError(err)
		}
	}
}

// wireError gives a timeout the errno EIO: NBD has no error code for
// ETIMEDOUT, and nbdkit would send EINVAL, which blames the client.
func wireError(err error) error {
	if errors.Is(err, syscall.ETIMEDOUT) {
		return &libnbd.Error{Op: "timeout", Msg: err.Error(), Errno: syscall.EIO}
	}
	return err
}

// replacement waits, until deadline, for a connection other than old,
// starting a redial if none is under way.
func (u *upstream) replacement(old *libnbd.Handle, deadline time.Time) (*libnbd.Handle, error) {
	for {
		u.mu.Lock()
		if h := u.h.Load(); h != old {
			u.mu.Unlock()
			return h, nil
		}
		if time.Now().After(deadline) {
			u.mu.Unlock()
			return nil, &libnbd.Error{Op: "reconnect", Errno: syscall.EIO,
				Msg: fmt.Sprintf("no working server connection within reconnect-delay=%v", cfg.reconnectDelay.Seconds())}
		}
		if !u.redialing {
			u.redialing = true
			go u.redial(old, deadline)
		}
		changed := u.changed
		u.mu.Unlock()
		timer := time.NewTimer(time.Until(deadline))
		select {
		case <-changed:
		case <-timer.C:
		}
		timer.Stop()
	}
}

// redial connects again and again until a connection to the same disk
// works or deadline passes, then wakes the waiting requests.
func (u *upstream) redial(old *libnbd.Handle, deadline time.Time) {
	var h *libnbd.Handle
	pause := 50 * time.Millisecond
	for time.Now().Before(deadline) {
		nh, err := connectOnce(u.export, false, connectTimeout(deadline))
		if err == nil {
			if err = u.facts.match(nh); err == nil {
				nh.SetTimeout(cfg.timeout) // connecting had its own bound
				h = nh
				break
			}
			nh.Close()
			nbdkit.Errorf("refusing the new server connection: %v", err)
		} else {
			nbdkit.Debugf("reconnecting: %v", err)
		}
		if left := time.Until(deadline); left < pause {
			pause = left
		}
		time.Sleep(pause)
		if pause *= 2; pause > time.Second {
			pause = time.Second
		}
	}
	u.mu.Lock()
	if h != nil && u.closed {
		h.Close()
	} else if h != nil {
		u.retired = append(u.retired, old)
		u.h.Store(h)
		if u.direct != nil {
			u.direct.set(h)
		}
		nbdkit.Debugf("reconnected to the server")
	}
	u.redialing = false
	close(u.changed)
	u.changed = make(chan struct{})
	u.mu.Unlock()
}

// connectTimeout bounds one connection attempt: by timeout= if set, and
// always by the deadline of the requests waiting for it.
func connectTimeout(deadline time.Time) time.Duration {
	left := time.Until(deadline)
	if cfg.timeout > 0 && cfg.timeout < left {
		return cfg.timeout
	}
	return left
}

// serverFacts is what a connection tells nbdkit about the disk.
type serverFacts struct {
	size                                    int64
	readOnly, flush, fua, rotational, trim  bool
	zero, fastZero, multiConn, cache, alloc bool
	minimum, preferred, maximum             uint32
	description                             string
}

func readFacts(h *libnbd.Handle) (serverFacts, error) {
	var f serverFacts
	var err error
	get := func(dst *bool, src func() (bool, error)) {
		if err == nil {
			*dst, err = src()
		}
	}
	if f.size, err = h.GetSize(); err != nil {
		return f, err
	}
	get(&f.readOnly, h.IsReadOnly)
	get(&f.flush, h.CanFlush)
	get(&f.fua, h.CanFUA)
	get(&f.rotational, h.IsRotational)
	get(&f.trim, h.CanTrim)
	get(&f.zero, h.CanZero)
	get(&f.fastZero, h.CanFastZero)
	get(&f.multiConn, h.CanMultiConn)
	get(&f.cache, h.CanCache)
	get(&f.alloc, func() (bool, error) { return h.CanMetaContext(libnbd.ContextBaseAllocation) })
	for _, s := range []struct {
		dst   *uint32
		which int
	}{{&f.minimum, libnbd.SizeMinimum}, {&f.preferred, libnbd.SizePreferred}, {&f.maximum, libnbd.SizeMaximum}} {
		if err == nil {
			var n int64
			n, err = h.GetBlockSize(s.which)
			*s.dst = uint32(n)
		}
	}
	if d, derr := h.GetExportDescription(); derr == nil {
		f.description = d
	}
	return f, err
}

// match checks that h serves the disk f describes.
func (f serverFacts) match(h *libnbd.Handle) error {
	g, err := readFacts(h)
	if err != nil {
		return err
	}
	g.description = f.description // may change harmlessly
	if g != f {
		return fmt.Errorf("the server's disk changed: was %+v, now %+v", f, g)
	}
	return nil
}
