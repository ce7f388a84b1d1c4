// SPDX-License-Identifier: BSD-3-Clause

package nbdkit

// nbdkit's helper functions for plugins (nbdkit_error, nbdkit_parse_*,
// ...), reached through the host table the loader handed over.

/*
#include <stdlib.h>
#include "host.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"unsafe"
)

// errReported wraps an error nbdkit has already printed (its parsers
// print their own messages), so that it is not printed twice.
type errReported struct{ msg string }

func (e *errReported) Error() string { return e.msg }

// report logs err and sets the errno nbdkit sends to the client.
func report(err error) {
	var r *errReported
	if !errors.As(err, &r) {
		Errorf("%s", err.Error())
	}
	setError(errnoOf(err))
}

// errnoOf is the errno that err carries (a syscall.Errno in its chain),
// or EIO.
func errnoOf(err error) syscall.Errno {
	var e syscall.Errno
	if errors.As(err, &e) && e != 0 {
		return e
	}
	return syscall.EIO
}

func cstring(s string) (*C.char, func()) {
	cs := C.CString(s)
	return cs, func() { C.free(unsafe.Pointer(cs)) }
}

// Errorf logs an error message (nbdkit_error).
func Errorf(format string, args ...any) {
	cs, free := cstring(fmt.Sprintf(format, args...))
	defer free()
	C.host_error(cs)
}

// Debugf logs a debug message, shown with nbdkit -v (nbdkit_debug).
func Debugf(format string, args ...any) {
	if C.host_present() == 0 {
		return
	}
	cs, free := cstring(fmt.Sprintf(format, args...))
	defer free()
	C.host_debug(cs)
}

// setError sets the errno of the failing callback (nbdkit_set_error).
func setError(errno syscall.Errno) { C.host_set_error(C.int(errno)) }

// DebugFlag is the value of -D NAME.FLAG=N for a flag listed in
// Plugin.DebugFlags (0 when not set).
func DebugFlag(flag string) int {
	cs, free := cstring(flag)
	defer free()
	return int(C.host_debug_flag(cs))
}

func parsed(what string, rc C.int) error {
	if rc == -1 {
		if C.host_present() == 0 {
			return fmt.Errorf("%s: cannot parse outside nbdkit", what)
		}
		return &errReported{msg: "could not parse " + what}
	}
	return nil
}

// ParseSize parses a size with an optional unit such as 64M, as nbdkit
// does (nbdkit_parse_size).  On error nbdkit has printed its message;
// the returned error is not printed again when a callback returns it.
func ParseSize(s string) (int64, error) {
	cs, free := cstring(s)
	defer free()
	r := C.host_parse_size(cs)
	if r < 0 {
		return 0, parsed("size", -1)
	}
	return int64(r), nil
}

// AbsolutePath makes path absolute against nbdkit's working directory at
// start-up (nbdkit_absolute_path).  Outside nbdkit (a test binary) it
// does the same in Go.
func AbsolutePath(path string) (string, error) {
	if C.host_present() == 0 {
		return absolutePathGo(path)
	}
	cs, free := cstring(path)
	defer free()
	r := C.host_absolute_path(cs)
	if r == nil {
		return "", parsed("path "+path, -1)
	}
	defer C.free(unsafe.Pointer(r))
	return C.GoString(r), nil
}

// absolutePathGo is nbdkit_absolute_path's rule (nbdkit 1.32,
// server/public.c): an absolute path as it is, a relative one appended to
// the current directory with a "/", not cleaned (socket=x/../s stays as
// long as nbdkit makes it, which matters for the socket length check).
func absolutePathGo(path string) (string, error) {
	if path == "" {
		return "", errors.New("cannot convert null or empty path to an absolute path")
	}
	if strings.HasPrefix(path, "/") {
		return path, nil
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	return wd + "/" + path, nil
}

// ExportName is the export name the client asked for.  Call it only from
// a connection callback, on the thread nbdkit called it on.
func ExportName() (string, error) {
	r := C.host_export_name()
	if r == nil {
		return "", errors.New("the client's export name is not available")
	}
	return C.GoString(r), nil
}

// Exports collects the exports a ListExports callback lists.
type Exports struct{ c *C.struct_nbdkit_exports }

// Add lists one export (nbdkit_add_export).
func (e *Exports) Add(name, description string) error {
	cn, freen := cstring(name)
	defer freen()
	var cd *C.char
	if description != "" {
		var freed func()
		cd, freed = cstring(description)
		defer freed()
	}
	return parsed("export "+name, C.host_add_export(e.c, cn, cd))
}

// UseDefault lists the default export, under the name DefaultExport gives
// (nbdkit_use_default_export).
func (e *Exports) UseDefault() error {
	return parsed("default export", C.host_use_default_export(e.c))
}

// Extents collects the extents an Extents callback reports.
type Extents struct{ c *C.struct_nbdkit_extents }

// Add reports one extent (nbdkit_add_extent); typ is a combination of
// ExtentHole and ExtentZero.
func (e *Extents) Add(offset, length uint64, typ uint32) error {
	return parsed("extent", C.host_add_extent(e.c, C.uint64_t(offset), C.uint64_t(length), C.uint32_t(typ)))
}
