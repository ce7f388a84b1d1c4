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
	SetError(Errno(err))
}

// Errno is the errno that err carries (a syscall.Errno in its chain), or
// EIO.
func Errno(err error) syscall.Errno {
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

// SetError sets the errno of the failing callback (nbdkit_set_error).
func SetError(errno syscall.Errno) { C.host_set_error(C.int(errno)) }

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

// ParseBool parses a boolean as nbdkit does (1/0, true/false, yes/no,
// on/off), printing nbdkit's message on error.
func ParseBool(s string) (bool, error) {
	cs, free := cstring(s)
	defer free()
	rc := C.host_parse_bool(cs)
	if err := parsed("boolean", rc); err != nil {
		return false, err
	}
	return rc == 1, nil
}

// ParseInt parses a signed int (nbdkit_parse_int); what names the value
// in the error message.
func ParseInt(what, s string) (int, error) {
	cw, freew := cstring(what)
	defer freew()
	cs, free := cstring(s)
	defer free()
	var r C.int
	err := parsed(what, C.host_parse_int(cw, cs, &r))
	return int(r), err
}

// ParseUnsigned parses an unsigned int (nbdkit_parse_unsigned).
func ParseUnsigned(what, s string) (uint, error) {
	cw, freew := cstring(what)
	defer freew()
	cs, free := cstring(s)
	defer free()
	var r C.unsigned
	err := parsed(what, C.host_parse_unsigned(cw, cs, &r))
	return uint(r), err
}

// ParseUint16 parses a uint16 (nbdkit_parse_uint16_t).
func ParseUint16(what, s string) (uint16, error) {
	cw, freew := cstring(what)
	defer freew()
	cs, free := cstring(s)
	defer free()
	var r C.uint16_t
	err := parsed(what, C.host_parse_uint16(cw, cs, &r))
	return uint16(r), err
}

// ParseUint32 parses a uint32 (nbdkit_parse_uint32_t).
func ParseUint32(what, s string) (uint32, error) {
	cw, freew := cstring(what)
	defer freew()
	cs, free := cstring(s)
	defer free()
	var r C.uint32_t
	err := parsed(what, C.host_parse_uint32(cw, cs, &r))
	return uint32(r), err
}

// ParseInt64 parses an int64 (nbdkit_parse_int64_t).
func ParseInt64(what, s string) (int64, error) {
	cw, freew := cstring(what)
	defer freew()
	cs, free := cstring(s)
	defer free()
	var r C.int64_t
	err := parsed(what, C.host_parse_int64(cw, cs, &r))
	return int64(r), err
}

// ParseUint64 parses a uint64 (nbdkit_parse_uint64_t).
func ParseUint64(what, s string) (uint64, error) {
	cw, freew := cstring(what)
	defer freew()
	cs, free := cstring(s)
	defer free()
	var r C.uint64_t
	err := parsed(what, C.host_parse_uint64(cw, cs, &r))
	return uint64(r), err
}

// ParseSize parses a size with an optional unit such as 1M
// (nbdkit_parse_size).
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
// start-up (nbdkit_absolute_path).
func AbsolutePath(path string) (string, error) {
	cs, free := cstring(path)
	defer free()
	r := C.host_absolute_path(cs)
	if r == nil {
		return "", parsed("path "+path, -1)
	}
	defer C.free(unsafe.Pointer(r))
	return C.GoString(r), nil
}

// ReadPassword reads a password as nbdkit does for password=... (the
// value itself, - for a prompt, +FILE, -FD) (nbdkit_read_password).
func ReadPassword(value string) (string, error) {
	cs, free := cstring(value)
	defer free()
	var r *C.char
	if err := parsed("password", C.host_read_password(cs, &r)); err != nil {
		return "", err
	}
	defer C.free(unsafe.Pointer(r))
	return C.GoString(r), nil
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

// IsTLS reports whether the client's connection uses TLS (same caveat as
// ExportName).
func IsTLS() bool { return C.host_is_tls() == 1 }

// Shutdown asks nbdkit to shut down (nbdkit_shutdown).
func Shutdown() { C.host_shutdown() }

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
