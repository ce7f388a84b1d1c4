// SPDX-License-Identifier: BSD-3-Clause

package tests

// The kit (loader + nbdkit package) knows nothing of NBD proxying: its
// example plugin, examples/ramdisk, built by the same make rule, serves
// in every nbdkit mode and refuses a bad configuration before serving.
// Copied out of the tree, as a plugin author's own directory, it builds
// with `make go-plugin` (with or without a go.mod of its own) and
// serves in every mode too; without Open it fails to build, saying so
// in one line.

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// ramdisk is the built example plugin, made absolute.
var ramdisk = func() string {
	p, err := filepath.Abs("../examples/ramdisk/nbdkit-ramdisk-plugin.so")
	if err != nil {
		panic(err)
	}
	return p
}()

// writeReadBack writes random bytes at the start of the export and
// checks that they read back, over two separate connections.
func writeReadBack(t *testing.T, uri string) {
	t.Helper()
	path, data := randomFile(t, 4<<20)
	run(t, "nbdcopy", path, uri)
	sameBytes(t, "read back", readAll(t, uri), data)
}

// kitModes serve a plugin built with the kit, ramdisk or a copy of it
// (so, taking size=), in each nbdkit mode, and check what a client
// reads back.
var kitModes = []struct {
	name  string
	serve func(t *testing.T, so string)
}{
	{"foreground", kitForeground},
	{"daemon", kitDaemon},
	{"run", kitRun},
	{"stdio", kitStdio},
	{"socket-activation", kitSocketActivation},
}

func kitForeground(t *testing.T, so string) {
	need(t, "nbdinfo", "nbdcopy")
	sock := startNbdkit(t, so, "size=64M")
	uri := unixURI(sock)
	if got := sizeThrough(t, uri); got != "67108864" {
		t.Fatalf("size %s, want 64M", got)
	}
	writeReadBack(t, uri)
	// Many requests at once on several connections (the plugin is
	// parallel and advertises multi-conn).
	path, data := randomFile(t, 32<<20)
	run(t, "nbdcopy", "--connections=4", "--requests=64", path, uri)
	out := filepath.Join(t.TempDir(), "out")
	run(t, "nbdcopy", "--connections=4", "--requests=64", uri, out)
	got, _ := os.ReadFile(out)
	sameBytes(t, "read back in parallel", got, data)
	// The magic config key: a bare size.
	writeReadBack(t, unixURI(startNbdkit(t, so, "8M")))
}

func kitDaemon(t *testing.T, so string) {
	need(t, "nbdcopy")
	d := daemonize(t, so, "size=16M")
	writeReadBack(t, unixURI(d.sock))
	d.stop(t)
}

func kitRun(t *testing.T, so string) {
	need(t, "nbdcopy")
	path, data := randomFile(t, 4<<20)
	out := filepath.Join(t.TempDir(), "out")
	run(t, "nbdkit", "-U", "-", so, "size=16M",
		"--run", "nbdcopy "+path+" \"$uri\" && nbdcopy \"$uri\" "+out)
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	sameBytes(t, "read back under --run", got, data)
}

func kitStdio(t *testing.T, so string) {
	need(t, pythonNbd)
	out := python(t, `
import nbd, sys, os
h = nbd.NBD()
h.connect_command(["nbdkit", "-s", sys.argv[1], "size=16M"])
assert h.get_size() == 16 << 20
buf = os.urandom(1 << 20)
h.pwrite(buf, 4096)
h.flush()
assert h.pread(len(buf), 4096) == buf
h.zero(65536, 8192)
assert h.pread(65536, 8192) == bytes(65536)
h.trim(4096, 4096)
assert h.pread(4096, 4096) == bytes(4096)
h.shutdown()
print("ok")
`, so)
	if strings.TrimSpace(out) != "ok" {
		t.Fatalf("got %q", out)
	}
}

// systemd-socket-activate listens, then starts nbdkit at the first
// connection with the socket in LISTEN_FDS; nbdkit keeps serving it.
func kitSocketActivation(t *testing.T, so string) {
	need(t, "systemd-socket-activate", "nbdcopy")
	sock := filepath.Join(t.TempDir(), "rd.sock")
	start(t, procOpts{prog: "systemd-socket-activate", sock: sock}, "-l", sock, "nbdkit", so, "size=16M")
	writeReadBack(t, unixURI(sock))
}

func TestKitRamdiskForeground(t *testing.T)       { kitForeground(t, ramdisk) }
func TestKitRamdiskDaemon(t *testing.T)           { kitDaemon(t, ramdisk) }
func TestKitRamdiskRun(t *testing.T)              { kitRun(t, ramdisk) }
func TestKitRamdiskStdio(t *testing.T)            { kitStdio(t, ramdisk) }
func TestKitRamdiskSocketActivation(t *testing.T) { kitSocketActivation(t, ramdisk) }

// A missing or bad size: exit status 1 and one line, before nbdkit
// listens or detaches, in every mode.
func TestKitRamdiskConfigErrors(t *testing.T) {
	need(t, "nbdkit")
	for _, c := range []struct {
		params []string
		want   string
	}{
		{nil, "size= is required"},
		{[]string{"size=abc"}, "abc"},
		{[]string{"size=-1"}, "negative"},
		{[]string{"size=1E"}, "size=1E is more than"},
		{[]string{"size=1M", "bogus=1"}, "bogus=1"},
	} {
		for _, mode := range [][]string{nil, {"-f"}, {"--run", "true"}, {"-s"}} {
			refusedBeforeServing(t, mode, ramdisk, c.params, c.want)
		}
	}
}

// kitDir is the checkout: the kit that `make go-plugin` runs in.
var kitDir = func() string {
	p, err := filepath.Abs("..")
	if err != nil {
		panic(err)
	}
	return p
}()

// authorCopy copies the .go files of examples/ramdisk into a new
// directory outside the tree, as a plugin author's own, with edit
// applied to main.go, and returns the directory.
func authorCopy(t *testing.T, edit func(string) string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "myplugin")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob("../examples/ramdisk/*.go")
	if len(files) == 0 {
		t.Fatal("examples/ramdisk has no .go file")
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if filepath.Base(f) == "main.go" {
			b = []byte(edit(string(b)))
		}
		writeFile(t, filepath.Join(dir, filepath.Base(f)), string(b))
	}
	return dir
}

// goPlugin runs `make go-plugin SRC=src OUT=out` in the kit and returns
// its output and error.
func goPlugin(t *testing.T, src, out string, env ...string) (string, string, error) {
	t.Helper()
	need(t, "make", "cc")
	args := append(env, "make", "-s", "-C", kitDir, "go-plugin", "SRC="+src, "OUT="+out)
	return runOut(t, "env", args...)
}

// A plugin directory outside the tree, without a go.mod, with one that
// names the kit as README says, and with one whose module vendors its
// dependencies (vendor/ knows nothing of the kit), builds with `make
// go-plugin` into one .so that serves in every mode (daemon and --run
// among them), and so it does with spaces in TMPDIR, SRC and OUT.
func TestKitOutOfTree(t *testing.T) {
	need(t, "nbdkit")
	const kitGoMod = "module example.com/myplugin\n\ngo 1.19\n\nrequire nbdkit-nbd-go-plugin v0.0.0\n"
	// A module vendoring a dependency of its own (a local one: no
	// network), which main.go imports.
	const vendorGoMod = "module example.com/myplugin\n\ngo 1.19\n\nrequire example.com/dep v0.0.0\n\nreplace example.com/dep => ../dep\n"
	const modulesTxt = "# example.com/dep v0.0.0 => ../dep\n## explicit; go 1.19\nexample.com/dep\n# example.com/dep => ../dep\n"
	const depGo = "package dep\n\n// Name is the plugin's name.\nconst Name = \"myplugin\"\n"
	for _, c := range []struct {
		name, gomod string
		vendor      bool
		spaces      bool
	}{
		{name: "no-go.mod"},
		{name: "own-go.mod", gomod: kitGoMod},
		{name: "vendor", gomod: vendorGoMod, vendor: true},
		{name: "spaces", gomod: kitGoMod, spaces: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			src := authorCopy(t, func(s string) string {
				if c.vendor {
					s = strings.Replace(s, "import (", "import (\n\t_ \"example.com/dep\"", 1)
				}
				return s
			})
			out := t.TempDir()
			var env []string // for the build
			if c.spaces {
				spaced := filepath.Join(filepath.Dir(src), "my plugin")
				if err := os.Rename(src, spaced); err != nil {
					t.Fatal(err)
				}
				src = spaced
				out = filepath.Join(out, "out dir")
				tmp := filepath.Join(t.TempDir(), "tmp dir")
				for _, d := range []string{out, tmp} {
					if err := os.Mkdir(d, 0o755); err != nil {
						t.Fatal(err)
					}
				}
				env = append(env, "TMPDIR="+tmp)
			}
			if c.gomod != "" {
				writeFile(t, filepath.Join(src, "go.mod"), c.gomod)
			}
			want := []string{"main.go"}
			if c.gomod != "" {
				want = append(want, "go.mod")
			}
			if c.vendor {
				dep := filepath.Join(filepath.Dir(src), "dep")
				for _, d := range []string{dep, filepath.Join(src, "vendor", "example.com", "dep")} {
					if err := os.MkdirAll(d, 0o755); err != nil {
						t.Fatal(err)
					}
					writeFile(t, filepath.Join(d, "dep.go"), depGo)
				}
				writeFile(t, filepath.Join(dep, "go.mod"), "module example.com/dep\n\ngo 1.19\n")
				writeFile(t, filepath.Join(src, "vendor", "modules.txt"), modulesTxt)
				want = append(want, "vendor", "vendor/example.com", "vendor/example.com/dep",
					"vendor/example.com/dep/dep.go", "vendor/modules.txt")
			}
			so := filepath.Join(out, "nbdkit-myplugin-plugin.so")
			if stdout, stderr, err := goPlugin(t, src, so, env...); err != nil {
				t.Fatalf("make go-plugin: %v\n%s%s", err, stdout, stderr)
			}
			// The author's directory is as it was: no file added or changed.
			var names []string
			filepath.WalkDir(src, func(path string, _ fs.DirEntry, _ error) error {
				if rel, _ := filepath.Rel(src, path); rel != "." {
					names = append(names, rel)
				}
				return nil
			})
			sort.Strings(names)
			sort.Strings(want)
			if strings.Join(names, " ") != strings.Join(want, " ") {
				t.Errorf("the plugin's directory holds %v after the build, not %v", names, want)
			}
			if c.gomod != "" && readFile(t, filepath.Join(src, "go.mod")) != c.gomod {
				t.Error("the build changed the author's go.mod")
			}
			if c.vendor && readFile(t, filepath.Join(src, "vendor", "modules.txt")) != modulesTxt {
				t.Error("the build changed the author's vendor/modules.txt")
			}
			for _, e := range env {
				tmp := strings.TrimPrefix(e, "TMPDIR=")
				if left, _ := filepath.Glob(filepath.Join(tmp, "*")); len(left) != 0 {
					t.Errorf("the build left %v in TMPDIR", left)
				}
			}

			// The temporary build directory is gone: the .so is all
			// there is.
			for _, m := range kitModes {
				t.Run(m.name, func(t *testing.T) { m.serve(t, so) })
			}
		})
	}
}

// A plugin without Open, which nbdkit would refuse to load, fails to
// build: one line names Open, and no .so is written.
func TestKitBuildRefusesMissingOpen(t *testing.T) {
	open := regexp.MustCompile(`(?m)^\s*Open:.*\n`)
	src := authorCopy(t, func(s string) string {
		if !open.MatchString(s) {
			t.Fatal("examples/ramdisk/main.go has no Open: line to remove")
		}
		return open.ReplaceAllString(s, "")
	})
	so := filepath.Join(t.TempDir(), "nbdkit-myplugin-plugin.so")
	stdout, stderr, err := goPlugin(t, src, so)
	if err == nil {
		t.Fatalf("make go-plugin built a plugin without Open:\n%s%s", stdout, stderr)
	}
	// make's own line ("make: ***", or "make[1]: ***" under make check)
	// aside.
	makeLine := regexp.MustCompile(`^make(\[\d+\])?: \*\*\* `)
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(stderr), "\n") {
		if !makeLine.MatchString(l) {
			lines = append(lines, l)
		}
	}
	if len(lines) != 1 || !strings.Contains(lines[0], "no Open callback") {
		t.Errorf("want one line naming Open, got:\n%s", stderr)
	}
	if _, err := os.Stat(so); err == nil {
		t.Error("a .so was written")
	}
}
