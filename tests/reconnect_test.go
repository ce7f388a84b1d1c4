// SPDX-License-Identifier: BSD-3-Clause

package tests

import (
	"bytes"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The servers of these tests are nbdkit's file plugin on a diskFile, so
// that the data survives proc.restart (a kill -9, then a new nbdkit on the
// same socket).

// diskFile makes a sparse file of size bytes.
func diskFile(t *testing.T, size int64) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "disk.img")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(size)
	f.Close()
	return path
}

// reconnecting is what the proxy logs (without -v) when a request finds
// the server connection failed and waits for a new one: the event after
// which a test brings the server back, so that a request waits for it.
const reconnecting = "reconnecting"

// killUntilWaiting kills the server and waits until the proxy logs that a
// request of client's (which request causes, if not nil) found it gone
// and waits for it; then it starts the server again.  The wait fails
// the test at once if the proxy or the client exits.
func killUntilWaiting(t *testing.T, server, proxy, client *proc, request func()) {
	t.Helper()
	before := proxy.stderrCount(reconnecting)
	server.kill()
	if request != nil {
		request()
	}
	proxy.waitStderr(t, reconnecting, before+1, time.Minute, client)
	server.relaunch()
}

// fio's write-and-verify run carries on through a kill -9 and restart
// of the server: no error, every block verifies.  The server is killed
// once it has taken a good part of fio's writes, and comes back once a
// request of fio's has found it gone (fio is at 4000 IOPS for about 2 s
// of writes, so it is still writing whatever the machine's speed).
func TestReconnectFioVerify(t *testing.T) {
	need(t, "nbdkit-file-plugin", "nbdkit-log-filter", "fio")
	disk := diskFile(t, 64<<20)
	log := filepath.Join(t.TempDir(), "server.log")
	server := start(t, procOpts{}, "--filter=log", "file", disk, "logfile="+log)
	proxy := start(t, procOpts{}, plugin, "socket="+server.sock, "reconnect-delay=10")
	var stdout syncBuffer
	fio := start(t, procOpts{prog: "fio", stdout: &stdout}, "--name=reconnect", "--ioengine=nbd", "--uri="+unixURI(proxy.sock),
		"--rw=randwrite", "--bs=4k", "--iodepth=16", "--size=32M", "--rate_iops=4000",
		"--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0")
	writes := func() int {
		b, _ := os.ReadFile(log)
		return strings.Count(string(b), " Write id=")
	}
	waitFor(t, time.Minute, "1000 of fio's writes at the server", func() bool { return writes() >= 1000 }, fio, proxy, server)
	t.Logf("killing the server after %d writes", writes())
	killUntilWaiting(t, server, proxy, fio, nil)
	err := fio.wait()
	out := stdout.String() + fio.stderr.String()
	if err != nil {
		t.Fatalf("fio failed across the server restart: %v\n%s", err, out)
	}
	if strings.Contains(out, "verify:") || strings.Contains(out, "bad magic") {
		t.Fatalf("fio reported verify errors:\n%s", out)
	}
	if !strings.Contains(out, "err= 0") {
		t.Fatalf("fio did not report err= 0:\n%s", out)
	}
}

// One open client connection keeps working across a restart.
const clientAcrossRestart = `
import nbd, os, sys
h = nbd.NBD()
h.connect_unix(sys.argv[1])
a = os.urandom(65536)
h.pwrite(a, 0)
print("written", flush=True)
sys.stdin.readline()                  # the server restarts meanwhile
assert h.pread(65536, 0) == a, "data lost"
b = os.urandom(65536)
h.pwrite(b, 1 << 20, nbd.CMD_FLAG_FUA)
assert h.pread(65536, 1 << 20) == b
# a was never flushed, and its connection failed: the plugin checked
# that the new server has it (it would have written it again), so a
# flush covers it.
for i in range(2):
    h.flush()
assert h.pread(65536, 0) == a, "data lost after the flush"
print("ok", flush=True)
`

// clientSurvivesRestart has a connected client read while the server is
// away: the server comes back once the proxy logs that the read waits
// for it.
func clientSurvivesRestart(t *testing.T, server, proxy *proc) {
	t.Helper()
	client := startPython(t, clientAcrossRestart, proxy.sock)
	client.expect(t, "written", 10*time.Second)
	killUntilWaiting(t, server, proxy, client.proc, func() {
		client.stdin.Write([]byte("go\n"))
		client.stdin.Close()
	})
	out := client.rest(t, 2*time.Minute)
	if err := client.wait(); err != nil || !strings.Contains(out, "ok") {
		t.Fatalf("client failed across the restart: %v\n%s\n%s", err, out, client.stderr)
	}
}

func TestReconnectOpenClient(t *testing.T) {
	need(t, "nbdkit-file-plugin", pythonNbd)
	disk := diskFile(t, 16<<20)
	server := start(t, procOpts{}, "file", disk)
	proxy := start(t, procOpts{}, plugin, "socket="+server.sock, "reconnect-delay=10")
	clientSurvivesRestart(t, server, proxy)
}

func TestReconnectShared(t *testing.T) {
	need(t, "nbdkit-file-plugin", pythonNbd, "nbdcopy")
	disk := diskFile(t, 16<<20)
	server := start(t, procOpts{}, "file", disk)
	proxy := start(t, procOpts{}, plugin, "socket="+server.sock, "shared=true", "reconnect-delay=10")
	clientSurvivesRestart(t, server, proxy)
	// A later client reads and writes too.
	copyThrough(t, unixURI(proxy.sock), unixURI(server.sock), 1<<20)
}

// readAfterRestart connects a client, restarts the server (with args,
// if given; it listens again before the client reads) and has the
// client read again; it returns what the client printed: "read <first
// bytes>" or "failed".
func readAfterRestart(t *testing.T, server *proc, proxy string, args ...string) string {
	t.Helper()
	client := startPython(t, `
import nbd, sys
h = nbd.NBD()
h.connect_unix(sys.argv[1])
h.pread(512, 0)
print("connected", flush=True)
sys.stdin.readline()
try:
    print("read", h.pread(512, 0)[:9])
except nbd.Error as e:
    print("failed")
`, proxy)
	client.expect(t, "connected", 10*time.Second)
	server.kill()
	server.relaunch(args...)
	client.stdin.Write([]byte("go\n"))
	client.stdin.Close()
	return client.rest(t, 2*time.Minute) + "\n" + client.stderr.String()
}

// Without reconnect-delay: as the C plugin, requests fail, nbdkit lives.
func TestNoReconnectByDefault(t *testing.T) {
	need(t, "nbdkit-file-plugin", pythonNbd, "nbdcopy")
	disk := diskFile(t, 16<<20)
	server := start(t, procOpts{}, "file", disk)
	proxy := startProxy(t, "socket="+server.sock)
	if out := readAfterRestart(t, server, proxy); !strings.Contains(out, "failed") {
		t.Fatalf("without reconnect-delay a read after the restart should fail:\n%s", out)
	}
	// nbdkit still serves new clients.
	copyThrough(t, unixURI(proxy), unixURI(server.sock), 1<<20)
}

// timeout=2 against a server whose reads stall 30 s: the read fails
// within 5 s, and other clients are served meanwhile.
func TestTimeoutStalledRead(t *testing.T) {
	need(t, "nbdkit-memory-plugin", "nbdkit-delay-filter", pythonNbd)
	slow := startServer(t, "--filter=delay", "memory", "16M", "delay-read=30")
	proxy := startProxy(t, "socket="+slow, "timeout=2")
	start := time.Now()
	_, err := runErr(t, python3, "-c", `
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
h.pread(512, 0)
`, unixURI(proxy))
	took := time.Since(start)
	if err == nil {
		t.Fatal("a read from a stalled server succeeded")
	}
	if took > 5*time.Second {
		t.Fatalf("the read failed only after %v", took)
	}
	// NBD has no ETIMEDOUT: the client sees EIO (nbdkit logs why).
	if !strings.Contains(err.Error(), "EIO") {
		t.Errorf("the read failed, but not with EIO: %v", err)
	}
	// Another client of the same nbdkit is served (writes are not delayed).
	python(t, `
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
h.pwrite(b'x' * 512, 0)
h.flush()
`, unixURI(proxy))
}

// A server that comes back with another size is refused: errors, never
// the other disk's data.
func TestReconnectRefusesAnotherDisk(t *testing.T) {
	need(t, "nbdkit-file-plugin", "nbdkit-log-filter", pythonNbd)
	disk := diskFile(t, 16<<20)
	other := diskFile(t, 8<<20)
	os.WriteFile(other, bytes.Repeat([]byte("OTHERDISK"), 1000), 0o600)
	os.Truncate(other, 8<<20)
	server := start(t, procOpts{}, "file", disk)
	proxy := startProxy(t, "socket="+server.sock, "reconnect-delay=3")
	log := filepath.Join(t.TempDir(), "other.log")
	out := readAfterRestart(t, server, proxy, "--filter=log", "file", other, "logfile="+log)
	if strings.Contains(out, "OTHERDISK") || !strings.Contains(out, "failed") {
		t.Fatalf("a client was served another disk, or did not fail:\n%s", out)
	}
	// The client failed although the proxy reached the other disk: it
	// refused it, and did not fail for want of a server.
	if b, _ := os.ReadFile(log); !strings.Contains(string(b), " Connect ") {
		t.Fatalf("the proxy never connected to the server that came back:\n%s", b)
	}
}

// timeout= bounds the handshake too: a server that accepts and then says
// nothing fails the client's connection instead of hanging it.
func TestTimeoutSilentServer(t *testing.T) {
	need(t, "nbdkit", "nbdinfo")
	// Hold each connection open, saying nothing, until the test ends.
	silent := make(chan struct{})
	sock := unixServer(t, func(c net.Conn) { <-silent })
	t.Cleanup(func() { close(silent) })
	proxy := startNbdkit(t, plugin, "socket="+sock, "timeout=1")
	start := time.Now()
	if _, err := runErr(t, "nbdinfo", "--size", unixURI(proxy)); err == nil {
		t.Fatal("connecting through a silent server succeeded")
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("the client waited %v", took)
	}
}
