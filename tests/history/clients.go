// SPDX-License-Identifier: BSD-3-Clause

package history

import (
	"bufio"
	_ "embed"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"syscall"
)

// clientScript is the Python client (client.py).
//
//go:embed client.py
var clientScript string

// python3 is Debian's interpreter, for which python3-libnbd installs the
// nbd module (not whichever python3 is first on PATH).
const python3 = "/usr/bin/python3"

// clientConfig is what client.py reads from its argument.
type clientConfig struct {
	Sock   string `json:"sock"`
	Proc   int    `json:"proc"`
	Seed   int64  `json:"seed"`
	Blocks int    `json:"blocks"`
	Depth  int    `json:"depth"`
	Hot    []int  `json:"hot"`
}

// A record is one line client.py prints.
type record struct {
	K     string   `json:"k"`
	ID    int64    `json:"id"`
	C     int      `json:"c"`
	Op    string   `json:"op"`
	B     int      `json:"b"`
	N     int      `json:"n"`
	FUA   int      `json:"fua"`
	Final int      `json:"final"`
	T     int64    `json:"t"`
	Err   int      `json:"err"`
	V     []int64  `json:"v"`
	Bad   []string `json:"bad"`
	Can   struct {
		Flush bool `json:"flush"`
	} `json:"can"`
	Size int64  `json:"size"`
	Msg  string `json:"msg"`
}

// A clientProc is one client process and what it has said.
type clientProc struct {
	proc   int
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stderr syncBuffer
	exited chan struct{} // closed once it has exited and its output is read
	err    error         // how it exited

	mu        sync.Mutex
	ops       []*Op
	byID      map[int64]*Op
	clients   int // connections made
	connFails int
	sawFlush  []bool // can_flush of each connection
	done      bool   // it finished the final phase
	bad       []string
}

// startClient runs client.py.
func startClient(cfg clientConfig) (*clientProc, error) {
	arg, err := json.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	cp := &clientProc{proc: cfg.Proc, byID: map[int64]*Op{}, exited: make(chan struct{})}
	cp.cmd = exec.Command(python3, "-u", "-c", clientScript, string(arg))
	cp.cmd.Stderr = &cp.stderr
	// Its own process group: it is killed with its group if it hangs.
	cp.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if cp.stdin, err = cp.cmd.StdinPipe(); err != nil {
		return nil, err
	}
	out, err := cp.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cp.cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<16), 1<<20)
		for sc.Scan() {
			cp.take(sc.Bytes())
		}
		cp.err = cp.cmd.Wait()
		close(cp.exited)
	}()
	return cp, nil
}

// take reads one line of the client's.
func (cp *clientProc) take(line []byte) {
	var r record
	cp.mu.Lock()
	defer cp.mu.Unlock()
	if err := json.Unmarshal(line, &r); err != nil {
		cp.bad = append(cp.bad, fmt.Sprintf("%q: %v", line, err))
		return
	}
	switch r.K {
	case "i":
		o := &Op{ID: r.ID, Client: r.C, Kind: OpKind(r.Op), First: r.B, N: r.N, FUA: r.FUA != 0,
			Inv: r.T, Final: r.Final != 0}
		cp.ops = append(cp.ops, o)
		cp.byID[o.ID] = o
	case "c":
		o := cp.byID[r.ID]
		if o == nil {
			cp.bad = append(cp.bad, fmt.Sprintf("the end of an op never issued: %s", line))
			return
		}
		o.Ended, o.Resp, o.Errno, o.Values, o.Bad = true, r.T, r.Err, r.V, r.Bad
		// ENOTCONN is no NBD error: libnbd ends what was in flight with
		// it when the connection dies, and no reply was seen.
		o.Lost = r.Err == int(syscall.ENOTCONN)
	case "unsent":
		if o := cp.byID[r.ID]; o != nil {
			o.Unsent = true
		}
	case "client":
		cp.clients++
		cp.sawFlush = append(cp.sawFlush, r.Can.Flush)
	case "connfail":
		cp.connFails++
	case "done":
		cp.done = true
	default:
		cp.bad = append(cp.bad, fmt.Sprintf("unknown record %s", line))
	}
}

// final tells the client the final phase has come.
func (cp *clientProc) final() {
	io.WriteString(cp.stdin, "final\n")
}

// kill ends the client and its group at once.
func (cp *clientProc) kill() {
	syscall.Kill(-cp.cmd.Process.Pid, syscall.SIGKILL)
	<-cp.exited
}

// syncBuffer is a buffer a process writes while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  []byte
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b = append(s.b, p...)
	return len(p), nil
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return string(s.b)
}

// pythonHasNbd says whether python3 has libnbd's module.
func pythonHasNbd() bool {
	if _, err := os.Stat(python3); err != nil {
		return false
	}
	return exec.Command(python3, "-c", "import nbd").Run() == nil
}
