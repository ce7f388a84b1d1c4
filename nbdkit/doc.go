// SPDX-License-Identifier: BSD-3-Clause

// Package nbdkit writes nbdkit plugins in Go that work in every nbdkit
// mode: daemon (the default), foreground (-f), --run, -s and socket
// activation.  nbdkit's own Go binding cannot serve in daemon mode or
// under --run, because nbdkit forks after loading the plugin and a Go
// runtime does not survive fork; here a small C loader starts Go only
// in the process that serves.
//
// # A plugin
//
// A plugin is a main package: an init function passes a Plugin to
// Register, and main calls Main.  Every callback is a func field of
// Plugin, nil when the plugin does not have it; H is the type of a
// connection's handle, what Open returns.  A complete one, serving a
// read-only disk of 1 MiB that reads as "hello" repeated:
//
//	package main
//
//	import "nbdkit-nbd-go-plugin/nbdkit"
//
//	type conn struct{}
//
//	func init() {
//		nbdkit.Register(&nbdkit.Plugin[conn]{
//			Name:    "hello",
//			Open:    func(readonly bool) (conn, error) { return conn{}, nil },
//			GetSize: func(conn) (int64, error) { return 1 << 20, nil },
//			PRead: func(_ conn, buf []byte, offset uint64, _ nbdkit.Flags) error {
//				for i := range buf {
//					buf[i] = "hello "[(offset+uint64(i))%6]
//				}
//				return nil
//			},
//		})
//	}
//
//	func main() { nbdkit.Main() }
//
// examples/ramdisk in the kit's tree is a fuller one (configuration,
// writes, a thread model, memory allocated where nbdkit serves).
//
// # Building
//
// In a checkout of the kit (or an unpacked release tarball), one command
// builds the main package in any directory into one self-contained .so:
//
//	make go-plugin SRC=/path/to/hello OUT=/path/to/nbdkit-hello-plugin.so
//	nbdkit /path/to/nbdkit-hello-plugin.so
//
// SRC and OUT are absolute, or relative to the kit's directory.  SRC
// needs no go.mod: without one the plugin may import the standard
// library and this package.  With its own go.mod (to import other
// modules, or a package of its own), the module requires the kit:
//
//	require nbdkit-nbd-go-plugin v0.0.0
//
// That module path cannot be downloaded; the build adds a replace
// directive pointing at the kit in a copy of go.mod that it uses
// (go build -modfile), and changes none of the author's files.  Inside
// the kit's tree, the Makefile's GO_PLUGIN rule does the same for a main
// package of the tree:
//
//	$(eval $(call GO_PLUGIN,nbdkit-foo-plugin.so,cmd/foo,build/foo))
//
// The build (loader/go-plugin.sh) runs the package as a program: Main
// writes the C header the loader is compiled with (the static fields
// and which callbacks exist: nbdkit reads those before any Go code can
// run), then builds the package with -buildmode=c-shared and compiles
// the loader with that library inside.
//
// # Checked at build time
//
// Main refuses to write the header, which stops the build with one line
// naming the field, for what nbdkit would refuse when loading the plugin:
// no Open, GetSize or PRead callback; a Name that is empty or not made
// of ASCII letters, digits and '-' (not first).  The same for what would
// fail later: a MagicConfigKey that nbdkit's rule for keys rejects (a
// letter, then letters, digits, '.', '_', '-'), a debug flag that is not
// letters, digits and '_' or is listed twice, DirectOps without Direct
// or naming something other than a data callback, Register called twice.
// A ThreadModel callback returning something other than the four
// ThreadModel constants fails the configuration check (below).
//
// # What runs when, and in which process
//
// When nbdkit may fork (daemon mode, --run, or a command line the loader
// does not understand), the configuration callbacks run in two
// processes:
//
//   - The check child, a short-lived process the loader forks from
//     nbdkit's config_complete so that configuration errors reach the
//     user, with a non-zero exit status, before nbdkit goes into the
//     background, runs Load, Config for each key=value in order,
//     ConfigComplete, GetReady, then ThreadModel.  Then it exits at once
//     (_exit: no Unload, Cleanup, deferred calls or finalizers).
//   - The process that serves runs Load, Config, ConfigComplete and
//     GetReady again, with the same parameters, from nbdkit's
//     after_fork; then AfterFork; then the connection callbacks; and at
//     exit Cleanup and Unload.
//
// So Load, Config, ConfigComplete and GetReady must be repeatable:
// check, parse and remember, but leave nothing behind that a second run
// would trip on or that must be undone (a file created, a socket bound,
// a lock taken, a single-use token spent, input read from a pipe).
// ThreadModel runs in the check child only: its answer must follow from
// the configuration.  Goroutines started in any of them die with the
// check child; allocate resources and start goroutines in AfterFork or
// later.
//
// When nbdkit will not fork (-f, -s, --exit-with-parent), they run once,
// in nbdkit's process, at config_complete, and AfterFork follows at
// nbdkit's after_fork.  nbdkit --dump-plugin starts Go only to run
// DumpPlugin, if set (after Load; Unload at exit).  Config, ConfigComplete and GetReady always run with the working
// directory nbdkit started in (in daemon mode nbdkit has moved to / by
// AfterFork); AbsolutePath resolves a parameter's path against it.
//
// # What may block
//
//   - Load, Config, ConfigComplete, GetReady, ThreadModel: nbdkit's
//     start-up waits for them (in daemon mode, the user's command does,
//     through the check child).  Do not wait there for anything that
//     needs the plugin to serve first.
//   - AfterFork: nbdkit accepts no connection until it returns.  Its
//     errors reach only nbdkit's log once nbdkit is in the background.
//   - Preconnect, ListExports, DefaultExport, Open, the Can* and other
//     connection callbacks, and Close run on the thread of one client
//     connection: blocking delays that client only.
//   - Data callbacks (PRead, PWrite, Flush, Trim, Zero, Extents, Cache)
//     run on nbdkit's worker threads, as many at once as the thread
//     model allows (Parallel when ThreadModel is nil): blocking holds
//     that request; the others go on.
//   - Cleanup and Unload run at shutdown: nbdkit's exit waits for them.
//
// Every callback runs on a thread nbdkit made, which enters Go for the
// call; goroutines run on Go's own threads, in the process that started
// them.
//
// # Errors, panics and memory
//
// An error returned by a callback is logged (nbdkit_error) and its errno
// goes to the client: the syscall.Errno in the error's chain (wrap one
// with fmt.Errorf("...: %w", syscall.ENOSPC)), else EIO.  A panic in a
// callback fails that call the same way; a panic in a goroutine ends
// nbdkit, as in any Go program.  The buf of PRead and PWrite is nbdkit's
// memory: use it during the call only.
package nbdkit
