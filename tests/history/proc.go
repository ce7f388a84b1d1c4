// SPDX-License-Identifier: BSD-3-Clause

package history

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Every instance is a real process, so that a plugin that learns of a
// server's death (its exit evidence: the process that listened on the
// socket, which holds the server end of the connection and has no
// children, has exited) sees what it would see of nbdkit or qemu-nbd.
// The process is this test binary run again (TestMain calls
// instanceMain when instanceEnv is set).  It does only what the plugin
// looks at: it creates, binds and listens on the instance's socket, so
// that SO_PEERCRED names it; it accepts each connection, passes the
// accepted descriptor to the test process over a socketpair
// (SCM_RIGHTS) and keeps its own copy open until told to close it.  The
// test process serves the connection (conn.go), with the whole state of
// the server under one lock.  It never has children, and is never
// stopped for real: a stop is the test process's (instance.stop), which
// the plugin cannot tell from SIGSTOP, and a stopped process has not
// exited, which is what the plugin can see of it.
//
// The test process ends a connection with shutdown(SHUT_RDWR), so that
// the end of file reaches the proxy whatever copies of the descriptor
// exist, then closes its copy and tells the process to close its own.

// instanceEnv, set to a socket path, makes this binary an instance
// process listening there, with its control socket on descriptor 3.
const instanceEnv = "HISTORY_INSTANCE_SOCKET"

// procStartLimit bounds how long an instance process may take to listen.
const procStartLimit = 10 * time.Second

// The control messages, one per SOCK_SEQPACKET datagram.
//
//	process -> test: "listening", or "error TEXT" (then it exits);
//	                 "conn ID" with the accepted descriptor.
//	test -> process: "close ID": close your copy of connection ID;
//	                 "unlisten": close the listening socket;
//	                 "exit": exit now.
//
// The process also exits when the control socket ends: the test
// process is gone.

// instanceMain is the instance process: it never returns.
func instanceMain(sock string) {
	ctlFile := os.NewFile(3, "control")
	fc, err := net.FileConn(ctlFile)
	if err != nil {
		os.Exit(3)
	}
	ctlFile.Close()
	ctl := fc.(*net.UnixConn)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		ctl.Write([]byte("error " + err.Error()))
		os.Exit(1)
	}
	// A killed instance leaves its socket file behind, as a real one
	// does; one that closes its listener removes it.
	ln.SetUnlinkOnClose(true)
	if _, err := ctl.Write([]byte("listening")); err != nil {
		os.Exit(1)
	}
	var mu sync.Mutex
	copies := map[int]*net.UnixConn{}
	go func() {
		for id := 1; ; id++ {
			nc, err := ln.AcceptUnix()
			if err != nil {
				return // unlisten
			}
			f, err := nc.File() // a duplicate, for the test process
			if err != nil {
				nc.Close()
				continue
			}
			mu.Lock()
			copies[id] = nc
			mu.Unlock()
			_, _, err = ctl.WriteMsgUnix([]byte("conn "+strconv.Itoa(id)), syscall.UnixRights(int(f.Fd())), nil)
			f.Close()
			if err != nil {
				os.Exit(0)
			}
		}
	}()
	buf := make([]byte, 256)
	for {
		n, err := ctl.Read(buf)
		if err != nil || n == 0 {
			os.Exit(0)
		}
		msg := string(buf[:n])
		switch {
		case msg == "exit":
			os.Exit(0)
		case msg == "unlisten":
			ln.Close()
		case strings.HasPrefix(msg, "close "):
			id, _ := strconv.Atoi(strings.TrimPrefix(msg, "close "))
			mu.Lock()
			if nc := copies[id]; nc != nil {
				nc.Close()
				delete(copies, id)
			}
			mu.Unlock()
		}
	}
}

// An instProc is the test process's side of an instance process.
type instProc struct {
	cmd    *exec.Cmd
	ctl    *net.UnixConn
	exited chan struct{} // closed once it has exited and been reaped
	mu     sync.Mutex
	gone   bool // killed or told to exit: nothing more is sent to it
}

// startProc starts an instance process listening on sock and waits
// until it listens; each connection it accepts is handed to accepted
// (from a goroutine of its own, s.mu not held).
func startProc(sock string, accepted func(nc *net.UnixConn, id int)) (*instProc, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_SEQPACKET|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	mine, theirs := os.NewFile(uintptr(fds[0]), "control"), os.NewFile(uintptr(fds[1]), "control")
	defer theirs.Close()
	fc, err := net.FileConn(mine)
	mine.Close()
	if err != nil {
		return nil, err
	}
	p := &instProc{ctl: fc.(*net.UnixConn), exited: make(chan struct{})}
	p.cmd = exec.Command(exe, "-test.run=^$")
	p.cmd.Env = append(os.Environ(), instanceEnv+"="+sock)
	p.cmd.ExtraFiles = []*os.File{theirs}
	p.cmd.Stderr = os.Stderr
	// Killed with the test process, should it die first (the control
	// socket's end also makes it exit).
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		p.ctl.Close()
		return nil, err
	}
	go func() {
		p.cmd.Wait()
		close(p.exited)
	}()
	buf := make([]byte, 512)
	p.ctl.SetReadDeadline(time.Now().Add(procStartLimit))
	n, err := p.ctl.Read(buf)
	p.ctl.SetReadDeadline(time.Time{})
	switch {
	case err != nil:
		p.kill()
		return nil, fmt.Errorf("instance process for %s: %v", sock, err)
	case string(buf[:n]) != "listening":
		p.kill()
		return nil, fmt.Errorf("instance process for %s: %s", sock, buf[:n])
	}
	go p.receive(accepted)
	return p, nil
}

// pid is the instance process's.
func (p *instProc) pid() int { return p.cmd.Process.Pid }

// receive takes the descriptors the process passes, until it exits.
func (p *instProc) receive(accepted func(nc *net.UnixConn, id int)) {
	rc, err := p.ctl.SyscallConn()
	if err != nil {
		return
	}
	buf, oob := make([]byte, 64), make([]byte, syscall.CmsgSpace(4))
	for {
		// MSG_CMSG_CLOEXEC: a process started meanwhile (nbdkit, a
		// client, another instance) must not inherit the descriptor.
		var n, oobn int
		var rerr error
		err := rc.Read(func(fd uintptr) bool {
			n, oobn, _, _, rerr = syscall.Recvmsg(int(fd), buf, oob, syscall.MSG_CMSG_CLOEXEC)
			return rerr != syscall.EAGAIN
		})
		// A process that died with control messages unread leaves
		// ECONNRESET, once; what it sent before is still to be read
		// (connections it accepted: they must be closed, or their
		// clients wait for ever).  Then the end of file.
		if rerr == syscall.ECONNRESET {
			continue
		}
		if err != nil || rerr != nil || n == 0 {
			return
		}
		msg := string(buf[:n])
		id, _ := strconv.Atoi(strings.TrimPrefix(msg, "conn "))
		fd, err := takeFD(oob[:oobn])
		if err != nil || !strings.HasPrefix(msg, "conn ") {
			continue
		}
		f := os.NewFile(uintptr(fd), "conn")
		nc, err := net.FileConn(f)
		f.Close()
		if err != nil {
			p.send(fmt.Sprintf("close %d", id))
			continue
		}
		accepted(nc.(*net.UnixConn), id)
	}
}

// takeFD is the one descriptor a control message carries.
func takeFD(oob []byte) (int, error) {
	msgs, err := syscall.ParseSocketControlMessage(oob)
	if err != nil {
		return -1, err
	}
	for _, m := range msgs {
		fds, err := syscall.ParseUnixRights(&m)
		if err != nil {
			continue
		}
		if len(fds) == 0 {
			continue
		}
		for _, fd := range fds[1:] {
			syscall.Close(fd)
		}
		return fds[0], nil
	}
	return -1, errors.New("no descriptor")
}

// send sends the process a control message, unless it is gone (a
// process that died meanwhile makes it fail: nothing to do).
func (p *instProc) send(msg string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.gone {
		p.ctl.Write([]byte(msg))
	}
}

// closeCopy tells the process to close its copy of connection id.
func (p *instProc) closeCopy(id int) { p.send(fmt.Sprintf("close %d", id)) }

// unlisten tells the process to close its listening socket.
func (p *instProc) unlisten() { p.send("unlisten") }

// exit tells the process to exit, as a server whose graceful shutdown
// is done does.
func (p *instProc) exit() {
	p.send("exit")
	p.mu.Lock()
	p.gone = true
	p.mu.Unlock()
}

// dying: the process is about to be killed: nothing more is sent to it.
func (p *instProc) dying() {
	p.mu.Lock()
	p.gone = true
	p.mu.Unlock()
}

// kill kills the process (kill -9) and reaps it in the background.
func (p *instProc) kill() {
	p.mu.Lock()
	p.gone = true
	p.mu.Unlock()
	p.cmd.Process.Signal(syscall.SIGKILL)
}

// alive says whether the process has not exited.
func (p *instProc) alive() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// shutdownConn ends a connection for every holder of its descriptor:
// the proxy reads the end of file now, whoever still has a copy.
func shutdownConn(nc *net.UnixConn) {
	if rc, err := nc.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) { syscall.Shutdown(int(fd), syscall.SHUT_RDWR) })
	}
	nc.Close()
}
