// SPDX-License-Identifier: BSD-3-Clause

package tests

// Parity with nbdkit's C nbd plugin: each test runs the same server and
// the same client against our plugin and against `nbdkit nbd`, and
// compares what the clients see.  The C plugin is the oracle; each test
// also checks a few facts of its own, so that the two cannot agree on
// something wrong.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// proxies are the two plugins under comparison.
var proxies = []struct{ name, so string }{{"go", plugin}, {"c", "nbd"}}

// infoJSON is nbdinfo --json (or --list --json) of a URI, without the
// "uri" fields (which name the proxy's own socket), re-encoded with
// sorted keys.
func infoJSON(t *testing.T, uri string, list bool) string {
	t.Helper()
	args := []string{"--json", uri}
	if list {
		args = append([]string{"--list"}, args...)
	}
	var v map[string]any
	if err := json.Unmarshal([]byte(run(t, "nbdinfo", args...)), &v); err != nil {
		t.Fatal(err)
	}
	delete(v, "uri")
	if exports, ok := v["exports"].([]any); ok {
		for _, e := range exports {
			if m, ok := e.(map[string]any); ok {
				delete(m, "uri")
			}
		}
	}
	b, err := json.MarshalIndent(v, "", " ")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// exportInfo is the first export of nbdinfo --json, decoded.
func exportInfo(t *testing.T, js string) map[string]any {
	t.Helper()
	var v map[string]any
	if err := json.Unmarshal([]byte(js), &v); err != nil {
		t.Fatal(err)
	}
	exports, _ := v["exports"].([]any)
	if len(exports) == 0 {
		t.Fatalf("no exports in %s", js)
	}
	return exports[0].(map[string]any)
}

// probeScript runs a fixed mixed sequence of requests on sys.argv[1] and
// prints one JSON line per step: the step, "ok" with its result or "err"
// with the errno's name.  Strict mode is off, so that libnbd sends what it
// would otherwise refuse and the server (the proxy) answers.  The data is
// pseudo-random from a fixed seed, so two runs send the same bytes.
const probeScript = `
import nbd, sys, json, errno, hashlib, random
h = nbd.NBD()
h.set_strict_mode(0)
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_uri(sys.argv[1])
rnd = random.Random(1)
size = h.get_size()

def step(name, f):
    try:
        r = f()
        print(json.dumps([name, "ok", r]))
    except nbd.Error as e:
        print(json.dumps([name, "err", errno.errorcode.get(e.errnum, str(e.errnum))]))
    sys.stdout.flush()

def rd(n, off, flags=0):
    return hashlib.sha256(h.pread(n, off, flags)).hexdigest()[:16]

written = {}
def wr(n, off, flags=0):
    b = rnd.randbytes(n)
    h.pwrite(b, off, flags)
    written[off] = b
    return hashlib.sha256(b).hexdigest()[:16]

def same(n, off):
    if off not in written:
        return "not written"
    return h.pread(n, off) == written[off][:n]

def bs(n, off, flags=0):
    got = []
    def cb(ctx, o, ents, err):
        got.append([ctx, o, list(ents)])
        return 0
    h.block_status(n, off, cb, flags)
    return got

def flags():
    r = {"size": size}
    for f in ["is_read_only", "can_flush", "can_fua", "can_trim", "can_zero",
              "can_fast_zero", "can_cache", "can_multi_conn", "is_rotational",
              "can_df"]:
        r[f] = getattr(h, f)()
    r["base:allocation"] = h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    r["block_size"] = [h.get_block_size(w) for w in
                       (nbd.SIZE_MINIMUM, nbd.SIZE_PREFERRED, nbd.SIZE_MAXIMUM)]
    return r

K = 1024
step("flags", flags)
step("read 0", lambda: rd(64*K, 0))
step("block_status 0", lambda: bs(size, 0))
step("block_status req_one", lambda: bs(size, 0, nbd.CMD_FLAG_REQ_ONE))
step("write 0", lambda: wr(64*K, 0))
step("write fua 128K", lambda: wr(64*K, 128*K, nbd.CMD_FLAG_FUA))
step("readback 0", lambda: same(64*K, 0))
step("readback 128K", lambda: same(64*K, 128*K))
step("read fua-written", lambda: rd(256*K, 0))
step("zero no_hole 32K", lambda: h.zero(16*K, 32*K, nbd.CMD_FLAG_NO_HOLE))
# nbdkit 1.32 aborts (an assertion in backend_zero) on a FAST_ZERO
# request when it did not advertise fast zero: do not send one then.
if h.can_fast_zero():
    step("zero fast 256K", lambda: h.zero(64*K, 256*K, nbd.CMD_FLAG_FAST_ZERO))
step("zero fua 384K", lambda: h.zero(64*K, 384*K, nbd.CMD_FLAG_FUA))
step("zero may-trim 512K", lambda: h.zero(128*K, 512*K))
step("read after zero", lambda: rd(size, 0))
step("trim 0", lambda: h.trim(64*K, 0))
step("trim fua 128K", lambda: h.trim(64*K, 128*K, nbd.CMD_FLAG_FUA))
step("flush", lambda: h.flush())
step("cache", lambda: h.cache(64*K, 0))
step("read after trim", lambda: rd(size, 0))
step("block_status after", lambda: bs(size, 0))
step("write 1 byte at 7", lambda: wr(1, 7))
step("readback 1 byte", lambda: same(1, 7))
step("read 3 bytes at 5", lambda: rd(3, 5))
step("read past end", lambda: rd(1024, size - 512))
step("write past end", lambda: wr(1024, size - 512))
step("zero past end", lambda: h.zero(1024, size - 512))
step("trim past end", lambda: h.trim(1024, size - 512))
step("cache past end", lambda: h.cache(1024, size - 512))
step("block_status past end", lambda: bs(1024, size))
step("final read", lambda: rd(size, 0))
h.shutdown()
`

// probe runs probeScript against uri and returns its output lines.
func probe(t *testing.T, uri string) []string {
	t.Helper()
	return strings.Split(strings.TrimSpace(python(t, probeScript, uri)), "\n")
}

// sameLines fails the test naming the first line where go and c differ.
func sameLines(t *testing.T, what string, got, want []string) {
	t.Helper()
	for i := 0; i < len(got) || i < len(want); i++ {
		var g, w string
		if i < len(got) {
			g = got[i]
		}
		if i < len(want) {
			w = want[i]
		}
		if g != w {
			t.Errorf("%s differs at line %d:\n  ours: %s\n  C:    %s", what, i+1, g, w)
			return
		}
	}
}

// probeStep is the result of one step of probeScript's output.
func probeStep(t *testing.T, lines []string, name string) (string, any) {
	t.Helper()
	for _, l := range lines {
		var v []any
		if err := json.Unmarshal([]byte(l), &v); err != nil {
			t.Fatalf("bad probe line %q: %v", l, err)
		}
		if v[0] == name {
			return v[1].(string), v[2]
		}
	}
	t.Fatalf("no step %q in %v", name, lines)
	return "", nil
}

// observation is what a client sees of one export.
type observation struct {
	info   string   // nbdinfo --json minus uri
	extent string   // nbdinfo --map
	data   []byte   // every byte
	probe  []string // probeScript's output (writes to the export)
}

func observe(t *testing.T, uri string) observation {
	t.Helper()
	var o observation
	o.info = infoJSON(t, uri, false)
	o.extent = run(t, "nbdinfo", "--map", uri)
	o.data = readAll(t, uri)
	o.probe = probe(t, uri)
	return o
}

// compareBackend starts a fresh server (serverArgs) behind each plugin,
// the proxy run with nbdkit options opts and parameters params (plus
// socket=), observes both through the proxy and compares.  It returns
// our plugin's observation and the server's data as read directly
// before any probe wrote to it.
func compareBackend(t *testing.T, serverArgs, opts, params []string) (observation, []byte) {
	t.Helper()
	need(t, "nbdkit-nbd-plugin", "nbdinfo", "nbdcopy", pythonNbd)
	var obs [2]observation
	var direct []byte
	for i, p := range proxies {
		server := startServer(t, serverArgs...)
		if i == 0 {
			direct = readAll(t, unixURI(server))
		}
		args := append(append(append([]string{}, opts...), p.so, "socket="+server), params...)
		proxy := startNbdkit(t, args...)
		obs[i] = observe(t, unixURI(proxy))
	}
	g, c := obs[0], obs[1]
	if g.info != c.info {
		t.Errorf("nbdinfo --json differs:\nours:\n%s\nC:\n%s", g.info, c.info)
	}
	if g.extent != c.extent {
		t.Errorf("nbdinfo --map differs:\nours:\n%s\nC:\n%s", g.extent, c.extent)
	}
	if !bytes.Equal(g.data, c.data) {
		t.Errorf("bytes read differ (ours %d bytes, C %d bytes)", len(g.data), len(c.data))
	}
	sameBytes(t, "bytes read through our plugin vs the server", g.data, direct)
	if len(g.data) != len(direct) {
		t.Errorf("read %d bytes through our plugin, the server has %d", len(g.data), len(direct))
	}
	sameLines(t, "request sequence", g.probe, c.probe)
	return g, direct
}

func TestParityMemory(t *testing.T) {
	need(t, "nbdkit-memory-plugin")
	g, _ := compareBackend(t, []string{"memory", "1M"}, nil, nil)
	e := exportInfo(t, g.info)
	if e["export-size"] != float64(1<<20) || e["is_read_only"] != false || e["can_zero"] != true {
		t.Errorf("unexpected info: %s", g.info)
	}
	if !strings.Contains(g.extent, "hole,zero") {
		t.Errorf("an empty memory disk is not a hole: %s", g.extent)
	}
	if st, v := probeStep(t, g.probe, "readback 128K"); st != "ok" || v != true {
		t.Errorf("a FUA write does not read back: %s %v", st, v)
	}
	if st, v := probeStep(t, g.probe, "read past end"); st != "err" || v != "EINVAL" {
		t.Errorf("reading past the end: %s %v, want EINVAL", st, v)
	}
}

func TestParitySparseData(t *testing.T) {
	need(t, "nbdkit-data-plugin")
	g, direct := compareBackend(t, []string{"data", "data=1 @1048576 2 @4194304 3", "size=8M"}, nil, nil)
	if len(direct) != 8<<20 || direct[0] != 1 || direct[1<<20] != 2 || direct[4<<20] != 3 || direct[5] != 0 {
		t.Fatalf("the data plugin's disk is not what the test expects")
	}
	// Holes between the data show up as such.
	if strings.Count(g.extent, "hole,zero") < 2 || !strings.Contains(g.extent, "data") {
		t.Errorf("the map does not show data and holes:\n%s", g.extent)
	}
}

func TestParityBlockSizeAndDescription(t *testing.T) {
	need(t, "nbdkit-memory-plugin", "nbdkit-blocksize-policy-filter", "nbdkit-exportname-filter")
	g, _ := compareBackend(t, []string{"--filter=blocksize-policy", "--filter=exportname", "memory", "1M",
		"blocksize-minimum=512", "blocksize-preferred=4096", "blocksize-maximum=65536",
		"exportname=foo", "exportdesc=fixed:hello"}, nil, nil)
	e := exportInfo(t, g.info)
	if e["block_size_minimum"] != float64(512) || e["block_size_preferred"] != float64(4096) ||
		e["block_size_maximum"] != float64(65536) {
		t.Errorf("block sizes not passed through: %s", g.info)
	}
	if e["description"] != "hello" {
		t.Errorf("description not passed through: %s", g.info)
	}
}

func TestParityReadOnlyServer(t *testing.T) {
	need(t, "nbdkit-memory-plugin")
	g, _ := compareBackend(t, []string{"-r", "memory", "1M"}, nil, nil)
	if exportInfo(t, g.info)["is_read_only"] != true {
		t.Errorf("not read-only: %s", g.info)
	}
	if st, v := probeStep(t, g.probe, "write 0"); st != "err" || v != "EPERM" {
		t.Errorf("writing to a read-only server: %s %v, want EPERM", st, v)
	}
}

func TestParityReadOnlyProxy(t *testing.T) {
	need(t, "nbdkit-memory-plugin")
	g, _ := compareBackend(t, []string{"memory", "1M"}, []string{"-r"}, nil)
	if exportInfo(t, g.info)["is_read_only"] != true {
		t.Errorf("not read-only: %s", g.info)
	}
	if st, v := probeStep(t, g.probe, "write 0"); st != "err" || v != "EPERM" {
		t.Errorf("writing through a read-only proxy: %s %v, want EPERM", st, v)
	}
}

func TestParityFeaturelessServer(t *testing.T) {
	need(t, "nbdkit-memory-plugin", "nbdkit-nozero-filter", "nbdkit-nocache-filter", "nbdkit-multi-conn-filter", "nbdkit-noextents-filter")
	g, _ := compareBackend(t, []string{"--filter=nozero", "--filter=nocache", "--filter=multi-conn",
		"--filter=noextents", "memory", "1M", "zeromode=none", "cachemode=none", "multi-conn-mode=disable"}, nil, nil)
	e := exportInfo(t, g.info)
	// nbdkit itself emulates zero (with writes), so only these vanish.
	for _, k := range []string{"can_cache", "can_multi_conn", "can_fast_zero"} {
		if e[k] != false {
			t.Errorf("%s: want false: %s", k, g.info)
		}
	}
	// No extents from the server: nbdkit reports it all as data.
	if st, v := probeStep(t, g.probe, "block_status 0"); st != "ok" ||
		fmt.Sprint(v) != "[[base:allocation 0 [1.048576e+06 0]]]" {
		t.Errorf("block status of a server without extents: %s %v, want all data", st, v)
	}
	if st, v := probeStep(t, g.probe, "cache"); st != "err" || v != "EINVAL" {
		t.Errorf("cache on a server without cache: %s %v, want EINVAL", st, v)
	}
}

func TestParityServerErrors(t *testing.T) {
	need(t, "nbdkit-memory-plugin", "nbdkit-error-filter")
	g, _ := compareBackend(t, []string{"--filter=error", "memory", "1M",
		"error-trim=ENOSPC", "error-trim-rate=1", "error-cache=ENOMEM", "error-cache-rate=1",
		"error-zero=EPERM", "error-zero-rate=1"}, nil, nil)
	for _, c := range []struct{ step, errno string }{
		{"trim 0", "ENOSPC"}, {"zero no_hole 32K", "EPERM"}, {"cache", "ENOMEM"},
	} {
		if st, v := probeStep(t, g.probe, c.step); st != "err" || v != c.errno {
			t.Errorf("%s: %s %v, want the server's %s", c.step, st, v, c.errno)
		}
	}
}

func TestParityOldstyleServer(t *testing.T) {
	need(t, "nbdkit-memory-plugin")
	g, _ := compareBackend(t, []string{"-o", "memory", "1M"}, nil, nil)
	if exportInfo(t, g.info)["export-size"] != float64(1<<20) {
		t.Errorf("wrong size: %s", g.info)
	}
}

// serverLog is the log filter's log with the timestamps cut off, once
// the log shows n disconnections; it fails the test if it does not
// within 30 s.
func serverLog(t *testing.T, path string, n int) []string {
	t.Helper()
	var b []byte
	waitFor(t, 30*time.Second, fmt.Sprintf("%d disconnections in the server's log", n), func() bool {
		b, _ = os.ReadFile(path)
		return strings.Count(string(b), " Disconnect ") >= n
	})
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if f := strings.SplitN(l, " ", 3); len(f) == 3 {
			lines = append(lines, f[2])
		}
	}
	return lines
}

// The mixed sequence against fresh servers of three kinds: the client
// sees the same through both plugins, and the server gets the same
// requests with the same flags (FUA, NO_HOLE, FAST_ZERO, REQ_ONE) from
// both, as its log filter records them.
func TestParityMixedSequence(t *testing.T) {
	need(t, "nbdkit-nbd-plugin", "nbdkit-memory-plugin", "nbdkit-data-plugin", "nbdkit-log-filter", "nbdkit-blocksize-policy-filter", pythonNbd)
	for _, server := range [][]string{
		{"memory", "1M"},
		{"data", "data=1 @65536 2 @524288 3", "size=1M"},
		{"--filter=blocksize-policy", "memory", "1M", "blocksize-minimum=4096", "blocksize-error-policy=error"},
	} {
		t.Run(server[0], func(t *testing.T) {
			var out, logs [2][]string
			for i, p := range proxies {
				log := filepath.Join(t.TempDir(), "log")
				s := startServer(t, append([]string{"--filter=log"}, append(server, "logfile="+log)...)...)
				out[i] = probe(t, unixURI(startNbdkit(t, p.so, "socket="+s)))
				// The proxy closes its server connection after the
				// client left: wait for that, so that the logs compare.
				serverLog(t, log, 1)
				// What the client saw is what the server holds.
				final := python(t, `
import nbd, sys, hashlib
h = nbd.NBD()
h.connect_uri(sys.argv[1])
print(hashlib.sha256(h.pread(h.get_size(), 0)).hexdigest()[:16])
`, unixURI(s))
				if _, v := probeStep(t, out[i], "final read"); v != strings.TrimSpace(final) {
					t.Errorf("%s: the server holds %s, the client read %v", p.name, final, v)
				}
				logs[i] = serverLog(t, log, 2)
			}
			sameLines(t, "request sequence", out[0], out[1])
			sameLines(t, "the server's log", logs[0], logs[1])
			if st, v := probeStep(t, out[0], "readback 0"); st != "ok" || v != true {
				t.Errorf("write does not read back: %s %v", st, v)
			}
			log := strings.Join(logs[0], "\n")
			for _, want := range []string{
				"Write id=5 offset=0x20000 count=0x10000 fua=1",     // FUA passed on
				"Zero id=9 offset=0x8000 count=0x4000 trim=0 fua=0", // NO_HOLE: no trim
				"offset=0x40000 count=0x10000 trim=1 fua=0 fast=1",  // FAST_ZERO
				"Trim id=15 offset=0x20000 count=0x10000 fua=1",     // FUA trim
				"req_one=1",
				"Flush", "Cache",
			} {
				if !strings.Contains(log, want) {
					t.Errorf("the server's log lacks %q:\n%s", want, log)
				}
			}
		})
	}
}

// readHead reads n bytes at offset 0 of uri.
func readHead(t *testing.T, uri string, n int) string {
	t.Helper()
	return python(t, `
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
sys.stdout.write(h.pread(min(h.get_size(), int(sys.argv[2])), 0).rstrip(b"\0").decode())
`, uri, fmt.Sprint(n))
}

// modeCheck writes random data through proxy and reads it back through
// the proxy and from the server.
func modeCheck(t *testing.T, proxy, server string) {
	t.Helper()
	copyThrough(t, unixURI(proxy), unixURI(server), 1<<20)
}

func TestParityModes(t *testing.T) {
	need(t, "nbdkit-nbd-plugin", "nbdkit-memory-plugin", "nbdkit-info-plugin", "nbdkit-data-plugin", "nbdcopy", pythonNbd)
	for _, p := range proxies {
		t.Run(p.name, func(t *testing.T) {
			server := startServer(t, "memory", "2M")
			port := startTCPServer(t, "memory", "2M")
			tcpURI := fmt.Sprintf("nbd://127.0.0.1:%d", port)
			tcpCheck := func(proxy string) {
				t.Helper()
				path, data := randomFile(t, 1<<20)
				run(t, "nbdcopy", path, unixURI(proxy))
				sameBytes(t, "read through the proxy", readAll(t, unixURI(proxy)), data)
				sameBytes(t, "read from the TCP server", readAll(t, tcpURI), data)
			}
			t.Run("hostname", func(t *testing.T) {
				tcpCheck(startNbdkit(t, p.so, "hostname=127.0.0.1", fmt.Sprintf("port=%d", port)))
			})
			t.Run("uri", func(t *testing.T) { tcpCheck(startNbdkit(t, p.so, "uri="+tcpURI)) })
			t.Run("magic-uri", func(t *testing.T) { tcpCheck(startNbdkit(t, p.so, tcpURI)) })
			t.Run("socket", func(t *testing.T) { modeCheck(t, startNbdkit(t, p.so, "socket="+server), server) })
			t.Run("unix-uri-export", func(t *testing.T) {
				info := startServer(t, "info", "mode=exportname")
				proxy := startNbdkit(t, p.so, "nbd+unix:///foo?socket="+info)
				if got := readHead(t, unixURI(proxy), 16); got != "foo" {
					t.Errorf("export from the URI: read %q, want foo", got)
				}
			})
			t.Run("socket-fd", func(t *testing.T) {
				modeCheck(t, startSocketFDProxy(t, p.so, server), server)
			})
			t.Run("command-nbdkit", func(t *testing.T) {
				proxy := startNbdkit(t, p.so, "command=nbdkit", "arg=data", "arg=data=@512 0x41 0x42 0x43", "arg=size=1M")
				b := readAll(t, unixURI(proxy))
				if len(b) != 1<<20 || string(b[512:515]) != "ABC" || b[0] != 0 {
					t.Errorf("command=nbdkit served the wrong data")
				}
				// Writable too: shared by every client.
				path, data := randomFile(t, 64<<10)
				run(t, "nbdcopy", path, unixURI(proxy))
				sameBytes(t, "read back through command=nbdkit", readAll(t, unixURI(proxy)), data)
			})
			t.Run("command-qemu-nbd", func(t *testing.T) {
				need(t, "qemu-img", "qemu-io", "qemu-nbd")
				disk := filepath.Join(t.TempDir(), "disk.qcow2")
				run(t, "qemu-img", "create", "-q", "-f", "qcow2", disk, "4M")
				run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x55 0 1M", disk)
				proxy := startNbdkit(t, p.so, "command=qemu-nbd", "arg=-f", "arg=qcow2", "arg="+disk)
				b := readAll(t, unixURI(proxy))
				if len(b) != 4<<20 {
					t.Fatalf("qcow2 through qemu-nbd: %d bytes, want 4M", len(b))
				}
				want := append(bytes.Repeat([]byte{0x55}, 1<<20), make([]byte, 3<<20)...)
				sameBytes(t, "qcow2 through qemu-nbd", b, want)
			})
		})
	}
}

func TestParityExports(t *testing.T) {
	need(t, "nbdkit-nbd-plugin", "nbdkit-memory-plugin", "nbdkit-info-plugin", "nbdkit-exportname-filter", "nbdinfo", pythonNbd)
	info := startServer(t, "info", "mode=exportname")
	listing := startServer(t, "--filter=exportname", "memory", "1M", "exportname=a", "exportname=b",
		"exportname-list=explicit", "exportdesc=fixed:disk")
	serverList := infoJSON(t, unixURI(listing), true)
	if !strings.Contains(serverList, `"export-name": "a"`) || !strings.Contains(serverList, `"export-name": "b"`) {
		t.Fatalf("the server does not list a and b:\n%s", serverList)
	}
	var lists, plainLists, defaults [2]string
	for i, p := range proxies {
		t.Run(p.name, func(t *testing.T) {
			proxy := startNbdkit(t, p.so, "socket="+info, "export=foo")
			if got := readHead(t, unixURI(proxy), 16); got != "foo" {
				t.Errorf("export=foo: read %q", got)
			}
			// Without dynamic-export the client's name is ignored.
			if got := readHead(t, "nbd+unix:///bar?socket="+proxy, 16); got != "foo" {
				t.Errorf("export=foo, client asks for bar: read %q", got)
			}

			dyn := startNbdkit(t, p.so, "socket="+info, "dynamic-export=true")
			for _, name := range []string{"alpha", "beta"} {
				if got := readHead(t, "nbd+unix:///"+name+"?socket="+dyn, 16); got != name {
					t.Errorf("dynamic-export, client asks for %s: read %q", name, got)
				}
			}
			// Through a URI too (its own export is overridden).
			dynURI := startNbdkit(t, p.so, "nbd+unix:///ignored?socket="+info, "dynamic-export=true")
			if got := readHead(t, "nbd+unix:///gamma?socket="+dynURI, 16); got != "gamma" {
				t.Errorf("dynamic-export over a URI, client asks for gamma: read %q", got)
			}

			listProxy := startNbdkit(t, p.so, "socket="+listing, "dynamic-export=true")
			lists[i] = infoJSON(t, unixURI(listProxy), true)
			// The default export as the proxy reports it (name and all).
			defaults[i] = infoJSON(t, unixURI(listProxy), false)
			// Without dynamic-export: nbdkit's own default export only.
			plainLists[i] = infoJSON(t, unixURI(startNbdkit(t, p.so, "socket="+listing)), true)
			if lists[i] != serverList {
				t.Errorf("export list differs from the server's:\nproxy:\n%s\nserver:\n%s", lists[i], serverList)
			}
		})
	}
	for _, c := range []struct {
		what string
		v    [2]string
	}{{"export list", lists}, {"default export", defaults}, {"export list without dynamic-export", plainLists}} {
		if c.v[0] != c.v[1] {
			t.Errorf("%s differs from the C plugin's:\nours:\n%s\nC:\n%s", c.what, c.v[0], c.v[1])
		}
	}
	if strings.Contains(plainLists[0], `"export-name": "a"`) {
		t.Errorf("without dynamic-export the server's exports are listed:\n%s", plainLists[0])
	}
}

func TestParityTLS(t *testing.T) {
	need(t, "nbdkit-nbd-plugin", "nbdkit-memory-plugin", "psktool", "nbdcopy", "nbdinfo")
	dir := t.TempDir()
	psk := filepath.Join(dir, "keys.psk")
	run(t, "psktool", "-u", "alice", "-p", psk)
	tlsServer := startServer(t, "--tls=require", "--tls-psk="+psk, "memory", "1M")
	plain := startServer(t, "memory", "1M")
	for _, p := range proxies {
		t.Run(p.name, func(t *testing.T) {
			good := startNbdkit(t, p.so, "socket="+tlsServer, "tls=require", "tls-psk="+psk, "tls-username=alice")
			path, data := randomFile(t, 256<<10)
			run(t, "nbdcopy", path, unixURI(good))
			sameBytes(t, "read back over TLS", readAll(t, unixURI(good)), data)

			noTLS := startNbdkit(t, p.so, "socket="+tlsServer)
			if out, err := runErr(t, "nbdinfo", unixURI(noTLS)); err == nil {
				t.Errorf("no TLS to a TLS-only server: the client got %q", out)
			}
			wrongUser := startNbdkit(t, p.so, "socket="+tlsServer, "tls=require", "tls-psk="+psk, "tls-username=bob")
			if out, err := runErr(t, "nbdinfo", unixURI(wrongUser)); err == nil {
				t.Errorf("TLS as an unknown user: the client got %q", out)
			}
			noDowngrade := startNbdkit(t, p.so, "socket="+plain, "tls=require", "tls-psk="+psk, "tls-username=alice")
			if out, err := runErr(t, "nbdinfo", unixURI(noDowngrade)); err == nil {
				t.Errorf("tls=require to a plaintext server: the client got %q", out)
			}
			// tls=on falls back to plaintext.
			opportunistic := startNbdkit(t, p.so, "socket="+plain, "tls=on", "tls-psk="+psk, "tls-username=alice")
			run(t, "nbdinfo", unixURI(opportunistic))
		})
	}
}

// A server that appears after the proxy's first attempt to reach it
// failed (the server starts once the proxy logs that failure: with -v,
// that it will try again) is reached with retry=5, and not without.
func TestParityRetry(t *testing.T) {
	need(t, "nbdkit-nbd-plugin", "nbdkit-pattern-plugin", pythonNbd)
	dir := t.TempDir()
	// What each plugin logs with -v when an attempt failed and it will
	// try again.
	willRetry := map[string]string{"go": "connecting to the server failed, retrying", "c": "connect failed; will try again"}
	for _, p := range proxies {
		for _, retry := range []string{"retry=5", "retry=0"} {
			name, sock, wantOK := p.name+" "+retry, filepath.Join(dir, p.name+retry+".sock"), retry == "retry=5"
			proxy := start(t, procOpts{}, "-v", p.so, "socket="+sock, retry)
			client := startPython(t, `
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
print(h.pread(8, 1048568).hex())
`, unixURI(proxy.sock))
			// The first attempt has failed (retry=0: its error).
			failed := willRetry[p.name]
			if !wantOK {
				failed = "connect: No such file or directory"
			}
			proxy.waitStderr(t, failed, 1, time.Minute)
			if wantOK && !client.running() {
				t.Fatalf("%s: the client ended (%v) before the server appeared: %s", name, client.wait(), client.stderr)
			}
			start(t, procOpts{sock: sock}, "pattern", "2M")
			got := strings.TrimSpace(client.rest(t, 2*time.Minute))
			err := client.wait()
			switch {
			case wantOK && (err != nil || got != "00000000000ffff8"):
				t.Errorf("%s: the client got %q (%v), want the pattern at 1M-8; stderr: %s", name, got, err, client.stderr)
			case !wantOK && err == nil:
				t.Errorf("%s: the client connected to a server that was not there: %q", name, got)
			}
			if n := proxy.stderrCount(willRetry[p.name]); !wantOK && n != 0 {
				t.Errorf("%s: the proxy tried again %d times", name, n)
			}
		}
	}
}

// shared=true: three clients at once, one connection to the server.
func TestParityShared(t *testing.T) {
	need(t, "nbdkit-nbd-plugin", "nbdkit-memory-plugin", "nbdkit-log-filter", pythonNbd)
	threeClients := `
import nbd, sys, os
hs = []
for i in range(3):
    h = nbd.NBD()
    h.connect_uri(sys.argv[1])
    hs.append(h)
buf = os.urandom(65536)
hs[0].pwrite(buf, 4096)
hs[0].flush()
for h in hs[1:]:
    assert h.pread(65536, 4096) == buf
for h in hs:
    h.shutdown()
print("ok")
`
	for _, p := range proxies {
		for _, c := range []struct {
			shared string
			want   int
		}{{"shared=true", 1}, {"shared=false", 3}} {
			t.Run(p.name+" "+c.shared, func(t *testing.T) {
				log := filepath.Join(t.TempDir(), "log")
				server := startServer(t, "--filter=log", "memory", "1M", "logfile="+log)
				proxy := startNbdkit(t, p.so, "socket="+server, c.shared)
				if out := python(t, threeClients, unixURI(proxy)); strings.TrimSpace(out) != "ok" {
					t.Fatalf("clients: %q", out)
				}
				b, err := os.ReadFile(log)
				if err != nil {
					t.Fatal(err)
				}
				if n := strings.Count(string(b), " Connect "); n != c.want {
					t.Errorf("%d server connections for three clients, want %d:\n%s", n, c.want, b)
				}
			})
		}
	}
}

// Filters on top of the plugin see the server's data.
func TestParityFilters(t *testing.T) {
	need(t, "nbdkit-nbd-plugin", "nbdkit-memory-plugin", "nbdkit-partitioning-plugin", "nbdkit-offset-filter", "nbdkit-partition-filter", "nbdkit-cow-filter", "nbdcopy")
	path, data := randomFile(t, 4<<20)
	dir := t.TempDir()
	p1, p2 := filepath.Join(dir, "p1"), filepath.Join(dir, "p2")
	os.WriteFile(p1, bytes.Repeat([]byte("one!"), 256<<10/4), 0o600)
	os.WriteFile(p2, data[:512<<10], 0o600)

	var results [2][][]byte
	for i, p := range proxies {
		t.Run(p.name, func(t *testing.T) {
			server := startServer(t, "memory", "4M")
			run(t, "nbdcopy", path, unixURI(server))

			off := startNbdkit(t, "--filter=offset", p.so, "socket="+server, "offset=1M", "range=1M")
			b := readAll(t, unixURI(off))
			sameBytes(t, "offset filter", b, data[1<<20:2<<20])
			if len(b) != 1<<20 {
				t.Errorf("offset filter: %d bytes, want 1M", len(b))
			}

			parted := startServer(t, "partitioning", p1, p2)
			part := startNbdkit(t, "--filter=partition", p.so, "socket="+parted, "partition=2")
			pb := readAll(t, unixURI(part))
			sameBytes(t, "partition filter", pb, data[:512<<10])

			cow := startNbdkit(t, "--filter=cow", p.so, "socket="+server)
			cpath, cdata := randomFile(t, 128<<10)
			run(t, "nbdcopy", cpath, unixURI(cow))
			cb := readAll(t, unixURI(cow))
			sameBytes(t, "cow filter: the write", cb, cdata)
			sameBytes(t, "cow filter: the rest", cb[128<<10:], data[128<<10:])
			sameBytes(t, "cow filter: the server is untouched", readAll(t, unixURI(server)), data)
			results[i] = [][]byte{b, pb, cb[128<<10:]}
		})
	}
	for j := range results[0] {
		if len(results[1]) > j && !bytes.Equal(results[0][j], results[1][j]) {
			t.Errorf("filter %d: bytes differ from the C plugin's", j)
		}
	}
}
