package libnbd

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

// server runs a real nbdkit (plugin and arguments as given) on a Unix
// socket for the length of the test, or skips the test without nbdkit.
// (tests/harness_test.go's proc is the suite's way; this package keeps
// its own few lines.)
func server(t *testing.T, args ...string) (sock string, stop func()) {
	t.Helper()
	if _, err := exec.LookPath("nbdkit"); err != nil {
		t.Skip("needs nbdkit (not installed)")
	}
	sock = filepath.Join(t.TempDir(), "nbd.sock")
	cmd := exec.Command("nbdkit", append([]string{"-f", "-U", sock}, args...)...)
	if err := cmd.Start(); err != nil {
		t.Fatalf("nbdkit: %v", err)
	}
	stop = func() {
		cmd.Process.Kill()
		cmd.Wait()
	}
	t.Cleanup(stop)
	for i := 0; i < 500; i++ {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return sock, stop
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("nbdkit did not start")
	return
}

func connect(t *testing.T, sock string) *Handle {
	t.Helper()
	h, err := Create()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	if err := h.AddMetaContext(ContextBaseAllocation); err != nil {
		t.Fatal(err)
	}
	if err := h.ConnectUnix(sock); err != nil {
		t.Fatal(err)
	}
	return h
}

// Many goroutines run commands on one handle at once; each reads back
// what it wrote.
func TestConcurrentCommands(t *testing.T) {
	sock, _ := server(t, "memory", "64M")
	h := connect(t, sock)
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for g := 0; g < 32; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			buf := make([]byte, 65536)
			back := make([]byte, len(buf))
			for i := 0; i < 40; i++ {
				for j := range buf {
					buf[j] = byte(g*7 + i + j)
				}
				off := uint64(g) << 20
				if err := h.Pwrite(buf, off, CmdFlagFUA); err != nil {
					errs <- err
					return
				}
				if err := h.Pread(back, off, 0); err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(buf, back) {
					errs <- fmt.Errorf("goroutine %d round %d: data differs", g, i)
					return
				}
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if err := h.Flush(0); err != nil {
		t.Error(err)
	}
}

// A server's error reply carries its errno; the connection stays up.
func TestServerErrorErrno(t *testing.T) {
	sock, _ := server(t, "--filter=error", "memory", "1M", "error=ENOSPC", "error-pwrite-rate=1")
	h := connect(t, sock)
	err := h.Pwrite(make([]byte, 512), 0, 0)
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("got %v, want ENOSPC", err)
	}
	if h.Dead() {
		t.Fatal("an error reply killed the connection")
	}
	if err := h.Pread(make([]byte, 512), 0, 0); err != nil {
		t.Fatalf("a read after the error failed: %v", err)
	}
}

// Block status of a sparse disk: data, then a hole.
func TestBlockStatus(t *testing.T) {
	sock, _ := server(t, "data", "data=1", "size=1M")
	h := connect(t, sock)
	ext, err := h.BlockStatus(ContextBaseAllocation, 1<<20, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(ext) < 2 || ext[0].Flags&StateHole != 0 || ext[len(ext)-1].Flags&StateHole == 0 {
		t.Fatalf("extents %+v: want data then a hole", ext)
	}
}

// When the server goes away, commands fail promptly and Dead says so.
func TestServerGone(t *testing.T) {
	sock, stop := server(t, "memory", "1M")
	h := connect(t, sock)
	stop()
	done := make(chan error, 1)
	go func() { done <- h.Pread(make([]byte, 512), 0, 0) }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("a read from a dead server succeeded")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a read from a dead server hung")
	}
	if !h.Dead() {
		t.Fatal("Dead() is false after the server went away")
	}
}

// With a timeout, an unanswered command fails with ETIMEDOUT and the
// connection is closed.
func TestTimeout(t *testing.T) {
	sock, _ := server(t, "--filter=delay", "memory", "1M", "delay-read=20")
	h, err := Create()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	h.SetTimeout(500 * time.Millisecond)
	if err := h.ConnectUnix(sock); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err = h.Pread(make([]byte, 512), 0, 0)
	if !errors.Is(err, syscall.ETIMEDOUT) {
		t.Fatalf("got %v, want ETIMEDOUT", err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("the timeout took %v", took)
	}
	if !h.Dead() {
		t.Fatal("the connection is still up after a timeout")
	}
}

// OptList lists what the server offers.
func TestOptList(t *testing.T) {
	sock, _ := server(t, "--filter=exportname", "memory", "1M", "exportname=a", "exportname=b", "exportname-list=explicit")
	h, err := Create()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := h.SetOptMode(true); err != nil {
		t.Fatal(err)
	}
	if err := h.ConnectUnix(sock); err != nil {
		t.Fatal(err)
	}
	list, err := h.OptList()
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].Name != "a" || list[1].Name != "b" {
		t.Fatalf("listed %+v, want a and b", list)
	}
	h.OptAbort()
}
