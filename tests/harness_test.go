// SPDX-License-Identifier: BSD-3-Clause

// Package tests runs the built plugin in real nbdkit processes against
// real NBD servers and clients.  Run with `make check` (which builds the
// plugin first).
//
// This file is the harness every test uses: one way to start a process
// (start, and the proc it returns), need for the tools a test needs,
// and the suite-wide guard that fails any test whose nbdkit printed a
// Go trace.
package tests

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"nbdkit-nbd-go-plugin/tests/internal/chans"
)

// plugin is the built .so, made absolute; NBDGO_PLUGIN=PATH tests
// another build (an older one, to show that a test catches its bug).
var plugin = func() string {
	p := "../nbdkit-nbd-go-plugin.so"
	if so := os.Getenv("NBDGO_PLUGIN"); so != "" {
		p = so
	}
	p, err := filepath.Abs(p)
	if err != nil {
		panic(err)
	}
	return p
}()

func TestMain(m *testing.M) {
	for _, so := range []string{plugin, ramdisk} {
		if _, err := os.Stat(so); err != nil {
			fmt.Fprintf(os.Stderr, "%s is not built: run make first\n", so)
			os.Exit(1)
		}
	}
	os.Exit(m.Run())
}

// ---- Tools

// pythonNbd names python3 with libnbd's Python module (python3-libnbd),
// which the client scripts need.
const pythonNbd = "python3-nbd"

// python3 is the interpreter the client scripts run under: Debian's, for
// which python3-libnbd installs the nbd module, not whichever python3 is
// first on PATH.
const python3 = "/usr/bin/python3"

var (
	haveMu sync.Mutex
	have   = map[string]bool{}
)

// need skips the test, naming the tool, unless every tool is installed.
// A tool is a program on PATH (or by path), pythonNbd, or one of
// nbdkit's own plugins or filters by its manual page's name:
// nbdkit-memory-plugin, nbdkit-delay-filter.
func need(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if strings.HasPrefix(tool, "nbdkit-") {
			need(t, "nbdkit")
		}
		haveMu.Lock()
		ok, known := have[tool]
		if !known {
			ok = installed(tool)
			have[tool] = ok
		}
		haveMu.Unlock()
		if !ok {
			t.Skipf("needs %s (not installed)", tool)
		}
	}
}

// installed says whether a tool of need's is installed.
func installed(tool string) bool {
	quiet := func(name string, args ...string) bool {
		return exec.Command(name, args...).Run() == nil
	}
	switch {
	case tool == pythonNbd:
		return quiet(python3, "-c", "import nbd")
	case strings.HasPrefix(tool, "nbdkit-") && strings.HasSuffix(tool, "-plugin"):
		name := strings.TrimSuffix(strings.TrimPrefix(tool, "nbdkit-"), "-plugin")
		return quiet("nbdkit", "--dump-plugin", name)
	case strings.HasPrefix(tool, "nbdkit-") && strings.HasSuffix(tool, "-filter"):
		name := strings.TrimSuffix(strings.TrimPrefix(tool, "nbdkit-"), "-filter")
		return quiet("nbdkit", "--filter="+name, "null", "--version")
	}
	_, err := exec.LookPath(tool)
	return err == nil
}

// needFilters needs the filter of every --filter= in args.
func needFilters(t testing.TB, args []string) {
	t.Helper()
	for _, a := range args {
		if strings.HasPrefix(a, "--filter=") {
			need(t, "nbdkit-"+strings.TrimPrefix(a, "--filter=")+"-filter")
		}
	}
}

// ---- The Go-trace guard

// goTraceLine is a line of what the Go runtime prints when it dies: a
// fatal error, an unrecovered panic, or a goroutine of the dump.
var goTraceLine = regexp.MustCompile(`fatal error: |panic: |goroutine \d+ \[`)

// goTrace returns the lines of s that belong to a Go trace (at most 20),
// or nil.
func goTrace(s string) []string {
	var lines []string
	for _, l := range strings.Split(s, "\n") {
		if goTraceLine.MatchString(l) && len(lines) < 20 {
			lines = append(lines, l)
		}
	}
	return lines
}

// noGoTrace fails the test if stderr, what a process named what printed,
// holds a Go trace.  The harness calls it for every process it starts and
// every command it runs; a test that captures stderr itself calls it too.
func noGoTrace(t testing.TB, what, stderr string) {
	t.Helper()
	if lines := goTrace(stderr); lines != nil {
		t.Errorf("%s: a Go trace on stderr:\n%s", what, strings.Join(lines, "\n"))
	}
}

// noGoTraceInFile is noGoTrace for a file a process writes its stderr to,
// read at the end of the test.
func noGoTraceInFile(t *testing.T, what, path string) {
	t.Cleanup(func() {
		b, _ := os.ReadFile(path)
		noGoTrace(t, what, string(b))
	})
}

// ---- Processes

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

// procOpts says how start runs a process.  The zero value runs nbdkit -f
// on a new Unix socket and waits until it listens there.
type procOpts struct {
	prog   string     // the program; "" is nbdkit, run with -f
	sock   string     // nbdkit: -U sock (a new one if ""); others: a socket to wait for
	tcp    bool       // nbdkit: -p PORT -i 127.0.0.1, on a free port, instead of -U
	bare   bool       // nbdkit: no -f, -U or -p, the arguments say it all (sock is waited for)
	noWait bool       // do not wait for the socket or port (nothing listens yet)
	extra  []*os.File // fds 3, 4, ... of the process
	stdin  io.Reader
	stdout io.Writer
}

// proc is a foreground process that start started.  At the end of the
// test it is stopped (SIGTERM, then SIGKILL after 5 s), its stderr is
// checked for a Go trace, and logged if the test failed.  An nbdkit
// that exited before then fails the test, unless the test ended it
// (kill, stop) or took note of its end (wait), and so does one that
// does not exit 0 on that SIGTERM: a crashed proxy must not go
// unnoticed because its clients' failures were expected anyway.
type proc struct {
	t      *testing.T
	o      procOpts
	args   []string    // as given to start (or restart)
	sock   string      // the Unix socket it listens on, if any
	port   int         // the TCP port it listens on, if any
	stderr *syncBuffer // everything it wrote to stderr, across restarts
	cmd    *exec.Cmd
	pid    int
	done   chan struct{} // closed when it has exited
	err    error         // how it exited, once done is closed
	ended  atomic.Bool   // the test ended it or saw it end (kill, stop, wait)
}

// start runs a process, by default nbdkit -f on a new Unix socket.
func start(t *testing.T, o procOpts, args ...string) *proc {
	t.Helper()
	p := &proc{t: t, o: o, args: args, stderr: &syncBuffer{}}
	if o.prog == "" {
		need(t, "nbdkit")
		needFilters(t, args)
		switch {
		case o.tcp:
			p.port = freePort(t)
		case o.sock != "" || o.bare:
			p.sock = o.sock
		default:
			p.sock = filepath.Join(t.TempDir(), "nbd.sock")
		}
	} else {
		need(t, o.prog)
		p.sock = o.sock
	}
	p.launch()
	t.Cleanup(p.cleanup)
	p.waitReady()
	return p
}

// String names the process for messages.
func (p *proc) String() string {
	return filepath.Base(p.cmd.Path) + " " + shortArgs(p.cmd.Args[1:])
}

func (p *proc) launch() {
	t := p.t
	t.Helper()
	var cmd *exec.Cmd
	switch {
	case p.o.prog == "" && p.o.bare:
		cmd = exec.Command("nbdkit", p.args...)
	case p.o.prog == "":
		args := []string{"-f"}
		if p.port != 0 {
			args = append(args, "-p", strconv.Itoa(p.port), "-i", "127.0.0.1")
		} else {
			args = append(args, "-U", p.sock)
		}
		cmd = exec.Command("nbdkit", append(args, p.args...)...)
	default:
		cmd = exec.Command(p.o.prog, p.args...)
	}
	// stderr through a pipe of our own, not exec's copying: a child it
	// leaves behind (qemu-nbd, a shell's sleep) may hold stderr open,
	// which must not keep Wait waiting once the process has exited.
	// (exec.Cmd.WaitDelay would do, from Go 1.20; go.mod says 1.19.)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	copied := make(chan struct{})
	go func() {
		io.Copy(p.stderr, r)
		r.Close()
		close(copied)
	}()
	cmd.ExtraFiles = p.o.extra
	cmd.Stdin, cmd.Stdout, cmd.Stderr = p.o.stdin, p.o.stdout, w
	err = cmd.Start()
	w.Close()
	if err != nil {
		t.Fatal(err)
	}
	p.cmd, p.pid, p.done = cmd, cmd.Process.Pid, make(chan struct{})
	p.ended.Store(false)
	go func(done chan struct{}) {
		p.err = cmd.Wait()
		select {
		case <-copied:
		case <-time.After(2 * time.Second):
		}
		close(done)
	}(p.done)
}

// waitReady waits until the process accepts connections where it
// listens, and fails the test at once if it exits first.
func (p *proc) waitReady() {
	p.t.Helper()
	switch {
	case p.o.noWait:
	case p.port != 0:
		waitListener(p.t, "tcp", p.addr(), p)
	case p.sock != "":
		waitListener(p.t, "unix", p.sock, p)
	}
}

func (p *proc) cleanup() {
	t := p.t
	if err := p.unexpectedExit(); err != nil {
		t.Error(err)
	}
	wasRunning := p.running()
	if err := p.stop(5 * time.Second); err != nil {
		t.Logf("%v; killed", err)
	} else if wasRunning && p.o.prog == "" && p.err != nil {
		// nbdkit exits 0 on SIGTERM: anything else is a crash, maybe
		// one that began before the end of the test.
		t.Errorf("%s exited with %v on SIGTERM at the end of the test", p, p.err)
	}
	noGoTrace(t, p.String(), p.stderr.String())
	if t.Failed() && p.stderr.String() != "" {
		t.Logf("%s stderr:\n%s", p, p.stderr.String())
	}
}

// unexpectedExit is an error if the process is an nbdkit that has
// exited, and the test neither ended it (kill, stop) nor took note of
// its end (wait).
func (p *proc) unexpectedExit() error {
	if p.o.prog == "" && !p.running() && !p.ended.Load() {
		return fmt.Errorf("%s exited during the test, and the test neither ended it nor expected it: %v", p, p.err)
	}
	return nil
}

// addr is the TCP address it listens on.
func (p *proc) addr() string { return fmt.Sprintf("127.0.0.1:%d", p.port) }

// uri is the NBD URI of where it listens.
func (p *proc) uri() string {
	if p.port != 0 {
		return "nbd://" + p.addr()
	}
	return unixURI(p.sock)
}

// running reports whether the process has not exited.
func (p *proc) running() bool { return !chans.Closed(p.done) }

// wait waits for the process to exit and says how it did.
func (p *proc) wait() error {
	p.ended.Store(true)
	<-p.done
	return p.err
}

// kill ends the process at once (SIGKILL) and waits for it.
func (p *proc) kill() {
	p.ended.Store(true)
	p.cmd.Process.Kill()
	<-p.done
}

// stop sends SIGTERM and waits up to d for the process to exit; if it
// does not, stop kills it and says so.
func (p *proc) stop(d time.Duration) error {
	p.ended.Store(true)
	if !p.running() {
		return nil
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-time.After(d):
		p.kill()
		return fmt.Errorf("%s did not exit %v after SIGTERM", p, d)
	}
}

// relaunch starts the process again where it listened, after kill,
// with args if given, else as before, and waits until it listens.  A
// test that checks what clients do while a server is away kills it,
// waits for what shows the clients are waiting (waitFor: the proxy's
// log, a request having reached the proxy), and then relaunches it:
// never a pause, which on a slow machine orders nothing.
func (p *proc) relaunch(args ...string) {
	p.t.Helper()
	if p.running() {
		p.t.Fatalf("relaunch: %s still runs (kill it first)", p)
	}
	if args != nil {
		p.args = args
	}
	if p.sock != "" {
		os.Remove(p.sock)
	}
	p.launch()
	p.waitReady()
}

// stderrCount is how many times s occurs in what the process (all its
// launches) wrote to stderr so far.
func (p *proc) stderrCount(s string) int { return strings.Count(p.stderr.String(), s) }

// waitStderr waits until the process's stderr holds s at least n
// times, failing the test after d or as soon as the process, or one of
// also (say the client whose request should cause the message), exits.
func (p *proc) waitStderr(t *testing.T, s string, n int, d time.Duration, also ...*proc) {
	t.Helper()
	waitFor(t, d, fmt.Sprintf("%q %d times on the stderr of %s", s, n, p),
		func() bool { return p.stderrCount(s) >= n }, append([]*proc{p}, also...)...)
}

// mustRun fails the test unless the process runs: not exited, and not
// a zombie not reaped yet (whose fds and threads /proc counts as none).
func (p *proc) mustRun(t *testing.T, what string) {
	t.Helper()
	if !p.running() || !runs(p.pid) {
		p.wait()
		t.Fatalf("%s: %s has exited: %v", what, p, p.err)
	}
}

// ---- Waiting for events

// waitFor waits until cond holds, polling it, and fails the test if it
// does not within d: a deadline fails a test, it never passes one.  It
// fails at once if one of the processes must exits meanwhile, so that a
// crash is reported as one and not as a slow event.  d is generous: a
// test waits for an event, never for a time.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool, must ...*proc) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		for _, p := range must {
			if !p.running() {
				p.wait()
				t.Fatalf("%s exited (%v) while the test waited for %s", p, p.err, what)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s within %v", what, d)
		}
		time.Sleep(10 * time.Millisecond) // how often to look, not an order of events
	}
}

// clientConns is the number of connections that the process listening
// on the Unix socket sock has accepted and not closed yet, as the
// kernel counts them (/proc/net/unix: an accepted socket carries the
// listener's path, a client's socket none).
func clientConns(t testing.TB, sock string) int {
	t.Helper()
	b, err := os.ReadFile("/proc/net/unix")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, l := range strings.Split(string(b), "\n")[1:] {
		// Num RefCount Protocol Flags Type St Inode Path
		f := strings.Fields(l)
		if len(f) >= 8 && f[5] == "03" && strings.Join(f[7:], " ") == sock {
			n++
		}
	}
	return n
}

// waitClientConns waits until the nbdkit p (on a Unix socket) has
// exactly n client connections open: with n the clients that are still
// connected, nbdkit has finished with every other one, so that what it
// holds (fds, threads) can be counted.
func waitClientConns(t *testing.T, p *proc, n int) {
	t.Helper()
	waitFor(t, 30*time.Second, fmt.Sprintf("%d client connections of %s", n, p),
		func() bool { return clientConns(t, p.sock) == n }, p)
}

// unixServer listens on a new Unix socket until the end of the test and
// runs serve, in a goroutine of its own, for each connection (which it
// closes when serve returns).  For small misbehaving servers.
func unixServer(t *testing.T, serve func(c net.Conn)) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "server.sock")
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
				serve(c)
			}()
		}
	}()
	return sock
}

// unixURI is the NBD URI of a Unix socket.
func unixURI(sock string) string { return "nbd+unix:///?socket=" + sock }

// waitSocket waits until something accepts connections on sock.
func waitSocket(t *testing.T, sock string) {
	t.Helper()
	waitListener(t, "unix", sock)
}

// waitListener waits until something accepts connections on addr,
// failing the test if nothing does within 10 s or if one of the
// processes must (the one that should listen) exits first.
func waitListener(t *testing.T, network, addr string, must ...*proc) {
	t.Helper()
	waitFor(t, 10*time.Second, "listener on "+addr, func() bool {
		c, err := net.Dial(network, addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	}, must...)
}

// freePort returns a TCP port on 127.0.0.1 that nothing listens on
// (at the time of asking).
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startNbdkit runs nbdkit -f on a new Unix socket with the given
// arguments (plugin, parameters, options), stops it at the end of the
// test, and returns the socket.
func startNbdkit(t *testing.T, args ...string) string {
	t.Helper()
	return start(t, procOpts{}, args...).sock
}

// startServer starts an nbdkit server (a plugin such as memory) for the
// proxy to forward to.
func startServer(t *testing.T, args ...string) string { return startNbdkit(t, args...) }

// startProxy starts nbdkit with our plugin in front of a server.
func startProxy(t *testing.T, params ...string) string {
	return startNbdkit(t, append([]string{plugin}, params...)...)
}

// startCProxy starts nbdkit with the C nbd plugin, for comparison.
func startCProxy(t *testing.T, params ...string) string {
	return startNbdkit(t, append([]string{"nbd"}, params...)...)
}

// startTCPServer runs nbdkit on a free TCP port of 127.0.0.1 and returns
// the port.
func startTCPServer(t *testing.T, args ...string) int {
	t.Helper()
	return start(t, procOpts{tcp: true}, args...).port
}

// startSocketFDProxy runs nbdkit PROXY socket-fd=3 with fd 3 a
// connection to the server's Unix socket, and returns nbdkit's own
// socket.  proxy is plugin (ours) or "nbd" (the C plugin).
func startSocketFDProxy(t *testing.T, proxy, server string, params ...string) string {
	t.Helper()
	c, err := net.Dial("unix", server)
	if err != nil {
		t.Fatal(err)
	}
	f, err := c.(*net.UnixConn).File()
	c.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close() // nbdkit has its own copy once started
	o := procOpts{extra: []*os.File{f}}
	return start(t, o, append([]string{proxy, "socket-fd=3"}, params...)...).sock
}

// ---- Clients and commands

// lineProc is a process (a Python client) whose output lines the test
// reads as they come, and whose stdin the test writes.
type lineProc struct {
	*proc
	stdin io.WriteCloser
	lines chan string
}

// startPython runs a Python script (with the nbd module) as a lineProc.
func startPython(t *testing.T, script string, args ...string) *lineProc {
	t.Helper()
	need(t, pythonNbd)
	inR, inW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	lp := &lineProc{stdin: inW, lines: make(chan string, 1000)}
	lp.proc = start(t, procOpts{prog: python3, stdin: inR, stdout: outW},
		append([]string{"-u", "-c", script}, args...)...)
	inR.Close()
	outW.Close()
	t.Cleanup(func() { inW.Close() })
	go func() {
		sc := bufio.NewScanner(outR)
		for sc.Scan() {
			lp.lines <- sc.Text()
		}
		close(lp.lines)
		outR.Close()
	}()
	return lp
}

// expect waits up to d for the next line and checks it starts with
// prefix; it returns the line.
func (lp *lineProc) expect(t *testing.T, prefix string, d time.Duration) string {
	t.Helper()
	select {
	case l, ok := <-lp.lines:
		if !ok {
			t.Fatalf("python ended (%v) waiting for %q: %s", lp.wait(), prefix, lp.stderr.String())
		}
		if !strings.HasPrefix(l, prefix) {
			t.Fatalf("python said %q, want %q...; stderr: %s", l, prefix, lp.stderr.String())
		}
		return l
	case <-time.After(d):
		t.Fatalf("no %q from python within %v (a hang?); stderr: %s", prefix, d, lp.stderr.String())
	}
	return ""
}

// rest waits up to d for the script to end and returns the lines it
// printed that no expect took.
func (lp *lineProc) rest(t *testing.T, d time.Duration) string {
	t.Helper()
	var out []string
	timeout := time.After(d)
	for {
		select {
		case l, ok := <-lp.lines:
			if !ok {
				lp.wait()
				return strings.Join(out, "\n")
			}
			out = append(out, l)
		case <-timeout:
			t.Fatalf("python still runs after %v (a hang?); it said %q; stderr: %s", d, out, lp.stderr.String())
		}
	}
}

// run runs a command and returns its stdout; stderr goes into the
// failure message.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	need(t, name)
	out, err := runErr(t, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v", name, strings.Join(args, " "), err)
	}
	return out
}

// runErr runs a command and returns its stdout, and an error with its
// stderr if it fails.  Unlike run it may be called from any goroutine.
func runErr(t testing.TB, name string, args ...string) (string, error) {
	stdout, stderr, err := runOut(t, name, args...)
	if err != nil {
		return stdout, fmt.Errorf("%v: %s", err, stderr)
	}
	return stdout, nil
}

// runOut runs a command (killed after 2 minutes) and returns its stdout
// and stderr.  Its stderr (and so that of any nbdkit it runs, such as
// the daemon's parent, --run's, or a client's nbdkit -s) must hold no Go
// trace.
func runOut(t testing.TB, name string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	return runOutFiles(t, nil, name, args...)
}

// runOutFiles is runOut, handing the command extra (as fds 3, 4, ...).
func runOutFiles(t testing.TB, extra []*os.File, name string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.ExtraFiles = extra
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	noGoTrace(t, name+" "+shortArgs(args), errb.String())
	return out.String(), errb.String(), err
}

// shortArgs is args for a message, each cut to one short line.
func shortArgs(args []string) string {
	s := make([]string, len(args))
	for i, a := range args {
		a = strings.ReplaceAll(a, "\n", " ")
		if len(a) > 60 {
			a = a[:60] + "..."
		}
		s[i] = a
	}
	return strings.Join(s, " ")
}

// python runs a Python script (with the nbd module) with arguments.
func python(t *testing.T, script string, args ...string) string {
	t.Helper()
	need(t, pythonNbd)
	return run(t, python3, append([]string{"-c", script}, args...)...)
}

// ---- nbdkit in the background

// daemon is an nbdkit that forked into the background.
type daemon struct {
	sock   string // where it listens
	pid    int    // the background process, killed at the end of the test
	stderr string // the file nbdkit's stderr went to
}

// daemonize runs nbdkit as most people do: no -f, so that it forks into
// the background after config_complete; args are the options, plugin and
// parameters.  Its stderr goes to a file (a pipe would be held open by
// the daemon with -v), checked for a Go trace at the end of the test.
func daemonize(t *testing.T, args ...string) *daemon {
	t.Helper()
	need(t, "nbdkit")
	needFilters(t, args)
	dir := t.TempDir()
	d := &daemon{sock: filepath.Join(dir, "nbdkit.sock"), stderr: filepath.Join(dir, "stderr")}
	pidFile := filepath.Join(dir, "nbdkit.pid")
	f, err := os.Create(d.stderr)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	noGoTraceInFile(t, "nbdkit "+shortArgs(args), d.stderr)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nbdkit", append([]string{"-U", d.sock, "-P", pidFile}, args...)...)
	cmd.Stderr = f
	if err := cmd.Run(); err != nil {
		t.Fatalf("nbdkit %s: %v\n%s", shortArgs(args), err, d.log())
	}
	waitSocket(t, d.sock)
	d.pid = daemonPid(t, pidFile)
	return d
}

// log is what nbdkit has written to stderr so far.
func (d *daemon) log() string {
	b, _ := os.ReadFile(d.stderr)
	return string(b)
}

// stop sends SIGTERM and fails the test unless nbdkit exits within 2 s:
// no thread of the plugin may keep it alive.
func (d *daemon) stop(t *testing.T) {
	t.Helper()
	syscall.Kill(d.pid, syscall.SIGTERM)
	for deadline := time.Now().Add(2 * time.Second); alive(d.pid) && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if alive(d.pid) {
		t.Fatalf("nbdkit (pid %d) still runs 2 s after SIGTERM", d.pid)
	}
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

// runs says whether the process pid exists and is not a zombie (one
// that has exited, not yet reaped by its parent).
func runs(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	return len(f) > 0 && f[0] != "Z"
}

// ---- Data

// randomFile writes size random bytes to a new file.
func randomFile(t *testing.T, size int) (string, []byte) {
	t.Helper()
	data := make([]byte, size)
	rand.Read(data)
	path := filepath.Join(t.TempDir(), "data")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path, data
}

// readAll copies an export into a file and returns its bytes.
func readAll(t *testing.T, uri string) []byte {
	t.Helper()
	path := filepath.Join(t.TempDir(), "out")
	run(t, "nbdcopy", uri, path)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// sameBytes fails the test if got and want differ, naming the first
// differing offset.
func sameBytes(t *testing.T, what string, got, want []byte) {
	t.Helper()
	if len(got) < len(want) {
		t.Fatalf("%s: read %d bytes, want at least %d", what, len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("%s: first difference at byte %d", what, i)
		}
	}
}

// copyThrough writes random data through the proxy and checks it reads
// back the same through the proxy and through the server directly.
func copyThrough(t *testing.T, proxyURI, serverURI string, size int) {
	t.Helper()
	path, data := randomFile(t, size)
	run(t, "nbdcopy", path, proxyURI)
	sameBytes(t, "read through the proxy", readAll(t, proxyURI), data)
	sameBytes(t, "read from the server", readAll(t, serverURI), data)
}

// writeFile writes s to a new file.
func writeFile(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
}

// ---- The harness's own checks

// recorder is a testing.TB that records failures and skips instead of
// acting on them.
type recorder struct {
	testing.TB
	errors, skips []string
}

func (r *recorder) Helper() {}
func (r *recorder) Errorf(f string, args ...any) {
	r.errors = append(r.errors, fmt.Sprintf(f, args...))
}
func (r *recorder) Skipf(f string, args ...any) { r.skips = append(r.skips, fmt.Sprintf(f, args...)) }

// The guard finds a Go trace (a runtime abort, a panic) and its lines,
// and nothing in nbdkit's ordinary messages, a recovered panic included.
func TestGoTraceGuard(t *testing.T) {
	for _, c := range []struct {
		stderr string
		want   []string
	}{
		{"nbdkit: nbd-go[1]: error: pread: Input/output error\n" +
			"fatal error: runtime: netpoll failed\n\n" +
			"goroutine 1 [running, locked to thread]:\nruntime.throw({0x7f3a2c1e5d1b?, 0xc000012345?})\n" +
			"\t/usr/local/go/src/runtime/panic.go:1101 +0x48\n\ngoroutine 17 [syscall, locked to thread]:\n",
			[]string{"fatal error: runtime: netpoll failed", "goroutine 1 [running, locked to thread]:",
				"goroutine 17 [syscall, locked to thread]:"}},
		{"panic: runtime error: invalid memory address or nil pointer dereference\n" +
			"[signal SIGSEGV: segmentation violation code=0x1 addr=0x0 pc=0x7f3a2c0d1234]\n",
			[]string{"panic: runtime error: invalid memory address or nil pointer dereference"}},
		{"nbdkit: nbd-go[2]: error: internal error: runtime error: index out of range [3] with length 3\n" +
			"nbdkit: debug: nbd-go: 4 goroutines\nnbdkit: memory[1]: error: write: Broken pipe\n", nil},
	} {
		if got := goTrace(c.stderr); strings.Join(got, "\n") != strings.Join(c.want, "\n") {
			t.Errorf("goTrace(%q) = %q, want %q", c.stderr, got, c.want)
		}
		r := &recorder{TB: t}
		noGoTrace(r, "nbdkit", c.stderr)
		if (len(r.errors) > 0) != (c.want != nil) || c.want != nil && !strings.Contains(r.errors[0], c.want[0]) {
			t.Errorf("noGoTrace on %q reported %q", c.stderr, r.errors)
		}
	}
}

// need skips, naming the tool, when a tool is missing, and lets a test
// with its tools go on.
func TestNeed(t *testing.T) {
	r := &recorder{TB: t}
	need(r, "nbdkit-no-such-plugin", "no-such-tool", "nbdkit-no-such-filter")
	want := []string{"needs nbdkit-no-such-plugin (not installed)", "needs no-such-tool (not installed)",
		"needs nbdkit-no-such-filter (not installed)"}
	if strings.Join(r.skips, "\n") != strings.Join(want, "\n") {
		t.Errorf("need skipped with %q, want %q", r.skips, want)
	}
	r = &recorder{TB: t}
	need(r, "sh", "nbdkit-null-plugin", "nbdkit-delay-filter", pythonNbd)
	if r.skips != nil {
		t.Errorf("need skipped with %q", r.skips)
	}
}

// An nbdkit that dies during a test is noticed by the end-of-test check,
// unless the test ended it (kill) or took note of its end (wait); a
// relaunched one is watched afresh.
func TestHarnessSeesDeadNbdkit(t *testing.T) {
	need(t, "nbdkit-null-plugin")
	p := start(t, procOpts{}, "null")
	if err := p.unexpectedExit(); err != nil {
		t.Fatalf("a running nbdkit: %v", err)
	}
	syscall.Kill(p.pid, syscall.SIGSEGV)
	<-p.done
	if err := p.unexpectedExit(); err == nil || !strings.Contains(err.Error(), "segmentation fault") {
		t.Errorf("nbdkit killed behind the test's back: %v", err)
	}
	p.wait() // taken note of: the cleanup passes
	if err := p.unexpectedExit(); err != nil {
		t.Errorf("after wait: %v", err)
	}
	q := start(t, procOpts{}, "null")
	q.kill()
	if err := q.unexpectedExit(); err != nil {
		t.Errorf("after kill: %v", err)
	}
	q.relaunch()
	syscall.Kill(q.pid, syscall.SIGKILL)
	<-q.done
	if err := q.unexpectedExit(); err == nil {
		t.Error("a relaunched nbdkit killed behind the test's back: no error")
	}
	q.wait()
}
