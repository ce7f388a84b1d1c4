package tests

import (
	"context"
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
	for _, opts := range [][]string{
		{"-f"}, {"-fv"}, {"--foreground"}, {"--fore"}, {"--no-fork"},
		{"--exit-with-parent"}, {"-f", "-D", "nbd-go.verbose=0"},
		{"-rf"}, {"-t", "4", "-f"}, {"-f", "--threads=4"},
	} {
		t.Run(strings.Join(opts, " "), func(t *testing.T) {
			// bare: no -f of the harness's, the options say it.
			sock := filepath.Join(t.TempDir(), "proxy.sock")
			args := append([]string{"-v", "-U", sock}, opts...)
			p := start(t, procOpts{bare: true, sock: sock}, append(args, plugin, "socket="+server)...)
			if got := sizeThrough(t, unixURI(sock)); got != size32M {
				t.Fatalf("size %q, want %s", got, size32M)
			}
			p.kill()
			checkWhereGoStarted(t, p.stderr.String(), true)
		})
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
