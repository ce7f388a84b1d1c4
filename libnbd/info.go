// SPDX-License-Identifier: BSD-3-Clause

package libnbd

/*
#include <stdlib.h>
#include "gonbd.h"
*/
import "C"

import "unsafe"

// GetSize is the export's size in bytes.
func (h *Handle) GetSize() (int64, error) {
	if h.c == nil {
		return 0, ErrClosed
	}
	var e C.struct_gonbd_err
	r := C.gonbd_get_size(h.c, &e)
	if r == -1 {
		return 0, toError("nbd_get_size", &e)
	}
	return int64(r), nil
}

// GetBlockSize is one of the server's block sizes (SizeMinimum, ...), or
// 0 if the server gave none.
func (h *Handle) GetBlockSize(which int) (int64, error) {
	if h.c == nil {
		return 0, ErrClosed
	}
	var e C.struct_gonbd_err
	r := C.gonbd_get_block_size(h.c, C.int(which), &e)
	if r == -1 {
		return 0, toError("nbd_get_block_size", &e)
	}
	return int64(r), nil
}

func (h *Handle) flag(op string, which C.int) (bool, error) {
	if h.c == nil {
		return false, ErrClosed
	}
	var e C.struct_gonbd_err
	r := C.gonbd_get_flag(h.c, which, &e)
	if r == -1 {
		return false, toError(op, &e)
	}
	return r == 1, nil
}

// IsReadOnly reports whether the export is read-only.
func (h *Handle) IsReadOnly() (bool, error) { return h.flag("nbd_is_read_only", C.GONBD_IS_READ_ONLY) }

// CanFlush reports whether the server supports flush.
func (h *Handle) CanFlush() (bool, error) { return h.flag("nbd_can_flush", C.GONBD_CAN_FLUSH) }

// CanFUA reports whether the server supports the FUA flag.
func (h *Handle) CanFUA() (bool, error) { return h.flag("nbd_can_fua", C.GONBD_CAN_FUA) }

// IsRotational reports whether the server's storage is rotational.
func (h *Handle) IsRotational() (bool, error) {
	return h.flag("nbd_is_rotational", C.GONBD_IS_ROTATIONAL)
}

// CanTrim reports whether the server supports trim.
func (h *Handle) CanTrim() (bool, error) { return h.flag("nbd_can_trim", C.GONBD_CAN_TRIM) }

// CanZero reports whether the server supports write zeroes.
func (h *Handle) CanZero() (bool, error) { return h.flag("nbd_can_zero", C.GONBD_CAN_ZERO) }

// CanFastZero reports whether the server supports the FAST_ZERO flag.
func (h *Handle) CanFastZero() (bool, error) {
	return h.flag("nbd_can_fast_zero", C.GONBD_CAN_FAST_ZERO)
}

// CanMultiConn reports whether the server is consistent across
// connections.
func (h *Handle) CanMultiConn() (bool, error) {
	return h.flag("nbd_can_multi_conn", C.GONBD_CAN_MULTI_CONN)
}

// CanCache reports whether the server supports cache.
func (h *Handle) CanCache() (bool, error) { return h.flag("nbd_can_cache", C.GONBD_CAN_CACHE) }

// CanMetaContext reports whether a meta context was negotiated.
func (h *Handle) CanMetaContext(name string) (bool, error) {
	if h.c == nil {
		return false, ErrClosed
	}
	cs := C.CString(name)
	defer C.free(unsafe.Pointer(cs))
	var e C.struct_gonbd_err
	r := C.gonbd_can_meta_context(h.c, cs, &e)
	if r == -1 {
		return false, toError("nbd_can_meta_context", &e)
	}
	return r == 1, nil
}

func (h *Handle) str(op string, f func(*C.struct_gonbd_err) *C.char) (string, error) {
	if h.c == nil {
		return "", ErrClosed
	}
	var e C.struct_gonbd_err
	r := f(&e)
	if r == nil {
		return "", toError(op, &e)
	}
	defer C.free(unsafe.Pointer(r))
	return C.GoString(r), nil
}

// GetExportDescription is the server's description of the export (an
// error if it gave none).
func (h *Handle) GetExportDescription() (string, error) {
	return h.str("nbd_get_export_description", func(e *C.struct_gonbd_err) *C.char {
		return C.gonbd_get_export_description(h.c, e)
	})
}

// GetCanonicalExportName is the server's name for the export.
func (h *Handle) GetCanonicalExportName() (string, error) {
	return h.str("nbd_get_canonical_export_name", func(e *C.struct_gonbd_err) *C.char {
		return C.gonbd_get_canonical_export_name(h.c, e)
	})
}
