// SPDX-License-Identifier: BSD-3-Clause

package libnbd

/*
#include <stdlib.h>
#include "gonbd.h"
*/
import "C"

import (
	"fmt"
	"syscall"
	"unsafe"
)

// Error is a failed libnbd call: the call, libnbd's message (or empty
// when the server's reply carried only an errno) and the errno.
type Error struct {
	Op    string
	Msg   string
	Errno syscall.Errno
}

// Error is libnbd's message, or the call and the errno.
func (e *Error) Error() string {
	if e.Msg != "" {
		return e.Msg // libnbd's messages start with the call's name
	}
	if e.Errno != 0 {
		return fmt.Sprintf("%s: %v", e.Op, e.Errno)
	}
	return e.Op + ": failed"
}

// Unwrap gives the errno, so errors.Is(err, syscall.ENOSPC) and
// errors.As(err, &errno) work.
func (e *Error) Unwrap() error {
	if e.Errno == 0 {
		return nil
	}
	return e.Errno
}

// toError turns a captured C error into *Error, freeing its message.
func toError(op string, ce *C.struct_gonbd_err) error {
	e := &Error{Op: op, Errno: syscall.Errno(ce.errnum)}
	if ce.msg != nil {
		e.Msg = C.GoString(ce.msg)
		C.free(unsafe.Pointer(ce.msg))
		ce.msg = nil
	}
	return e
}
