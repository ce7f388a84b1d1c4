package libnbd

/*
#include <stdlib.h>
#include "gonbd.h"
*/
import "C"

import "unsafe"

// CmdFlag is a command flag.
type CmdFlag uint32

// The command flags, as in libnbd.h.
const (
	CmdFlagFUA      CmdFlag = C.LIBNBD_CMD_FLAG_FUA
	CmdFlagNoHole   CmdFlag = C.LIBNBD_CMD_FLAG_NO_HOLE
	CmdFlagDF       CmdFlag = C.LIBNBD_CMD_FLAG_DF
	CmdFlagReqOne   CmdFlag = C.LIBNBD_CMD_FLAG_REQ_ONE
	CmdFlagFastZero CmdFlag = C.LIBNBD_CMD_FLAG_FAST_ZERO
)

var opNames = [...]string{
	C.GONBD_PREAD: "pread", C.GONBD_PWRITE: "pwrite", C.GONBD_ZERO: "zero",
	C.GONBD_TRIM: "trim", C.GONBD_FLUSH: "flush", C.GONBD_CACHE: "cache",
}

// command runs one command; buf, when not nil, is used by C until the
// reply has come, which is before the call returns (cgo keeps Go memory
// pinned for the call).
func (h *Handle) command(op C.int, buf unsafe.Pointer, count, offset uint64, flags CmdFlag) error {
	if h.c == nil {
		return ErrClosed
	}
	e := C.gonbd_command(h.c, op, buf, C.uint64_t(count), C.uint64_t(offset), C.uint32_t(flags))
	if e.errnum != 0 {
		return toError(opNames[op], &e)
	}
	return nil
}

func bufPtr(buf []byte) unsafe.Pointer {
	if len(buf) == 0 {
		return nil
	}
	return unsafe.Pointer(&buf[0])
}

// Pread reads len(buf) bytes at offset.
func (h *Handle) Pread(buf []byte, offset uint64, flags CmdFlag) error {
	return h.command(C.GONBD_PREAD, bufPtr(buf), uint64(len(buf)), offset, flags)
}

// Pwrite writes buf at offset.
func (h *Handle) Pwrite(buf []byte, offset uint64, flags CmdFlag) error {
	return h.command(C.GONBD_PWRITE, bufPtr(buf), uint64(len(buf)), offset, flags)
}

// Zero writes count zero bytes at offset.
func (h *Handle) Zero(count, offset uint64, flags CmdFlag) error {
	return h.command(C.GONBD_ZERO, nil, count, offset, flags)
}

// Trim discards count bytes at offset.
func (h *Handle) Trim(count, offset uint64, flags CmdFlag) error {
	return h.command(C.GONBD_TRIM, nil, count, offset, flags)
}

// Flush makes written data persistent.
func (h *Handle) Flush(flags CmdFlag) error {
	return h.command(C.GONBD_FLUSH, nil, 0, 0, flags)
}

// Cache asks the server to prefetch count bytes at offset.
func (h *Handle) Cache(count, offset uint64, flags CmdFlag) error {
	return h.command(C.GONBD_CACHE, nil, count, offset, flags)
}

// Extent is one run of a meta context's block status.
type Extent struct {
	Length uint32
	Flags  uint32
}

// BlockStatus returns the extents of the meta context from offset on,
// covering at most count bytes (fewer with CmdFlagReqOne).
func (h *Handle) BlockStatus(context string, count, offset uint64, flags CmdFlag) ([]Extent, error) {
	if h.c == nil {
		return nil, ErrClosed
	}
	cs := C.CString(context)
	defer C.free(unsafe.Pointer(cs))
	var e C.struct_gonbd_err
	var entries *C.uint32_t
	var n C.size_t
	r := C.gonbd_block_status(h.c, cs, C.uint64_t(count), C.uint64_t(offset), C.uint32_t(flags), &entries, &n, &e)
	defer C.free(unsafe.Pointer(entries))
	if r == -1 {
		return nil, toError("block_status", &e)
	}
	raw := unsafe.Slice((*uint32)(unsafe.Pointer(entries)), int(n))
	out := make([]Extent, 0, n/2)
	for i := 0; i+1 < len(raw); i += 2 {
		out = append(out, Extent{Length: raw[i], Flags: raw[i+1]})
	}
	return out, nil
}
