// SPDX-License-Identifier: BSD-3-Clause

// Command ramdisk is an nbdkit plugin written with this project's kit
// (the loader and the nbdkit package): a disk of size= bytes (such as
// size=64M) kept in Go memory and lost when nbdkit exits.  Like any
// plugin of the kit, it serves in every nbdkit mode (-f, daemon, --run,
// -s, socket activation) without knowing how the loader starts Go.
//
// make builds it with the Makefile's GO_PLUGIN rule into
// examples/ramdisk/nbdkit-ramdisk-plugin.so:
//
//	nbdkit examples/ramdisk/nbdkit-ramdisk-plugin.so size=64M
//
// Run as a program it prints the loader's header (the rule does that).
package main

import (
	"errors"
	"fmt"
	"sync"
	"syscall"

	"nbdkit-nbd-go-plugin/nbdkit"
)

var (
	size    int64  = -1 // from size=; -1 until given
	sizeArg string      // size= as given, for messages

	// One disk per nbdkit, shared by every connection.  Requests run in
	// parallel: reads share the lock, changes take it alone.
	mu   sync.RWMutex
	disk []byte // made by AfterFork, in the process that serves
)

// conn is a connection's handle: the disk is global, so it holds nothing.
type conn struct{}

func init() {
	nbdkit.Register(&nbdkit.Plugin[conn]{
		Name:           "ramdisk",
		Version:        "1.0.0",
		Description:    "A RAM disk in Go memory (an example of the kit)",
		ConfigHelp:     "size=<SIZE>  (required) The disk's size, such as 64M.",
		MagicConfigKey: "size",

		Config:         config,
		ConfigComplete: configComplete,
		ThreadModel:    func() nbdkit.ThreadModel { return nbdkit.Parallel },
		// Config and ConfigComplete also run in a child that only
		// checks them: allocate here, where nbdkit serves.
		AfterFork: func() error { disk = make([]byte, size); return nil },

		Open:         func(readonly bool) (conn, error) { return conn{}, nil },
		GetSize:      func(conn) (int64, error) { return size, nil },
		CanMultiConn: func(conn) (bool, error) { return true, nil },
		PRead:        pread,
		PWrite:       pwrite,
		Flush:        func(conn, nbdkit.Flags) error { return nil },
		Trim:         zero, // trimmed blocks read back as zeros
		Zero:         zero,
	})
}

func config(key, value string) error {
	if key != "size" {
		return fmt.Errorf("unknown parameter %s=%s (this plugin takes size=)", key, value)
	}
	n, err := nbdkit.ParseSize(value) // nbdkit prints why it fails
	if err != nil {
		return err
	}
	size, sizeArg = n, value
	return nil
}

func configComplete() error {
	if size < 0 {
		return errors.New("size= is required, such as size=64M")
	}
	// Go cannot recover from running out of memory: refuse now, before
	// nbdkit serves, rather than die in AfterFork.
	var si syscall.Sysinfo_t
	if syscall.Sysinfo(&si) == nil && uint64(size) > si.Totalram*uint64(si.Unit) {
		return fmt.Errorf("size=%s is more than this machine's memory", sizeArg)
	}
	return nil
}

// nbdkit checks that every request lies within the disk.

func pread(_ conn, buf []byte, offset uint64, _ nbdkit.Flags) error {
	mu.RLock()
	defer mu.RUnlock()
	copy(buf, disk[offset:])
	return nil
}

func pwrite(_ conn, buf []byte, offset uint64, _ nbdkit.Flags) error {
	mu.Lock()
	defer mu.Unlock()
	copy(disk[offset:], buf)
	return nil
}

func zero(_ conn, count uint32, offset uint64, _ nbdkit.Flags) error {
	mu.Lock()
	defer mu.Unlock()
	d := disk[offset : offset+uint64(count)]
	for i := range d { // compiled as a memclr
		d[i] = 0
	}
	return nil
}

// main runs only when the build runs this package as a program: it
// writes the loader's header (nbdkit.Main).
func main() { nbdkit.Main() }
