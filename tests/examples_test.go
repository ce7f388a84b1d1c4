// SPDX-License-Identifier: BSD-3-Clause

package tests

// The EXAMPLES of nbdkit-nbd-go-plugin.pod, each run as written there
// (with the built plugin by path in place of nbd-go, pre-shared TLS
// keys in place of certificates, and local servers in place of
// example.com), checking the bytes a user reads back.

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// exampleTLSClient is a libnbd client that connects over TCP with TLS
// (pre-shared key), prints the protocol it negotiated, and then either
// writes a file at offset 0 ("write"), or reads the whole export into a
// file ("read").  No flush: nbdkit 1.32's oldstyle server advertises
// flush but refuses NBD_CMD_FLUSH with EINVAL, directly or through either
// proxy, and the memory plugin needs none.
const exampleTLSClient = `
import nbd, sys
keys, user, port, mode, path = sys.argv[1:6]
h = nbd.NBD()
h.set_tls(nbd.TLS_REQUIRE)
h.set_tls_psk_file(keys)
h.set_tls_username(user)
h.connect_tcp("127.0.0.1", port)
if not h.get_tls_negotiated():
    sys.exit("TLS not negotiated")
print(h.get_protocol())
if mode == "write":
    data = open(path, "rb").read()
    for off in range(0, len(data), 256 * 1024):
        h.pwrite(data[off:off + 256 * 1024], off)
else:
    size = h.get_size()
    with open(path, "wb") as f:
        for off in range(0, size, 256 * 1024):
            f.write(h.pread(min(256 * 1024, size - off), off))
h.shutdown()
`

// "Convert an oldstyle server to encrypted newstyle":
//
//	nbdkit --tls=require nbd-go socket=/tmp/oldserver.sock
func TestExampleOldstyleToEncryptedNewstyle(t *testing.T) {
	need(t, "psktool", "nbdkit-memory-plugin", pythonNbd, "nbdcopy", "nbdinfo")
	dir := t.TempDir()
	keys := filepath.Join(dir, "keys.psk")
	run(t, "psktool", "-u", "alice", "-p", keys)
	wrongKeys := filepath.Join(dir, "wrong.psk")
	run(t, "psktool", "-u", "alice", "-p", wrongKeys)

	old := startServer(t, "-o", "memory", "1M")
	if p := strings.TrimSpace(python(t, `
import nbd, sys
h = nbd.NBD()
h.connect_unix(sys.argv[1])
print(h.get_protocol())
`, old)); p != "oldstyle" {
		t.Fatalf("the old server speaks %q, want oldstyle", p)
	}
	port := strconv.Itoa(startTCPServer(t, "--tls=require", "--tls-psk="+keys, plugin, "socket="+old))

	// A TLS client writes through the proxy: the bytes land on the old
	// server.
	path, data := randomFile(t, 1<<20)
	if p := strings.TrimSpace(python(t, exampleTLSClient, keys, "alice", port, "write", path)); p != "newstyle-fixed" {
		t.Errorf("the TLS client negotiated %q, want newstyle-fixed", p)
	}
	direct := readAll(t, unixURI(old))
	if len(direct) != len(data) {
		t.Fatalf("old server: %d bytes, want %d", len(direct), len(data))
	}
	sameBytes(t, "old server after a write over TLS", direct, data)

	// A new TLS client reads them back.
	out := filepath.Join(dir, "out")
	python(t, exampleTLSClient, keys, "alice", port, "read", out)
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(data) {
		t.Fatalf("read over TLS: %d bytes, want %d", len(got), len(data))
	}
	sameBytes(t, "read over TLS", got, data)

	// Clients without TLS, or with the wrong key, are refused.
	if o, err := runErr(t, "nbdinfo", "nbd://127.0.0.1:"+port); err == nil {
		t.Errorf("a client without TLS was served: %q", o)
	}
	if o, err := runErr(t, python3, "-c", exampleTLSClient, wrongKeys, "alice", port, "read", out); err == nil {
		t.Errorf("a client with the wrong key was served: %q", o)
	}
}

// qcow2Raw returns the guest-visible bytes of a qcow2 image.
func qcow2Raw(t *testing.T, image string) []byte {
	t.Helper()
	raw := filepath.Join(t.TempDir(), "raw")
	run(t, "qemu-img", "convert", "-f", "qcow2", "-O", "raw", image, raw)
	b, err := os.ReadFile(raw)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// "Open a qcow2 file with qemu-nbd":
//
//	nbdkit nbd-go command=qemu-nbd arg=-f arg=qcow2 arg=/path/to/image.qcow2
//
// "qemu-nbd stops when nbdkit exits."
func TestExampleQcow2WithQemuNbd(t *testing.T) {
	need(t, "qemu-img", "qemu-io", "qemu-nbd", pythonNbd, "nbdcopy")
	image := filepath.Join(t.TempDir(), "image.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", image, "4M")
	run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0xab 0 64k", "-c", "write -P 0xcd 1M 64k", image)
	want := make([]byte, 4<<20)
	copy(want[0:64<<10], bytes.Repeat([]byte{0xab}, 64<<10))
	copy(want[1<<20:1<<20+64<<10], bytes.Repeat([]byte{0xcd}, 64<<10))

	nbdkit := start(t, procOpts{}, plugin, "command=qemu-nbd", "arg=-f", "arg=qcow2", "arg="+image)
	sock := nbdkit.sock
	got := readAll(t, unixURI(sock))
	if len(got) != len(want) {
		t.Fatalf("qcow2 through nbdkit: %d bytes, want %d", len(got), len(want))
	}
	sameBytes(t, "qcow2 written by qemu-io, read through nbdkit", got, want)

	// A write through nbdkit lands in the qcow2 file.
	python(t, `
import nbd, sys
h = nbd.NBD()
h.connect_unix(sys.argv[1])
h.pwrite(b"\x5a" * 65536, 2 * 1024 * 1024)
h.flush()
h.shutdown()
`, sock)
	copy(want[2<<20:2<<20+64<<10], bytes.Repeat([]byte{0x5a}, 64<<10))

	// While nbdkit runs, qemu-nbd (its one child) holds the image's
	// write lock.
	if _, err := runErr(t, "qemu-io", "-f", "qcow2", "-c", "read 0 512", image); err == nil || !strings.Contains(err.Error(), "lock") {
		t.Fatalf("qemu-io opened the image while nbdkit served it (no qemu-nbd?): %v", err)
	}
	kids := children(t, nbdkit.pid)
	if len(kids) != 1 {
		t.Fatalf("nbdkit has %d child processes, want its one qemu-nbd", len(kids))
	}
	if err := nbdkit.stop(10 * time.Second); err != nil {
		t.Error(err)
	}

	// qemu-nbd goes with nbdkit; once it has exited it no longer holds
	// the lock, so qemu-io opens the image for writing, at the first try.
	waitFor(t, 30*time.Second, "qemu-nbd exiting after nbdkit", func() bool { return !runs(kids[0]) })
	if _, err := runErr(t, "qemu-io", "-f", "qcow2", "-c", "read 0 512", image); err != nil {
		t.Fatalf("the image is still locked after qemu-nbd exited: %v", err)
	}
	sameBytes(t, "qcow2 after a write through nbdkit", qcow2Raw(t, image), want)
}

// "Add the partition filter to qemu-nbd":
//
//	nbdkit --filter=partition nbd-go \
//	       command=qemu-nbd arg=-f arg=qcow2 arg=/path/to/image.qcow2 \
//	       partition=1
func TestExamplePartitionFilterOnQemuNbd(t *testing.T) {
	need(t, "nbdkit-partitioning-plugin", "nbdkit-partition-filter", "qemu-img", "qemu-nbd", "nbdcopy")
	part1, data1 := randomFile(t, 1<<20)
	part2, data2 := randomFile(t, 512<<10)
	// An MBR-partitioned disk of the two files, saved as qcow2.
	disk := startServer(t, "partitioning", part1, part2)
	image := filepath.Join(t.TempDir(), "image.qcow2")
	run(t, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", unixURI(disk), image)

	for _, c := range []struct {
		partition string
		want      []byte
	}{{"1", data1}, {"2", data2}} {
		t.Run("partition="+c.partition, func(t *testing.T) {
			sock := startNbdkit(t, "--filter=partition", plugin,
				"command=qemu-nbd", "arg=-f", "arg=qcow2", "arg="+image,
				"partition="+c.partition)
			got := readAll(t, unixURI(sock))
			if len(got) != len(c.want) {
				t.Fatalf("partition %s: %d bytes, want %d", c.partition, len(got), len(c.want))
			}
			sameBytes(t, "partition "+c.partition, got, c.want)
		})
	}
}

// "Serve an encrypted newstyle export to an oldstyle client":
//
//	nbdkit -o --tls=off nbd-go hostname=example.com export=foo tls=require \
//	       --run '/path/to/oldclient --socket=$unixsocket'
func TestExampleEncryptedNewstyleToOldstyleClient(t *testing.T) {
	need(t, "psktool", "nbdkit-file-plugin", pythonNbd)
	dir := t.TempDir()
	keys := filepath.Join(dir, "keys.psk")
	run(t, "psktool", "-u", "alice", "-p", keys)

	// The server has two exports; "a.img" comes first, so a proxy
	// that ignored export=foo would get the wrong bytes.
	exports := filepath.Join(dir, "exports")
	if err := os.Mkdir(exports, 0o700); err != nil {
		t.Fatal(err)
	}
	_, foo := randomFile(t, 512<<10)
	if err := os.WriteFile(filepath.Join(exports, "foo"), foo, 0o600); err != nil {
		t.Fatal(err)
	}
	_, other := randomFile(t, 512<<10)
	if err := os.WriteFile(filepath.Join(exports, "a.img"), other, 0o600); err != nil {
		t.Fatal(err)
	}
	port := strconv.Itoa(startTCPServer(t, "--tls=require", "--tls-psk="+keys, "file", "dir="+exports))

	// The "old client": connects to $unixsocket, checks that it was
	// served oldstyle, and saves the whole export.
	client := filepath.Join(dir, "oldclient.py")
	writeFile(t, client, `
import nbd, sys
if not sys.argv[1].startswith("--socket=/"):
    sys.exit("usage: oldclient --socket=SOCKET OUT")
h = nbd.NBD()
h.connect_unix(sys.argv[1][len("--socket="):])
if h.get_protocol() != "oldstyle":
    sys.exit("served %s, not oldstyle" % h.get_protocol())
size = h.get_size()
with open(sys.argv[2], "wb") as f:
    for off in range(0, size, 256 * 1024):
        f.write(h.pread(min(256 * 1024, size - off), off))
h.shutdown()
`)
	out := filepath.Join(dir, "out")
	run(t, "nbdkit", "-o", "--tls=off", "-U", "-", plugin,
		"hostname=127.0.0.1", "port="+port, "export=foo", "tls=require",
		"tls-psk="+keys, "tls-username=alice",
		"--run", python3+" "+client+" --socket=$unixsocket "+out)
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(foo) {
		t.Fatalf("the oldstyle client read %d bytes, want %d", len(got), len(foo))
	}
	sameBytes(t, "export foo read by an oldstyle client", got, foo)

	// Without the key the proxy cannot reach the server, and the
	// client gets nothing.
	if o, err := runErr(t, "nbdkit", "-o", "--tls=off", "-U", "-", plugin,
		"hostname=127.0.0.1", "port="+port, "export=foo", "tls=require",
		"--run", python3+" "+client+" --socket=$unixsocket "+out+".2"); err == nil {
		t.Errorf("without a TLS key the oldstyle client was served: %q", o)
	}
}
