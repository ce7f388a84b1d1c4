// SPDX-License-Identifier: BSD-3-Clause

package history

import (
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// An instance is a process as the plugin sees one: SO_PEERCRED names
// the process that listened, that process holds the server end of the
// connection and has no children, and it exits when the instance dies
// (after the connection ended) or once its graceful shutdown is done;
// a replaced one lives on.
func TestInstanceProcess(t *testing.T) {
	dir, err := os.MkdirTemp("", "hist")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sched := NewSchedule(1, ProxyFeatures{InDoubt: true})
	srv, err := NewServer(sched, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()

	// dial connects and reads the server's greeting: the instance has
	// accepted the connection by then.
	dial := func() *net.UnixConn {
		nc, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: srv.Link(), Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		var hello [18]byte
		if _, err := io.ReadFull(nc, hello[:]); err != nil {
			t.Fatal(err)
		}
		return nc
	}
	nc := dial()
	srv.mu.Lock()
	in := srv.cur
	pid := in.proc.pid()
	var serverEnd *net.UnixConn
	for c := range in.conns {
		serverEnd = c.nc
	}
	srv.mu.Unlock()
	if pid == os.Getpid() {
		t.Fatal("the instance runs in the test process")
	}
	if got := peerPid(t, nc); got != pid {
		t.Errorf("SO_PEERCRED names process %d, the instance's is %d", got, pid)
	}
	if ino := sockInode(t, serverEnd); !holds(pid, ino) {
		t.Errorf("process %d does not hold the server end (socket:[%d])", pid, ino)
	}
	if ch := children(pid); ch != "" {
		t.Errorf("process %d has children: %s", pid, ch)
	}

	// A crash: the end of file first, then the process is gone.
	srv.mu.Lock()
	in.die("the test")
	srv.ensureCurrent()
	srv.mu.Unlock()
	nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := nc.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("after the crash the client reads %v, not the end of file", err)
	}
	nc.Close()
	waitExit(t, in.proc, "a crashed instance")

	// A graceful shutdown: the process exits once its last connection
	// has closed (here the client leaves in the handshake), not before.
	nc = dial()
	srv.mu.Lock()
	in = srv.cur
	in.beginShutdown(0)
	srv.mu.Unlock()
	time.Sleep(100 * time.Millisecond) // a process that exits would have by now
	if !in.proc.alive() {
		t.Error("the process exited while a connection was open")
	}
	nc.Close()
	waitExit(t, in.proc, "an instance whose graceful shutdown is done")

	// Replaced, and closed after it resumed: the process lives on.
	srv.mu.Lock()
	srv.ensureCurrent()
	in = srv.cur
	srv.mu.Unlock()
	nc = dial()
	srv.mu.Lock()
	in.stop("the test")
	in.replace()
	in.resumeReplaced("the test")
	srv.mu.Unlock()
	io.ReadAll(nc)
	nc.Close()
	time.Sleep(100 * time.Millisecond) // a process that exits would have by now
	if !in.proc.alive() {
		t.Error("a replaced instance's process exited: it may still land writes")
	}
	srv.Close()
	waitExit(t, in.proc, "a replaced instance at the end of the run")
}

func peerPid(t *testing.T, nc *net.UnixConn) int {
	rc, err := nc.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var cred *syscall.Ucred
	rc.Control(func(fd uintptr) {
		cred, err = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	})
	if err != nil {
		t.Fatal(err)
	}
	return int(cred.Pid)
}

func sockInode(t *testing.T, nc *net.UnixConn) uint64 {
	rc, err := nc.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	rc.Control(func(fd uintptr) { err = syscall.Fstat(int(fd), &st) })
	if err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// holds says whether process pid has a descriptor of socket inode ino.
func holds(pid int, ino uint64) bool {
	fds, _ := filepath.Glob(filepath.Join("/proc", itoa(int64(pid)), "fd", "*"))
	for _, fd := range fds {
		if l, err := os.Readlink(fd); err == nil && l == "socket:["+itoa(int64(ino))+"]" {
			return true
		}
	}
	return false
}

// children lists process pid's children, from every thread's list.
func children(pid int) string {
	files, _ := filepath.Glob(filepath.Join("/proc", itoa(int64(pid)), "task", "*", "children"))
	var all []string
	for _, f := range files {
		if b, err := os.ReadFile(f); err == nil && strings.TrimSpace(string(b)) != "" {
			all = append(all, strings.TrimSpace(string(b)))
		}
	}
	return strings.Join(all, " ")
}

func waitExit(t *testing.T, p *instProc, what string) {
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		t.Errorf("the process of %s has not exited", what)
	}
}
