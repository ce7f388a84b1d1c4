// SPDX-License-Identifier: BSD-3-Clause

package tests

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// copyTree copies the tracked files of the checkout into a new directory.
func copyTree(t *testing.T) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "src")
	if err := os.MkdirAll(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	files := run(t, "git", "-C", "..", "ls-files", "-z")
	cmd := exec.Command("tar", "-C", "..", "--null", "-T", "-", "-cf", "-")
	cmd.Stdin = strings.NewReader(files)
	untar := exec.Command("tar", "-C", dst, "-xf", "-")
	pipe, _ := cmd.StdoutPipe()
	untar.Stdin = pipe
	if err := untar.Start(); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	if err := untar.Wait(); err != nil {
		t.Fatal(err)
	}
	return dst
}

// The .so needs nothing beside it: copied alone elsewhere it serves.
func TestSelfContained(t *testing.T) {
	dir := t.TempDir()
	so := filepath.Join(dir, "nbdkit-nbd-go-plugin.so")
	b, err := os.ReadFile(plugin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(so, b, 0o755); err != nil {
		t.Fatal(err)
	}
	run(t, "./smoke.sh", so)
}

// Two builds of the same tree, in different directories, give the same
// bytes.
func TestReproducibleBuild(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the tree twice")
	}
	t.Parallel()
	var sums [2][]byte
	for i := range sums {
		dir := copyTree(t)
		run(t, "make", "-C", dir, "nbdkit-nbd-go-plugin.so")
		b, err := os.ReadFile(filepath.Join(dir, "nbdkit-nbd-go-plugin.so"))
		if err != nil {
			t.Fatal(err)
		}
		sums[i] = b
	}
	if !bytes.Equal(sums[0], sums[1]) {
		t.Fatal("two builds of the same tree differ")
	}
}

// make install / uninstall honour DESTDIR; configure's --with-plugindir
// is honoured; make distcheck passes.
func TestInstallAndDistcheck(t *testing.T) {
	if testing.Short() {
		t.Skip("configures and builds the tree")
	}
	t.Parallel()
	dir := copyTree(t)
	run(t, "autoreconf", "-fi", dir)
	cmd := exec.Command("./configure", "--prefix=/opt/nbdgo", "--with-plugindir=/opt/nbdgo/plugins")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("configure: %v\n%s", err, out)
	}
	dest := t.TempDir()
	run(t, "make", "-C", dir, "install", "DESTDIR="+dest)
	so := filepath.Join(dest, "opt/nbdgo/plugins/nbdkit-nbd-go-plugin.so")
	man := filepath.Join(dest, "opt/nbdgo/share/man/man1/nbdkit-nbd-go-plugin.1")
	for _, f := range []string{so, man} {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("make install: %v", err)
		}
	}
	run(t, "./smoke.sh", so)
	run(t, "make", "-C", dir, "uninstall", "DESTDIR="+dest)
	for _, f := range []string{so, man} {
		if _, err := os.Stat(f); err == nil {
			t.Fatalf("make uninstall left %s", f)
		}
	}
	run(t, "make", "-C", "..", "distcheck") // dist takes the tracked files from git
}
