package plugin

// The Go side of the direct data path (direct.c): one per upstream,
// following it to each new server connection.

/*
#cgo CFLAGS: -O2 -Wall -I${SRCDIR}/../nbdkit -I${SRCDIR}/../libnbd
#cgo pkg-config: libnbd
#include "direct.h"
*/
import "C"

import (
	"unsafe"

	"nbdkit-nbd-go-plugin/libnbd"
)

// directPath is C memory: nbdkit's threads use it without Go.
type directPath struct{ c *C.struct_direct_path }

func newDirectPath(h *libnbd.Handle, reconnect bool) *directPath {
	r := C.int(0)
	if reconnect {
		r = 1
	}
	c := C.direct_new((*C.struct_gonbd)(h.CHandle()), r)
	if c == nil {
		return nil
	}
	return &directPath{c: c}
}

// set points the path at a new server connection.
func (d *directPath) set(h *libnbd.Handle) {
	C.direct_set(d.c, (*C.struct_gonbd)(h.CHandle()))
}

func (d *directPath) free() { C.direct_free(d.c) }

// ops is the struct nbdkitgo_direct for the loader.
func (d *directPath) ops() unsafe.Pointer { return unsafe.Pointer(&d.c.ops) }
