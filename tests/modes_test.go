package tests

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// copyThrough writes random data through the proxy and checks it reads
// back the same through the proxy and through the server directly.
func copyThrough(t *testing.T, proxyURI, serverURI string, size int) {
	t.Helper()
	path, data := randomFile(t, size)
	run(t, "nbdcopy", path, proxyURI)
	sameBytes(t, "read through the proxy", readAll(t, proxyURI), data)
	sameBytes(t, "read from the server", readAll(t, serverURI), data)
}

// daemonize starts the proxy the way most people run nbdkit: no -f, so
// nbdkit forks into the background after config_complete.
func daemonize(t *testing.T, params ...string) (sock string, pid int) {
	t.Helper()
	dir := t.TempDir()
	sock = filepath.Join(dir, "proxy.sock")
	pidFile := filepath.Join(dir, "proxy.pid")
	run(t, "nbdkit", append([]string{"-U", sock, "-P", pidFile, plugin}, params...)...)
	waitSocket(t, sock)
	return sock, daemonPid(t, pidFile)
}

// daemonPid reads the pid file of an nbdkit that went into the
// background, and kills that process at the end of the test.  The
// forked child writes the file, maybe after it listens.
func daemonPid(t *testing.T, pidFile string) int {
	t.Helper()
	var b []byte
	var err error
	for i := 0; i < 500; i++ {
		if b, err = os.ReadFile(pidFile); err == nil && len(b) > 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })
	return pid
}

func alive(pid int) bool { return syscall.Kill(pid, 0) == nil }

func TestDaemonMode(t *testing.T) {
	server := startServer(t, "memory", "32M")
	sock, pid := daemonize(t, "socket="+server)
	copyThrough(t, unixURI(sock), unixURI(server), 8<<20)

	// SIGTERM ends it promptly: no thread of ours keeps it alive.
	syscall.Kill(pid, syscall.SIGTERM)
	deadline := time.Now().Add(2 * time.Second)
	for alive(pid) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if alive(pid) {
		t.Fatalf("nbdkit (pid %d) still runs 2 s after SIGTERM", pid)
	}
}

func TestForegroundMode(t *testing.T) {
	server := startServer(t, "memory", "32M")
	proxy := startProxy(t, "socket="+server)
	copyThrough(t, unixURI(proxy), unixURI(server), 8<<20)
}

// --run forks even with -f: the command runs while the server serves.
func TestRunMode(t *testing.T) {
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
	out := run(t, "nbdkit", plugin, "--help")
	for _, key := range []string{"socket=", "hostname=", "port=", "vsock=", "uri=", "command=", "arg=",
		"socket-fd=", "export=", "dynamic-export=", "retry=", "shared=", "tls=", "tls-certificates=",
		"tls-verify=", "tls-username=", "tls-psk="} {
		if !strings.Contains(out, key) {
			t.Errorf("--help does not mention %s", key)
		}
	}
}

// Bad configuration: a message and a non-zero exit before nbdkit
// daemonizes, leaving no pid file and no socket behind.
func TestConfigErrorsBeforeServing(t *testing.T) {
	server := startServer(t, "memory", "1M")
	for _, c := range []struct {
		params []string
		want   string
	}{
		{nil, "no server given"},
		{[]string{"socket=" + server, "retry=abc"}, "retry"},
		{[]string{"socket=" + server, "shared=maybe"}, "shared=maybe"},
		{[]string{"socket=" + server, "bogus=1"}, "bogus=1"},
	} {
		// Daemon mode checks in a child process; -f in nbdkit's own.
		for _, mode := range [][]string{nil, {"-f"}} {
			dir := t.TempDir()
			sock, pidFile := filepath.Join(dir, "s"), filepath.Join(dir, "p")
			args := append(append([]string{"-U", sock, "-P", pidFile}, mode...), plugin)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			cmd := exec.CommandContext(ctx, "nbdkit", append(args, c.params...)...)
			out, err := cmd.CombinedOutput()
			cancel()
			if err == nil {
				t.Errorf("%v %v: nbdkit exited 0", mode, c.params)
				continue
			}
			if !strings.Contains(string(out), c.want) {
				t.Errorf("%v: message %q does not mention %q", c.params, out, c.want)
			}
			if strings.Contains(string(out), "goroutine") || strings.Contains(string(out), "panic") {
				t.Errorf("%v: a Go panic: %s", c.params, out)
			}
			for _, f := range []string{sock, pidFile} {
				if _, err := os.Stat(f); err == nil {
					t.Errorf("%v %v: %s left behind", mode, c.params, f)
				}
			}
		}
	}
}
