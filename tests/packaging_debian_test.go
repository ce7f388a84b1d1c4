//go:build packaging

// SPDX-License-Identifier: BSD-3-Clause

// Built only by `make check-packaging` (-tags packaging): these tests
// install packages on the machine, which `make check` must not do.

package tests

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// debianGo is Debian's Go (golang-go), put first on PATH for the
// package build so that the build uses it, as a Debian build would.
const debianGo = "/usr/lib/go/bin"

// buildDeb runs dpkg-buildpackage in a copy of the tree, without -d
// (the Build-Depends must be satisfied, with Debian's golang-go), and
// returns the build log and the directory holding the results.
func buildDeb(t *testing.T, env ...string) (log, outdir string) {
	t.Helper()
	dir := copyTree(t)
	cmd := exec.Command("dpkg-buildpackage", "-us", "-uc", "-b")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "PATH="+debianGo+":"+os.Getenv("PATH"))
	cmd.Env = append(cmd.Env, env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("dpkg-buildpackage: %v\n%s", err, out)
	}
	return string(out), filepath.Dir(dir)
}

// The Debian package builds with Debian's Go and the dpkg-buildflags,
// runs its tests unless DEB_BUILD_OPTIONS=nocheck, is clean for
// lintian --pedantic, installs, and `nbdkit nbd-go` finds the plugin by
// its short name.
func TestDebianPackage(t *testing.T) {
	need(t, "dpkg-buildpackage", "dpkg-checkbuilddeps", "lintian", "dpkg-buildflags", debianGo+"/go")
	if out, err := exec.Command("dpkg-checkbuilddeps", "../debian/control").CombinedOutput(); err != nil {
		t.Fatalf("the Build-Depends are not met (make check-packaging runs apt-get build-dep): %v\n%s", err, out)
	}
	goVersion := strings.TrimPrefix(strings.TrimSpace(run(t, debianGo+"/go", "env", "GOVERSION")), "go")

	log, outdir := buildDeb(t)
	for _, want := range []string{
		"checking whether " + debianGo + "/go is Go", // configure found Debian's Go...
		"yes (" + goVersion + ")",                    // ...and built with it
		"-D_FORTIFY_SOURCE=",                         // dpkg-buildflags reached the compiler
		"-fstack-protector-strong",
		"-Wl,-z,now",
		"make check-unit", // the tests ran
		"smoke: ",
	} {
		if !strings.Contains(log, want) {
			t.Errorf("the build log lacks %q", want)
		}
	}
	if t.Failed() {
		t.Fatalf("build log:\n%s", log)
	}

	changes, _ := filepath.Glob(filepath.Join(outdir, "nbdkit-nbd-go-plugin_*.changes"))
	debs, _ := filepath.Glob(filepath.Join(outdir, "nbdkit-nbd-go-plugin_*.deb"))
	if len(changes) != 1 || len(debs) != 1 {
		t.Fatalf("want one .changes and one .deb, got %v %v", changes, debs)
	}
	lint, err := runErr(t, "lintian", "--pedantic", changes[0])
	t.Logf("lintian --pedantic:\n%s", lint)
	if err != nil || strings.TrimSpace(lint) != "" {
		t.Errorf("lintian --pedantic is not clean (%v)", err)
	}

	list := run(t, "dpkg", "-c", debs[0])
	for _, want := range []string{"/nbdkit/plugins/nbdkit-nbd-go-plugin.so", "/man1/nbdkit-nbd-go-plugin.1.gz"} {
		if !strings.Contains(list, want) {
			t.Errorf("the .deb lacks %s", want)
		}
	}
	run(t, "dpkg", "-i", debs[0])
	t.Cleanup(func() { exec.Command("dpkg", "-r", "nbdkit-nbd-go-plugin").Run() })

	server := startServer(t, "memory", "16M")
	proxy := startNbdkit(t, "nbd-go", "socket="+server)
	copyThrough(t, unixURI(proxy), unixURI(server), 1<<20)
	if out := run(t, "dpkg", "-L", "nbdkit-nbd-go-plugin"); !strings.Contains(out, "man1/nbdkit-nbd-go-plugin.1") {
		t.Errorf("man page not installed: %q", out)
	}
	if out := run(t, "nbdkit", "nbd-go", "--dump-plugin"); !strings.Contains(out, "version="+readVersion(t)+"\n") {
		t.Errorf("the installed plugin's version is not VERSION's: %s", out)
	}
}

// With DEB_BUILD_OPTIONS=nocheck the package builds without running
// its tests.
func TestDebianPackageNocheck(t *testing.T) {
	need(t, "dpkg-buildpackage", debianGo+"/go")
	log, _ := buildDeb(t, "DEB_BUILD_OPTIONS=nocheck")
	if strings.Contains(log, "check-unit") || strings.Contains(log, "smoke: ") {
		t.Errorf("tests ran with DEB_BUILD_OPTIONS=nocheck:\n%s", log)
	}
}
