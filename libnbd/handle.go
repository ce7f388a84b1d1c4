// SPDX-License-Identifier: BSD-3-Clause

// Package libnbd is a Go binding of libnbd, the NBD client library.
//
// A Handle is one connection to an NBD server: configure it, connect it
// (with a deadline: see SetConnectTimeout), read what the server offers,
// and hand it to C code that runs commands on it (Release).  Every
// method of a closed or released Handle returns ErrClosed (or a zero
// value); libnbd's error is read in the same C call that failed.
package libnbd

/*
#cgo pkg-config: libnbd
#cgo CFLAGS: -O2 -Wall
#include <stdlib.h>
#include "gonbd.h"
*/
import "C"

import (
	"errors"
	"runtime/cgo"
	"time"
	"unsafe"
)

// TLS modes for SetTLS.
type TLSMode int

// The TLS modes, as in libnbd.h.
const (
	TLSDisable TLSMode = C.LIBNBD_TLS_DISABLE
	TLSAllow   TLSMode = C.LIBNBD_TLS_ALLOW
	TLSRequire TLSMode = C.LIBNBD_TLS_REQUIRE
)

// Which block size GetBlockSize returns.
const (
	SizeMinimum   = C.LIBNBD_SIZE_MINIMUM
	SizePreferred = C.LIBNBD_SIZE_PREFERRED
	SizeMaximum   = C.LIBNBD_SIZE_MAXIMUM
)

// ContextBaseAllocation is the meta context of allocation status.
const ContextBaseAllocation = "base:allocation"

// ErrClosed is returned by calls on a closed Handle.
var ErrClosed = errors.New("libnbd: handle is closed")

// Handle is a libnbd handle.
type Handle struct {
	c *C.struct_gonbd
}

// Create makes a new handle.
func Create() (*Handle, error) {
	var e C.struct_gonbd_err
	c := C.gonbd_create(&e)
	if c == nil {
		return nil, toError("nbd_create", &e)
	}
	return &Handle{c: c}, nil
}

// Close closes the connection and frees the handle.  No other call may
// be running on it.
func (h *Handle) Close() {
	if h.c == nil {
		return
	}
	C.gonbd_close(h.c)
	h.c = nil
}

// check runs a wrapper that returns -1 on error, on an open handle.
func (h *Handle) check(op string, f func(e *C.struct_gonbd_err) C.int) error {
	if h.c == nil {
		return ErrClosed
	}
	var e C.struct_gonbd_err
	if f(&e) == -1 {
		return toError(op, &e)
	}
	return nil
}

func cbool(b bool) C.int {
	if b {
		return 1
	}
	return 0
}

func (h *Handle) setString(op string, s string, f func(*C.struct_gonbd, *C.char, *C.struct_gonbd_err) C.int) error {
	cs := C.CString(s)
	defer C.free(unsafe.Pointer(cs))
	return h.check(op, func(e *C.struct_gonbd_err) C.int { return f(h.c, cs, e) })
}

// SetExportName sets the export to ask the server for.
func (h *Handle) SetExportName(name string) error {
	return h.setString("nbd_set_export_name", name, func(c *C.struct_gonbd, s *C.char, e *C.struct_gonbd_err) C.int {
		return C.gonbd_set_export_name(c, s, e)
	})
}

// AddMetaContext asks for a meta context, such as ContextBaseAllocation.
func (h *Handle) AddMetaContext(name string) error {
	return h.setString("nbd_add_meta_context", name, func(c *C.struct_gonbd, s *C.char, e *C.struct_gonbd_err) C.int {
		return C.gonbd_add_meta_context(c, s, e)
	})
}

// SetFullInfo asks the server for the export's name and description.
func (h *Handle) SetFullInfo(b bool) error {
	return h.check("nbd_set_full_info", func(e *C.struct_gonbd_err) C.int { return C.gonbd_set_full_info(h.c, cbool(b), e) })
}

// SetPreadInitialize sets whether read buffers are zeroed first.
func (h *Handle) SetPreadInitialize(b bool) error {
	return h.check("nbd_set_pread_initialize", func(e *C.struct_gonbd_err) C.int {
		return C.gonbd_set_pread_initialize(h.c, cbool(b), e)
	})
}

// SetOptMode makes Connect* stop in option negotiation (see OptGo).
func (h *Handle) SetOptMode(b bool) error {
	return h.check("nbd_set_opt_mode", func(e *C.struct_gonbd_err) C.int { return C.gonbd_set_opt_mode(h.c, cbool(b), e) })
}

// SetTLS sets whether to use TLS.
func (h *Handle) SetTLS(mode TLSMode) error {
	return h.check("nbd_set_tls", func(e *C.struct_gonbd_err) C.int { return C.gonbd_set_tls(h.c, C.int(mode), e) })
}

// SetTLSCertificates sets the directory of X.509 certificates.
func (h *Handle) SetTLSCertificates(dir string) error {
	return h.setString("nbd_set_tls_certificates", dir, func(c *C.struct_gonbd, s *C.char, e *C.struct_gonbd_err) C.int {
		return C.gonbd_set_tls_certificates(c, s, e)
	})
}

// SetTLSVerifyPeer sets whether to verify the server's certificate.
func (h *Handle) SetTLSVerifyPeer(b bool) error {
	return h.check("nbd_set_tls_verify_peer", func(e *C.struct_gonbd_err) C.int {
		return C.gonbd_set_tls_verify_peer(h.c, cbool(b), e)
	})
}

// SetTLSUsername sets the TLS user name.
func (h *Handle) SetTLSUsername(name string) error {
	return h.setString("nbd_set_tls_username", name, func(c *C.struct_gonbd, s *C.char, e *C.struct_gonbd_err) C.int {
		return C.gonbd_set_tls_username(c, s, e)
	})
}

// SetTLSPSKFile sets the file of pre-shared keys.
func (h *Handle) SetTLSPSKFile(file string) error {
	return h.setString("nbd_set_tls_psk_file", file, func(c *C.struct_gonbd, s *C.char, e *C.struct_gonbd_err) C.int {
		return C.gonbd_set_tls_psk_file(c, s, e)
	})
}

// SetDebug turns libnbd's debug messages on or off; with f non-nil they
// go to f instead of stderr.  f may be called on any thread, for as long
// as libnbd has the handle (after Release too); libnbd lets go of f
// when it is replaced or the handle is closed.
func (h *Handle) SetDebug(on bool, f func(context, msg string)) error {
	if h.c == nil {
		return ErrClosed
	}
	var cb C.uintptr_t
	if on && f != nil {
		cb = C.uintptr_t(cgo.NewHandle(f))
	}
	return h.check("nbd_set_debug", func(e *C.struct_gonbd_err) C.int { return C.gonbd_set_debug(h.c, cbool(on), cb, e) })
}

//export gonbdDebug
func gonbdDebug(f C.uintptr_t, context, msg *C.char) {
	cgo.Handle(f).Value().(func(string, string))(C.GoString(context), C.GoString(msg))
}

//export gonbdDebugFree
func gonbdDebugFree(f C.uintptr_t) { cgo.Handle(f).Delete() }

// SetConnectTimeout bounds connecting (Connect*, OptGo): a server that
// has not finished the handshake in d fails it with ETIMEDOUT.  Zero
// means no limit.
func (h *Handle) SetConnectTimeout(d time.Duration) {
	ms := d.Milliseconds()
	if d > 0 && ms == 0 {
		ms = 1
	}
	if h.c != nil {
		h.c.timeout_ms = C.int64_t(ms)
	}
}

// Release hands the connected libnbd handle (a *struct nbd_handle) to C
// code, which closes it with nbd_close; h is closed from then on.
func (h *Handle) Release() unsafe.Pointer {
	if h.c == nil {
		return nil
	}
	nbd := C.gonbd_release(h.c)
	h.c = nil
	return unsafe.Pointer(nbd)
}

// CloseReleased closes a libnbd handle that Release gave, for a caller
// that could not use it.
func CloseReleased(nbd unsafe.Pointer) {
	C.nbd_close((*C.struct_nbd_handle)(nbd))
}

// SupportsTLS reports whether libnbd was built with TLS.
func (h *Handle) SupportsTLS() bool { return h.c != nil && C.gonbd_supports_tls(h.c) == 1 }

// SupportsURI reports whether libnbd was built with URI support.
func (h *Handle) SupportsURI() bool { return h.c != nil && C.gonbd_supports_uri(h.c) == 1 }

// Version is libnbd's version.
func (h *Handle) Version() string {
	if h.c == nil {
		return ""
	}
	return C.GoString(C.nbd_get_version(h.c.nbd))
}
