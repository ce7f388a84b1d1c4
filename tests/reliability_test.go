package tests

// Reliability: data integrity under load, no leaks, clients and servers
// that die or misbehave, and configuration errors.

import (
	"bufio"
	"bytes"
	"crypto/rand"
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

// syncBuffer is a bytes.Buffer that a process writes while the test
// reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// nbdkitProc is a foreground nbdkit started by startProc.
type nbdkitProc struct {
	cmd    *exec.Cmd
	pid    int
	stderr *syncBuffer
	done   chan struct{}
}

// startProc runs nbdkit -f with args (which say where it listens),
// waits for ready(), and stops it at the end of the test.  Unlike
// startNbdkit it returns the process, for its pid and stderr.
func startProc(t *testing.T, ready func(), args ...string) *nbdkitProc {
	t.Helper()
	p := &nbdkitProc{stderr: &syncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command("nbdkit", append([]string{"-f"}, args...)...)
	p.cmd.Stderr = p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p.pid = p.cmd.Process.Pid
	go func() { p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
			p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("nbdkit %s stderr:\n%s", strings.Join(args, " "), p.stderr.String())
		}
	})
	ready()
	return p
}

// startUnixProc runs nbdkit -f on the Unix socket sock (made up if "").
func startUnixProc(t *testing.T, sock string, args ...string) (*nbdkitProc, string) {
	t.Helper()
	if sock == "" {
		sock = filepath.Join(t.TempDir(), "nbd.sock")
	}
	p := startProc(t, func() { waitSocket(t, sock) }, append([]string{"-U", sock}, args...)...)
	return p, sock
}

// kill ends the process at once (SIGKILL) and waits for it.
func (p *nbdkitProc) kill() {
	p.cmd.Process.Kill()
	<-p.done
}

// running reports whether the process has not exited.
func (p *nbdkitProc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

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
// to at most base+slack, and fails the test if they do not.
func settles(t *testing.T, p *nbdkitProc, fds, threads int, what string) {
	t.Helper()
	const fdSlack, threadSlack = 2, 4
	var nfd, nthr int
	deadline := time.Now().Add(10 * time.Second)
	for {
		nfd, nthr = countDir(t, p.pid, "fd"), countDir(t, p.pid, "task")
		if nfd <= fds+fdSlack && nthr <= threads+threadSlack {
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

// lineProc is a Python script whose output lines the test reads as
// they come.
type lineProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string
	done  chan struct{}
	err   error
	errb  *syncBuffer
}

func startPython(t *testing.T, script string, args ...string) *lineProc {
	t.Helper()
	lp := &lineProc{lines: make(chan string, 1000), done: make(chan struct{}), errb: &syncBuffer{}}
	lp.cmd = exec.Command("/usr/bin/python3", append([]string{"-u", "-c", script}, args...)...)
	lp.cmd.Stderr = lp.errb
	var err error
	if lp.stdin, err = lp.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	out, err := lp.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := lp.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lp.lines <- sc.Text()
		}
		lp.err = lp.cmd.Wait()
		close(lp.lines)
		close(lp.done)
	}()
	t.Cleanup(func() {
		lp.cmd.Process.Kill()
		<-lp.done
	})
	return lp
}

// expect waits up to d for the next line and checks it starts with
// prefix; it returns the line.
func (lp *lineProc) expect(t *testing.T, prefix string, d time.Duration) string {
	t.Helper()
	select {
	case l, ok := <-lp.lines:
		if !ok {
			<-lp.done
			t.Fatalf("python ended (%v) waiting for %q: %s", lp.err, prefix, lp.errb.String())
		}
		if !strings.HasPrefix(l, prefix) {
			t.Fatalf("python said %q, want %q...; stderr: %s", l, prefix, lp.errb.String())
		}
		return l
	case <-time.After(d):
		t.Fatalf("no %q from python within %v (a hang?); stderr: %s", prefix, d, lp.errb.String())
	}
	return ""
}

// fio runs fio against an NBD URI and fails the test on any error or
// verify message.
func fio(t *testing.T, uri string, extra ...string) {
	t.Helper()
	out, err := fioErr(uri, extra...)
	if err != nil || strings.Contains(out, "verify:") || !strings.Contains(out, "err= 0") {
		t.Fatalf("fio %s: %v\n%s", strings.Join(extra, " "), err, out)
	}
}

func fioErr(uri string, extra ...string) (string, error) {
	args := append([]string{"--name=integrity", "--ioengine=nbd", "--uri=" + uri,
		"--rw=randwrite", "--bs=4k", "--iodepth=32", "--size=64M",
		"--verify=crc32c", "--verify_fatal=1", "--verify_state_save=0"}, extra...)
	out, err := exec.Command("fio", args...).CombinedOutput()
	return string(out), err
}

// Random 4k writes at depth 32 through the proxy, verified by fio
// through the proxy and then by a second fio through the server alone.
func TestFioRandomWriteVerify(t *testing.T) {
	server := startServer(t, "memory", "64M")
	proxy := startProxy(t, "socket="+server)
	fio(t, unixURI(proxy), "--do_verify=1")
	fio(t, unixURI(server), "--verify_only")

	// The check can fail: the same verification of a fresh, empty
	// server finds bad blocks.
	empty := startServer(t, "memory", "64M")
	if out, err := fioErr(unixURI(empty), "--verify_only"); err == nil && !strings.Contains(out, "verify:") {
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
			out, err := runErr("/usr/bin/python3", "-c", writerScript, proxy, path,
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
	server := startServer(t, "memory", "1M")
	p, proxy := startUnixProc(t, "", plugin, "socket="+server)
	loops := func(parallel, each int) {
		var wg sync.WaitGroup
		for i := 0; i < parallel; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if out, err := runErr("/usr/bin/python3", "-c", connectLoopScript, proxy, strconv.Itoa(each)); err != nil || strings.TrimSpace(out) != "ok" {
					t.Errorf("connection loop: %v %s", err, out)
				}
			}()
		}
		wg.Wait()
	}
	// Warm up, so that the Go runtime has the threads it keeps.
	loops(3, 10)
	time.Sleep(300 * time.Millisecond)
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
	for attempt := 1; ; attempt++ {
		if clientDies(t, attempt < 3) {
			return
		}
	}
}

// clientDies runs the scenario once.  nbdkit 1.32.5 itself sometimes
// aborts when many worker threads reply at once to a client that has
// gone ("raw_send_socket: Assertion `sock >= 0' failed", a race in
// nbdkit's connections.c, whatever the plugin); with retry set, that
// abort is logged and reported as false, for another attempt.
func clientDies(t *testing.T, retry bool) bool {
	// The server takes 1 s per read, so the requests are still with
	// the server when the client dies.
	server := startServer(t, "--filter=delay", "memory", "64M", "rdelay=1")
	p, proxy := startUnixProc(t, "", plugin, "socket="+server)
	python(t, connectLoopScript, proxy, "3") // warm up
	time.Sleep(300 * time.Millisecond)
	fds, threads := countDir(t, p.pid, "fd"), countDir(t, p.pid, "task")

	steady := startPython(t, steadyClientScript, proxy)
	steady.expect(t, "connected", 10*time.Second)
	dying := startPython(t, dyingClientScript, proxy)
	dying.expect(t, "issued 64", 10*time.Second)
	time.Sleep(300 * time.Millisecond)
	dying.cmd.Process.Kill()
	<-dying.done

	// The replies to the dead client are sent about now.
	time.Sleep(1500 * time.Millisecond)
	if !p.running() && retry && strings.Contains(p.stderr.String(), "raw_send_socket: Assertion") {
		t.Logf("nbdkit's own race (raw_send_socket assertion) ended the proxy; trying again")
		return false
	}

	fmt.Fprintln(steady.stdin, "go")
	steady.expect(t, "ok", 15*time.Second)
	if out := python(t, newClientScript, proxy); strings.TrimSpace(out) != "ok" {
		t.Fatalf("new client: %q", out)
	}
	fmt.Fprintln(steady.stdin, "again")
	steady.expect(t, "ok", 15*time.Second)
	steady.stdin.Close()
	<-steady.done
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
// later requests fail promptly; it returns the server's socket.
func serverDies(t *testing.T, shared bool) (proxy *nbdkitProc, proxySock string, serverSock string) {
	server, serverSock := startUnixProc(t, "", "memory", "64M")
	params := []string{plugin, "socket=" + serverSock}
	if shared {
		params = append(params, "shared=true")
	}
	proxy, proxySock = startUnixProc(t, "", params...)
	load := startPython(t, loadScript, proxySock)
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
	return proxy, proxySock, serverSock
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
	proxy, proxySock, serverSock := serverDies(t, false)
	// The server comes back on the same socket: a new client is served.
	os.Remove(serverSock)
	startUnixProc(t, serverSock, "memory", "64M")
	if out := python(t, newClientScript, proxySock); strings.TrimSpace(out) != "ok" {
		t.Fatalf("new client after the server came back: %q", out)
	}
	if !proxy.running() {
		t.Fatal("nbdkit exited")
	}
}

func TestServerDiesUnderLoadShared(t *testing.T) {
	proxy, proxySock, _ := serverDies(t, true)
	// The one server connection is gone: a new client fails, promptly.
	start := time.Now()
	if _, err := runErr("/usr/bin/python3", "-c", newClientScript, proxySock); err == nil {
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
	out, err := runErr("/usr/bin/python3", "-c", newClientScript, proxySock)
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
	dead := filepath.Join(t.TempDir(), "nothing.sock")
	// A socket file nobody listens on, and no file at all.
	l, err := net.Listen("unix", dead)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	for _, sock := range []string{dead, filepath.Join(t.TempDir(), "absent.sock")} {
		p, proxy := startUnixProc(t, "", plugin, "socket="+sock)
		clientFails(t, proxy, "no server")
		clientFails(t, proxy, "no server, again")
		if !p.running() {
			t.Fatal("nbdkit exited")
		}
	}
}

// garbageServer listens on a Unix socket and answers every connection
// with greeting followed by random bytes, and then reads all the peer
// sends, or with hangUp closes the connection.
func garbageServer(t *testing.T, greeting []byte, random int, hangUp bool) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "garbage.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				junk := make([]byte, random)
				rand.Read(junk)
				c.Write(append(append([]byte{}, greeting...), junk...))
				if hangUp {
					return
				}
				c.SetReadDeadline(time.Now().Add(30 * time.Second))
				io.Copy(io.Discard, c)
			}()
		}
	}()
	return sock
}

func TestGarbageServer(t *testing.T) {
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
			p, proxy := startUnixProc(t, "", plugin, "socket="+garbageServer(t, c.greeting, c.random, c.hangUp))
			clientFails(t, proxy, c.name)
			clientFails(t, proxy, c.name+", again")
			if !p.running() {
				t.Fatal("nbdkit exited")
			}
			if s := p.stderr.String(); strings.Contains(s, "panic") || strings.Contains(s, "goroutine ") {
				t.Fatalf("a Go panic:\n%s", s)
			}
		})
	}
}

// Bad configuration: refused before serving, with one line naming the
// key (and value), a non-zero exit, no Go panic, and no pid file.
func TestBadConfiguration(t *testing.T) {
	server := startServer(t, "memory", "1M")
	s := "socket=" + server
	long := "socket=/tmp/" + strings.Repeat("x", 120) + ".sock"
	for _, c := range []struct {
		params []string
		want   []string // the message mentions each
	}{
		{nil, []string{"no server"}},
		{[]string{s, "hostname=localhost"}, []string{"socket=", "hostname=localhost"}},
		{[]string{"port=10809"}, []string{"port=10809"}},
		{[]string{s, "retry=-1"}, []string{"retry=-1"}},
		{[]string{s, "retry=abc"}, []string{"retry=abc"}},
		{[]string{s, "retry=99999999999"}, []string{"retry=99999999999"}},
		{[]string{s, "shared=maybe"}, []string{"shared=maybe"}},
		{[]string{s, "tls=sometimes"}, []string{"tls=sometimes"}},
		{[]string{s, "tls-verify=perhaps"}, []string{"tls-verify=perhaps"}},
		{[]string{"socket-fd=abc"}, []string{"socket-fd=abc"}},
		{[]string{"socket-fd=-5"}, []string{"socket-fd=-5"}},
		{[]string{"vsock=abc"}, []string{"vsock=abc"}},
		{[]string{"vsock=2", "port=abc"}, []string{"port=abc"}},
		{[]string{s, "dynamic-export=true", "export=foo"}, []string{"dynamic-export", "export=foo"}},
		{[]string{s, "dynamic-export=true", "shared=true"}, []string{"dynamic-export", "shared=true"}},
		{[]string{"command=nbdkit", "dynamic-export=true"}, []string{"dynamic-export", "command="}},
		{[]string{s, "frobnicate=7"}, []string{"frobnicate=7"}},
		{[]string{long}, []string{"socket=", "107"}},
		{[]string{"socket="}, []string{"socket="}},
		{[]string{s, "tls-psk="}, []string{"tls-psk="}},
		{[]string{"hostname=localhost", "port=70000"}, []string{"port=70000"}},
		{[]string{"hostname=localhost", "port=-1"}, []string{"port=-1"}},
		{[]string{"http://example.com/disk"}, []string{"http://example.com/disk"}},
		{[]string{"uri=http://example.com/disk"}, []string{"http://example.com/disk"}},
		{[]string{"arg=x"}, []string{"no server"}},
	} {
		dir := t.TempDir()
		sock, pidFile := filepath.Join(dir, "s"), filepath.Join(dir, "p")
		cmd := exec.Command("nbdkit", append([]string{"-U", sock, "-P", pidFile, plugin}, c.params...)...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		msg := stderr.String()
		name := strings.Join(c.params, " ")
		if err == nil {
			t.Errorf("%s: nbdkit exited 0", name)
			if b, err := os.ReadFile(pidFile); err == nil {
				if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
					syscall.Kill(pid, syscall.SIGKILL)
				}
			}
			continue
		}
		if _, ok := err.(*exec.ExitError); !ok {
			t.Errorf("%s: %v", name, err)
		}
		if lines := strings.Split(strings.TrimRight(msg, "\n"), "\n"); len(lines) != 1 || msg == "" {
			t.Errorf("%s: stderr has %d lines, want 1:\n%s", name, len(lines), msg)
		}
		for _, w := range c.want {
			if !strings.Contains(msg, w) {
				t.Errorf("%s: message %q does not mention %q", name, msg, w)
			}
		}
		if strings.Contains(msg, "panic") || strings.Contains(msg, "goroutine ") {
			t.Errorf("%s: a Go panic: %s", name, msg)
		}
		for _, f := range []string{sock, pidFile} {
			if _, err := os.Stat(f); err == nil {
				t.Errorf("%s: %s left behind", name, f)
			}
		}
	}
}
