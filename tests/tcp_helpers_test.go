package tests

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

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

// waitTCP waits until something accepts connections on addr.
func waitTCP(t *testing.T, addr string) {
	t.Helper()
	waitListener(t, "tcp", addr)
}

// spawnNbdkit runs `nbdkit -f args...` handing it extra (as fds 3, 4,
// ...), stops it at the end of the test, and returns at once: the caller
// waits for whatever it listens on.
func spawnNbdkit(t *testing.T, extra []*os.File, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("nbdkit", append([]string{"-f"}, args...)...)
	cmd.ExtraFiles = extra
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() && stderr.Len() > 0 {
			t.Logf("nbdkit %s stderr:\n%s", strings.Join(args, " "), stderr.String())
		}
	})
	return cmd
}

// startTCPServer runs nbdkit on a free TCP port of 127.0.0.1 and returns
// the port.
func startTCPServer(t *testing.T, args ...string) int {
	t.Helper()
	port := freePort(t)
	spawnNbdkit(t, nil, append([]string{"-p", strconv.Itoa(port), "-i", "127.0.0.1"}, args...)...)
	waitTCP(t, fmt.Sprintf("127.0.0.1:%d", port))
	return port
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
	sock := filepath.Join(t.TempDir(), "fd.sock")
	spawnNbdkit(t, []*os.File{f}, append([]string{"-U", sock, proxy, "socket-fd=3"}, params...)...)
	waitSocket(t, sock)
	return sock
}
