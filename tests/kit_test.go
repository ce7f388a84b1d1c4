// SPDX-License-Identifier: BSD-3-Clause

package tests

// The kit (loader + nbdkit package) knows nothing of NBD proxying: its
// example plugin, examples/ramdisk, built by the same make rule, serves
// in every nbdkit mode and refuses a bad configuration before serving.

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// ramdisk is the built example plugin, made absolute.
var ramdisk = func() string {
	p, err := filepath.Abs("../examples/ramdisk/nbdkit-ramdisk-plugin.so")
	if err != nil {
		panic(err)
	}
	return p
}()

// writeReadBack writes random bytes at the start of the export and
// checks that they read back, over two separate connections.
func writeReadBack(t *testing.T, uri string) {
	t.Helper()
	path, data := randomFile(t, 4<<20)
	run(t, "nbdcopy", path, uri)
	sameBytes(t, "read back", readAll(t, uri), data)
}

func TestKitRamdiskForeground(t *testing.T) {
	need(t, "nbdinfo", "nbdcopy")
	sock := startNbdkit(t, ramdisk, "size=64M")
	uri := unixURI(sock)
	if got := sizeThrough(t, uri); got != "67108864" {
		t.Fatalf("size %s, want 64M", got)
	}
	writeReadBack(t, uri)
	// Many requests at once on several connections (the plugin is
	// parallel and advertises multi-conn).
	path, data := randomFile(t, 32<<20)
	run(t, "nbdcopy", "--connections=4", "--requests=64", path, uri)
	out := filepath.Join(t.TempDir(), "out")
	run(t, "nbdcopy", "--connections=4", "--requests=64", uri, out)
	got, _ := os.ReadFile(out)
	sameBytes(t, "read back in parallel", got, data)
	// The magic config key: a bare size.
	writeReadBack(t, unixURI(startNbdkit(t, ramdisk, "8M")))
}

func TestKitRamdiskDaemon(t *testing.T) {
	need(t, "nbdcopy")
	d := daemonize(t, ramdisk, "size=16M")
	writeReadBack(t, unixURI(d.sock))
	d.stop(t)
}

func TestKitRamdiskRun(t *testing.T) {
	need(t, "nbdcopy")
	path, data := randomFile(t, 4<<20)
	out := filepath.Join(t.TempDir(), "out")
	run(t, "nbdkit", "-U", "-", ramdisk, "size=16M",
		"--run", "nbdcopy "+path+" \"$uri\" && nbdcopy \"$uri\" "+out)
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	sameBytes(t, "read back under --run", got, data)
}

func TestKitRamdiskStdio(t *testing.T) {
	need(t, pythonNbd)
	out := python(t, `
import nbd, sys, os
h = nbd.NBD()
h.connect_command(["nbdkit", "-s", sys.argv[1], "size=16M"])
assert h.get_size() == 16 << 20
buf = os.urandom(1 << 20)
h.pwrite(buf, 4096)
h.flush()
assert h.pread(len(buf), 4096) == buf
h.zero(65536, 8192)
assert h.pread(65536, 8192) == bytes(65536)
h.trim(4096, 4096)
assert h.pread(4096, 4096) == bytes(4096)
h.shutdown()
print("ok")
`, ramdisk)
	if strings.TrimSpace(out) != "ok" {
		t.Fatalf("got %q", out)
	}
}

// systemd-socket-activate listens, then starts nbdkit at the first
// connection with the socket in LISTEN_FDS; nbdkit keeps serving it.
func TestKitRamdiskSocketActivation(t *testing.T) {
	need(t, "systemd-socket-activate", "nbdcopy")
	sock := filepath.Join(t.TempDir(), "rd.sock")
	start(t, procOpts{prog: "systemd-socket-activate", sock: sock}, "-l", sock, "nbdkit", ramdisk, "size=16M")
	writeReadBack(t, unixURI(sock))
}

// A missing or bad size: exit status 1 and one line, before nbdkit
// listens or detaches, in every mode.
func TestKitRamdiskConfigErrors(t *testing.T) {
	need(t, "nbdkit")
	for _, c := range []struct {
		params []string
		want   string
	}{
		{nil, "size= is required"},
		{[]string{"size=abc"}, "abc"},
		{[]string{"size=-1"}, "negative"},
		{[]string{"size=1E"}, "size=1E is more than"},
		{[]string{"size=1M", "bogus=1"}, "bogus=1"},
	} {
		for _, mode := range [][]string{nil, {"-f"}, {"--run", "true"}, {"-s"}} {
			refusedBeforeServing(t, mode, ramdisk, c.params, c.want)
		}
	}
}
