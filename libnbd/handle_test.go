// SPDX-License-Identifier: BSD-3-Clause

package libnbd

import (
	"errors"
	"net"
	"os/exec"
	"path/filepath"
	"runtime"
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

// What the server offers reads back through the handle.
func TestFacts(t *testing.T) {
	sock, _ := server(t, "--filter=blocksize-policy", "memory", "3M",
		"blocksize-minimum=512", "blocksize-preferred=4096", "blocksize-maximum=65536")
	h := connect(t, sock)
	if n, err := h.GetSize(); err != nil || n != 3<<20 {
		t.Fatalf("GetSize: %d, %v", n, err)
	}
	if n, err := h.GetBlockSize(SizePreferred); err != nil || n != 4096 {
		t.Fatalf("GetBlockSize(preferred): %d, %v", n, err)
	}
	if ro, err := h.IsReadOnly(); err != nil || ro {
		t.Fatalf("IsReadOnly: %v, %v", ro, err)
	}
	if ok, err := h.CanMetaContext(ContextBaseAllocation); err != nil || !ok {
		t.Fatalf("CanMetaContext: %v, %v", ok, err)
	}
}

// Connecting to a server that accepts and then says nothing fails with
// ETIMEDOUT once the connect timeout has passed.
func TestConnectTimeout(t *testing.T) {
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
			defer c.Close()
		}
	}()
	h, err := Create()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	h.SetConnectTimeout(300 * time.Millisecond)
	start := time.Now()
	err = h.ConnectUnix(sock)
	if !errors.Is(err, syscall.ETIMEDOUT) {
		t.Fatalf("got %v, want ETIMEDOUT", err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("the timeout took %v", took)
	}
}

// Every method of a closed or released handle returns ErrClosed (or a
// zero value) instead of touching freed memory.
func TestClosedHandle(t *testing.T) {
	sock, _ := server(t, "memory", "1M")
	closed, err := Create()
	if err != nil {
		t.Fatal(err)
	}
	closed.Close()
	released := connect(t, sock)
	nbd := released.Release()
	if nbd == nil {
		t.Fatal("Release gave nothing")
	}
	CloseReleased(nbd)
	for name, h := range map[string]*Handle{"closed": closed, "released": released} {
		errs := map[string]error{
			"SetExportName":                  h.SetExportName("x"),
			"AddMetaContext":                 h.AddMetaContext(ContextBaseAllocation),
			"SetFullInfo":                    h.SetFullInfo(true),
			"SetPreadInitialize":             h.SetPreadInitialize(false),
			"SetOptMode":                     h.SetOptMode(true),
			"SetTLS":                         h.SetTLS(TLSAllow),
			"SetTLSCertificates":             h.SetTLSCertificates("/"),
			"SetTLSVerifyPeer":               h.SetTLSVerifyPeer(true),
			"SetTLSUsername":                 h.SetTLSUsername("u"),
			"SetTLSPSKFile":                  h.SetTLSPSKFile("/k"),
			"SetDebug":                       h.SetDebug(false, nil),
			"ConnectUnix":                    h.ConnectUnix(sock),
			"ConnectTCP":                     h.ConnectTCP("localhost", "1"),
			"ConnectVsock":                   h.ConnectVsock(1, 1),
			"ConnectURI":                     h.ConnectURI("nbd://localhost"),
			"ConnectSocket":                  h.ConnectSocket(-1),
			"ConnectSystemdSocketActivation": h.ConnectSystemdSocketActivation([]string{"false"}),
			"OptGo":                          h.OptGo(),
			"OptInfo":                        h.OptInfo(),
			"OptAbort":                       h.OptAbort(),
		}
		_, errs["OptList"] = h.OptList()
		_, errs["GetSize"] = h.GetSize()
		_, errs["GetBlockSize"] = h.GetBlockSize(SizeMinimum)
		_, errs["IsReadOnly"] = h.IsReadOnly()
		_, errs["CanFlush"] = h.CanFlush()
		_, errs["CanMetaContext"] = h.CanMetaContext(ContextBaseAllocation)
		_, errs["GetExportDescription"] = h.GetExportDescription()
		_, errs["GetCanonicalExportName"] = h.GetCanonicalExportName()
		for call, err := range errs {
			if !errors.Is(err, ErrClosed) {
				t.Errorf("%s handle: %s returned %v, want ErrClosed", name, call, err)
			}
		}
		h.SetConnectTimeout(time.Second)
		if h.Release() != nil || h.SupportsTLS() || h.SupportsURI() || h.Version() != "" {
			t.Errorf("%s handle: Release, Supports* or Version answered", name)
		}
		h.Close() // again: harmless
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

// debugFreed sets a debug callback on h whose closure holds an object
// with a finalizer, and returns a channel closed when the object is
// collected: when neither libnbd nor the binding keeps the callback.
func debugFreed(t *testing.T, h *Handle) <-chan struct{} {
	t.Helper()
	freed := make(chan struct{})
	obj := new([64]byte)
	runtime.SetFinalizer(obj, func(*[64]byte) { close(freed) })
	if err := h.SetDebug(true, func(context, msg string) { _ = obj[0] }); err != nil {
		t.Fatal(err)
	}
	return freed
}

// collected runs the garbage collector until freed is closed, and fails
// the test if it is not within a generous deadline.
func collected(t *testing.T, freed <-chan struct{}, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		runtime.GC()
		select {
		case <-freed:
			return
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("the debug callback was kept after %s", what)
		}
	}
}

// The debug callback is let go of when libnbd no longer needs it: when
// it is replaced, when the handle is closed, and when a released handle
// is closed by the C code it went to (each server connection with -D
// nbd-go.verbose=1 once leaked one).
func TestDebugCallbackFreed(t *testing.T) {
	h, err := Create()
	if err != nil {
		t.Fatal(err)
	}
	first := debugFreed(t, h)
	second := debugFreed(t, h)
	collected(t, first, "it was replaced")
	h.Close()
	collected(t, second, "Close")

	if h, err = Create(); err != nil {
		t.Fatal(err)
	}
	released := debugFreed(t, h)
	CloseReleased(h.Release())
	collected(t, released, "Release and CloseReleased")
}
