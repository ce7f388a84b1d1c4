// SPDX-License-Identifier: BSD-3-Clause

// The Go library of nbdkit-nbd-go-plugin.
//
// Built with -buildmode=c-shared it is the library the loader carries
// and starts (see loader/loader.c).  Built as a program it prints the C
// header the loader is compiled with (see nbdkit.Main).
package main

import (
	"nbdkit-nbd-go-plugin/nbdkit"
	"nbdkit-nbd-go-plugin/plugin"
)

func init() {
	nbdkit.Register(plugin.Plugin)
}

// main runs only when the build runs this package as a program: it
// writes the loader's header (nbdkit.Main).
func main() { nbdkit.Main() }
