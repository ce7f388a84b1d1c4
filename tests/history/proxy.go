// SPDX-License-Identifier: BSD-3-Clause

package history

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"nbdkit-nbd-go-plugin/tests/internal/chans"
)

// CPlugin names nbdkit's own C nbd plugin as the proxy under test: it
// has neither reconnect-delay= nor timeout=.
const CPlugin = "nbd"

// detectFeatures asks the plugin (nbdkit PLUGIN --help) which of the
// newer parameters it has: an older build, such as d21d603, runs the
// schedules it can.
func detectFeatures(plugin string) (ProxyFeatures, error) {
	f := ProxyFeatures{ReconnectDelay: true, Timeout: true, InDoubt: true}
	out, err := exec.Command("nbdkit", plugin, "--help").CombinedOutput()
	if err != nil {
		return f, fmt.Errorf("nbdkit %s --help: %v: %s", plugin, err, out)
	}
	f.Quiesce = strings.Contains(string(out), "quiesce-time")
	f.RepairMemory = strings.Contains(string(out), "repair-memory")
	return f, nil
}

// proxyStartLimit bounds how long nbdkit may take to listen.
const proxyStartLimit = 10 * time.Second

// A proxy is nbdkit with the plugin under test, in the foreground.
type proxy struct {
	cmd    *exec.Cmd
	sock   string
	args   []string
	stderr syncBuffer
	exited chan struct{}
	err    error
}

// startProxy runs nbdkit -f -U SOCK PLUGIN socket=LINK PARAMS... and
// waits for its socket.
func startProxy(plugin, dir, link string, params []string) (*proxy, error) {
	p := &proxy{sock: filepath.Join(dir, "proxy.sock"), exited: make(chan struct{})}
	p.args = append([]string{"-f", "--exit-with-parent", "-U", p.sock, plugin, "socket=" + link}, params...)
	p.cmd = exec.Command("nbdkit", p.args...)
	p.cmd.Stderr = &p.stderr
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	deadline := time.Now().Add(proxyStartLimit)
	for {
		select {
		case <-p.exited:
			return nil, fmt.Errorf("nbdkit %s exited at start (%v): %s", strings.Join(p.args, " "), p.err, p.stderr.String())
		default:
		}
		// The socket's file, not a connection: a connection that closes
		// at once would put an error on nbdkit's stderr.  (Between bind
		// and listen a client may be refused: clients try again.)
		if fi, err := os.Stat(p.sock); err == nil && fi.Mode()&os.ModeSocket != 0 {
			return p, nil
		}
		if time.Now().After(deadline) {
			p.kill()
			return nil, fmt.Errorf("nbdkit does not listen on %s after %v", p.sock, proxyStartLimit)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// stop sends SIGTERM and waits up to d, then kills it; it says whether
// nbdkit had to be killed.
func (p *proxy) stop(d time.Duration) bool {
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		return false
	case <-time.After(d):
		p.kill()
		return true
	}
}

func (p *proxy) kill() {
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.exited
}

// running says whether nbdkit has not exited.
func (p *proxy) running() bool { return !chans.Closed(p.exited) }

// tail is the last n lines nbdkit wrote to stderr.
func (p *proxy) tail(n int) string {
	lines := strings.Split(strings.TrimRight(p.stderr.String(), "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("[%d lines before]", len(lines)-n)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}
