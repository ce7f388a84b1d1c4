// SPDX-License-Identifier: BSD-3-Clause

// Package datapath is the plugin's data path: the C that serves every
// data request (read, write, zero, trim, flush, cache, extents) from the
// loader to the server without entering Go, and, in this file, the one
// seam through which Go drives it.
//
// Go's side is the control side (package plugin: configuration,
// connecting, exports); the data path owns everything below this seam:
// a connected libnbd handle handed over here is its own from then on,
// and it makes and closes the command engines on them.  datapath.h
// declares every C function Go calls, and its glossary names the parts.
//
// Files: serve.c (paths, clients, serving a request, failover),
// disk.c (what is known of one export across connections), doubt.c
// (writes in doubt: the rule and the fence), kept.c (kept writes and the
// repair of a lost cache), peer.c (who serves a Unix socket), engine.c
// (many threads on one server connection).
package datapath

/*
#cgo CFLAGS: -O2 -Wall -I${SRCDIR}/../../nbdkit
#cgo pkg-config: libnbd
#include <stdlib.h>
#include "datapath.h"
*/
import "C"

import (
	"fmt"
	"runtime/cgo"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"nbdkit-nbd-go-plugin/libnbd"
)

// Settings are the data path's process-wide settings.
type Settings struct {
	ReconnectDelay time.Duration // 0: off
	Timeout        time.Duration // per command, and for closing; 0: none
	RepairMemory   int64         // bytes of kept data
	Quiesce        time.Duration // quiesce-time=, if QuiesceGiven
	QuiesceGiven   bool
	// Closing a connection ends its server (command=), which ends the
	// doubt over writes it was sent (doubt.h).
	ServerExits bool
}

// Configure gives the data path its settings, once, before the first
// path.
func Configure(s Settings) {
	quiesce := int64(-1)
	if s.QuiesceGiven {
		quiesce = s.Quiesce.Milliseconds()
	}
	C.datapath_configure(&C.struct_datapath_settings{
		reconnect_ms:  C.int64_t(s.ReconnectDelay.Milliseconds()),
		timeout_ms:    C.int64_t(s.Timeout.Milliseconds()),
		repair_memory: C.int64_t(s.RepairMemory),
		quiesce_ms:    C.int64_t(quiesce),
		server_exits:  cbool(s.ServerExits),
	})
}

// A Path is the way of one export's requests to the server: the current
// server connection, which the data path replaces through redial when
// it fails (with reconnect-delay).
type Path struct {
	redial func(deadline time.Time)
	ref    cgo.Handle // this Path, for nbdgoRedial

	mu     sync.Mutex // protects closed and p against a late redial
	closed bool
	p      *C.struct_path // C memory: nbdkit's threads use it without Go
}

// NewPath starts a path to export over h, which it takes (and closes on
// failure).  flushes: the server accepts flush.  redial is called, on a
// goroutine of its own, when the data path wants a new connection by
// deadline; it answers with Install or RedialFailed.
func NewPath(h *libnbd.Handle, export string, flushes bool, redial func(deadline time.Time)) (*Path, error) {
	p := &Path{redial: redial}
	p.ref = cgo.NewHandle(p)
	cexport := C.CString(export)
	defer C.free(unsafe.Pointer(cexport))
	released := h.Release()
	cp, err := C.path_new((*C.struct_nbd_handle)(released), cexport,
		cbool(flushes), C.uintptr_t(p.ref))
	if cp == nil {
		libnbd.CloseReleased(released)
		p.ref.Delete()
		return nil, fmt.Errorf("starting the data path: %w", err)
	}
	p.p = cp
	return p, nil
}

// nbdgoRedial: the data path asks for a new connection within leftMs.
//
//export nbdgoRedial
func nbdgoRedial(ref C.uintptr_t, leftMs C.int64_t) {
	p := cgo.Handle(ref).Value().(*Path)
	go p.redial(time.Now().Add(time.Duration(leftMs) * time.Millisecond))
}

// Install hands over h, a new connection to the same disk, which
// replaces the current one.  It takes h: a handle nobody takes (the path
// is closed, or out of memory) is closed after unlocking, since a polite
// goodbye can take up to timeout=.  p.mu is held only while the path is
// used: path_install does not wait for a server (datapath.h).
func (p *Path) Install(h *libnbd.Handle) error {
	released := h.Release()
	var err error
	p.mu.Lock()
	if p.closed {
		err = syscall.ESHUTDOWN
	} else if r, ierr := C.path_install(p.p, (*C.struct_nbd_handle)(released)); r != 0 {
		err = fmt.Errorf("starting the data path: %w", ierr)
	}
	p.mu.Unlock()
	if err != nil {
		libnbd.CloseReleased(released)
	}
	return err
}

// RedialFailed: no connection came by the deadline redial was given.
func (p *Path) RedialFailed() {
	p.mu.Lock()
	if !p.closed {
		C.path_redial_failed(p.p)
	}
	p.mu.Unlock()
}

// Free ends the server connection politely (within timeout=, if set)
// and frees everything.  No request may be running and no client left:
// nbdkit closes a connection only after its last request.
func (p *Path) Free() {
	p.mu.Lock()
	p.closed = true
	C.path_free(p.p)
	p.p = nil
	p.mu.Unlock()
	p.ref.Delete()
}

// A Client is one nbdkit connection's data path over a Path.
type Client struct{ c *C.struct_client }

// NewClient starts a client's data path; it must be freed.
func (p *Path) NewClient() (Client, error) {
	c := C.client_new(p.p)
	if c == nil {
		return Client{}, syscall.ENOMEM
	}
	return Client{c}, nil
}

// Ops is the client's struct nbdkitgo_direct, for the loader.
func (c Client) Ops() unsafe.Pointer { return unsafe.Pointer(C.client_ops(c.c)) }

// Free frees the client's data path; none of its requests may be running.
func (c Client) Free() { C.client_free(c.c) }

func cbool(b bool) C.int {
	if b {
		return 1
	}
	return 0
}
