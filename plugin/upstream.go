// SPDX-License-Identifier: BSD-3-Clause

package plugin

// An upstream is a server connection as nbdkit's connections see it: the
// C data path (direct.c) over the current connection, and what the first
// connection said about the disk.  With reconnect-delay, the data path
// asks Go for a new connection when the current one fails
// (nbdgoRedial); Go dials it here and hands it over (path_install).
//
// This file is the seam between Go and the data path: direct.h is all
// of the data path that Go calls, and a connected libnbd handle handed
// over here belongs to the data path from then on.

/*
#cgo CFLAGS: -O2 -Wall -I${SRCDIR}/../nbdkit
#cgo pkg-config: libnbd
#include <stdlib.h>
#include "direct.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"runtime/cgo"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"nbdkit-nbd-go-plugin/libnbd"
	"nbdkit-nbd-go-plugin/nbdkit"
)

type upstream struct {
	export string
	// facts is what nbdkit told clients about the disk; a new connection
	// must show the same, or it is not used.
	facts serverFacts
	path  *C.struct_path // C memory: nbdkit's threads use it without Go
	ref   cgo.Handle     // this upstream, for nbdgoRedial

	mu     sync.Mutex // protects closed and path against a late redial
	closed bool
}

// newUpstream connects to the server and reads what it offers.
func newUpstream(export string) (*upstream, error) {
	h, err := dial(export, false, cfg.retry, openDeadline(), nil)
	if err != nil {
		return nil, err
	}
	facts, err := readFacts(h)
	if err != nil {
		h.Close()
		return nil, err
	}
	u := &upstream{export: export, facts: facts}
	u.ref = cgo.NewHandle(u)
	cexport := C.CString(export)
	defer C.free(unsafe.Pointer(cexport))
	released := h.Release()
	p, err := C.path_new((*C.struct_nbd_handle)(released), cexport,
		cbool(facts.flush), C.uintptr_t(u.ref))
	if p == nil {
		libnbd.CloseReleased(released)
		u.ref.Delete()
		return nil, fmt.Errorf("starting the data path: %w", err)
	}
	u.path = p
	return u, nil
}

// configureDataPath gives the data path its settings, once, before the
// first server connection.
func configureDataPath() {
	quiesce := int64(-1)
	if cfg.quiesceGiven {
		quiesce = cfg.quiesce.Milliseconds()
	}
	C.datapath_configure(&C.struct_datapath_settings{
		reconnect_ms:  C.int64_t(cfg.reconnectDelay.Milliseconds()),
		timeout_ms:    C.int64_t(cfg.timeout.Milliseconds()),
		repair_memory: C.int64_t(cfg.repairMemory),
		quiesce_ms:    C.int64_t(quiesce),
		// A server that command= started exits when its connection is
		// closed, which ends the doubt over writes it was sent (doubt.h).
		server_exits: cbool(cfg.command != ""),
	})
}

// openDeadline: with reconnect-delay, a client that connects while the
// server is away waits for it as long as a request would.
func openDeadline() time.Time {
	if cfg.reconnectDelay == 0 {
		return time.Time{}
	}
	return time.Now().Add(cfg.reconnectDelay)
}

// client is one nbdkit connection's data path over u (direct.c).
type client struct{ c *C.struct_client }

// newClient starts a client's data path; it must be freed.
func (u *upstream) newClient() (client, error) {
	c := C.client_new(u.path)
	if c == nil {
		return client{}, syscall.ENOMEM
	}
	return client{c}, nil
}

// ops is the struct nbdkitgo_direct for the loader.
func (c client) ops() unsafe.Pointer { return unsafe.Pointer(C.client_ops(c.c)) }

func (c client) free() { C.client_free(c.c) }

func cbool(b bool) C.int {
	if b {
		return 1
	}
	return 0
}

// close ends the server connection politely (within timeout=, if set)
// and frees everything.  No request is running: nbdkit closes a
// connection only after its last request.
func (u *upstream) close() {
	u.mu.Lock()
	u.closed = true
	C.path_free(u.path)
	u.path = nil
	u.mu.Unlock()
	u.ref.Delete()
}

// nbdgoRedial: the data path asks for a new connection within leftMs.
//
//export nbdgoRedial
func nbdgoRedial(ref C.uintptr_t, leftMs C.int64_t) {
	u := cgo.Handle(ref).Value().(*upstream)
	go u.redial(time.Now().Add(time.Duration(leftMs) * time.Millisecond))
}

// redial connects again and again until a connection to the same disk
// works or deadline passes, then hands it to the data path.  u.mu is
// held only while the path is used: path_install never waits (the old
// connection is closed in the background), and a connection nobody
// takes is closed after unlocking, since a polite goodbye can take up
// to timeout=.
func (u *upstream) redial(deadline time.Time) {
	h, err := dial(u.export, false, 0, deadline, u.facts.match)
	var left unsafe.Pointer // a handle nobody took
	u.mu.Lock()
	switch {
	case u.closed:
		if err == nil {
			left = h.Release()
		}
	case err != nil:
		nbdkit.Debugf("reconnecting: %v", err)
		C.path_redial_failed(u.path)
	default:
		released := h.Release()
		if r, ierr := C.path_install(u.path, (*C.struct_nbd_handle)(released)); r != 0 {
			nbdkit.Debugf("reconnecting: starting the data path: %v", ierr)
			left = released
		} else {
			nbdkit.Debugf("reconnected to the server")
		}
	}
	u.mu.Unlock()
	if left != nil {
		libnbd.CloseReleased(left)
	}
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

// errOtherDisk: a new connection shows another disk.
var errOtherDisk = errors.New("the server's disk changed")

// match checks that h serves the disk f describes.
func (f serverFacts) match(h *libnbd.Handle) error {
	g, err := readFacts(h)
	if err != nil {
		return err
	}
	g.description = f.description // may change harmlessly
	if g != f {
		return fmt.Errorf("%w: was %+v, now %+v", errOtherDisk, f, g)
	}
	return nil
}
