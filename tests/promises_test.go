// SPDX-License-Identifier: BSD-3-Clause

package tests

// NBD's promises across server failures (the man page's "WHAT A CLIENT
// CAN RELY ON"), each shown with real servers: a flush after a lost
// write cache fails, graceful restarts and a blue-green handover are
// invisible, and a write the proxy gave up on never lands over a newer
// acknowledged one.  tests/history checks the same promises over many
// randomized server behaviours.

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A server with a write-back cache acknowledges a write and is killed:
// the write is gone.  The plugin kept it (repair-memory=), finds it
// missing on the new server, writes it again before the new connection
// serves anything, and says so: the client's flushes succeed, truthfully,
// and it reads its write back.  With repair-memory=0 nothing is kept:
// the client's next flush must fail (a success would promise the write
// is on stable storage), and so must every later one (the plugin cannot
// tell which flush the client sent after it saw the write acknowledged).
// A client that had flushed, or had not written, is not bothered.
func TestFlushAfterLostCache(t *testing.T) {
	need(t, pythonNbd, "nbdkit-file-plugin", "nbdkit-cache-filter")
	for _, tc := range []struct {
		name, param, flushes, data, log string
	}{
		{"repaired", "repair-memory=32M", "ok ok ok ok", "True True", "repair: the server had lost 1 of 1 unflushed writes"},
		{"not-kept", "repair-memory=0", "failed failed ok ok", "False True", "may have been lost with the server's write cache"},
	} {
		for _, shared := range []string{"false", "true"} {
			t.Run(tc.name+"/shared="+shared, func(t *testing.T) {
				disk := diskFile(t, 1<<20)
				server := start(t, procOpts{}, "--filter=cache", "file", disk, "cache=writeback")
				proxy := start(t, procOpts{}, plugin, "socket="+server.sock, "reconnect-delay=10", "shared="+shared, tc.param)
				// Client 1 writes and flushes; then client 0 writes and
				// does not flush (the server's flush covers every
				// connection's writes); client 2 only reads.
				c := startPython(t, `
import nbd, sys
hs = [nbd.NBD() for i in range(3)]
for h in hs: h.connect_unix(sys.argv[1])
hs[1].pwrite(b"B" * 65536, 65536); hs[1].flush()
hs[0].pwrite(b"A" * 65536, 0)
hs[2].pread(512, 0)
print("written")
sys.stdin.readline()
def flush(i):
    try:
        hs[i].flush(); return "ok"
    except nbd.Error as e:
        return "failed"
print(flush(0), flush(0), flush(1), flush(2))
print(hs[0].pread(1, 0) == b"A", hs[1].pread(1, 65536) == b"B")
h = nbd.NBD(); h.connect_unix(sys.argv[1])
h.pwrite(b"C" * 512, 0); h.flush()
print("new connection ok")
`, proxy.sock)
				c.expect(t, "written", 20*time.Second)
				server.kill() // the cache dies with it
				server.relaunch()
				fmt.Fprintln(c.stdin, "go")
				if got := c.expect(t, "", 30*time.Second); got != tc.flushes {
					t.Fatalf("flushes after the lost cache: %q, want %q", got, tc.flushes)
				}
				if got := c.expect(t, "", 10*time.Second); got != tc.data {
					t.Fatalf("data after the restart (A, B read back): %q, want %q", got, tc.data)
				}
				c.expect(t, "new connection ok", 10*time.Second)
				// Logged before the client had its answer; copied from
				// nbdkit's stderr a moment later.
				proxy.waitStderr(t, tc.log, 1, 30*time.Second)
			})
		}
	}
}

// workload runs readers and writers through the proxy, each on its own
// connection: a writer writes its own blocks over and over and reads
// each back; a reader reads everywhere.  Asked "ops", it prints how many
// requests the slowest client has completed; at the end of stdin it
// prints the errors.
const workload = `
import nbd, sys, threading, random
sock, n = sys.argv[1], int(sys.argv[2])
BLOCK = 4096
lock = threading.Lock()
ops, errors = [0] * n, []
stop = threading.Event()
def work(i):
    h = nbd.NBD(); h.connect_unix(sock)
    rnd, k = random.Random(i), 0
    while not stop.is_set():
        off = (i * 16 + k % 16) * BLOCK
        try:
            if i % 2 == 0:
                data = bytes([i + 1, k % 251]) * (BLOCK // 2)
                h.pwrite(data, off)
                if h.pread(BLOCK, off) != data:
                    errors.append("writer %d: wrong data read back" % i)
            else:
                h.pread(BLOCK, rnd.randrange(16 * n) * BLOCK)
        except nbd.Error as e:
            errors.append("client %d: %s" % (i, e))
        with lock: ops[i] += 1
        k += 1
    h.shutdown()
ts = [threading.Thread(target=work, args=(i,)) for i in range(n)]
for t in ts: t.start()
print("ready")
for line in sys.stdin:
    with lock: print(min(ops))
stop.set()
for t in ts: t.join()
print("errors", len(errors))
for e in errors[:10]: print(e)
`

// workloadOps asks the workload how many requests its slowest client has
// completed.
func workloadOps(t *testing.T, w *lineProc) int {
	t.Helper()
	fmt.Fprintln(w.stdin, "ops")
	n, err := strconv.Atoi(w.expect(t, "", 30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// waitWorkload waits until every client of the workload has completed n
// more requests: each is seen at work through the proxy, on a server
// connection the server has been serving for a while.  (A server stopped
// right after accepting a connection may close it without reading the
// requests on it, and nothing tells the proxy that it did not read
// them: those writes are in doubt.  Not what this test is about.)
func waitWorkload(t *testing.T, w *lineProc, n int) {
	t.Helper()
	from := workloadOps(t, w)
	waitFor(t, 60*time.Second, fmt.Sprintf("%d more requests through the proxy", n),
		func() bool { return workloadOps(t, w) >= from+n }, w.proc)
}

// endWorkload stops the workload and fails the test on any error a
// client saw.
func endWorkload(t *testing.T, w *lineProc) {
	t.Helper()
	w.stdin.Close()
	out := w.rest(t, 60*time.Second)
	if !strings.HasPrefix(out, "errors 0") {
		t.Fatalf("the clients saw errors:\n%s\n%s", out, w.stderr.String())
	}
}

// A server stopped with SIGTERM (what systemctl restart sends) answers
// what it has with NBD_ESHUTDOWN and closes; the proxy must take that as
// the server going away: 5 graceful restarts under 8 clients, 0 errors.
func TestGracefulRestartsInvisible(t *testing.T) {
	need(t, pythonNbd, "nbdkit-file-plugin")
	for _, shared := range []string{"false", "true"} {
		t.Run("shared="+shared, func(t *testing.T) {
			disk := diskFile(t, 1<<20)
			server := start(t, procOpts{}, "file", disk)
			proxy := start(t, procOpts{}, plugin, "socket="+server.sock, "reconnect-delay=10", "shared="+shared)
			w := startPython(t, workload, proxy.sock, "8")
			w.expect(t, "ready", 30*time.Second)
			for i := 0; i < 5; i++ {
				waitWorkload(t, w, 25)
				if err := server.stop(30 * time.Second); err != nil {
					t.Fatal(err)
				}
				server.relaunch()
			}
			waitWorkload(t, w, 25)
			endWorkload(t, w)
			proxy.waitStderr(t, "NBD_ESHUTDOWN", 1, 30*time.Second)
		})
	}
}

// switchLink points the symlink link at target atomically (a new link
// renamed over the old), as an operator switching servers would.
func switchLink(t *testing.T, link, target string) {
	t.Helper()
	tmp := link + ".new"
	os.Remove(tmp)
	if err := os.Symlink(target, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, link); err != nil {
		t.Fatal(err)
	}
}

// Blue-green handover (README's recipe): the proxy dials socket=LINK, a
// symlink; a new server starts beside the old one on the same disk, the
// link is switched to it, the old one is stopped with SIGTERM.  Clients
// see no error, and every connection moves to the new server.
func TestBlueGreenHandover(t *testing.T) {
	need(t, pythonNbd, "nbdkit-file-plugin")
	dir := t.TempDir()
	disk := diskFile(t, 1<<20)
	blue := start(t, procOpts{sock: filepath.Join(dir, "blue.sock")}, "file", disk)
	link := filepath.Join(dir, "server.sock")
	switchLink(t, link, blue.sock)
	proxy := start(t, procOpts{}, plugin, "socket="+link, "reconnect-delay=10")
	w := startPython(t, workload, proxy.sock, "8")
	w.expect(t, "ready", 30*time.Second)
	waitWorkload(t, w, 25)

	green := start(t, procOpts{sock: filepath.Join(dir, "green.sock")}, "file", disk)
	switchLink(t, link, green.sock)
	if err := blue.stop(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	waitClientConns(t, green, 8)
	waitWorkload(t, w, 25)
	endWorkload(t, w)
}

// slowWriteArgs are the arguments of an nbdkit that serves disk with
// its eval plugin: the first write waits until the file release exists
// before it is applied (and writes the file applied after), every other
// request is served at once.  The waiting script dies with its nbdkit
// (setpriv --pdeathsig), so that an nbdkit killed has nothing left that
// could still apply the write.
func slowWriteArgs(t *testing.T, disk string) (args []string, release, applied string) {
	need(t, "nbdkit-eval-plugin", "dd", "setpriv")
	dir := t.TempDir()
	mark := filepath.Join(dir, "first")
	release, applied = filepath.Join(dir, "release"), filepath.Join(dir, "applied")
	script := filepath.Join(dir, "pwrite.sh")
	writeFile(t, script, fmt.Sprintf(`if [ ! -e %[1]s ]; then touch %[1]s; held=1
  while [ ! -e %[2]s ]; do sleep 0.05; done; fi
dd of=%[4]s seek=$4 oflag=seek_bytes conv=notrunc status=none
if [ -n "$held" ]; then touch %[3]s; fi
`, mark, release, applied, disk))
	return []string{"eval",
		"get_size=echo 1048576",
		"thread_model=echo parallel",
		"can_write=exit 0",
		"pread=dd if=" + disk + " skip=$4 count=$3 iflag=skip_bytes,count_bytes status=none",
		"pwrite=exec setpriv --pdeathsig KILL sh " + script + ` "$@"`,
	}, release, applied
}

// writes is the start of a client that writes 4 KiB blocks of a letter:
// write(letter, offset) says "letter ok" or "letter failed".
const writes = `
import nbd, sys
h = nbd.NBD(); h.connect_unix(sys.argv[1])
def write(name, off):
    try:
        h.pwrite(name.encode() * 4096, off); return name + " ok"
    except nbd.Error as e:
        return name + " failed"
`

// Write A is not answered within timeout=1 (the server holds it): the
// connection ends, and A is sent again on a new one and acknowledged
// (the same bytes again).  The server may still apply the first copy,
// so write B over A must not be acknowledged: it fails, and keeps
// failing, while a write elsewhere works.  Once the first copy has
// landed, the disk holds A.  Over TCP the plugin cannot tell when the
// server is done: the doubt is for good.
func TestWriteInDoubtFencesLaterWrites(t *testing.T) {
	need(t, pythonNbd)
	disk := diskFile(t, 1<<20)
	args, release, applied := slowWriteArgs(t, disk)
	server := start(t, procOpts{tcp: true}, args...)
	proxy := start(t, procOpts{}, plugin, "hostname=127.0.0.1", fmt.Sprintf("port=%d", server.port),
		"timeout=1", "reconnect-delay=10")
	out := python(t, writes+`print(write("A", 0), write("B", 0), write("C", 8192), write("B", 2048))`, proxy.sock)
	if out != "A ok B failed C ok B failed\n" {
		t.Fatalf("the client saw %q, want A and C to succeed and both writes over A to fail", out)
	}
	writeFile(t, release, "")
	waitFor(t, 30*time.Second, "the first copy of A to land", func() bool {
		_, err := os.Stat(applied)
		return err == nil
	}, server)
	got, err := os.ReadFile(disk)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:4096], bytes.Repeat([]byte("A"), 4096)) ||
		!bytes.Equal(got[8192:12288], bytes.Repeat([]byte("C"), 4096)) {
		t.Fatalf("the disk holds %q at 0 and %q at 8192, want A and C", got[:4], got[8192:8196])
	}
	for _, want := range []string{"did not answer within timeout=1", "in doubt for good"} {
		proxy.waitStderr(t, want, 1, 30*time.Second)
	}
}

// A server that command= started ends the doubt over its writes when it
// exits: write A times out (the server holds it), the connection ends,
// the plugin kills that server and starts another, A is sent again, and
// write B over A waits for the first server to be gone, then succeeds.
// The first copy of A can no longer land: the disk holds B.
func TestWriteInDoubtEndsWithItsServer(t *testing.T) {
	need(t, pythonNbd)
	disk := diskFile(t, 1<<20)
	args, release, _ := slowWriteArgs(t, disk)
	params := []string{"command=nbdkit", "arg=-f"}
	for _, a := range args {
		params = append(params, "arg="+a)
	}
	proxy := start(t, procOpts{}, append([]string{plugin, "timeout=1", "reconnect-delay=10"}, params...)...)
	out := python(t, writes+`print(write("A", 0), write("B", 0))`, proxy.sock)
	if out != "A ok B ok\n" {
		t.Fatalf("the client saw %q, want A resent and B sent once A's first server was gone", out)
	}
	// Nothing of the first server is left that could apply A: no
	// process holds a write (the servers that took A's second copy and
	// B have answered them).
	script := filepath.Join(filepath.Dir(release), "pwrite.sh")
	if n := processesWith(t, "sh\x00"+script); n != 0 {
		t.Fatalf("%d processes still hold the first copy of A", n)
	}
	got, err := os.ReadFile(disk)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:4096], bytes.Repeat([]byte("B"), 4096)) {
		t.Fatalf("the disk holds %q, want B", got[:4])
	}
	if n := len(children(t, proxy.pid)); n != 1 {
		t.Fatalf("the proxy has %d child processes, want its one current server", n)
	}
}

// A server is stopped (SIGSTOP) and a second server on the same disk
// takes its place.  Write A times out on the first and is resent to the
// second; the client then zeroes the block.  When the first server
// resumes it applies its copy of A.  If the zero was acknowledged, A
// would land over it; so the zero must fail.
func TestStoppedServerReplaced(t *testing.T) {
	need(t, pythonNbd, "nbdkit-file-plugin", "nbdkit-log-filter")
	dir := t.TempDir()
	disk := diskFile(t, 1<<20)
	oldLog := filepath.Join(dir, "old.log")
	old := start(t, procOpts{sock: filepath.Join(dir, "old.sock")}, "--filter=log", "file", disk, "logfile="+oldLog)
	link := filepath.Join(dir, "server.sock")
	switchLink(t, link, old.sock)
	proxy := start(t, procOpts{}, plugin, "socket="+link, "timeout=1", "reconnect-delay=3")
	c := startPython(t, `
import nbd, sys
h = nbd.NBD(); h.connect_unix(sys.argv[1])
print("connected")
sys.stdin.readline()
def do(name, f):
    try:
        f(); return name + " ok"
    except nbd.Error as e:
        return name + " failed"
print(do("write", lambda: h.pwrite(b"A" * 4096, 0)), do("zero", lambda: h.zero(4096, 0)))
`, proxy.sock)
	c.expect(t, "connected", 20*time.Second)
	syscall.Kill(old.pid, syscall.SIGSTOP)
	defer syscall.Kill(old.pid, syscall.SIGCONT)
	waitFor(t, 10*time.Second, "the old server to stop", func() bool { return procState(old.pid) == "T" })
	replacement := start(t, procOpts{sock: filepath.Join(dir, "new.sock")}, "file", disk)
	switchLink(t, link, replacement.sock)
	fmt.Fprintln(c.stdin, "go")
	out := c.expect(t, "", 30*time.Second)
	syscall.Kill(old.pid, syscall.SIGCONT)
	if out == "write ok zero failed" {
		return // nothing was acknowledged that the old copy could land on
	}
	if !strings.Contains(out, "zero ok") {
		t.Fatalf("the client saw %q, want the write resent and the zero refused", out)
	}
	// The zero was acknowledged: once the old server has applied its
	// copy of the write, the zero must still be there.
	waitFor(t, 30*time.Second, "the old server to apply its write", func() bool {
		b, _ := os.ReadFile(oldLog)
		return bytes.Contains(b, []byte("...Write"))
	}, old)
	got, err := os.ReadFile(disk)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:4096], make([]byte, 4096)) {
		t.Fatalf("the zero was acknowledged (%q), then the old server's copy of the write landed on it: %q",
			out, got[:4])
	}
	t.Fatalf("the client saw %q, want the write resent and the zero refused", out)
}

// processesWith counts the processes whose command line mentions s.
func processesWith(t *testing.T, s string) int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		if b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline")); err == nil &&
			bytes.Contains(b, []byte(s)) {
			n++
		}
	}
	return n
}

// procState is the state letter of /proc/PID/stat ("" if it is gone).
func procState(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	s := string(b)
	if f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:]); len(f) > 0 {
		return f[0]
	}
	return ""
}

// Without reconnect-delay, a server's NBD_ESHUTDOWN reaches the client
// as it is, as with the C plugin.
func TestShutdownWithoutReconnectDelay(t *testing.T) {
	need(t, pythonNbd, "nbdkit-memory-plugin", "nbdkit-error-filter")
	server := start(t, procOpts{}, "--filter=error", "memory", "1M", "error-pread=ESHUTDOWN", "error-pread-rate=1")
	proxy := start(t, procOpts{}, plugin, "socket="+server.sock)
	out := python(t, `
import nbd, sys
h = nbd.NBD(); h.connect_unix(sys.argv[1])
try:
    h.pread(512, 0); print("ok")
except nbd.Error as e:
    print(e.errno)
`, proxy.sock)
	if out != "ESHUTDOWN\n" {
		t.Fatalf("the client saw %q, want ESHUTDOWN", out)
	}
}
