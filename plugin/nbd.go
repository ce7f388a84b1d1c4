// Package plugin is nbdkit-nbd-go-plugin: an nbdkit plugin that forwards
// every request to another NBD server, a drop-in replacement for
// nbdkit's C nbd plugin.
//
// One file per concern: config.go takes the parameters, connect.go
// connects to the server, and this file holds the callbacks, each
// passing its request through to the server connection.
package plugin

import (
	"fmt"
	"os"
	"syscall"
	"unsafe"

	"nbdkit-nbd-go-plugin/libnbd"
	"nbdkit-nbd-go-plugin/nbdkit"
)

// Version is the plugin's version.
var Version = "unknown" // set by the Makefile (-X) from ../VERSION

// conn is one client's state: its server connection (its own, or the
// shared one) and whether the client is read-only.
type conn struct {
	up       *upstream
	readonly bool
}

// sharedConn is the one server connection of shared=true, opened after
// nbdkit forks and closed at unload.
var sharedConn *upstream

// Plugin is the plugin, for nbdkit.Register.
var Plugin = &nbdkit.Plugin[*conn]{
	Name:           "nbd-go",
	Longname:       "nbdkit NBD proxy plugin in Go",
	Version:        Version,
	Description:    "Forward to another NBD server",
	ConfigHelp:     configHelp,
	MagicConfigKey: "uri",
	DebugFlags:     []string{"verbose", "godata"},

	Unload:         unload,
	DumpPlugin:     dumpPlugin,
	Config:         configKey,
	ConfigComplete: configComplete,
	AfterFork:      afterFork,
	ListExports:    listExports,
	DefaultExport:  defaultExport,

	Open:              open,
	Close:             closeConn,
	ExportDescription: exportDescription,
	GetSize:           getSize,
	BlockSize:         blockSize,
	CanWrite:          canWrite,
	CanFlush:          func(c *conn) (bool, error) { return c.up.facts.flush, nil },
	IsRotational:      func(c *conn) (bool, error) { return c.up.facts.rotational, nil },
	CanTrim:           func(c *conn) (bool, error) { return c.up.facts.trim, nil },
	CanZero:           func(c *conn) (bool, error) { return c.up.facts.zero, nil },
	CanFastZero:       func(c *conn) (bool, error) { return c.up.facts.fastZero, nil },
	CanMultiConn:      func(c *conn) (bool, error) { return c.up.facts.multiConn, nil },
	CanExtents:        canExtents,
	CanFUA:            canFUA,
	CanCache:          canCache,
	PRead:             pread,
	PWrite:            pwrite,
	Flush:             flush,
	Trim:              trim,
	Zero:              zero,
	Extents:           extents,
	Cache:             cache,
	Direct:            direct,
}

// direct gives the loader the connection's C data path, so that data
// requests do not enter Go (see direct.c); -D nbd-go.godata=1 turns it
// off, for tests of the Go callbacks and for comparison.
func direct(c *conn) unsafe.Pointer {
	if c.up.direct == nil || nbdkit.DebugFlag("godata") != 0 {
		return nil
	}
	return c.up.direct.ops()
}

func dumpPlugin() {
	h, err := libnbd.Create()
	if err != nil {
		return
	}
	defer h.Close()
	b := map[bool]int{false: 0, true: 1}
	fmt.Fprintf(os.Stdout, "libnbd_version=%s\nlibnbd_tls=%d\nlibnbd_uri=%d\nlibnbd_vsock=1\nlibnbd_dynamic_list=1\n",
		h.Version(), b[h.SupportsTLS()], b[h.SupportsURI()])
}

func afterFork() error {
	if !cfg.shared {
		return nil
	}
	up, err := newUpstream(cfg.export)
	if err != nil {
		return err
	}
	sharedConn = up
	return nil
}

func unload() {
	if sharedConn != nil {
		sharedConn.close()
		sharedConn = nil
	}
}

// listExports lists the server's exports with dynamic-export, else the
// one configured export.
func listExports(readonly, isTLS bool, e *nbdkit.Exports) error {
	if !cfg.dynamicExport {
		return e.UseDefault()
	}
	h, err := dialUpstream("", true)
	if err != nil {
		return err
	}
	defer h.Close()
	list, err := h.OptList()
	h.OptAbort()
	if err != nil {
		return err
	}
	for _, x := range list {
		if err := e.Add(x.Name, x.Description); err != nil {
			return err
		}
	}
	return nil
}

// defaultExport is, with dynamic-export, the server's canonical name for
// its default export (or "" if it does not say).
func defaultExport(readonly, isTLS bool) (string, error) {
	if !cfg.dynamicExport {
		return cfg.export, nil
	}
	h, err := dialUpstream("", true)
	if err != nil {
		return "", nil
	}
	defer h.Close()
	defer h.OptAbort()
	if h.OptInfo() != nil {
		return "", nil
	}
	name, err := h.GetCanonicalExportName()
	if err != nil {
		return "", nil
	}
	return name, nil
}

func open(readonly bool) (*conn, error) {
	if cfg.shared {
		return &conn{up: sharedConn, readonly: readonly}, nil
	}
	export := cfg.export
	if cfg.dynamicExport {
		name, err := nbdkit.ExportName()
		if err != nil {
			return nil, err
		}
		export = name
	}
	up, err := newUpstream(export)
	if err != nil {
		return nil, err
	}
	return &conn{up: up, readonly: readonly}, nil
}

// closeConn ends a client's own server connection politely.
func closeConn(c *conn) {
	if c.up != sharedConn {
		c.up.close()
	}
}

// The export's properties are those of the first connection, which a
// replacement connection must match (see upstream.go).

func exportDescription(c *conn) (string, error) { return c.up.facts.description, nil }

func getSize(c *conn) (int64, error) { return c.up.facts.size, nil }

func blockSize(c *conn) (uint32, uint32, uint32, error) {
	f := &c.up.facts
	return f.minimum, f.preferred, f.maximum, nil
}

func canWrite(c *conn) (bool, error) { return !c.up.facts.readOnly && !c.readonly, nil }

func canExtents(c *conn) (bool, error) { return c.up.facts.alloc, nil }

func canFUA(c *conn) (nbdkit.FUAMode, error) {
	if c.up.facts.fua {
		return nbdkit.FUANative, nil
	}
	return nbdkit.FUANone, nil
}

func canCache(c *conn) (nbdkit.CacheMode, error) {
	if c.up.facts.cache {
		return nbdkit.CacheNative, nil
	}
	return nbdkit.CacheNone, nil
}

// fua passes nbdkit's FUA flag on.
func fua(flags nbdkit.Flags) libnbd.CmdFlag {
	if flags&nbdkit.FlagFUA != 0 {
		return libnbd.CmdFlagFUA
	}
	return 0
}

func pread(c *conn, buf []byte, offset uint64, flags nbdkit.Flags) error {
	return c.up.do(func(h *libnbd.Handle) error { return h.Pread(buf, offset, 0) })
}

func pwrite(c *conn, buf []byte, offset uint64, flags nbdkit.Flags) error {
	return c.up.do(func(h *libnbd.Handle) error { return h.Pwrite(buf, offset, fua(flags)) })
}

func flush(c *conn, flags nbdkit.Flags) error {
	return c.up.do(func(h *libnbd.Handle) error { return h.Flush(0) })
}

func trim(c *conn, count uint32, offset uint64, flags nbdkit.Flags) error {
	return c.up.do(func(h *libnbd.Handle) error { return h.Trim(uint64(count), offset, fua(flags)) })
}

// zero: without MAY_TRIM from nbdkit the server must not punch a hole.
func zero(c *conn, count uint32, offset uint64, flags nbdkit.Flags) error {
	f := fua(flags)
	if flags&nbdkit.FlagMayTrim == 0 {
		f |= libnbd.CmdFlagNoHole
	}
	if flags&nbdkit.FlagFastZero != 0 {
		f |= libnbd.CmdFlagFastZero
	}
	return c.up.do(func(h *libnbd.Handle) error { return h.Zero(uint64(count), offset, f) })
}

// extents: nbdkit's extent flags are NBD's base:allocation flags.
func extents(c *conn, count uint32, offset uint64, flags nbdkit.Flags, e *nbdkit.Extents) error {
	var f libnbd.CmdFlag
	if flags&nbdkit.FlagReqOne != 0 {
		f = libnbd.CmdFlagReqOne
	}
	var list []libnbd.Extent
	err := c.up.do(func(h *libnbd.Handle) (err error) {
		list, err = h.BlockStatus(libnbd.ContextBaseAllocation, uint64(count), offset, f)
		return err
	})
	if err != nil {
		return err
	}
	if len(list) == 0 {
		return &libnbd.Error{Op: "block_status", Msg: "the server sent no extents", Errno: syscall.EIO}
	}
	for _, x := range list {
		if err := e.Add(offset, uint64(x.Length), x.Flags); err != nil {
			return err
		}
		offset += uint64(x.Length)
	}
	return nil
}

func cache(c *conn, count uint32, offset uint64, flags nbdkit.Flags) error {
	return c.up.do(func(h *libnbd.Handle) error { return h.Cache(uint64(count), offset, 0) })
}
