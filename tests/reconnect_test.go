package tests

import (
	"bytes"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// restartableServer is a file-backed nbdkit server (so data survives it)
// that a test can kill -9 and start again on the same socket.
type restartableServer struct {
	t    *testing.T
	sock string
	args []string
	cmd  *exec.Cmd
	done chan struct{}
}

func newRestartableServer(t *testing.T, args ...string) *restartableServer {
	s := &restartableServer{t: t, sock: filepath.Join(t.TempDir(), "server.sock"), args: args}
	s.start()
	t.Cleanup(s.kill)
	return s
}

func (s *restartableServer) start() {
	s.t.Helper()
	os.Remove(s.sock)
	s.cmd = exec.Command("nbdkit", append([]string{"-f", "-U", s.sock}, s.args...)...)
	if err := s.cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	s.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { cmd.Wait(); close(done) }(s.cmd, s.done)
	waitSocket(s.t, s.sock)
}

func (s *restartableServer) kill() {
	if s.cmd != nil {
		s.cmd.Process.Signal(syscall.SIGKILL)
		<-s.done
		s.cmd = nil
	}
}

// restartAfter kills the server now and starts it again after pause.
func (s *restartableServer) restartAfter(pause time.Duration, args ...string) {
	s.kill()
	time.Sleep(pause)
	if args != nil {
		s.args = args
	}
	s.start()
}

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

// fio's write-and-verify run carries on through a kill -9 and restart
// of the server: no error, every block verifies.
func TestReconnectFioVerify(t *testing.T) {
	disk := diskFile(t, 64<<20)
	server := newRestartableServer(t, "file", disk)
	proxy := startProxy(t, "socket="+server.sock, "reconnect-delay=10")
	fio := exec.Command("fio", "--name=reconnect", "--ioengine=nbd", "--uri="+unixURI(proxy),
		"--rw=randwrite", "--bs=4k", "--iodepth=16", "--size=32M", "--rate_iops=4000",
		"--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0")
	var out bytes.Buffer
	fio.Stdout, fio.Stderr = &out, &out
	if err := fio.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(700 * time.Millisecond)
	server.restartAfter(time.Second)
	if err := fio.Wait(); err != nil {
		t.Fatalf("fio failed across the server restart: %v\n%s", err, out.String())
	}
	if strings.Contains(out.String(), "verify:") || strings.Contains(out.String(), "bad magic") {
		t.Fatalf("fio reported verify errors:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "err= 0") {
		t.Fatalf("fio did not report err= 0:\n%s", out.String())
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
h.flush()
print("ok", flush=True)
`

func clientSurvivesRestart(t *testing.T, server *restartableServer, proxy string) {
	t.Helper()
	cmd := exec.Command("/usr/bin/python3", "-c", clientAcrossRestart, proxy)
	stdin, _ := cmd.StdinPipe()
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out.String(), "written") && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	server.restartAfter(time.Second)
	stdin.Write([]byte("go\n"))
	stdin.Close()
	if err := cmd.Wait(); err != nil || !strings.Contains(out.String(), "ok") {
		t.Fatalf("client failed across the restart: %v\n%s", err, out.String())
	}
}

func TestReconnectOpenClient(t *testing.T) {
	disk := diskFile(t, 16<<20)
	server := newRestartableServer(t, "file", disk)
	proxy := startProxy(t, "socket="+server.sock, "reconnect-delay=10")
	clientSurvivesRestart(t, server, proxy)
}

func TestReconnectShared(t *testing.T) {
	disk := diskFile(t, 16<<20)
	server := newRestartableServer(t, "file", disk)
	proxy := startProxy(t, "socket="+server.sock, "shared=true", "reconnect-delay=10")
	clientSurvivesRestart(t, server, proxy)
	// A later client reads and writes too.
	copyThrough(t, unixURI(proxy), unixURI(server.sock), 1<<20)
}

// readAfterRestart connects a client, restarts the server (with args,
// if given) and has the client read again; it returns what the client
// printed: "read <first bytes>" or "failed".
func readAfterRestart(t *testing.T, server *restartableServer, proxy string, args ...string) string {
	t.Helper()
	cmd := exec.Command("/usr/bin/python3", "-c", `
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
	stdin, _ := cmd.StdinPipe()
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 500 && !strings.Contains(buf.String(), "connected"); i++ {
		time.Sleep(20 * time.Millisecond)
	}
	server.restartAfter(300*time.Millisecond, args...)
	stdin.Write([]byte("go\n"))
	stdin.Close()
	cmd.Wait()
	return buf.String()
}

// Without reconnect-delay: as the C plugin, requests fail, nbdkit lives.
func TestNoReconnectByDefault(t *testing.T) {
	disk := diskFile(t, 16<<20)
	server := newRestartableServer(t, "file", disk)
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
	slow := startServer(t, "--filter=delay", "memory", "16M", "delay-read=30")
	proxy := startProxy(t, "socket="+slow, "timeout=2")
	start := time.Now()
	_, err := runErr("/usr/bin/python3", "-c", `
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
	disk := diskFile(t, 16<<20)
	other := diskFile(t, 8<<20)
	os.WriteFile(other, bytes.Repeat([]byte("OTHERDISK"), 1000), 0o600)
	os.Truncate(other, 8<<20)
	server := newRestartableServer(t, "file", disk)
	proxy := startProxy(t, "socket="+server.sock, "reconnect-delay=3")
	out := readAfterRestart(t, server, proxy, "file", other)
	if strings.Contains(out, "OTHERDISK") || !strings.Contains(out, "failed") {
		t.Fatalf("a client was served another disk, or did not fail:\n%s", out)
	}
}

// timeout= bounds the handshake too: a server that accepts and then says
// nothing fails the client's connection instead of hanging it.
func TestTimeoutSilentServer(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "silent.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close() // hold it open, say nothing
		}
	}()
	proxy := startNbdkit(t, plugin, "socket="+sock, "timeout=1")
	start := time.Now()
	if _, err := runErr("nbdinfo", "--size", unixURI(proxy)); err == nil {
		t.Fatal("connecting through a silent server succeeded")
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("the client waited %v", took)
	}
}
