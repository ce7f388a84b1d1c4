// SPDX-License-Identifier: BSD-3-Clause

package nbdkit

import (
	"errors"
	"sync"
	"unsafe"
)

// The values below are nbdkit's (nbdkit-common.h); abi.go checks them
// at compile time.

// ThreadModel is what Plugin.ThreadModel returns: how many requests
// nbdkit may run at once (see nbdkit-plugin(3), THREADS).
type ThreadModel int

// The thread models.
const (
	SerializeConnections ThreadModel = 0 // one connection at a time
	SerializeAllRequests ThreadModel = 1 // one request at a time, over all connections
	SerializeRequests    ThreadModel = 2 // one request at a time per connection
	Parallel             ThreadModel = 3 // any number at once (the default here)
)

// Flags are the flags nbdkit passes to data callbacks.
type Flags uint32

// The request flags.
const (
	FlagMayTrim  Flags = 1 << 0 // Zero may leave a hole
	FlagFUA      Flags = 1 << 1 // the data must be persistent on return
	FlagReqOne   Flags = 1 << 2 // Extents needs to report only one extent
	FlagFastZero Flags = 1 << 3 // Zero must fail with ENOTSUP rather than be slow
)

// FUAMode is what Plugin.CanFUA returns.
type FUAMode int

// The FUA modes.
const (
	FUANone    FUAMode = 0 // no FUA
	FUAEmulate FUAMode = 1 // nbdkit emulates FUA with Flush
	FUANative  FUAMode = 2 // the callbacks honour FlagFUA
)

// CacheMode is what Plugin.CanCache returns.
type CacheMode int

// The cache modes.
const (
	CacheNone    CacheMode = 0 // no cache requests
	CacheEmulate CacheMode = 1 // nbdkit emulates them with PRead
	CacheNative  CacheMode = 2 // Plugin.Cache serves them
)

// Extent types for Extents.Add (equal to NBD's base:allocation flags).
const (
	ExtentHole uint32 = 1 << 0 // not allocated
	ExtentZero uint32 = 1 << 1 // reads as zeros
)

// Plugin describes an nbdkit plugin whose per-connection handle is H
// (what Open returns, handed to every connection callback).  Each func
// field has the meaning of the nbdkit callback of the same name
// (nbdkit-plugin(3)): Load is load, GetSize is get_size, and so on.
// Open, GetSize and PRead are required (PRead unless DirectOps names
// "pread"), as nbdkit requires them; the others may be nil.  A callback
// returning an error makes nbdkit fail the call: the error's text is
// logged with nbdkit_error and its errno (see the package
// documentation) goes to the client.  Which process runs each
// callback, when, and which must be repeatable: the package
// documentation, "What runs when, and in which process".
type Plugin[H any] struct {
	// Name is the plugin's name (required: ASCII letters, digits and
	// '-', not first), as in nbdkit --dump-plugin and -D NAME.FLAG=N.
	Name string
	// Longname, Version, Description, ConfigHelp and MagicConfigKey
	// are nbdkit's fields of the same names (may be empty).
	Longname       string
	Version        string
	Description    string
	ConfigHelp     string
	MagicConfigKey string
	// DebugFlags names the -D NAME.FLAG=N flags; read them with DebugFlag.
	DebugFlags []string
	// Preload lists shared libraries (such as "libnbd.so.0") that the
	// loader maps when nbdkit loads it, before nbdkit forks, so that
	// the configuration check and the serving process share that work
	// instead of each loading them with the Go library.  Only for
	// libraries that start no threads when loaded.
	Preload []string

	// Process callbacks: load, unload, dump_plugin, config,
	// config_complete, thread_model (Parallel if nil), get_ready,
	// after_fork, cleanup, preconnect, list_exports, default_export.
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

	// Connection callbacks: open, close, export_description, get_size,
	// block_size and the can_* and is_rotational questions.
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
	// Data callbacks.  PRead and PWrite receive nbdkit's own buffer (C
	// memory): use it during the call only.
	PRead   func(h H, buf []byte, offset uint64, flags Flags) error
	PWrite  func(h H, buf []byte, offset uint64, flags Flags) error
	Flush   func(h H, flags Flags) error
	Trim    func(h H, count uint32, offset uint64, flags Flags) error
	Zero    func(h H, count uint32, offset uint64, flags Flags) error
	Extents func(h H, count uint32, offset uint64, flags Flags, extents *Extents) error
	Cache   func(h H, count uint32, offset uint64, flags Flags) error

	// Direct, if set, is asked once per connection, after Open, for a
	// C struct nbdkitgo_direct (abi.h) that stays valid until Close, or
	// nil.  Its functions then serve data requests without entering Go
	// (entering the Go runtime on every request costs scheduler work: P
	// hand-offs, futex wake-ups, sysmon), falling back to the callbacks
	// above when they return -1.
	Direct func(h H) unsafe.Pointer
	// DirectOps names the data callbacks ("pread", "pwrite", "flush",
	// "trim", "zero", "extents", "cache") that Direct serves for every
	// connection, so that nbdkit is told of them although their Go
	// callbacks above are nil.
	DirectOps []string
}

var (
	registerOnce sync.Once
	registered   callbacks
	registeredAs any   // the *Plugin[H], for WriteLoaderHeader
	registerErr  error // a second Register, reported by WriteLoaderHeader
)

// Register makes p the plugin of this library.  Call it once, from an
// init function of the main package.  Mistakes in p (a missing required
// callback, a name nbdkit refuses, ...) are reported when the plugin is
// built, by WriteLoaderHeader.
func Register[H any](p *Plugin[H]) {
	done := false
	registerOnce.Do(func() {
		registered = &adapter[H]{p: p}
		registeredAs = p
		done = true
	})
	if !done && registerErr == nil {
		registerErr = errors.New("nbdkit.Register is called more than once: a library holds one plugin")
	}
}
