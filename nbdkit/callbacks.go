// SPDX-License-Identifier: BSD-3-Clause

package nbdkit

// The C entry points of the Go library: one //export-ed function per
// nbdkit callback, gathered into a table by ops.c.  Each converts C
// arguments to Go, calls the registered plugin, and turns an error or a
// panic into nbdkit's -1 with an error message and errno.

/*
#include <stdint.h>
#include <stdlib.h>
#include "host.h"
extern const struct nbdkitgo_ops nbdkitgo_ops;
*/
import "C"

import (
	"fmt"
	"unsafe"
)

func status(err error) C.int {
	if err != nil {
		report(err)
		return -1
	}
	return 0
}

func boolStatus(b bool, err error) C.int {
	if err != nil {
		report(err)
		return -1
	}
	if b {
		return 1
	}
	return 0
}

// catch is deferred by every entry point: a panic in plugin code must
// become an error for this one request, not the end of nbdkit.
func catch(r *C.int) {
	if p := recover(); p != nil {
		report(fmt.Errorf("internal error: %v", p))
		*r = -1
	}
}

func catchVoid() {
	if p := recover(); p != nil {
		report(fmt.Errorf("internal error: %v", p))
	}
}

//export nbdkitgo_start
func nbdkitgo_start(host *C.struct_nbdkitgo_host) *C.struct_nbdkitgo_ops {
	C.nbdkitgo_host = host
	if registered == nil || registerErr != nil {
		return nil
	}
	return &C.nbdkitgo_ops
}

//export nbdkitgo_load
func nbdkitgo_load() { defer catchVoid(); registered.load() }

//export nbdkitgo_unload
func nbdkitgo_unload() { defer catchVoid(); registered.unload() }

//export nbdkitgo_dump_plugin
func nbdkitgo_dump_plugin() { defer catchVoid(); registered.dumpPlugin() }

//export nbdkitgo_config
func nbdkitgo_config(key, value *C.char) (r C.int) {
	defer catch(&r)
	return status(registered.config(C.GoString(key), C.GoString(value)))
}

//export nbdkitgo_config_complete
func nbdkitgo_config_complete() (r C.int) {
	defer catch(&r)
	return status(registered.configComplete())
}

//export nbdkitgo_thread_model
func nbdkitgo_thread_model() (r C.int) {
	defer catch(&r)
	m := registered.threadModel()
	if err := checkThreadModel(m); err != nil {
		return status(err)
	}
	return C.int(m)
}

//export nbdkitgo_get_ready
func nbdkitgo_get_ready() (r C.int) {
	defer catch(&r)
	return status(registered.getReady())
}

//export nbdkitgo_after_fork
func nbdkitgo_after_fork() (r C.int) {
	defer catch(&r)
	return status(registered.afterFork())
}

//export nbdkitgo_cleanup
func nbdkitgo_cleanup() { defer catchVoid(); registered.cleanup() }

//export nbdkitgo_preconnect
func nbdkitgo_preconnect(readonly C.int) (r C.int) {
	defer catch(&r)
	return status(registered.preconnect(readonly != 0))
}

//export nbdkitgo_list_exports
func nbdkitgo_list_exports(readonly, isTLS C.int, e *C.struct_nbdkit_exports) (r C.int) {
	defer catch(&r)
	return status(registered.listExports(readonly != 0, isTLS != 0, &Exports{c: e}))
}

//export nbdkitgo_default_export
func nbdkitgo_default_export(readonly, isTLS C.int) (r *C.char) {
	defer func() {
		if p := recover(); p != nil {
			report(fmt.Errorf("internal error: %v", p))
			r = nil
		}
	}()
	name, err := registered.defaultExport(readonly != 0, isTLS != 0)
	if err != nil {
		report(err)
		return nil
	}
	return intern(name)
}

//export nbdkitgo_open
func nbdkitgo_open(readonly C.int) (r C.uintptr_t) {
	defer func() {
		if p := recover(); p != nil {
			report(fmt.Errorf("internal error: %v", p))
			r = 0
		}
	}()
	h, err := registered.open(readonly != 0)
	if err != nil {
		report(err)
		return 0
	}
	return C.uintptr_t(h)
}

//export nbdkitgo_close
func nbdkitgo_close(h C.uintptr_t) { defer catchVoid(); registered.close(uintptr(h)) }

//export nbdkitgo_export_description
func nbdkitgo_export_description(h C.uintptr_t) (r *C.char) {
	defer func() {
		if p := recover(); p != nil {
			report(fmt.Errorf("internal error: %v", p))
			r = nil
		}
	}()
	d, err := registered.exportDescription(uintptr(h))
	if err != nil {
		report(err)
		return nil
	}
	if d == "" {
		return nil // no description
	}
	return intern(d)
}

//export nbdkitgo_get_size
func nbdkitgo_get_size(h C.uintptr_t) (r C.int64_t) {
	defer func() {
		if p := recover(); p != nil {
			report(fmt.Errorf("internal error: %v", p))
			r = -1
		}
	}()
	size, err := registered.getSize(uintptr(h))
	if err != nil {
		report(err)
		return -1
	}
	return C.int64_t(size)
}

//export nbdkitgo_block_size
func nbdkitgo_block_size(h C.uintptr_t, minimum, preferred, maximum *C.uint32_t) (r C.int) {
	defer catch(&r)
	mn, pr, mx, err := registered.blockSize(uintptr(h))
	if err != nil {
		return status(err)
	}
	*minimum, *preferred, *maximum = C.uint32_t(mn), C.uint32_t(pr), C.uint32_t(mx)
	return 0
}

//export nbdkitgo_can_write
func nbdkitgo_can_write(h C.uintptr_t) (r C.int) {
	defer catch(&r)
	return boolStatus(registered.flag(canWrite, uintptr(h)))
}

//export nbdkitgo_can_flush
func nbdkitgo_can_flush(h C.uintptr_t) (r C.int) {
	defer catch(&r)
	return boolStatus(registered.flag(canFlush, uintptr(h)))
}

//export nbdkitgo_is_rotational
func nbdkitgo_is_rotational(h C.uintptr_t) (r C.int) {
	defer catch(&r)
	return boolStatus(registered.flag(isRotational, uintptr(h)))
}

//export nbdkitgo_can_trim
func nbdkitgo_can_trim(h C.uintptr_t) (r C.int) {
	defer catch(&r)
	return boolStatus(registered.flag(canTrim, uintptr(h)))
}

//export nbdkitgo_can_zero
func nbdkitgo_can_zero(h C.uintptr_t) (r C.int) {
	defer catch(&r)
	return boolStatus(registered.flag(canZero, uintptr(h)))
}

//export nbdkitgo_can_fast_zero
func nbdkitgo_can_fast_zero(h C.uintptr_t) (r C.int) {
	defer catch(&r)
	return boolStatus(registered.flag(canFastZero, uintptr(h)))
}

//export nbdkitgo_can_extents
func nbdkitgo_can_extents(h C.uintptr_t) (r C.int) {
	defer catch(&r)
	return boolStatus(registered.flag(canExtents, uintptr(h)))
}

//export nbdkitgo_can_multi_conn
func nbdkitgo_can_multi_conn(h C.uintptr_t) (r C.int) {
	defer catch(&r)
	return boolStatus(registered.flag(canMultiConn, uintptr(h)))
}

//export nbdkitgo_can_fua
func nbdkitgo_can_fua(h C.uintptr_t) (r C.int) {
	defer catch(&r)
	mode, err := registered.canFUA(uintptr(h))
	if err != nil {
		return status(err)
	}
	return C.int(mode)
}

//export nbdkitgo_can_cache
func nbdkitgo_can_cache(h C.uintptr_t) (r C.int) {
	defer catch(&r)
	mode, err := registered.canCache(uintptr(h))
	if err != nil {
		return status(err)
	}
	return C.int(mode)
}

// The data callbacks wrap nbdkit's buffer in a slice without copying.

//export nbdkitgo_pread
func nbdkitgo_pread(h C.uintptr_t, buf unsafe.Pointer, count C.uint32_t, offset C.uint64_t, flags C.uint32_t) (r C.int) {
	defer catch(&r)
	return status(registered.pread(uintptr(h), unsafe.Slice((*byte)(buf), int(count)), uint64(offset), Flags(flags)))
}

//export nbdkitgo_pwrite
func nbdkitgo_pwrite(h C.uintptr_t, buf unsafe.Pointer, count C.uint32_t, offset C.uint64_t, flags C.uint32_t) (r C.int) {
	defer catch(&r)
	return status(registered.pwrite(uintptr(h), unsafe.Slice((*byte)(buf), int(count)), uint64(offset), Flags(flags)))
}

//export nbdkitgo_flush
func nbdkitgo_flush(h C.uintptr_t, flags C.uint32_t) (r C.int) {
	defer catch(&r)
	return status(registered.flush(uintptr(h), Flags(flags)))
}

//export nbdkitgo_trim
func nbdkitgo_trim(h C.uintptr_t, count C.uint32_t, offset C.uint64_t, flags C.uint32_t) (r C.int) {
	defer catch(&r)
	return status(registered.trim(uintptr(h), uint32(count), uint64(offset), Flags(flags)))
}

//export nbdkitgo_zero
func nbdkitgo_zero(h C.uintptr_t, count C.uint32_t, offset C.uint64_t, flags C.uint32_t) (r C.int) {
	defer catch(&r)
	return status(registered.zero(uintptr(h), uint32(count), uint64(offset), Flags(flags)))
}

//export nbdkitgo_extents
func nbdkitgo_extents(h C.uintptr_t, count C.uint32_t, offset C.uint64_t, flags C.uint32_t, e *C.struct_nbdkit_extents) (r C.int) {
	defer catch(&r)
	return status(registered.extents(uintptr(h), uint32(count), uint64(offset), Flags(flags), &Extents{c: e}))
}

//export nbdkitgo_cache
func nbdkitgo_cache(h C.uintptr_t, count C.uint32_t, offset C.uint64_t, flags C.uint32_t) (r C.int) {
	defer catch(&r)
	return status(registered.cache(uintptr(h), uint32(count), uint64(offset), Flags(flags)))
}

// intern copies s into nbdkit-owned memory that outlives this call.
func intern(s string) *C.char {
	cs := C.CString(s)
	defer C.free(unsafe.Pointer(cs))
	return C.host_strdup_intern(cs)
}

//export nbdkitgo_direct
func nbdkitgo_direct(h C.uintptr_t) (r unsafe.Pointer) {
	defer func() {
		if p := recover(); p != nil {
			report(fmt.Errorf("internal error: %v", p))
			r = nil
		}
	}()
	return registered.direct(uintptr(h))
}
