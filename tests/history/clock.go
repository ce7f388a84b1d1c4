// SPDX-License-Identifier: BSD-3-Clause

package history

import (
	"syscall"
	"time"
	"unsafe"
)

// clockMonotonic is CLOCK_MONOTONIC, the clock Python's
// time.monotonic_ns() reads: the clients' times and the server's log
// are on one time line.
const clockMonotonic = 1

// monoBase and monoAt are one reading of CLOCK_MONOTONIC and the
// time.Time taken with it; mono adds the Go monotonic time elapsed since
// (which the runtime also reads from CLOCK_MONOTONIC), so that it costs
// no system call.
var monoBase, monoAt = clockGettime(), time.Now()

// clockGettime reads CLOCK_MONOTONIC in nanoseconds.
func clockGettime() int64 {
	var ts syscall.Timespec
	syscall.Syscall(syscall.SYS_CLOCK_GETTIME, clockMonotonic, uintptr(unsafe.Pointer(&ts)), 0)
	return ts.Nano()
}

// mono is the time now on CLOCK_MONOTONIC, in nanoseconds.
func mono() int64 { return monoBase + int64(time.Since(monoAt)) }
