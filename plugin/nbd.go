// SPDX-License-Identifier: BSD-3-Clause

// Package plugin is nbdkit-nbd-go-plugin: an nbdkit plugin that forwards
// every request to another NBD server, a drop-in replacement for
// nbdkit's C nbd plugin.
//
// This package is the control side, one file per concern: config.go
// takes the parameters, connect.go connects to the server, upstream.go
// holds a server connection, and this file the callbacks.  Data
// requests do not come here: the loader hands them to the data path
// (package datapath, in C), which says how it is laid out.
package plugin

import (
	"fmt"
	"os"
	"time"
	"unsafe"

	"nbdkit-nbd-go-plugin/libnbd"
	"nbdkit-nbd-go-plugin/nbdkit"
	"nbdkit-nbd-go-plugin/plugin/datapath"
)

// Version is the plugin's version.
var Version = "unknown" // set by the Makefile (-X) from ../VERSION

// client is one client's state (a client's connection to nbdkit): its
// upstream (its own, or the shared one), its data path over it, and
// whether the client is read-only.
type client struct {
	up       *upstream
	data     datapath.Client
	readonly bool
}

// sharedUpstream is the one upstream of shared=true, opened after
// nbdkit forks and closed at unload.
var sharedUpstream *upstream

// Plugin is the plugin, for nbdkit.Register.
var Plugin = &nbdkit.Plugin[*client]{
	Name:           "nbd-go",
	Longname:       "nbdkit NBD proxy plugin in Go",
	Version:        Version,
	Description:    "Forward to another NBD server",
	ConfigHelp:     configHelp,
	MagicConfigKey: "uri",
	DebugFlags:     []string{"verbose"},
	// libnbd pulls in libxml2, ICU, GnuTLS...: a good part of the
	// start-up time over the C nbd plugin's, which loads it once.  It
	// starts no threads, so it survives nbdkit's fork.
	Preload: []string{"libnbd.so.0"},

	Unload:         unload,
	DumpPlugin:     dumpPlugin,
	Config:         configKey,
	ConfigComplete: configComplete,
	AfterFork:      afterFork,
	ListExports:    listExports,
	DefaultExport:  defaultExport,

	Open:              open,
	Close:             closeClient,
	ExportDescription: exportDescription,
	GetSize:           getSize,
	BlockSize:         blockSize,
	CanWrite:          canWrite,
	CanFlush:          func(c *client) (bool, error) { return c.up.facts.flush, nil },
	IsRotational:      func(c *client) (bool, error) { return c.up.facts.rotational, nil },
	CanTrim:           func(c *client) (bool, error) { return c.up.facts.trim, nil },
	CanZero:           func(c *client) (bool, error) { return c.up.facts.zero, nil },
	CanFastZero:       func(c *client) (bool, error) { return c.up.facts.fastZero, nil },
	CanMultiConn:      func(c *client) (bool, error) { return c.up.facts.multiConn, nil },
	CanExtents:        canExtents,
	CanFUA:            canFUA,
	CanCache:          canCache,
	Direct:            direct,
	DirectOps:         []string{"pread", "pwrite", "flush", "trim", "zero", "extents", "cache"},
}

// direct gives the loader the connection's data path.
func direct(c *client) unsafe.Pointer { return c.data.Ops() }

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
	configureDataPath()
	if !cfg.shared {
		return nil
	}
	up, err := newUpstream(cfg.export)
	if err != nil {
		return err
	}
	sharedUpstream = up
	return nil
}

func unload() {
	if sharedUpstream != nil {
		sharedUpstream.close()
		sharedUpstream = nil
	}
}

// listExports lists the server's exports with dynamic-export, else the
// one configured export.
func listExports(readonly, isTLS bool, e *nbdkit.Exports) error {
	if !cfg.dynamicExport {
		return e.UseDefault()
	}
	h, err := dial("", true, cfg.retry, time.Time{}, nil)
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
// its default export: "" if it does not say, and also when it cannot be
// reached or asked: the client's export is then "", and a server still
// unreachable fails the client's open, where the error is reported.
func defaultExport(readonly, isTLS bool) (string, error) {
	if !cfg.dynamicExport {
		return cfg.export, nil
	}
	h, err := dial("", true, cfg.retry, time.Time{}, nil)
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

func open(readonly bool) (*client, error) {
	up := sharedUpstream
	if !cfg.shared {
		export := cfg.export
		if cfg.dynamicExport {
			name, err := nbdkit.ExportName()
			if err != nil {
				return nil, err
			}
			export = name
		}
		var err error
		if up, err = newUpstream(export); err != nil {
			return nil, err
		}
	}
	data, err := up.newClient()
	if err != nil {
		if up != sharedUpstream {
			up.close()
		}
		return nil, err
	}
	return &client{up: up, data: data, readonly: readonly}, nil
}

// closeClient ends a client's own server connection politely.
func closeClient(c *client) {
	c.data.Free()
	if c.up != sharedUpstream {
		c.up.close()
	}
}

// The export's properties are those of the first connection, which a
// replacement connection must match (see upstream.go).

func exportDescription(c *client) (string, error) { return c.up.facts.description, nil }

func getSize(c *client) (int64, error) { return c.up.facts.size, nil }

func blockSize(c *client) (uint32, uint32, uint32, error) {
	f := &c.up.facts
	return f.minimum, f.preferred, f.maximum, nil
}

func canWrite(c *client) (bool, error) { return !c.up.facts.readOnly && !c.readonly, nil }

func canExtents(c *client) (bool, error) { return c.up.facts.alloc, nil }

func canFUA(c *client) (nbdkit.FUAMode, error) {
	if c.up.facts.fua {
		return nbdkit.FUANative, nil
	}
	return nbdkit.FUANone, nil
}

func canCache(c *client) (nbdkit.CacheMode, error) {
	if c.up.facts.cache {
		return nbdkit.CacheNative, nil
	}
	return nbdkit.CacheNone, nil
}
