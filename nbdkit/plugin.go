// Package nbdkit writes nbdkit plugins in Go.
//
// A plugin is a Plugin value passed to Register from an init function of
// a main package built with -buildmode=c-shared.  nbdkit does not load
// that library itself: it loads the C loader (loader/loader.c), which
// carries the Go library inside it and starts it only in a process that
// nbdkit will not fork afterwards, because a Go runtime does not survive
// fork.  The loader's callback table is fixed at build time from the
// Plugin value (see WriteLoaderHeader): a callback left nil here is not
// advertised to nbdkit, exactly as with a C plugin.
//
// What the loader's design means for a plugin:
//   - Load, Config, ConfigComplete and GetReady run twice: once in a
//     short-lived child that only checks the configuration (so that
//     errors reach the user before nbdkit daemonizes), and again in the
//     serving process, just before AfterFork.  They must not have side
//     effects that cannot be repeated.
//   - Config runs with the working directory nbdkit had at start-up.
package nbdkit

import (
	"sync"
	"unsafe"
)

// ThreadModel is nbdkit's thread model.
type ThreadModel int

// The thread models, as in nbdkit-plugin.h.
const (
	SerializeConnections ThreadModel = iota
	SerializeAllRequests
	SerializeRequests
	Parallel
)

// Flags are the flags nbdkit passes to data callbacks.
type Flags uint32

// The request flags, as in nbdkit-plugin.h.
const (
	FlagMayTrim  Flags = 1 << 0
	FlagFUA      Flags = 1 << 1
	FlagReqOne   Flags = 1 << 2
	FlagFastZero Flags = 1 << 3
)

// FUAMode is what CanFUA returns.
type FUAMode int

// The FUA modes.
const (
	FUANone FUAMode = iota
	FUAEmulate
	FUANative
)

// CacheMode is what CanCache returns.
type CacheMode int

// The cache modes.
const (
	CacheNone CacheMode = iota
	CacheEmulate
	CacheNative
)

// Extent types for Extents.Add (equal to NBD's base:allocation flags).
const (
	ExtentHole uint32 = 1 << 0
	ExtentZero uint32 = 1 << 1
)

// Plugin describes an nbdkit plugin whose per-connection handle is H.
// Every func field is optional; see nbdkit-plugin(3) for what each
// callback means.  A callback returning an error makes nbdkit fail the
// request: the error's text is logged with nbdkit_error and its errno
// (see Errno) goes to the client.
type Plugin[H any] struct {
	Name           string // required
	Longname       string
	Version        string
	Description    string
	ConfigHelp     string
	MagicConfigKey string
	// DebugFlags names the -D NAME.FLAG=N flags; read them with DebugFlag.
	DebugFlags []string

	Load           func()
	Unload         func()
	DumpPlugin     func()
	Config         func(key, value string) error
	ConfigComplete func() error
	ThreadModel    func() ThreadModel
	GetReady       func() error
	AfterFork      func() error
	Cleanup        func()
	Preconnect     func(readonly bool) error
	ListExports    func(readonly, isTLS bool, exports *Exports) error
	DefaultExport  func(readonly, isTLS bool) (string, error)

	Open              func(readonly bool) (H, error)
	Close             func(h H)
	ExportDescription func(h H) (string, error)
	GetSize           func(h H) (int64, error)
	BlockSize         func(h H) (minimum, preferred, maximum uint32, err error)
	CanWrite          func(h H) (bool, error)
	CanFlush          func(h H) (bool, error)
	IsRotational      func(h H) (bool, error)
	CanTrim           func(h H) (bool, error)
	CanZero           func(h H) (bool, error)
	CanFastZero       func(h H) (bool, error)
	CanExtents        func(h H) (bool, error)
	CanFUA            func(h H) (FUAMode, error)
	CanMultiConn      func(h H) (bool, error)
	CanCache          func(h H) (CacheMode, error)
	// PRead and PWrite receive nbdkit's own buffer (C memory): use it
	// during the call only.
	PRead   func(h H, buf []byte, offset uint64, flags Flags) error
	PWrite  func(h H, buf []byte, offset uint64, flags Flags) error
	Flush   func(h H, flags Flags) error
	Trim    func(h H, count uint32, offset uint64, flags Flags) error
	Zero    func(h H, count uint32, offset uint64, flags Flags) error
	Extents func(h H, count uint32, offset uint64, flags Flags, extents *Extents) error
	Cache   func(h H, count uint32, offset uint64, flags Flags) error

	// Direct, if set, is asked once per connection, after Open, for a
	// C struct nbdkitgo_direct (abi.h) that stays valid until Close, or
	// nil.  Its functions then serve data requests without entering Go,
	// falling back to the callbacks above when they return -1: entering
	// the Go runtime on every request costs scheduler work (P hand-offs,
	// futex wake-ups, sysmon) that a fast proxy cannot afford.
	Direct func(h H) unsafe.Pointer
}

var (
	registerOnce sync.Once
	registered   callbacks
	registeredAs any // the *Plugin[H], for WriteLoaderHeader
)

// Register makes p the plugin of this library.  Call it once, from an
// init function of the main package.
func Register[H any](p *Plugin[H]) {
	if p.Name == "" {
		panic("nbdkit.Register: the plugin has no Name")
	}
	done := false
	registerOnce.Do(func() {
		registered = &adapter[H]{p: p}
		registeredAs = p
		done = true
	})
	if !done {
		panic("nbdkit.Register called twice")
	}
}
