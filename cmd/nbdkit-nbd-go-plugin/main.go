// SPDX-License-Identifier: BSD-3-Clause

// The Go library of nbdkit-nbd-go-plugin.
//
// Built with -buildmode=c-shared it is the library the loader carries
// and starts (see loader/loader.c).  Built as a program it prints the C
// header the loader is compiled with (see nbdkit.WriteLoaderHeader).
package main

import (
	"fmt"
	"os"

	"nbdkit-nbd-go-plugin/nbdkit"
	"nbdkit-nbd-go-plugin/plugin"
)

func init() {
	nbdkit.Register(plugin.Plugin)
}

func main() {
	if err := nbdkit.WriteLoaderHeader(os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
