// SPDX-License-Identifier: BSD-3-Clause

package tests

// Reliability: data integrity under load, no leaks, clients and servers
// that die or misbehave, and configuration errors.

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// countDir counts the entries of /proc/PID/fd or /proc/PID/task.
func countDir(t *testing.T, pid int, what string) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/%s", pid, what))
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// settles waits up to 10 s for nbdkit's fds and threads to come back
// to at most base+slack, and fails the test if they do not, or if
// nbdkit has exited (a dead process holds nothing).
func settles(t *testing.T, p *proc, fds, threads int, what string) {
	t.Helper()
	const fdSlack, threadSlack = 2, 4
	var nfd, nthr int
	deadline := time.Now().Add(10 * time.Second)
	for {
		p.mustRun(t, what)
		nfd, nthr = countDir(t, p.pid, "fd"), countDir(t, p.pid, "task")
		if nfd <= fds+fdSlack && nthr <= threads+threadSlack {
			p.mustRun(t, what)
			t.Logf("%s: fds %d -> %d, threads %d -> %d", what, fds, nfd, threads, nthr)
			return
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	out, _ := exec.Command("ls", "-l", fmt.Sprintf("/proc/%d/fd", p.pid)).CombinedOutput()
	t.Fatalf("%s: nbdkit keeps fds %d (was %d) and threads %d (was %d):\n%s",
		what, nfd, fds, nthr, threads, out)
}

// fio runs fio against an NBD URI and fails the test on any error or
// verify message.
func fio(t *testing.T, uri string, extra ...string) {
	t.Helper()
	out, err := fioErr(t, uri, extra...)
	if err != nil || strings.Contains(out, "verify:") || !strings.Contains(out, "err= 0") {
		t.Fatalf("fio %s: %v\n%s", strings.Join(extra, " "), err, out)
	}
}

func fioErr(t *testing.T, uri string, extra ...string) (string, error) {
	t.Helper()
	args := append([]string{"--name=integrity", "--ioengine=nbd", "--uri=" + uri,
		"--rw=randwrite", "--bs=4k", "--iodepth=32", "--size=64M",
		"--verify=crc32c", "--verify_fatal=1", "--verify_state_save=0"}, extra...)
	stdout, stderr, err := runOut(t, "fio", args...)
	return stdout + stderr, err
}

// Random 4k writes at depth 32 through the proxy, verified by fio
// through the proxy and then by a second fio through the server alone.
func TestFioRandomWriteVerify(t *testing.T) {
	need(t, "nbdkit-memory-plugin", "fio")
	server := startServer(t, "memory", "64M")
	proxy := startProxy(t, "socket="+server)
	fio(t, unixURI(proxy), "--do_verify=1")
	fio(t, unixURI(server), "--verify_only")

	// The check can fail: the same verification of a fresh, empty
	// server finds bad blocks.
	empty := startServer(t, "memory", "64M")
	if out, err := fioErr(t, unixURI(empty), "--verify_only"); err == nil && !strings.Contains(out, "verify:") {
		t.Fatalf("fio found nothing wrong with an empty disk:\n%s", out)
	}
}

const writerScript = `
import nbd, sys
sock, path, off, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
with open(path, "rb") as f:
    f.seek(off)
    data = f.read(n)
h = nbd.NBD()
h.connect_unix(sock)
chunk = 65536
pending = []
for o in range(0, n, chunk):
    pending.append(h.aio_pwrite(data[o:o+chunk], off + o))
    while h.aio_in_flight() >= 16:
        h.poll(-1)
while h.aio_in_flight() > 0:
    h.poll(-1)
for c in pending:
    assert h.aio_command_completed(c)
h.flush()
assert h.pread(n, off) == data
h.shutdown()
print("ok")
`

// Several clients write disjoint regions at once; the server holds
// every byte.
func TestParallelWritersDisjoint(t *testing.T) {
	need(t, "nbdkit-memory-plugin", pythonNbd, "nbdcopy")
	const writers, region = 4, 8 << 20
	server := startServer(t, "memory", strconv.Itoa(writers*region))
	proxy := startProxy(t, "socket="+server)
	path, data := randomFile(t, writers*region)
	var wg sync.WaitGroup
	errs := make([]error, writers)
	for i := 0; i < writers; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			out, err := runErr(t, python3, "-c", writerScript, proxy, path,
				strconv.Itoa(i*region), strconv.Itoa(region))
			if err == nil && strings.TrimSpace(out) != "ok" {
				err = fmt.Errorf("said %q", out)
			}
			errs[i] = err
		}(i)
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("writer %d: %v", i, err)
		}
	}
	sameBytes(t, "read from the server", readAll(t, unixURI(server)), data)
}

const connectLoopScript = `
import nbd, sys
sock, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    h = nbd.NBD()
    h.connect_unix(sock)
    h.pread(4096, (i * 4096) % (1 << 20))
    if i % 3 == 0:
        h.pwrite(b"x" * 512, 0)
    if i % 2 == 0:
        h.shutdown()
    del h            # odd ones just drop the connection
print("ok")
`

// 300 connections opened and closed leave nbdkit's fds and threads
// where they were.
func TestNoLeaksAfterManyConnections(t *testing.T) {
	need(t, "nbdkit-memory-plugin", pythonNbd)
	server := startServer(t, "memory", "1M")
	p := start(t, procOpts{}, plugin, "socket="+server)
	proxy := p.sock
	loops := func(parallel, each int) {
		var wg sync.WaitGroup
		for i := 0; i < parallel; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if out, err := runErr(t, python3, "-c", connectLoopScript, proxy, strconv.Itoa(each)); err != nil || strings.TrimSpace(out) != "ok" {
					t.Errorf("connection loop: %v %s", err, out)
				}
			}()
		}
		wg.Wait()
	}
	// Warm up, so that the Go runtime has the threads it keeps, and
	// count once nbdkit has closed every connection.
	loops(3, 10)
	waitClientConns(t, p, 0)
	fds, threads := countDir(t, p.pid, "fd"), countDir(t, p.pid, "task")
	loops(3, 100)
	settles(t, p, fds, threads, "after 300 connections")
}

const dyingClientScript = `
import nbd, sys, time
h = nbd.NBD()
h.connect_unix(sys.argv[1])
bufs = [nbd.Buffer(256 * 1024) for i in range(64)]
for i, b in enumerate(bufs):
    h.aio_pread(b, i * 256 * 1024)
print("issued", h.aio_in_flight())
time.sleep(120)
`

const steadyClientScript = `
import nbd, sys, os
h = nbd.NBD()
h.connect_unix(sys.argv[1])
print("connected")
for line in sys.stdin:
    buf = os.urandom(65536)
    off = 32 << 20
    h.pwrite(buf, off)
    assert h.pread(len(buf), off) == buf
    print("ok")
`

// A client killed with 64 requests in flight: the proxy goes on serving
// a client connected before and new ones, and frees the dead client's
// resources once its requests are done.
func TestClientDiesWithRequestsInFlight(t *testing.T) {
	need(t, "nbdkit-memory-plugin", "nbdkit-delay-filter", "nbdkit-log-filter", pythonNbd)
	for attempt := 1; ; attempt++ {
		if clientDies(t, attempt < 3) {
			return
		}
	}
}

// nbdkitSendRace says whether nbdkit, which exited with err after
// writing stderr, was ended by nbdkit 1.32.5's own race: when many
// worker threads reply at once to a client that has gone, one may find
// the socket closed under it and abort ("raw_send_socket: Assertion
// `sock >= 0' failed", in nbdkit's connections.c, whatever the plugin).
// Only that abort: any other end, a Go trace with it, is a crash.
func nbdkitSendRace(err error, stderr string) bool {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGABRT &&
		strings.Contains(stderr, "raw_send_socket: Assertion `sock >= 0' failed") &&
		goTrace(stderr) == nil
}

// The retry is for nbdkit's abort alone: any other end, or that abort
// with a Go trace, is not retried.
func TestNbdkitSendRaceOnly(t *testing.T) {
	need(t, "sh")
	const assertion = "nbdkit: connections.c:354: raw_send_socket: Assertion `sock >= 0' failed."
	for _, c := range []struct {
		script string
		want   bool
	}{
		{"echo \"$1\" >&2; kill -ABRT $$", true},
		{"echo \"$1\" >&2; exit 1", false},
		{"echo \"$1\" >&2; kill -SEGV $$", false},
		{"kill -ABRT $$", false},
		{"echo \"$1\" >&2; echo 'panic: runtime error' >&2; kill -ABRT $$", false},
	} {
		cmd := exec.Command("sh", "-c", c.script, "sh", assertion)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		err := cmd.Run()
		if got := nbdkitSendRace(err, stderr.String()); got != c.want {
			t.Errorf("%q: nbdkitSendRace(%v, %q) = %v, want %v", c.script, err, stderr.String(), got, c.want)
		}
	}
}

// clientDies runs the scenario once.  With retry set, an nbdkit ended
// by nbdkit's own race (nbdkitSendRace) is logged and reported as
// false, for another attempt with new processes; any other end of
// nbdkit fails the test.
func clientDies(t *testing.T, retry bool) bool {
	// The server takes 1 s per read, so the requests are still with
	// the server when the client dies; its log shows them arrive.
	log := filepath.Join(t.TempDir(), "server.log")
	server := startServer(t, "--filter=log", "--filter=delay", "memory", "64M", "rdelay=1", "logfile="+log)
	reads := func() int {
		b, _ := os.ReadFile(log)
		return strings.Count(string(b), " Read id=")
	}
	p := start(t, procOpts{}, plugin, "socket="+server)
	proxy := p.sock
	python(t, connectLoopScript, proxy, "3") // warm up
	waitClientConns(t, p, 0)
	fds, threads := countDir(t, p.pid, "fd"), countDir(t, p.pid, "task")

	steady := startPython(t, steadyClientScript, proxy)
	steady.expect(t, "connected", 10*time.Second)
	before := reads()
	dying := startPython(t, dyingClientScript, proxy)
	dying.expect(t, "issued 64", 10*time.Second)
	// nbdkit serves a connection's requests with 16 threads: all 16 are
	// busy with a read at the server when the client dies.
	waitFor(t, time.Minute, "16 of the dying client's reads at the server",
		func() bool { return reads() >= before+16 }, p)
	dying.kill()

	// nbdkit has finished with the dead client (the server answered,
	// the replies went nowhere) once only the steady client's
	// connection is left.
	waitFor(t, time.Minute, "nbdkit closing the dead client's connection", func() bool {
		return !p.running() || clientConns(t, proxy) == 1
	})
	if !p.running() {
		err := p.wait()
		if retry && nbdkitSendRace(err, p.stderr.String()) {
			t.Logf("nbdkit's own race (raw_send_socket assertion) ended the proxy; trying again")
			return false
		}
		t.Fatalf("nbdkit exited when its client died: %v", err)
	}

	fmt.Fprintln(steady.stdin, "go")
	steady.expect(t, "ok", 15*time.Second)
	if out := python(t, newClientScript, proxy); strings.TrimSpace(out) != "ok" {
		t.Fatalf("new client: %q", out)
	}
	fmt.Fprintln(steady.stdin, "again")
	steady.expect(t, "ok", 15*time.Second)
	steady.stdin.Close()
	steady.wait()
	if !p.running() {
		t.Fatal("nbdkit exited")
	}
	settles(t, p, fds, threads, "after the dead client")
	return true
}

const loadScript = `
import nbd, sys, time
h = nbd.NBD()
h.connect_unix(sys.argv[1])
size = h.get_size()
bs = 64 * 1024
wbuf = b"w" * bs
inflight = []
bufs = {}
ok = 0
i = 0
failed = None
said = False
while True:
    while failed is None and len(inflight) < 32:
        off = (i * bs * 7) % (size - bs)
        if i % 2:
            inflight.append(h.aio_pwrite(wbuf, off))
        else:
            b = nbd.Buffer(bs)
            c = h.aio_pread(b, off)
            bufs[c] = b
            inflight.append(c)
        i += 1
    if not inflight:
        break
    h.poll(1000)
    for c in list(inflight):
        try:
            if h.aio_command_completed(c):
                inflight.remove(c)
                bufs.pop(c, None)
                ok += 1
        except nbd.Error as e:
            inflight.remove(c)
            bufs.pop(c, None)
            if failed is None:
                failed = e
                print("error", str(e).replace("\n", " "))
    if ok >= 300 and not said:
        print("running")
        said = True
print("drained")
for n in range(3):
    try:
        h.pread(4096, 0)
        print("later-ok")
    except nbd.Error as e:
        print("later-error", str(e).replace("\n", " "))
`

// serverDies kills the server under load and checks that in-flight and
// later requests fail promptly; it returns the (dead) server.
func serverDies(t *testing.T, shared bool) (proxy, server *proc) {
	server = start(t, procOpts{}, "memory", "64M")
	params := []string{plugin, "socket=" + server.sock}
	if shared {
		params = append(params, "shared=true")
	}
	proxy = start(t, procOpts{}, params...)
	load := startPython(t, loadScript, proxy.sock)
	load.expect(t, "running", 20*time.Second)
	server.kill()
	start := time.Now()
	load.expect(t, "error", 5*time.Second)
	load.expect(t, "drained", 5*time.Second)
	for i := 0; i < 3; i++ {
		load.expect(t, "later-error", 5*time.Second)
	}
	t.Logf("errors for in-flight and later requests within %v", time.Since(start))
	select {
	case <-load.done:
	case <-time.After(5 * time.Second):
		t.Fatal("the client does not finish")
	}
	if !proxy.running() {
		t.Fatal("nbdkit exited when the server died")
	}
	return proxy, server
}

const newClientScript = `
import nbd, sys, os
h = nbd.NBD()
h.connect_unix(sys.argv[1])
buf = os.urandom(1 << 20)
h.pwrite(buf, 4096)
assert h.pread(len(buf), 4096) == buf
h.shutdown()
print("ok")
`

func TestServerDiesUnderLoad(t *testing.T) {
	need(t, "nbdkit-memory-plugin", pythonNbd)
	proxy, server := serverDies(t, false)
	// The server comes back on the same socket: a new client is served.
	server.relaunch()
	if out := python(t, newClientScript, proxy.sock); strings.TrimSpace(out) != "ok" {
		t.Fatalf("new client after the server came back: %q", out)
	}
	if !proxy.running() {
		t.Fatal("nbdkit exited")
	}
}

func TestServerDiesUnderLoadShared(t *testing.T) {
	need(t, "nbdkit-memory-plugin", pythonNbd)
	proxy, _ := serverDies(t, true)
	// The one server connection is gone: a new client fails, promptly.
	start := time.Now()
	if _, err := runErr(t, python3, "-c", newClientScript, proxy.sock); err == nil {
		t.Error("a new client was served by a dead shared connection")
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("a new client took %v to fail", d)
	}
	if !proxy.running() {
		t.Fatal("nbdkit exited")
	}
}

// clientFails connects a client to the proxy and checks it fails
// within 10 s.
func clientFails(t *testing.T, proxySock, what string) {
	t.Helper()
	start := time.Now()
	out, err := runErr(t, python3, "-c", newClientScript, proxySock)
	if err == nil {
		t.Fatalf("%s: the client was served: %q", what, out)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("%s: the client took %v to fail", what, d)
	}
	if !strings.Contains(err.Error(), "nbd.Error") && !strings.Contains(err.Error(), "nbd") {
		t.Logf("%s: %v", what, err)
	}
}

func TestNoServer(t *testing.T) {
	need(t, "nbdkit", pythonNbd)
	dead := filepath.Join(t.TempDir(), "nothing.sock")
	// A socket file nobody listens on, and no file at all.
	l, err := net.Listen("unix", dead)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	for _, sock := range []string{dead, filepath.Join(t.TempDir(), "absent.sock")} {
		p := start(t, procOpts{}, plugin, "socket="+sock)
		clientFails(t, p.sock, "no server")
		clientFails(t, p.sock, "no server, again")
		if !p.running() {
			t.Fatal("nbdkit exited")
		}
	}
}

// garbageServer listens on a Unix socket and answers every connection
// with greeting followed by random bytes, and then reads all the peer
// sends, or with hangUp closes the connection.
func garbageServer(t *testing.T, greeting []byte, random int, hangUp bool) string {
	return unixServer(t, func(c net.Conn) {
		junk := make([]byte, random)
		rand.Read(junk)
		c.Write(append(append([]byte{}, greeting...), junk...))
		if hangUp {
			return
		}
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		io.Copy(io.Discard, c)
	})
}

func TestGarbageServer(t *testing.T) {
	need(t, "nbdkit", pythonNbd)
	// NBDMAGIC, IHAVEOPT, then flags: a newstyle greeting.
	greeting := append([]byte("NBDMAGIC"), 0x49, 0x48, 0x41, 0x56, 0x45, 0x4F, 0x50, 0x54, 0, 3)
	for _, c := range []struct {
		name     string
		greeting []byte
		random   int
		hangUp   bool
	}{
		{"random bytes", nil, 4096, false},
		{"random bytes, then hanging up", nil, 100, true},
		{"a greeting, then random bytes", greeting, 4096, false},
		{"a greeting, then hanging up", greeting, 0, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := start(t, procOpts{}, plugin, "socket="+garbageServer(t, c.greeting, c.random, c.hangUp))
			clientFails(t, p.sock, c.name)
			clientFails(t, p.sock, c.name+", again")
			if !p.running() {
				t.Fatal("nbdkit exited")
			}
			// No Go panic: the harness checks nbdkit's stderr at the end.
		})
	}
}
