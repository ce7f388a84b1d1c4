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
	// libnbd pulls in libxml2, ICU, GnuTLS...: a good part of the
	// start-up time over the C nbd plugin's, which loads it once.  It
	// starts no threads, so it survives nbdkit's fork.
	plugin.Plugin.Preload = []string{"libnbd.so.0"}
	nbdkit.Register(plugin.Plugin)
}

func main() {
	if err := nbdkit.WriteLoaderHeader(os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
