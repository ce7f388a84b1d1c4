// SPDX-License-Identifier: BSD-3-Clause

package tests

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The test that counts for reconnect-delay=: a filesystem whose storage
// server crashes or is restarted.  ext4 on a loop device on nbdfuse,
// through the proxy, on a server's file; files copied in, each synced,
// and fio's direct writes (fsync every 16) in flight all along, while
// the server is killed with -9 or restarted as systemd restarts a
// service.  Every copy, write and sync must succeed, the filesystem
// stay writable, fsck find it clean and the files read back identical.
//
// `make check` runs a short case; `make check-filesystem` (which
// .ci/run runs) runs the whole set: NBDGO_FILESYSTEM=full.

// A restart of the server, as a user's tools do it.
type restart int

const (
	// killRestart: kill -9, started again once a request has found it
	// gone (a crash, and a supervisor bringing it back).
	killRestart restart = iota
	// systemdRestart: systemctl restart: SIGTERM, SIGKILL if it has
	// not exited within systemdStopTimeout, then started again.
	systemdRestart
)

func (r restart) String() string {
	if r == killRestart {
		return "kill-9"
	}
	return "systemd-restart"
}

// systemdStopTimeout is systemd's TimeoutStopSec in the test (its
// default is 90 s; 10 s is what the users set).
const systemdStopTimeout = 10 * time.Second

// fsServer is a server under the filesystem: how to start it on a
// socket, serving a disk file.
type fsServer struct {
	name  string
	tools []string
	start func(t *testing.T, disk, sock string) *proc
}

var (
	fsNbdkit = fsServer{"nbdkit", []string{"nbdkit-file-plugin"},
		func(t *testing.T, disk, sock string) *proc {
			return start(t, procOpts{sock: sock}, "file", disk)
		}}
	fsQemuNbd = fsServer{"qemu-nbd", []string{"qemu-nbd"},
		func(t *testing.T, disk, sock string) *proc {
			return start(t, procOpts{prog: "qemu-nbd", sock: sock},
				"-f", "raw", "-k", sock, "--persistent", "--shared=16", disk)
		}}
	// A server that does lose its cache: nbdkit's cache filter in
	// writeback mode holds acknowledged writes in a temporary file
	// until a flush, and a kill -9 takes them.  The proxy must find
	// them missing and write them again.
	fsNbdkitCache = fsServer{"nbdkit-cache-writeback", []string{"nbdkit-file-plugin", "nbdkit-cache-filter"},
		func(t *testing.T, disk, sock string) *proc {
			return start(t, procOpts{sock: sock}, "--filter=cache", "file", disk, "cache=writeback")
		}}
)

// fsCase is one run: a server, how many files are copied, and after
// which copy each restart comes.
type fsCase struct {
	server   fsServer
	files    int
	restarts []restart
	after    []int
}

func (c fsCase) name() string {
	var rs []string
	for _, r := range c.restarts {
		rs = append(rs, r.String())
	}
	return c.server.name + "/" + strings.Join(rs, "+")
}

func TestFilesystemRestarts(t *testing.T) {
	cases := []fsCase{
		{fsNbdkit, 12, []restart{killRestart, systemdRestart}, []int{3, 7}},
	}
	if os.Getenv("NBDGO_FILESYSTEM") == "full" {
		cases = nil
		for _, s := range []fsServer{fsNbdkit, fsQemuNbd} {
			for _, r := range []restart{killRestart, systemdRestart} {
				cases = append(cases, fsCase{s, 40, []restart{r, r}, []int{10, 25}})
			}
		}
		cases = append(cases, fsCase{fsNbdkitCache, 40, []restart{killRestart, killRestart}, []int{10, 25}})
	} else {
		t.Log("the short case; NBDGO_FILESYSTEM=full (make check-filesystem) runs every server and restart")
	}
	for _, c := range cases {
		c := c
		t.Run(c.name(), func(t *testing.T) { filesystemRestarts(t, c) })
	}
}

// copyScript copies each file of $1 into $2, syncing each: a line
// "copied N" once file N and its sync have succeeded; the first failure
// ends it, its message on stderr.
const copyScript = `set -eu
n=0
for f in "$1"/*; do
	cp "$f" "$2/"
	sync "$2/${f##*/}"
	n=$((n + 1))
	echo "copied $n"
done`

// fioScript runs fio's direct writes, verified, into the file $1, again
// and again until the file $2 exists: a line "fio run N" after each run
// that succeeded; a failed run ends it with its output on stderr.
const fioScript = `set -u
n=0
while [ ! -e "$2" ]; do
	out=$(fio --name=direct --filename="$1" --size=4M --rw=randwrite --bs=4k \
		--direct=1 --ioengine=psync --fsync=16 --verify=crc32c --do_verify=1 \
		--verify_fatal=1 --verify_state_save=0 2>&1) || { echo "$out" >&2; exit 1; }
	case $out in *"err= 0"*) ;; *) echo "$out" >&2; exit 1 ;; esac
	n=$((n + 1))
	echo "fio run $n"
done`

func filesystemRestarts(t *testing.T, c fsCase) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (a loop device and mount)")
	}
	need(t, append([]string{"nbdfuse", "losetup", "mkfs.ext4", "e2fsck", "mount", "umount", "fio", "bash"}, c.server.tools...)...)
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("needs /dev/fuse")
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		t.Skip("needs /dev/loop-control (loop devices)")
	}
	dir := t.TempDir()
	disk := diskFile(t, 256<<20)
	sock := filepath.Join(dir, "server.sock")
	server := c.server.start(t, disk, sock)
	proxy := start(t, procOpts{}, plugin, "socket="+sock, "reconnect-delay=10")

	// nbdfuse presents the proxy's export as fuse/nbd; a loop device on
	// that file carries ext4.
	fuse := filepath.Join(dir, "fuse")
	mnt := filepath.Join(dir, "mnt")
	for _, d := range []string{fuse, mnt} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	start(t, procOpts{prog: "nbdfuse", noWait: true}, fuse, unixURI(proxy.sock))
	t.Cleanup(func() { runErr(t, "umount", fuse) })
	image := filepath.Join(fuse, "nbd")
	waitFor(t, 30*time.Second, "nbdfuse's "+image, func() bool {
		st, err := os.Stat(image)
		return err == nil && st.Size() == 256<<20
	}, proxy)
	loop := strings.TrimSpace(run(t, "losetup", "-f", "--show", image))
	t.Cleanup(func() { runErr(t, "losetup", "-d", loop) })
	run(t, "mkfs.ext4", "-q", "-F", loop)
	run(t, "mount", loop, mnt)
	mounted := true
	t.Cleanup(func() {
		if mounted {
			runErr(t, "umount", mnt)
		}
	})

	src := filepath.Join(dir, "src")
	if err := os.Mkdir(src, 0o755); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= c.files; i++ {
		f, _ := randomFile(t, 1<<20)
		if err := os.Rename(f, filepath.Join(src, fmt.Sprintf("file%02d", i))); err != nil {
			t.Fatal(err)
		}
	}

	stop := filepath.Join(dir, "stop-fio")
	var fioOut, copyOut syncBuffer
	fio := start(t, procOpts{prog: "bash", stdout: &fioOut}, "-c", fioScript, "fio", filepath.Join(mnt, "fio.dat"), stop)
	waitFor(t, time.Minute, "fio's first run", func() bool { return strings.Contains(fioOut.String(), "fio run 1\n") }, fio)
	copier := start(t, procOpts{prog: "bash", stdout: &copyOut}, "-c", copyScript, "copy", src, mnt)
	copied := func() int { return strings.Count(copyOut.String(), "copied ") }

	for i, r := range c.restarts {
		waitFor(t, 2*time.Minute, fmt.Sprintf("%d files copied", c.after[i]), func() bool {
			return copied() >= c.after[i] || !copier.running()
		}, fio)
		if !copier.running() {
			break
		}
		runs := strings.Count(fioOut.String(), "fio run")
		switch r {
		case killRestart:
			killUntilWaiting(t, server, proxy, fio, nil)
		case systemdRestart:
			began := time.Now()
			err := server.stop(systemdStopTimeout)
			took := time.Since(began)
			if err != nil {
				// The plugin ends its server connections once the
				// server says it is shutting down, so that it can go.
				t.Errorf("the server had to be killed: %v", err)
			}
			t.Logf("the server exited %.2f s after SIGTERM", took.Seconds())
			server.relaunch()
		}
		t.Logf("%v after %d files copied and %d fio runs", r, copied(), runs)
	}
	if err := copier.wait(); err != nil {
		t.Fatalf("copying failed after %d files: %v\n%s", copied(), err, copier.stderr)
	}
	writeFile(t, stop, "")
	if err := fio.wait(); err != nil {
		t.Fatalf("fio's direct writes failed: %v\n%s", err, fio.stderr)
	}
	t.Logf("%d files copied, %d fio runs; the proxy's repairs: %q", copied(),
		strings.Count(fioOut.String(), "fio run"), grepLines(proxy.stderr.String(), "repair:"))

	// Still writable: mounted rw, and a new file goes in and is synced.
	if opts := mountOptions(t, mnt); !strings.HasPrefix(opts, "rw") {
		t.Fatalf("the filesystem is mounted %q after the restarts", opts)
	}
	if out, err := runErr(t, "bash", "-c", `echo last > "$1/last" && sync "$1/last"`, "-", mnt); err != nil {
		t.Fatalf("writing a file after the restarts: %v %s", err, out)
	}
	// Unmounting flushes what is left to the server.
	run(t, "umount", mnt)
	mounted = false
	run(t, "losetup", "-d", loop)

	// The server's disk file itself, with the proxy and server gone.
	run(t, "umount", fuse)
	if err := proxy.stop(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	if err := server.stop(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	if out, err := runErr(t, "e2fsck", "-fn", disk); err != nil {
		t.Fatalf("fsck of the server's disk: %v\n%s", err, out)
	}
	check := filepath.Join(dir, "check")
	if err := os.Mkdir(check, 0o755); err != nil {
		t.Fatal(err)
	}
	run(t, "mount", "-o", "ro,loop", disk, check)
	defer runErr(t, "umount", check)
	for i := 1; i <= c.files; i++ {
		name := fmt.Sprintf("file%02d", i)
		want, err := os.ReadFile(filepath.Join(src, name))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join(check, name))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s differs from what was copied in", name)
		}
	}
	if got, err := os.ReadFile(filepath.Join(check, "last")); err != nil || string(got) != "last\n" {
		t.Errorf("the last file: %q, %v", got, err)
	}
}

// mountOptions are the options /proc/mounts gives for the mount point.
func mountOptions(t *testing.T, mnt string) string {
	t.Helper()
	b, err := os.ReadFile("/proc/mounts")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 4 && f[1] == mnt {
			return f[3]
		}
	}
	t.Fatalf("%s is not mounted", mnt)
	return ""
}

// grepLines are the lines of s that contain sub.
func grepLines(s, sub string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return out
}
