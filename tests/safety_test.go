// SPDX-License-Identifier: BSD-3-Clause

package tests

// The rules of issue 12: closing is bounded by timeout=, a client that
// connects during a restart waits for it, reconnecting does not leak,
// and messages keep libnbd's cause.  (Timed-out writes: promises_test.go.)

import (
	"bytes"
	"encoding/binary"
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

// With timeout=2, a client leaving a stopped server does not keep its
// thread and fds, and SIGTERM ends nbdkit, within about 2 s.
func TestCloseBoundedByTimeout(t *testing.T) {
	need(t, pythonNbd)
	for _, shared := range []string{"false", "true"} {
		t.Run("shared="+shared, func(t *testing.T) {
			server := start(t, procOpts{}, "memory", "1M")
			proxy := start(t, procOpts{}, plugin, "socket="+server.sock, "timeout=2", "shared="+shared)
			baseFDs := countDir(t, proxy.pid, "fd")
			holder := startPython(t, comboHolder, proxy.sock, "")
			holder.expect(t, "ready", 20*time.Second)
			syscall.Kill(server.pid, syscall.SIGSTOP)
			defer syscall.Kill(server.pid, syscall.SIGCONT)
			holder.stdin.Close() // the client leaves
			holder.rest(t, 10*time.Second)
			if shared == "false" {
				settles(t, proxy, baseFDs, countDir(t, proxy.pid, "task"), "the client left a stopped server")
			}
			start := time.Now()
			if err := proxy.stop(8 * time.Second); err != nil {
				t.Fatal(err)
			}
			if took := time.Since(start); took > 5*time.Second {
				t.Fatalf("nbdkit took %v to exit after SIGTERM", took)
			}
		})
	}
}

// With reconnect-delay, a client that connects while the server is
// away waits for it, as a request in flight would.
func TestOpenWaitsForServer(t *testing.T) {
	need(t, pythonNbd)
	for _, shared := range []string{"false", "true"} {
		t.Run("shared="+shared, func(t *testing.T) {
			server := start(t, procOpts{}, "memory", "1M")
			proxy := start(t, procOpts{}, "-v", plugin, "socket="+server.sock, "reconnect-delay=10", "shared="+shared)
			// A client is served first: the proxy works (with
			// shared=true it has made its connection, which it does
			// only after nbdkit listens) before the server goes away.
			readOne := `
import nbd, sys
h = nbd.NBD(); h.connect_unix(sys.argv[1]); print(len(h.pread(4096, 0)))
`
			if out := python(t, readOne, proxy.sock); strings.TrimSpace(out) != "4096" {
				t.Fatalf("the first client saw %q", out)
			}
			server.kill()
			// -v: a client's connection that finds no server says it
			// tries again; a request on the shared one, that it
			// reconnects.
			waiting := "connecting to the server failed, trying again"
			if shared == "true" {
				waiting = reconnecting
			}
			before := proxy.stderrCount(waiting)
			client := startPython(t, readOne, proxy.sock)
			proxy.waitStderr(t, waiting, before+1, time.Minute, client.proc)
			server.relaunch()
			if out := client.rest(t, time.Minute); strings.TrimSpace(out) != "4096" {
				t.Fatalf("the client saw %q", out)
			}
		})
	}
}

// procStatus reads a field of /proc/PID/status in kB or as a count.
func procStatus(t *testing.T, pid int, field string) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, field+":") {
			n, _ := strconv.Atoi(strings.Fields(line)[1])
			return n
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// zombies counts pid's children that have exited and not been reaped.
func zombies(t *testing.T, pid int) int {
	n := 0
	for _, c := range children(t, pid) {
		if procState(c) == "Z" {
			n++
		}
	}
	return n
}

// 200 server restarts under a connected client leave nbdkit's fds,
// threads, zombies and memory flat.
func TestResourcesFlatOverRestarts(t *testing.T) {
	need(t, pythonNbd, "nbdkit-file-plugin")
	restarts := 200
	if testing.Short() {
		restarts = 20
	}
	for _, mode := range []string{"shared", "per-client", "command"} {
		mode := mode
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			disk := filepath.Join(t.TempDir(), "disk")
			if err := os.WriteFile(disk, make([]byte, 1<<20), 0o600); err != nil {
				t.Fatal(err)
			}
			var server *proc
			params := []string{"reconnect-delay=10"}
			switch mode {
			case "command":
				params = append(params, "command=nbdkit", "arg=-f", "arg=file", "arg="+disk)
			default:
				server = start(t, procOpts{}, "file", disk)
				params = append(params, "socket="+server.sock, "shared="+strconv.FormatBool(mode == "shared"))
			}
			proxy := start(t, procOpts{}, append([]string{plugin}, params...)...)
			python(t, `
import nbd, sys
h = nbd.NBD(); h.connect_unix(sys.argv[1]); h.pwrite(bytes([1]) * 65536, 0)
`, proxy.sock)
			holder := startPython(t, comboHolder, proxy.sock, "")
			holder.expect(t, "ready", 20*time.Second)
			var fds, threads, rss int
			for i := 1; i <= restarts; i++ {
				if server != nil {
					server.kill()
					server.relaunch()
				} else {
					s := &comboServer{t: t}
					s.kill(proxy)
				}
				fmt.Fprintln(holder.stdin, "read")
				holder.expect(t, "ok", 20*time.Second)
				if i == 10 { // after warming up: Go's threads, malloc's arenas
					fds, threads = countDir(t, proxy.pid, "fd"), countDir(t, proxy.pid, "task")
					rss = procStatus(t, proxy.pid, "VmRSS")
				}
			}
			// A replaced connection is closed in the background, and
			// with command= its server reaped then: wait for it (a
			// zombie never reaped fails here).
			waitFor(t, 30*time.Second, "the replaced connections to be closed", func() bool {
				return zombies(t, proxy.pid) == 0 && countDir(t, proxy.pid, "fd") <= fds+2 &&
					countDir(t, proxy.pid, "task") <= threads+4
			}, proxy)
			nfds, nthreads := countDir(t, proxy.pid, "fd"), countDir(t, proxy.pid, "task")
			nrss, nz := procStatus(t, proxy.pid, "VmRSS"), zombies(t, proxy.pid)
			t.Logf("%d restarts: fds %d -> %d, threads %d -> %d, RSS %d -> %d kB, zombies %d",
				restarts, fds, nfds, threads, nthreads, rss, nrss, nz)
			if nfds > fds+2 || nthreads > threads+4 || nrss > rss+8192 || nz > 0 {
				t.Fatalf("resources grew over %d restarts", restarts)
			}
		})
	}
}

// oldstyleServer answers the oldstyle handshake for a 1 MiB disk, then
// replies to the first request with garbage.
func oldstyleServer(t *testing.T) string {
	return unixServer(t, func(c net.Conn) {
		hello := make([]byte, 152)
		copy(hello, "NBDMAGIC")
		binary.BigEndian.PutUint64(hello[8:], 0x00420281861253)
		binary.BigEndian.PutUint64(hello[16:], 1<<20)
		binary.BigEndian.PutUint32(hello[24:], 1) // has flags
		c.Write(hello)
		req := make([]byte, 28)
		if _, err := c.Read(req); err != nil {
			return
		}
		c.Write(bytes.Repeat([]byte{0xde, 0xad, 0xbe, 0xef}, 4))
		time.Sleep(time.Second)
	})
}

// A protocol error is logged with libnbd's reason, not only "not
// connected".
func TestMessageKeepsCause(t *testing.T) {
	need(t, pythonNbd)
	proxy := start(t, procOpts{}, plugin, "socket="+oldstyleServer(t))
	out := python(t, `
import nbd, sys
h = nbd.NBD(); h.connect_unix(sys.argv[1])
try:
    h.pread(512, 0); print("ok")
except nbd.Error as e:
    print("error")
`, proxy.sock)
	if strings.TrimSpace(out) != "error" {
		t.Fatalf("the client saw %q", out)
	}
	// The reason, as libnbd gives it ("invalid reply magic").
	proxy.waitStderr(t, "pread: server connection failed: ", 1, 30*time.Second)
	if log := proxy.stderr.String(); !strings.Contains(log, "magic") {
		t.Fatalf("the log lacks libnbd's reason:\n%s", log)
	}
}

// A failed connect is logged as the connect call libnbd made, with its
// reason, as the C plugin logs it (not the aio call that ran libnbd's
// state machine).
func TestConnectErrorNamesTheCall(t *testing.T) {
	need(t, "nbdinfo")
	proxy := start(t, procOpts{}, plugin, "socket="+filepath.Join(t.TempDir(), "nothing.sock"))
	if _, err := runErr(t, "nbdinfo", "--size", unixURI(proxy.sock)); err == nil {
		t.Fatal("a client was served with no server")
	}
	// nbdkit may still be writing the line when the client has its
	// error: wait for it.
	proxy.waitStderr(t, "nbd_connect_unix: connect: No such file or directory", 1, 30*time.Second)
	if log := proxy.stderr.String(); strings.Contains(log, "nbd_aio_") {
		t.Fatalf("the log names an aio call instead of the connect call:\n%s", log)
	}
}

// An NBD URI's scheme is case-insensitive: the start-up check and the
// connection agree.
func TestURISchemeCase(t *testing.T) {
	need(t, "nbdkit-memory-plugin", "nbdinfo")
	server := startServer(t, "memory", "1M")
	proxy := startProxy(t, "uri=NBD+UNIX:///?socket="+server)
	if out := strings.TrimSpace(run(t, "nbdinfo", "--size", unixURI(proxy))); out != "1048576" {
		t.Fatalf("nbdinfo --size said %q", out)
	}
}
