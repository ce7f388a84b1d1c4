// SPDX-License-Identifier: BSD-3-Clause

package tests

// The rules of issue 12: a timed-out write is never resent under a later
// one, closing is bounded by timeout=, a client that connects during a
// restart waits for it, reconnecting does not leak, and messages keep
// libnbd's cause.

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

// slowFirstWriteServer runs nbdkit's eval plugin over a 1 MiB file: the
// first write sleeps delay before it is applied, every other request is
// served at once.  It returns the server and the file.
func slowFirstWriteServer(t *testing.T, delay time.Duration) (*proc, string) {
	need(t, "nbdkit-eval-plugin", "dd")
	dir := t.TempDir()
	disk, mark := filepath.Join(dir, "disk"), filepath.Join(dir, "first-write-done")
	if err := os.WriteFile(disk, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	p := start(t, procOpts{}, "eval",
		"get_size=echo 1048576",
		"thread_model=echo parallel",
		"can_write=exit 0",
		"pread=dd if="+disk+" skip=$4 count=$3 iflag=skip_bytes,count_bytes status=none",
		fmt.Sprintf("pwrite=if [ ! -e %s ]; then touch %s; sleep %g; fi; "+
			"dd of=%s seek=$4 oflag=seek_bytes conv=notrunc status=none",
			mark, mark, delay.Seconds(), disk))
	return p, disk
}

// Write A is not answered within timeout=2 (the server applies it 4 s
// late), write B to the same place follows it: the disk must end up
// holding B, and both writes must have succeeded.  Resending A while the
// server still held the first copy would let that copy land on top of B.
func TestTimedOutWriteNotReordered(t *testing.T) {
	need(t, pythonNbd)
	server, disk := slowFirstWriteServer(t, 4*time.Second)
	proxy := start(t, procOpts{}, plugin, "socket="+server.sock, "timeout=2", "reconnect-delay=10")
	out := python(t, `
import nbd, sys
h = nbd.NBD(); h.connect_unix(sys.argv[1])
for name in "AB":
    try:
        h.pwrite(name.encode() * 4096, 0); print(name, "ok")
    except nbd.Error as e:
        print(name, "failed:", e)
h.shutdown()
`, proxy.sock)
	if out != "A ok\nB ok\n" {
		t.Fatalf("the client saw %q, want both writes to succeed", out)
	}
	time.Sleep(3 * time.Second) // past the moment the first copy of A lands
	got, err := os.ReadFile(disk)
	if err != nil {
		t.Fatal(err)
	}
	if want := bytes.Repeat([]byte("B"), 4096); !bytes.Equal(got[:4096], want) {
		t.Fatalf("the disk holds %q..., want B: an old copy of A landed on top of B", got[:8])
	}
	if !strings.Contains(proxy.stderr.String(), "did not answer within timeout=2") {
		t.Errorf("nbdkit did not log the timeout: %s", proxy.stderr.String())
	}
}

// A write held by a server that does not let go of it within
// reconnect-delay fails with EIO rather than being resent.
func TestWriteHeldTooLongFails(t *testing.T) {
	need(t, pythonNbd)
	server, _ := slowFirstWriteServer(t, 6*time.Second)
	proxy := start(t, procOpts{}, plugin, "socket="+server.sock, "timeout=1", "reconnect-delay=2")
	start := time.Now()
	out := python(t, `
import nbd, sys
h = nbd.NBD(); h.connect_unix(sys.argv[1])
try:
    h.pwrite(b"A" * 4096, 0); print("A ok")
except nbd.Error as e:
    print("A failed:", e)
`, proxy.sock)
	took := time.Since(start)
	if !strings.HasPrefix(out, "A failed:") {
		t.Fatalf("the client saw %q, want the write to fail", out)
	}
	if took > 6*time.Second {
		t.Fatalf("the write took %v to fail, want about timeout + reconnect-delay (3 s)", took)
	}
	if !strings.Contains(proxy.stderr.String(), "not resending the write") {
		t.Errorf("nbdkit did not say why: %s", proxy.stderr.String())
	}
}

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
			proxy := start(t, procOpts{}, plugin, "socket="+server.sock, "reconnect-delay=10", "shared="+shared)
			server.kill()
			restarted := make(chan struct{})
			go func() {
				defer close(restarted)
				time.Sleep(time.Second)
				server.restart(0)
			}()
			out := python(t, `
import nbd, sys
h = nbd.NBD(); h.connect_unix(sys.argv[1]); print(len(h.pread(4096, 0)))
`, proxy.sock)
			<-restarted
			if strings.TrimSpace(out) != "4096" {
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
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", c)); err == nil {
			s := string(b)
			if f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:]); len(f) > 0 && f[0] == "Z" {
				n++
			}
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
					server.restart(0)
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
	log := proxy.stderr.String()
	if !strings.Contains(log, "pread: server connection failed: ") || !strings.Contains(log, "magic") {
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
	log := proxy.stderr.String()
	if !strings.Contains(log, "nbd_connect_unix: connect: No such file or directory") ||
		strings.Contains(log, "nbd_aio_") {
		t.Fatalf("the log does not name the connect call and its reason:\n%s", log)
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
