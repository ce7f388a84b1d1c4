// SPDX-License-Identifier: BSD-3-Clause

package tests

// The space of parameters, not examples: every combination of connection
// mode x shared x reconnect-delay x retry x timeout x dynamic-export x
// export is either refused before nbdkit serves, or served.  The
// parameters that no rule ties to the others (repair-memory,
// quiesce-time) take each of their values in turn across that space,
// so that each value meets every mode, shared= and each other value.  A served
// one is used by clients one after the other and two at once, its
// server is killed under a connected client, and afterwards nbdkit's
// fds, threads and child processes are back where they were.

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// combo is one point of the space.
type combo struct {
	mode                              string // socket, tcp, uri, command, socket-fd
	shared, reconnect, retry, timeout string // "" when not given
	dynamicExport, export             string
	repairMemory, quiesce             string
}

func (c combo) params() []string {
	var p []string
	add := func(key, value string) {
		if value != "" {
			p = append(p, key+"="+value)
		}
	}
	add("shared", c.shared)
	add("reconnect-delay", c.reconnect)
	add("retry", c.retry)
	add("timeout", c.timeout)
	add("dynamic-export", c.dynamicExport)
	add("export", c.export)
	add("repair-memory", c.repairMemory)
	add("quiesce-time", c.quiesce)
	return p
}

// String names the combination briefly (its temporary directories,
// where the sockets are, are named after it, and a Unix socket's path
// is short): mode, shared=, then R reconnect-delay, r retry, T timeout,
// D dynamic-export, E export, M repair-memory, Q quiesce-time for those
// given.
func (c combo) String() string {
	letters := ""
	for _, p := range []struct{ value, letter string }{
		{c.reconnect, "R"}, {c.retry, "r"}, {c.timeout, "T"},
		{c.dynamicExport, "D"}, {c.export, "E"}, {c.repairMemory, "M"},
		{c.quiesce, "Q"},
	} {
		if p.value != "" {
			letters += p.letter
		}
	}
	return fmt.Sprintf("%s/shared=%s/%s", c.mode, c.shared, letters)
}

// refusedFor is the oracle: the keys of the rules that refuse the
// combination at start-up (the message names one of them), or nil if it
// must be served.
func (c combo) refusedFor() []string {
	oneConn := c.mode == "command" || c.mode == "socket-fd"
	var keys []string
	refuse := func(broken bool, key ...string) {
		if broken {
			keys = append(keys, key...)
		}
	}
	refuse(c.dynamicExport == "true" && c.export != "", "dynamic-export", "export")
	refuse(oneConn && c.shared == "false", "shared=false")
	refuse(c.mode == "socket-fd" && c.retry != "", "retry")
	refuse(c.mode == "socket-fd" && c.reconnect != "", "reconnect-delay")
	refuse(c.dynamicExport == "true" && (oneConn || c.shared == "true"), "dynamic-export")
	return keys
}

// sharedConn says whether all clients share one server connection.
func (c combo) sharedConn() bool {
	return c.shared == "true" || c.mode == "command" || c.mode == "socket-fd"
}

// orthogonal are the values of repair-memory and quiesce-time, taken in
// turn: none, nothing kept with a declared quiesce, a small memory (so
// that the plugin flushes on its own) with quiesce 0, and a quiesce alone.
var orthogonal = [][2]string{{"", ""}, {"0", "2"}, {"64K", "0"}, {"", "2"}}

// digitSum adds up i's digits in base 4: stepping any one loop of
// allCombos changes it, so each value of orthogonal meets each value
// of every other parameter.
func digitSum(i int) int {
	sum := 0
	for ; i > 0; i /= 4 {
		sum += i % 4
	}
	return sum
}

// allCombos enumerates the space.
func allCombos() []combo {
	var out []combo
	for _, mode := range []string{"socket", "tcp", "uri", "command", "socket-fd"} {
		for _, shared := range []string{"", "true", "false"} {
			for _, reconnect := range []string{"", "5"} {
				for _, retry := range []string{"", "1"} {
					for _, timeout := range []string{"", "10"} {
						for _, dyn := range []string{"", "true"} {
							for _, export := range []string{"", "e1"} {
								o := orthogonal[digitSum(len(out))%len(orthogonal)]
								out = append(out, combo{mode, shared, reconnect, retry, timeout, dyn, export, o[0], o[1]})
							}
						}
					}
				}
			}
		}
	}
	return out
}

// The clients: one after another, then two at once, each checking what
// the others wrote.  A disk of 1 MiB; each step writes its own 64 KiB.
const comboClients = `
import nbd, sys
sock, export = sys.argv[1], sys.argv[2]
def conn():
    h = nbd.NBD()
    h.set_export_name(export)
    h.connect_unix(sock)
    return h
K = 65536
def pat(i): return bytes([i]) * K
a = conn(); a.pwrite(pat(1), 0); assert a.pread(K, 0) == pat(1), "a"; a.shutdown()
b = conn(); assert b.pread(K, 0) == pat(1), "b sees a"; b.pwrite(pat(2), K); b.shutdown()
c = conn(); d = conn()
c.pwrite(pat(3), 2 * K); d.pwrite(pat(4), 3 * K)
assert d.pread(K, 2 * K) == pat(3), "d sees c"
assert c.pread(K, 3 * K) == pat(4), "c sees d"
assert c.pread(K, K) == pat(2) and d.pread(K, 0) == pat(1), "both see a and b"
c.shutdown(); d.shutdown()
print("ok")
`

// A client that stays connected while the server is killed: on each
// line of input it reads the first 64 KiB and says "ok" or "error".
const comboHolder = `
import nbd, sys
sock, export = sys.argv[1], sys.argv[2]
h = nbd.NBD()
h.set_export_name(export)
h.connect_unix(sock)
print("ready")
for line in sys.stdin:
    try:
        ok = h.pread(65536, 0) == bytes([1]) * 65536
        print("ok" if ok else "error wrong data")
    except nbd.Error as e:
        print("error", e)
`

// A new client that reads the first 64 KiB once: "ok" or "error".
const comboNewClient = `
import nbd, sys
try:
    h = nbd.NBD()
    h.set_export_name(sys.argv[2])
    h.connect_unix(sys.argv[1])
    print("ok" if h.pread(65536, 0) == bytes([1]) * 65536 else "error wrong data")
except nbd.Error as e:
    print("error", e)
`

// comboServer is the server side of a combination: a file-backed nbdkit
// that can be killed and started again (data survives), and the
// parameters that point the proxy at it.
type comboServer struct {
	t      *testing.T
	c      combo
	disk   string
	server *proc    // nil for command= (the proxy starts it)
	fd     *os.File // socket-fd=3
}

func newComboServer(t *testing.T, c combo) *comboServer {
	s := &comboServer{t: t, c: c, disk: filepath.Join(t.TempDir(), "disk")}
	if err := os.WriteFile(s.disk, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	switch c.mode {
	case "tcp":
		s.server = start(t, procOpts{tcp: true}, "file", s.disk)
	case "socket", "uri", "socket-fd":
		s.server = start(t, procOpts{}, "file", s.disk)
	}
	if c.mode == "socket-fd" {
		conn, err := net.Dial("unix", s.server.sock)
		if err != nil {
			t.Fatal(err)
		}
		s.fd, err = conn.(*net.UnixConn).File()
		conn.Close()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.fd.Close() })
	}
	return s
}

// modeParams point the proxy at the server.
func (s *comboServer) modeParams() []string {
	switch s.c.mode {
	case "socket":
		return []string{"socket=" + s.server.sock}
	case "tcp":
		return []string{"hostname=127.0.0.1", "port=" + strconv.Itoa(s.server.port)}
	case "uri":
		return []string{"uri=" + unixURI(s.server.sock)}
	case "command":
		return []string{"command=nbdkit", "arg=-f", "arg=file", "arg=" + s.disk}
	default:
		return []string{"socket-fd=3"}
	}
}

// kill kills the server: ours, or the one the proxy started.
func (s *comboServer) kill(proxy *proc) {
	s.t.Helper()
	if s.server != nil {
		s.server.kill()
		return
	}
	// A server the proxy replaced is reaped in the background: wait
	// until only the current one is left.
	var kids []int
	waitFor(s.t, 30*time.Second, "the proxy to have its one server as its only child", func() bool {
		kids = children(s.t, proxy.pid)
		return len(kids) == 1
	}, proxy)
	if err := syscall.Kill(kids[0], syscall.SIGKILL); err != nil {
		s.t.Fatal(err)
	}
}

// restart starts the server again where it was (after kill), if it is
// ours to start.
func (s *comboServer) restart() {
	if s.server != nil && s.c.mode != "socket-fd" {
		s.server.relaunch()
	}
}

// children lists the processes whose parent is pid (zombies too).
func children(t *testing.T, pid int) []int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, e := range ents {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", n))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces.
		f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			out = append(out, n)
		}
	}
	return out
}

func TestCombinations(t *testing.T) {
	need(t, "nbdkit-file-plugin", pythonNbd)
	all := allCombos()
	served, refused := 0, 0
	for i, c := range all {
		c := c
		if testing.Short() && i%5 != 0 {
			continue
		}
		if c.refusedFor() != nil {
			refused++
		} else {
			served++
		}
		t.Run(c.String(), func(t *testing.T) {
			t.Parallel()
			s := newComboServer(t, c)
			params := append(s.modeParams(), c.params()...)
			if keys := c.refusedFor(); keys != nil {
				comboRefused(t, s, params, keys)
				return
			}
			comboServed(t, s, c, params)
		})
	}
	t.Logf("%d combinations: %d served, %d refused", served+refused, served, refused)
}

// comboRefused: exit status 1 before serving, one line naming a key, no
// socket and no pid file left (tryConfig checks those), in daemon mode.
func comboRefused(t *testing.T, s *comboServer, params, keys []string) {
	var extra []*os.File
	if s.fd != nil {
		extra = []*os.File{s.fd}
	}
	code, msg := tryConfig(t, nil, plugin, params, extra...)
	if code != 1 || msg == "" || strings.Contains(msg, "\n") {
		t.Fatalf("exit status %d, want 1 and one line; stderr: %q", code, msg)
	}
	for _, k := range keys {
		if strings.Contains(msg, k) {
			return
		}
	}
	t.Fatalf("%q names none of %q", msg, keys)
}

// comboServed checks what clients see, before and after the server is
// killed, and that nbdkit's resources come back.
func comboServed(t *testing.T, s *comboServer, c combo, params []string) {
	var extra []*os.File
	if s.fd != nil {
		extra = []*os.File{s.fd}
	}
	proxy := start(t, procOpts{extra: extra}, append([]string{plugin}, params...)...)
	export := ""
	if c.dynamicExport == "true" {
		export = "e1" // passed through to the server, which serves any name
	}
	if out := python(t, comboClients, proxy.sock, export); strings.TrimSpace(out) != "ok" {
		t.Fatalf("clients said %q", out)
	}
	// Where things should come back to: nbdkit serving no client (a
	// shared connection and its server are open by now), counted once
	// nbdkit has closed the clients' connections.
	waitClientConns(t, proxy, 0)
	baseFDs, baseThreads := countDir(t, proxy.pid, "fd"), countDir(t, proxy.pid, "task")
	baseKids := len(children(t, proxy.pid))

	holder := startPython(t, comboHolder, proxy.sock, export)
	holder.expect(t, "ready", 20*time.Second)
	waiting := proxy.stderrCount(reconnecting)
	s.kill(proxy)
	reconnect := c.reconnect != "" && c.mode != "socket-fd"
	if reconnect {
		// The request waits while the server is away (the proxy says
		// so), then goes through once the server is back.
		fmt.Fprintln(holder.stdin, "read")
		proxy.waitStderr(t, reconnecting, waiting+1, time.Minute, holder.proc)
		s.restart()
		holder.expect(t, "ok", 20*time.Second)
	} else {
		// A clean error, soon: no hang, nbdkit stays up.
		fmt.Fprintln(holder.stdin, "read")
		holder.expect(t, "error", 20*time.Second)
		s.restart()
	}
	if !proxy.running() {
		t.Fatalf("nbdkit exited after the server was killed: %v", proxy.wait())
	}

	// A new client: served again, unless its one shared connection
	// stayed failed (no reconnect-delay, as the C plugin).
	out := strings.TrimSpace(python(t, comboNewClient, proxy.sock, export))
	wantOK := reconnect || !c.sharedConn()
	if wantOK && out != "ok" || !wantOK && !strings.HasPrefix(out, "error") {
		t.Fatalf("a new client after the restart said %q (want ok: %v)", out, wantOK)
	}
	holder.stdin.Close()
	holder.rest(t, 20*time.Second)

	settles(t, proxy, baseFDs, baseThreads, "after the clients left")
	// A replaced command= server is reaped by the thread that closes its
	// connection, in the background.
	waitFor(t, 30*time.Second, fmt.Sprintf("nbdkit's child processes to be back to %d", baseKids),
		func() bool { return len(children(t, proxy.pid)) <= baseKids }, proxy)
}
