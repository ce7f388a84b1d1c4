// SPDX-License-Identifier: BSD-3-Clause

package tests

// README's commands run as written: the session of "Using it", the
// blue-green handover of "Surviving restarts" and the outside plugin of
// "Writing your own plugin with the kit", each its section's first
// indented block, run by bash -e in the checkout.  The
// plugin there is the one the package documentation shows.

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// readmeBlock returns the first indented block of README's section
// heading, its lines unindented: blank lines belong to the block when
// an indented line follows.
func readmeBlock(t *testing.T, heading string) string {
	t.Helper()
	lines := strings.Split(readFile(t, "../README"), "\n")
	start := -1
	for i := 0; i+1 < len(lines); i++ {
		if lines[i] == heading && strings.HasPrefix(lines[i+1], "---") {
			start = i + 2
			break
		}
	}
	if start < 0 {
		t.Fatalf("README has no section %q", heading)
	}
	var block []string
	for i := start; i < len(lines); i++ {
		l := lines[i]
		switch {
		case strings.HasPrefix(l, "    "):
			block = append(block, l[4:])
		case l == "" && len(block) > 0 && i+1 < len(lines) && strings.HasPrefix(lines[i+1], "    "):
			block = append(block, "")
		case len(block) > 0:
			return strings.Join(block, "\n") + "\n"
		}
	}
	t.Fatalf("README's section %q has no indented block", heading)
	return ""
}

// runReadme runs README's block of section heading with bash -e in the
// checkout, TMPDIR a new directory (where mktemp -d puts its
// directories), and env added; it returns what the block printed.  The
// nbdkit daemons whose pid files the block left in TMPDIR are killed at
// the end of the test.
func runReadme(t *testing.T, heading string, env ...string) string {
	t.Helper()
	need(t, "bash")
	script := readmeBlock(t, heading)
	dir := t.TempDir()
	t.Cleanup(func() {
		pids, _ := filepath.Glob(filepath.Join(dir, "*", "*.pid"))
		for _, p := range pids {
			b, _ := os.ReadFile(p)
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 1 {
				syscall.Kill(pid, syscall.SIGTERM)
			}
		}
	})
	// A file, not a pipe: a daemon the block leaves running keeps it
	// open, and Run must not wait for that.
	outPath := filepath.Join(dir, "output")
	f, err := os.Create(outPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("bash", "-e", "-c", script)
	cmd.Dir = kitDir
	cmd.Env = append(append(os.Environ(), "TMPDIR="+dir), env...)
	cmd.Stdout, cmd.Stderr = f, f
	err = cmd.Run()
	f.Close()
	out := readFile(t, outPath)
	noGoTrace(t, "README, "+heading, out)
	if err != nil {
		t.Fatalf("README, %s: %v\nscript:\n%s\noutput:\n%s", heading, err, script, out)
	}
	return out
}

// "Using it": a server, the proxy in daemon mode and under --run, a
// bare URI, TLS (a pre-shared key) and qcow2 through qemu-nbd.
func TestReadmeUsingIt(t *testing.T) {
	need(t, "nbdkit", "nbdkit-memory-plugin", "nbdinfo", "nbdcopy", "psktool", "qemu-img", "qemu-nbd")
	out := runReadme(t, "Using it")
	for _, want := range []string{
		"export-size: 67108864", // nbdinfo through the daemon
		"\n67108864\n",          // --run, and TLS
		"\n1073741824\n",        // the qcow2 image through qemu-nbd
	} {
		if !strings.Contains(out, want) {
			t.Errorf("README's session did not print %q:\n%s", want, out)
		}
	}
}

// "Restarting the server": a copy through the proxy while the server is
// killed with -9 and started again ends without an error, and the disk
// holds the bytes copied.
func TestReadmeRestart(t *testing.T) {
	need(t, "nbdkit", "nbdkit-file-plugin", "nbdcopy", "truncate", "cmp")
	out := runReadme(t, "Restarting the server")
	if out != "no error, the same bytes\n" {
		t.Errorf("README's restart commands printed %q", out)
	}
}

// "Surviving restarts": the blue-green handover's commands; the proxy
// still serves the disk once the old server has gone.
func TestReadmeBlueGreen(t *testing.T) {
	need(t, "nbdkit", "nbdkit-file-plugin", "nbdinfo", "truncate")
	out := runReadme(t, "Surviving restarts: reconnect-delay and timeout")
	if out != "67108864\n" {
		t.Errorf("README's blue-green commands printed %q, want the disk's size", out)
	}
}

// "Writing your own plugin with the kit": the plugin written to
// $HOME/hello (HOME a new directory here) builds with make go-plugin and
// serves what it should.
func TestReadmeKit(t *testing.T) {
	need(t, "make", "cc", "nbdkit", "nbdcopy", "head")
	home := t.TempDir()
	env := []string{"HOME=" + home}
	// The Go build cache and module cache stay where they are: HOME is
	// new, but the build need not start cold.
	for _, v := range []string{"GOCACHE", "GOPATH", "GOMODCACHE"} {
		if val, err := exec.Command("go", "env", v).Output(); err == nil {
			env = append(env, v+"="+strings.TrimSpace(string(val)))
		}
	}
	out := runReadme(t, "Writing your own plugin with the kit", env...)
	if !strings.HasSuffix(out, "hello hello ") {
		t.Errorf("README's plugin did not read back \"hello hello \":\n%s", out)
	}
	if _, err := os.Stat(filepath.Join(home, "hello", "nbdkit-hello-plugin.so")); err != nil {
		t.Error(err)
	}
}

// The package documentation's plugin is README's, line for line.
func TestReadmeKitMatchesDoc(t *testing.T) {
	block := readmeBlock(t, "Writing your own plugin with the kit")
	a := strings.Index(block, "package main\n")
	b := strings.Index(block, "\nEOF\n")
	if a < 0 || b < a {
		t.Fatal("README's kit example has no main.go")
	}
	readme := block[a : b+1]
	var doc strings.Builder
	in := false
	for _, l := range strings.Split(readFile(t, "../nbdkit/doc.go"), "\n") {
		l = strings.TrimPrefix(strings.TrimPrefix(l, "//"), "\t")
		if l == "package main" {
			in = true
		}
		if in {
			doc.WriteString(l + "\n")
		}
		if in && strings.HasPrefix(l, "func main()") {
			break
		}
	}
	if doc.String() != readme {
		t.Errorf("nbdkit/doc.go's plugin:\n%s\nREADME's:\n%s", doc.String(), readme)
	}
}
