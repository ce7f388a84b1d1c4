// SPDX-License-Identifier: BSD-3-Clause

package tests

// Configuration errors: the one table of bad configurations of the
// plugin, and the check that nbdkit refuses each before serving, in -f
// and daemon modes, as the C nbd plugin does where it refuses it too.
// kit_test.go checks the example plugin's own table the same way.

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// configError is a bad configuration: the parameters, and what the one
// line of the message must contain (the key, and the value if there is
// one).
type configError struct {
	params []string
	want   []string
	cToo   bool // the C nbd plugin refuses it too
}

// configErrors is the table; server is a working server's socket, for
// the parameters that need one.
func configErrors(server string) []configError {
	s := "socket=" + server
	long := "socket=/tmp/" + strings.Repeat("x", 120) + ".sock"
	return []configError{
		// No server, or two.
		{nil, []string{"no server given"}, true},
		{[]string{"arg=x"}, []string{"arg=x", "command="}, false},
		{[]string{"port=10809"}, []string{"port=10809"}, true},
		{[]string{s, "hostname=localhost"}, []string{"socket=", "hostname=localhost"}, true},
		{[]string{s, "hostname=127.0.0.1"}, []string{"socket", "hostname"}, true},
		{[]string{s, unixURI(server)}, []string{"socket", "uri"}, true},
		{[]string{"uri=" + unixURI(server), "command=nbdkit", "arg=memory", "arg=1M"}, []string{"uri", "command"}, true},
		{[]string{"hostname=127.0.0.1", "socket-fd=0"}, []string{"socket-fd=0"}, true},
		// Bad values.
		{[]string{s, "retry=-1"}, []string{"retry=-1"}, true},
		{[]string{s, "retry=abc"}, []string{"retry=abc"}, true},
		{[]string{s, "retry=99999999999"}, []string{"retry=99999999999"}, true},
		{[]string{s, "shared=maybe"}, []string{"shared=maybe"}, true},
		{[]string{s, "tls=sometimes"}, []string{"tls=sometimes"}, true},
		{[]string{s, "tls-verify=perhaps"}, []string{"tls-verify=perhaps"}, true},
		{[]string{"socket-fd=abc"}, []string{"socket-fd=abc"}, true},
		{[]string{"socket-fd=-5"}, []string{"socket-fd=-5"}, true},
		{[]string{"vsock=abc"}, []string{"vsock=abc"}, true},
		{[]string{"vsock=2", "port=abc"}, []string{"port=abc"}, true},
		{[]string{"hostname=localhost", "port=70000"}, []string{"port=70000"}, false},
		{[]string{"hostname=localhost", "port=-1"}, []string{"port=-1"}, false},
		{[]string{long}, []string{"socket=", "107"}, true},
		{[]string{"socket="}, []string{"socket="}, true},
		{[]string{s, "tls-psk="}, []string{"tls-psk="}, true},
		{[]string{"http://example.com/disk"}, []string{"http://example.com/disk"}, false},
		{[]string{"uri=http://example.com/disk"}, []string{"http://example.com/disk"}, false},
		// Settings that do not go together.
		{[]string{s, "dynamic-export=true", "export=foo"}, []string{"dynamic-export", "export=foo"}, true},
		{[]string{s, "dynamic-export=true", "shared=true"}, []string{"dynamic-export", "shared=true"}, true},
		{[]string{"command=nbdkit", "dynamic-export=true"}, []string{"dynamic-export", "command="}, true},
		// Combinations that cannot be served safely (the C plugin serves
		// some of them anyway: see the man page).  tests/combinations_test.go
		// refuses the rest of the space with a real inherited socket.
		{[]string{"command=nbdkit", "arg=memory", "arg=1M", "shared=false"}, []string{"shared=false", "command=nbdkit"}, false},
		{[]string{"command=nbdkit", "command=qemu-nbd"}, []string{"command=qemu-nbd", "twice"}, false},
		{[]string{"arg=-f", "command=nbdkit"}, []string{"arg=-f", "command="}, false},
		{[]string{"socket-fd=1"}, []string{"socket-fd=1"}, false},
		{[]string{"socket-fd=9"}, []string{"socket-fd=9"}, false},
		{[]string{s, "timeout=1e-12"}, []string{"timeout=1e-12"}, false},
		{[]string{s, "reconnect-delay=0.0001"}, []string{"reconnect-delay=0.0001"}, false},
		{[]string{s, "timeout=-1"}, []string{"timeout=-1"}, false},
		{[]string{s, "quiesce-time=soon"}, []string{"quiesce-time=soon"}, false},
		{[]string{s, "repair-memory=32X"}, []string{"repair-memory=32X"}, false},
		{[]string{s, "repair-memory=-1"}, []string{"repair-memory=-1"}, false},
		{[]string{s, "repair-memory=99999999E"}, []string{"repair-memory=99999999E"}, false},
		// Unknown keys.
		{[]string{s, "frobnicate=7"}, []string{"frobnicate=7"}, true},
		{[]string{s, "bogus=1"}, []string{"bogus=1"}, true},
	}
}

func TestConfigErrors(t *testing.T) {
	need(t, "nbdkit-memory-plugin", "nbdkit-nbd-plugin")
	server := startServer(t, "memory", "1M")
	for _, c := range configErrors(server) {
		t.Run(strings.ReplaceAll(strings.Join(c.params, " "), server, "SERVER"), func(t *testing.T) {
			// Daemon mode checks in a child process; -f in nbdkit's own.
			for _, mode := range [][]string{nil, {"-f"}} {
				refusedBeforeServing(t, mode, plugin, c.params, c.want...)
			}
			if c.cToo {
				code, msg := tryConfig(t, nil, "nbd", c.params)
				if code == 0 || msg == "" {
					t.Errorf("the C plugin does not refuse it: exit status %d, message %q", code, msg)
				}
			}
		})
	}
}

// refusedBeforeServing checks that nbdkit, with the options of mode, so
// and params, refuses to start: exit status 1, one line on stderr that
// contains each of want, no Go trace, no pid file and no socket left.
func refusedBeforeServing(t *testing.T, mode []string, so string, params []string, want ...string) {
	t.Helper()
	what := fmt.Sprintf("%v %v", mode, params)
	code, msg := tryConfig(t, mode, so, params)
	if code != 1 {
		t.Errorf("%s: exit status %d, want 1: %s", what, code, msg)
	}
	if msg == "" || strings.Contains(msg, "\n") {
		t.Errorf("%s: want one line on stderr, got %q", what, msg)
	}
	for _, w := range want {
		if !strings.Contains(msg, w) {
			t.Errorf("%s: message %q does not mention %q", what, msg, w)
		}
	}
}

// tryConfig runs nbdkit with the options of mode (daemon mode if none),
// so and params (and extra as fds 3, 4, ...), and returns its exit
// status and stderr (trimmed).  It fails the test if nbdkit leaves a pid
// file or a socket, and kills a daemon that started.
func tryConfig(t *testing.T, mode []string, so string, params []string, extra ...*os.File) (int, string) {
	t.Helper()
	dir := t.TempDir()
	sock, pidFile := filepath.Join(dir, "s"), filepath.Join(dir, "p")
	args := []string{"-P", pidFile}
	if len(mode) == 0 || mode[0] != "-s" {
		args = append(args, "-U", sock)
	}
	args = append(append(append(args, mode...), so), params...)
	_, stderr, err := runOutFiles(t, extra, "nbdkit", args...)
	code := 0
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		code = exit.ExitCode()
	} else if err != nil {
		t.Fatalf("nbdkit %s: %v", shortArgs(args), err)
	}
	if b, err := os.ReadFile(pidFile); err == nil && code == 0 {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	for _, f := range []string{sock, pidFile} {
		if _, err := os.Stat(f); err == nil && code != 0 {
			t.Errorf("%v %s %v: %s left behind", mode, filepath.Base(so), params, f)
		}
	}
	return code, strings.TrimSpace(stderr)
}
