// SPDX-License-Identifier: BSD-3-Clause

package tests

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDaemonMode(t *testing.T) {
	need(t, "nbdkit-memory-plugin", "nbdcopy")
	server := startServer(t, "memory", "32M")
	d := daemonize(t, plugin, "socket="+server)
	copyThrough(t, unixURI(d.sock), unixURI(server), 8<<20)
	// SIGTERM ends it promptly: no thread of ours keeps it alive.
	d.stop(t)
}

func TestForegroundMode(t *testing.T) {
	need(t, "nbdkit-memory-plugin", "nbdcopy")
	server := startServer(t, "memory", "32M")
	proxy := startProxy(t, "socket="+server)
	copyThrough(t, unixURI(proxy), unixURI(server), 8<<20)
}

// --run forks even with -f: the command runs while the server serves.
func TestRunMode(t *testing.T) {
	need(t, "nbdkit-memory-plugin", "nbdcopy")
	server := startServer(t, "memory", "32M")
	path, data := randomFile(t, 4<<20)
	out := filepath.Join(t.TempDir(), "out")
	run(t, "nbdkit", "-U", "-", plugin, "socket="+server,
		"--run", "nbdcopy "+path+" \"$uri\" && nbdcopy \"$uri\" "+out)
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	sameBytes(t, "read back under --run", got, data)
	sameBytes(t, "read from the server", readAll(t, unixURI(server)), data)
}

// -s serves one client on stdin/stdout.
func TestStdioMode(t *testing.T) {
	need(t, "nbdkit-memory-plugin", pythonNbd)
	server := startServer(t, "memory", "32M")
	out := python(t, `
import nbd, sys, os
h = nbd.NBD()
h.connect_command(["nbdkit", "-s", sys.argv[1], "socket=" + sys.argv[2]])
buf = os.urandom(1 << 20)
h.pwrite(buf, 4096)
h.flush()
assert h.pread(len(buf), 4096) == buf
h.shutdown()
d = nbd.NBD()
d.connect_unix(sys.argv[2])
assert d.pread(len(buf), 4096) == buf
print("ok")
`, plugin, server)
	if strings.TrimSpace(out) != "ok" {
		t.Fatalf("got %q", out)
	}
}

// Systemd socket activation: nbdcopy's [ CMD ] hands nbdkit a listening
// socket through LISTEN_FDS.
func TestSocketActivation(t *testing.T) {
	need(t, "nbdkit-memory-plugin", "nbdcopy")
	server := startServer(t, "memory", "32M")
	path, data := randomFile(t, 4<<20)
	run(t, "nbdcopy", path, "--", "[", "nbdkit", plugin, "socket="+server, "]")
	out := filepath.Join(t.TempDir(), "out")
	run(t, "nbdcopy", "--", "[", "nbdkit", plugin, "socket="+server, "]", out)
	got, _ := os.ReadFile(out)
	sameBytes(t, "read back under socket activation", got, data)
	sameBytes(t, "read from the server", readAll(t, unixURI(server)), data)
}

// Many requests in flight on each of several connections.
func TestManyRequestsInFlight(t *testing.T) {
	need(t, "nbdkit-memory-plugin", "nbdcopy")
	server := startServer(t, "memory", "256M")
	proxy := startProxy(t, "socket="+server)
	path, data := randomFile(t, 128<<20)
	run(t, "nbdcopy", "--connections=4", "--requests=64", path, unixURI(proxy))
	sameBytes(t, "read from the server", readAll(t, unixURI(server)), data)
	out := filepath.Join(t.TempDir(), "out")
	run(t, "nbdcopy", "--connections=4", "--requests=64", unixURI(proxy), out)
	got, _ := os.ReadFile(out)
	sameBytes(t, "read through the proxy", got, data)
}

func TestDumpPlugin(t *testing.T) {
	need(t, "nbdkit")
	out := run(t, "nbdkit", "--dump-plugin", plugin)
	for _, want := range []string{"name=nbd-go", "thread_model=parallel", "has_pread=1", "has_pwrite=1",
		"has_extents=1", "has_cache=1", "has_can_fast_zero=1", "has_block_size=1", "magic_config_key=uri",
		"libnbd_version=", "libnbd_tls=1", "libnbd_uri=1"} {
		if !strings.Contains(out, want+"\n") && !strings.Contains(out, "\n"+want) {
			t.Errorf("--dump-plugin lacks %q:\n%s", want, out)
		}
	}
	// Our lines come after nbdkit's own.
	if strings.Index(out, "libnbd_version=") < strings.Index(out, "has_pread=1") {
		t.Errorf("libnbd_* lines come before nbdkit's:\n%s", out)
	}
}

func TestHelp(t *testing.T) {
	need(t, "nbdkit")
	out := run(t, "nbdkit", plugin, "--help")
	for _, key := range []string{"socket=", "hostname=", "port=", "vsock=", "uri=", "command=", "arg=",
		"socket-fd=", "export=", "dynamic-export=", "retry=", "shared=", "tls=", "tls-certificates=",
		"tls-verify=", "tls-username=", "tls-psk="} {
		if !strings.Contains(out, key) {
			t.Errorf("--help does not mention %s", key)
		}
	}
}
