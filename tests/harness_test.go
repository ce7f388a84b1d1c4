// Package tests runs the built plugin in real nbdkit processes against
// real NBD servers and clients.  Run with `make check` (which builds the
// plugin first).
package tests

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// plugin is the built .so, made absolute.
var plugin = func() string {
	p, err := filepath.Abs("../nbdkit-nbd-go-plugin.so")
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

// unixURI is the NBD URI of a Unix socket.
func unixURI(sock string) string { return "nbd+unix:///?socket=" + sock }

// waitSocket waits until something accepts connections on sock.
func waitSocket(t *testing.T, sock string) {
	t.Helper()
	waitListener(t, "unix", sock)
}

// waitListener waits until something accepts connections on addr.
func waitListener(t *testing.T, network, addr string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.Dial(network, addr); err == nil {
			c.Close()
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("nothing listens on %s after 10 s", addr)
}

// startNbdkit runs nbdkit -f on a new Unix socket with the given
// arguments (plugin, parameters, options), stops it at the end of the
// test, and returns the socket.
func startNbdkit(t *testing.T, args ...string) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	spawnNbdkit(t, nil, append([]string{"-U", sock}, args...)...)
	waitSocket(t, sock)
	return sock
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

// run runs a command and returns its stdout; stderr goes into the
// failure message.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := runErr(name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v", name, strings.Join(args, " "), err)
	}
	return out
}

func runErr(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%v: %s", err, stderr.String())
	}
	return stdout.String(), nil
}

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

// nbdinfo returns nbdinfo --json for a URI, decoded.
func nbdinfo(t *testing.T, uri string) map[string]any {
	t.Helper()
	var v map[string]any
	if err := json.Unmarshal([]byte(run(t, "nbdinfo", "--json", uri)), &v); err != nil {
		t.Fatal(err)
	}
	return v
}

// python runs a Python script (with the nbd module) with arguments.
func python(t *testing.T, script string, args ...string) string {
	t.Helper()
	return run(t, "/usr/bin/python3", append([]string{"-c", script}, args...)...)
}
