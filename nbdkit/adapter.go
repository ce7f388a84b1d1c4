// SPDX-License-Identifier: BSD-3-Clause

package nbdkit

import (
	"fmt"
	"runtime/cgo"
	"unsafe"
)

// callbacks is the registered plugin with its handle type erased, as
// the exported C entry points (callbacks.go) see it.  A handle crosses
// into C as a cgo.Handle, never as a Go pointer.
type callbacks interface {
	load()
	unload()
	dumpPlugin()
	config(key, value string) error
	configComplete() error
	threadModel() ThreadModel
	getReady() error
	afterFork() error
	cleanup()
	preconnect(readonly bool) error
	listExports(readonly, isTLS bool, e *Exports) error
	defaultExport(readonly, isTLS bool) (string, error)
	open(readonly bool) (uintptr, error)
	close(h uintptr)
	exportDescription(h uintptr) (string, error)
	getSize(h uintptr) (int64, error)
	blockSize(h uintptr) (uint32, uint32, uint32, error)
	flag(which boolCallback, h uintptr) (bool, error)
	canFUA(h uintptr) (FUAMode, error)
	canCache(h uintptr) (CacheMode, error)
	pread(h uintptr, buf []byte, offset uint64, flags Flags) error
	pwrite(h uintptr, buf []byte, offset uint64, flags Flags) error
	flush(h uintptr, flags Flags) error
	trim(h uintptr, count uint32, offset uint64, flags Flags) error
	zero(h uintptr, count uint32, offset uint64, flags Flags) error
	extents(h uintptr, count uint32, offset uint64, flags Flags, e *Extents) error
	cache(h uintptr, count uint32, offset uint64, flags Flags) error
	direct(h uintptr) unsafe.Pointer
}

// boolCallback names the callbacks that answer yes or no.
type boolCallback int

const (
	canWrite boolCallback = iota
	canFlush
	isRotational
	canTrim
	canZero
	canFastZero
	canExtents
	canMultiConn
)

type adapter[H any] struct{ p *Plugin[H] }

func (a *adapter[H]) handle(h uintptr) H { return cgo.Handle(h).Value().(H) }

// Callbacks nbdkit can only call if the descriptor advertised them are
// called without a nil check; the others are optional here too.

func (a *adapter[H]) load() {
	if a.p.Load != nil {
		a.p.Load()
	}
}

func (a *adapter[H]) unload() {
	if a.p.Unload != nil {
		a.p.Unload()
	}
}

func (a *adapter[H]) dumpPlugin() {
	if a.p.DumpPlugin != nil {
		a.p.DumpPlugin()
	}
}

func (a *adapter[H]) config(key, value string) error {
	if a.p.Config == nil {
		return fmt.Errorf("this plugin takes no parameters (got %s=%s)", key, value)
	}
	return a.p.Config(key, value)
}

func (a *adapter[H]) configComplete() error { return call(a.p.ConfigComplete) }
func (a *adapter[H]) getReady() error       { return call(a.p.GetReady) }
func (a *adapter[H]) afterFork() error      { return call(a.p.AfterFork) }

func call(f func() error) error {
	if f == nil {
		return nil
	}
	return f()
}

func (a *adapter[H]) threadModel() ThreadModel {
	if a.p.ThreadModel == nil {
		return Parallel
	}
	return a.p.ThreadModel()
}

// checkThreadModel refuses what is not one of nbdkit's thread models:
// nbdkit would take a negative one as the most restrictive of all, and
// the loader cannot serve a model it does not know.
func checkThreadModel(m ThreadModel) error {
	if m < SerializeConnections || m > Parallel {
		return fmt.Errorf("ThreadModel returned %d, which is not a thread model (SerializeConnections, SerializeAllRequests, SerializeRequests or Parallel)", int(m))
	}
	return nil
}

func (a *adapter[H]) cleanup() {
	if a.p.Cleanup != nil {
		a.p.Cleanup()
	}
}

func (a *adapter[H]) preconnect(readonly bool) error { return a.p.Preconnect(readonly) }

func (a *adapter[H]) listExports(readonly, isTLS bool, e *Exports) error {
	return a.p.ListExports(readonly, isTLS, e)
}

func (a *adapter[H]) defaultExport(readonly, isTLS bool) (string, error) {
	return a.p.DefaultExport(readonly, isTLS)
}

func (a *adapter[H]) open(readonly bool) (uintptr, error) {
	h, err := a.p.Open(readonly)
	if err != nil {
		return 0, err
	}
	return uintptr(cgo.NewHandle(h)), nil
}

func (a *adapter[H]) close(h uintptr) {
	if a.p.Close != nil {
		a.p.Close(a.handle(h))
	}
	cgo.Handle(h).Delete()
}

func (a *adapter[H]) exportDescription(h uintptr) (string, error) {
	return a.p.ExportDescription(a.handle(h))
}

func (a *adapter[H]) getSize(h uintptr) (int64, error) { return a.p.GetSize(a.handle(h)) }

func (a *adapter[H]) blockSize(h uintptr) (uint32, uint32, uint32, error) {
	return a.p.BlockSize(a.handle(h))
}

func (a *adapter[H]) flag(which boolCallback, h uintptr) (bool, error) {
	f := [...]func(H) (bool, error){
		canWrite:     a.p.CanWrite,
		canFlush:     a.p.CanFlush,
		isRotational: a.p.IsRotational,
		canTrim:      a.p.CanTrim,
		canZero:      a.p.CanZero,
		canFastZero:  a.p.CanFastZero,
		canExtents:   a.p.CanExtents,
		canMultiConn: a.p.CanMultiConn,
	}[which]
	return f(a.handle(h))
}

func (a *adapter[H]) canFUA(h uintptr) (FUAMode, error)     { return a.p.CanFUA(a.handle(h)) }
func (a *adapter[H]) canCache(h uintptr) (CacheMode, error) { return a.p.CanCache(a.handle(h)) }

func (a *adapter[H]) pread(h uintptr, buf []byte, offset uint64, flags Flags) error {
	return a.p.PRead(a.handle(h), buf, offset, flags)
}

func (a *adapter[H]) pwrite(h uintptr, buf []byte, offset uint64, flags Flags) error {
	return a.p.PWrite(a.handle(h), buf, offset, flags)
}

func (a *adapter[H]) flush(h uintptr, flags Flags) error { return a.p.Flush(a.handle(h), flags) }

func (a *adapter[H]) trim(h uintptr, count uint32, offset uint64, flags Flags) error {
	return a.p.Trim(a.handle(h), count, offset, flags)
}

func (a *adapter[H]) zero(h uintptr, count uint32, offset uint64, flags Flags) error {
	return a.p.Zero(a.handle(h), count, offset, flags)
}

func (a *adapter[H]) extents(h uintptr, count uint32, offset uint64, flags Flags, e *Extents) error {
	return a.p.Extents(a.handle(h), count, offset, flags, e)
}

func (a *adapter[H]) cache(h uintptr, count uint32, offset uint64, flags Flags) error {
	return a.p.Cache(a.handle(h), count, offset, flags)
}

func (a *adapter[H]) direct(h uintptr) unsafe.Pointer {
	if a.p.Direct == nil {
		return nil
	}
	return a.p.Direct(a.handle(h))
}
