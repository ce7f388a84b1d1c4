// SPDX-License-Identifier: BSD-3-Clause

// Package nbdkit writes nbdkit plugins in Go that work in every nbdkit
// mode: foreground (-f), daemon, --run, -s and socket activation.
//
// A plugin is a Plugin value passed to Register from an init function of
// a main package.  That package is built twice: with -buildmode=c-shared
// it is the Go library; run as a program its main calls
// WriteLoaderHeader, which prints the C header the loader
// (loader/loader.c) is compiled with.  The loader is the .so nbdkit
// loads: it carries the Go library inside it and starts it only in a
// process that nbdkit will not fork afterwards, because a Go runtime does
// not survive fork.  The Makefile's GO_PLUGIN rule does all three steps:
//
//	$(eval $(call GO_PLUGIN,nbdkit-foo-plugin.so,cmd/foo,build/foo))
//
// A minimal main package:
//
//	func init() { nbdkit.Register(&nbdkit.Plugin[*conn]{Name: "foo", ...}) }
//
//	func main() {
//		if err := nbdkit.WriteLoaderHeader(os.Stdout); err != nil {
//			fmt.Fprintln(os.Stderr, err)
//			os.Exit(1)
//		}
//	}
//
// examples/ramdisk is a complete one.
//
// The loader's callback table is fixed at build time from the Plugin
// value: a callback left nil here is not advertised to nbdkit, exactly
// as with a C plugin.
//
// What the loader's design means for a plugin:
//   - Load, Config, ConfigComplete and GetReady run twice when nbdkit
//     may fork: once in a short-lived child that only checks the
//     configuration (so that errors reach the user before nbdkit
//     daemonizes), and again in the serving process, just before
//     AfterFork.  They must not have side effects that cannot be
//     repeated.  Allocate resources and start goroutines in AfterFork or
//     later.
//   - Config runs with the working directory nbdkit had at start-up.
//   - An error returned by a callback is logged (nbdkit_error) and its
//     errno goes to the client: the syscall.Errno in the error's chain
//     (wrap one with fmt.Errorf("...: %w", syscall.ENOSPC)), else EIO.
//     A panic in a callback fails that one call the same way.
package nbdkit
