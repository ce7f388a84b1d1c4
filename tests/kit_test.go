// SPDX-License-Identifier: BSD-3-Clause

package tests

// The kit (loader + nbdkit package) knows nothing of NBD proxying: its
// example plugin, examples/ramdisk, built by the same make rule, serves
// in every nbdkit mode and refuses a bad configuration before serving.

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// ramdisk is the built example plugin, made absolute.
var ramdisk = func() string {
	p, err := filepath.Abs("../examples/ramdisk/nbdkit-ramdisk-plugin.so")
	if err != nil {
		panic(err)
	}
	return p
}()

// writeReadBack writes random bytes at the start of the export and
// checks that they read back, over two separate connections.
func writeReadBack(t *testing.T, uri string) {
	t.Helper()
	path, data := randomFile(t, 4<<20)
	run(t, "nbdcopy", path, uri)
	sameBytes(t, "read back", readAll(t, uri), data)
}

func TestKitRamdiskForeground(t *testing.T) {
	sock := startNbdkit(t, ramdisk, "size=64M")
	uri := unixURI(sock)
	if got := sizeThrough(t, uri); got != "67108864" {
		t.Fatalf("size %s, want 64M", got)
	}
	writeReadBack(t, uri)
	// Many requests at once on several connections (the plugin is
	// parallel and advertises multi-conn).
	path, data := randomFile(t, 32<<20)
	run(t, "nbdcopy", "--connections=4", "--requests=64", path, uri)
	out := filepath.Join(t.TempDir(), "out")
	run(t, "nbdcopy", "--connections=4", "--requests=64", uri, out)
	got, _ := os.ReadFile(out)
	sameBytes(t, "read back in parallel", got, data)
	// The magic config key: a bare size.
	writeReadBack(t, unixURI(startNbdkit(t, ramdisk, "8M")))
}

func TestKitRamdiskDaemon(t *testing.T) {
	dir := t.TempDir()
	sock, pidFile := filepath.Join(dir, "rd.sock"), filepath.Join(dir, "rd.pid")
	run(t, "nbdkit", "-U", sock, "-P", pidFile, ramdisk, "size=16M")
	waitSocket(t, sock)
	pid := daemonPid(t, pidFile)
	writeReadBack(t, unixURI(sock))
	syscall.Kill(pid, syscall.SIGTERM)
	for deadline := time.Now().Add(2 * time.Second); alive(pid) && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if alive(pid) {
		t.Fatalf("nbdkit (pid %d) still runs 2 s after SIGTERM", pid)
	}
}

func TestKitRamdiskRun(t *testing.T) {
	path, data := randomFile(t, 4<<20)
	out := filepath.Join(t.TempDir(), "out")
	run(t, "nbdkit", "-U", "-", ramdisk, "size=16M",
		"--run", "nbdcopy "+path+" \"$uri\" && nbdcopy \"$uri\" "+out)
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	sameBytes(t, "read back under --run", got, data)
}

func TestKitRamdiskStdio(t *testing.T) {
	out := python(t, `
import nbd, sys, os
h = nbd.NBD()
h.connect_command(["nbdkit", "-s", sys.argv[1], "size=16M"])
assert h.get_size() == 16 << 20
buf = os.urandom(1 << 20)
h.pwrite(buf, 4096)
h.flush()
assert h.pread(len(buf), 4096) == buf
h.zero(65536, 8192)
assert h.pread(65536, 8192) == bytes(65536)
h.trim(4096, 4096)
assert h.pread(4096, 4096) == bytes(4096)
h.shutdown()
print("ok")
`, ramdisk)
	if strings.TrimSpace(out) != "ok" {
		t.Fatalf("got %q", out)
	}
}

// systemd-socket-activate listens, then starts nbdkit at the first
// connection with the socket in LISTEN_FDS; nbdkit keeps serving it.
func TestKitRamdiskSocketActivation(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "rd.sock")
	spawnActivated(t, sock, "nbdkit", ramdisk, "size=16M")
	waitSocket(t, sock)
	writeReadBack(t, unixURI(sock))
}

// spawnActivated runs a command under systemd-socket-activate on sock,
// and kills it at the end of the test.
func spawnActivated(t *testing.T, sock string, command ...string) {
	t.Helper()
	cmd := exec.Command("systemd-socket-activate", append([]string{"-l", sock}, command...)...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
}

// A missing or bad size: exit status 1 and one line, before nbdkit
// listens or detaches, in every mode.
func TestKitRamdiskConfigErrors(t *testing.T) {
	for _, c := range []struct {
		params []string
		want   string
	}{
		{nil, "size= is required"},
		{[]string{"size=abc"}, "abc"},
		{[]string{"size=-1"}, "negative"},
		{[]string{"size=1E"}, "size=1E is more than"},
		{[]string{"size=1M", "bogus=1"}, "bogus=1"},
	} {
		for _, mode := range [][]string{nil, {"-f"}, {"--run", "true"}, {"-s"}} {
			dir := t.TempDir()
			sock, pidFile := filepath.Join(dir, "s"), filepath.Join(dir, "p")
			args := []string{"-P", pidFile}
			if mode == nil || mode[0] != "-s" {
				args = append(args, "-U", sock)
			}
			args = append(append(append(args, mode...), ramdisk), c.params...)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			cmd := exec.CommandContext(ctx, "nbdkit", args...)
			out, err := cmd.CombinedOutput()
			cancel()
			msg := strings.TrimSpace(string(out))
			if code := cmd.ProcessState.ExitCode(); code != 1 {
				t.Errorf("%v %v: exit status %d (%v), want 1: %s", mode, c.params, code, err, msg)
			}
			if strings.Count(msg, "\n") != 0 || !strings.Contains(msg, c.want) {
				t.Errorf("%v %v: want one line mentioning %q, got %q", mode, c.params, c.want, msg)
			}
			for _, f := range []string{sock, pidFile} {
				if _, err := os.Stat(f); err == nil {
					t.Errorf("%v %v: %s left behind", mode, c.params, f)
				}
			}
		}
	}
}
