// SPDX-License-Identifier: BSD-3-Clause

package tests

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The loader starts Go at config_complete, without a check child, only
// when nbdkit's command line shows it will not fork (loader/forks.c).
// Getting that wrong would deadlock the serving process, so each case
// checks both that a client is served and which way Go was started.
const inProcessLine = "nbdkit will not fork: starting Go at config_complete"

// The size of the "memory 32M" server these tests proxy.
const size32M = "33554432"

// sizeThrough asks for the export size through uri, failing rather than
// hanging if nothing answers.
func sizeThrough(t *testing.T, uri string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "nbdinfo", "--size", uri).Output()
	if err != nil {
		t.Fatalf("nbdinfo --size %s: %v (hung or failed: the serving process may have started Go before a fork)", uri, err)
	}
	return strings.TrimSpace(string(out))
}

func checkWhereGoStarted(t *testing.T, stderr string, wantInProcess bool) {
	t.Helper()
	if got := strings.Contains(stderr, inProcessLine); got != wantInProcess {
		t.Errorf("Go started at config_complete: %v, want %v; nbdkit's messages:\n%s", got, wantInProcess, stderr)
	}
}

func TestGoStartsInProcessWhenNbdkitWillNotFork(t *testing.T) {
	need(t, "nbdkit-memory-plugin", "nbdinfo")
	server := startServer(t, "memory", "32M")
	optss := [][]string{
		{"-f"}, {"-fv"}, {"--foreground"}, {"--fore"}, {"--no-fork"},
		{"--exit-with-parent"}, {"-f", "-D", "nbd-go.verbose=0"},
		{"-rf"}, {"-t", "4", "-f"}, {"-f", "--threads=4"},
	}
	// Options that later nbdkits added (1.42 has them, 1.32 not).
	if long := run(t, "nbdkit", "--long-options"); strings.Contains(long, "--timeout\n") {
		optss = append(optss, []string{"--timeout", "30", "-f"}, []string{"--print-uri", "--keepalive", "-f"})
	}
	for _, opts := range optss {
		t.Run(strings.Join(opts, " "), func(t *testing.T) {
			stderr := serveForeground(t, "nbdkit", server, opts...)
			checkWhereGoStarted(t, stderr, true)
			if want := "nbdkit " + nbdkitMinor(t) + " will not fork"; !strings.Contains(stderr, want) {
				t.Errorf("no %q in nbdkit's messages:\n%s", want, stderr)
			}
		})
	}
}

// serveForeground runs nbdkit (the binary given) -v with opts (which
// keep it in the foreground), serving server through the plugin; it
// checks that a client is served and returns nbdkit's messages.
func serveForeground(t *testing.T, nbdkit, server string, opts ...string) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "proxy.sock")
	args := append(append([]string{"-v", "-U", sock}, opts...), plugin, "socket="+server)
	// bare: no -f of the harness's, the options say it.
	o := procOpts{bare: true, sock: sock}
	if nbdkit != "nbdkit" {
		o = procOpts{prog: nbdkit, sock: sock}
	}
	p := start(t, o, args...)
	if got := sizeThrough(t, unixURI(sock)); got != size32M {
		t.Fatalf("size %q, want %s", got, size32M)
	}
	p.kill()
	return p.stderr.String()
}

// nbdkitVersion is `nbdkit --version`'s version ("1.32.5").
func nbdkitVersion(t *testing.T) string {
	t.Helper()
	out := run(t, "nbdkit", "--version")
	if !strings.HasPrefix(out, "nbdkit ") || len(strings.Fields(out)) < 2 {
		t.Fatalf("nbdkit --version does not say nbdkit VERSION: %q", out)
	}
	return strings.Fields(out)[1]
}

// nbdkitMinor is "1.32" for nbdkit 1.32.5.
func nbdkitMinor(t *testing.T) string {
	v := strings.SplitN(nbdkitVersion(t), ".", 3)
	return v[0] + "." + v[1]
}

// An nbdkit newer than those whose options loader/forks.c knows
// (1.32 to 1.42) may have a new option that forks: with it the loader
// takes the safe path (the check child, Go started in after_fork) even
// with -f.  The newer nbdkit is this one with its version string
// changed (1.32.5 -> 1.99.5, same length) in a copy of its binary: the
// loader asks /proc/self/exe --version.
func TestGoStartsInCheckChildUnderUnknownNbdkit(t *testing.T) {
	path, err := exec.LookPath("nbdkit")
	if err != nil {
		t.Fatal(err)
	}
	bin, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	v := nbdkitVersion(t)
	parts := strings.SplitN(v, ".", 3)
	newer := parts[0] + "." + strings.Repeat("9", len(parts[1])) + v[len(parts[0])+1+len(parts[1]):]
	if n := bytes.Count(bin, []byte(v)); n == 0 {
		t.Fatalf("%s does not hold its version %q", path, v)
	}
	fake := filepath.Join(t.TempDir(), "nbdkit")
	if err := os.WriteFile(fake, bytes.ReplaceAll(bin, []byte(v), []byte(newer)), 0o755); err != nil {
		t.Fatal(err)
	}
	if out := run(t, fake, "--version"); !strings.HasPrefix(out, "nbdkit "+newer) {
		t.Fatalf("the patched nbdkit says %q, want nbdkit %s", out, newer)
	}

	server := startServer(t, "memory", "32M")
	stderr := serveForeground(t, fake, server, "-f")
	checkWhereGoStarted(t, stderr, false)
	want := "nbdkit " + newer[:strings.LastIndex(newer, ".")] + " is not one whose options are known"
	if !strings.Contains(stderr, want) {
		t.Errorf("no %q in nbdkit's messages:\n%s", want, stderr)
	}
}

// --run forks, wherever it is on the command line and however it is
// spelt, even with -f.
func TestGoStartsInCheckChildUnderRun(t *testing.T) {
	need(t, "nbdkit-memory-plugin", "nbdinfo")
	server := startServer(t, "memory", "32M")
	cmd := `nbdinfo --size "$uri"`
	for name, args := range map[string][]string{
		"-f --run before plugin": {"-f", "--run", cmd, plugin, "socket=" + server},
		"-f --run after plugin":  {"-f", plugin, "socket=" + server, "--run", cmd},
		"-f --ru=":               {"-f", plugin, "socket=" + server, "--ru=" + cmd},
		"--run=":                 {"--run=" + cmd, "-f", plugin, "socket=" + server},
	} {
		t.Run(name, func(t *testing.T) {
			stdout, stderr, err := runOut(t, "nbdkit", append([]string{"-v", "-U", "-"}, args...)...)
			if err != nil {
				t.Fatalf("nbdkit: %v (a hang ends in a kill after 2 min)\n%s", err, stderr)
			}
			if got := strings.TrimSpace(stdout); got != size32M {
				t.Fatalf("--run printed %q", got)
			}
			checkWhereGoStarted(t, stderr, false)
		})
	}
}

// Without -f nbdkit forks into the background; "-e -f" names an export
// "-f", it does not ask for the foreground.
func TestGoStartsInCheckChildInDaemonMode(t *testing.T) {
	need(t, "nbdkit-memory-plugin", "nbdinfo")
	server := startServer(t, "memory", "32M")
	for name, opts := range map[string][]string{
		"no -f":        nil,
		"-e -f":        {"-e", "-f"},
		"--log stderr": {"--log", "stderr"},
		"value is -f":  {"-D", "nbd-go.verbose=0", "-e", "-f"},
	} {
		t.Run(name, func(t *testing.T) {
			// -v: the daemon's messages too go to its stderr file.
			d := daemonize(t, append(append([]string{"-v"}, opts...), plugin, "socket="+server)...)
			if got := sizeThrough(t, unixURI(d.sock)); got != size32M {
				t.Fatalf("size %q", got)
			}
			checkWhereGoStarted(t, d.log(), false)
		})
	}
}
