// SPDX-License-Identifier: BSD-3-Clause

package tests

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Restarts of a server on this host's Unix socket, with requests in
// flight: the proxy sees the killed server exit (its pidfd), so nothing
// it sent stays in doubt, and what the server's cache may have lost it
// checks and writes again.

// inflightClient keeps 24 writes of 64 KiB in flight over 64 chunks,
// one at a time per chunk, each a new generation of the chunk, until a
// line on stdin; it prints "acks N" every 200 acknowledged writes, then
// reads every chunk back and prints "result {json}": the generation
// each chunk holds (its last acknowledged one), the failed writes and the chunks that read
// back wrong.
const inflightClient = `
import nbd, sys, struct, random, select, json
h = nbd.NBD()
h.connect_unix(sys.argv[1])
CH, N, DEPTH = 65536, 64, 24
def data(c, g): return struct.pack('<II', c, g) * (CH // 8)
gen, acked, busy = [0] * N, [0] * N, {}
unsure = {}          # chunk -> generations a failed write leaves possible
acks = failed = 0
stop = False
while not stop or busy:
    while not stop and len(busy) < DEPTH:
        c = random.choice([c for c in range(N) if c not in busy])
        gen[c] += 1
        busy[c] = (h.aio_pwrite(data(c, gen[c]), c * CH), gen[c])
    h.poll(-1)
    for c, (cookie, g) in list(busy.items()):
        try:
            if not h.aio_command_completed(cookie):
                continue
            acked[c] = g
            unsure.pop(c, None)
            acks += 1
            if acks % 200 == 0:
                print("acks", acks, flush=True)
        except nbd.Error as e:
            failed += 1
            unsure.setdefault(c, [acked[c]]).append(g)
            print("failed", c, e, file=sys.stderr, flush=True)
        del busy[c]
    if not stop and select.select([sys.stdin], [], [], 0)[0]:
        stop = True
bad, held = [], []
for c in range(N):
    d = h.pread(CH, c * CH)
    c2, g = struct.unpack('<II', d[:8])
    if g == 0 and acked[c] == 0:
        held.append(0); continue
    if c2 != c or d != data(c, g) or (g != acked[c] and g not in unsure.get(c, [])):
        bad.append(c)
    held.append(g)
print("result", json.dumps({"acks": acks, "failed": failed, "held": held, "bad": bad}), flush=True)
`

type inflightResult struct {
	Acks, Failed int
	Held         []uint32
	Bad          []int
}

// A server killed with -9 three times, with writes in flight, each time
// started again at once: every write succeeds, and every chunk holds
// its last acknowledged write, through the proxy and on the server's
// disk.  With reconnect-delay (nbdkit, qemu-nbd) and without it under
// nbdkit's retry filter (which reopens the plugin and sends again).
func TestRestartWritesInFlight(t *testing.T) {
	type server struct {
		name  string
		tools []string
		start func(t *testing.T, disk, sock string) *proc
	}
	cases := []struct {
		server server
		proxy  []string
	}{
		{server{fsNbdkit.name, fsNbdkit.tools, fsNbdkit.start}, []string{plugin, "reconnect-delay=10"}},
		{server{fsQemuNbd.name, fsQemuNbd.tools, fsQemuNbd.start}, []string{plugin, "reconnect-delay=10"}},
		{server{fsNbdkit.name, fsNbdkit.tools, fsNbdkit.start},
			[]string{"--filter=retry", plugin, "retries=20", "retry-delay=1", "retry-exponential=no"}},
	}
	for _, c := range cases {
		c := c
		name := c.server.name + "/" + strings.Join(c.proxy[1:], ",")
		if strings.HasPrefix(c.proxy[0], "--filter") {
			name = c.server.name + "/retry-filter"
		}
		t.Run(name, func(t *testing.T) {
			need(t, append([]string{pythonNbd}, c.server.tools...)...)
			disk := diskFile(t, 64<<16)
			sock := filepath.Join(t.TempDir(), "server.sock")
			server := c.server.start(t, disk, sock)
			proxy := start(t, procOpts{}, append(c.proxy, "socket="+sock)...)
			client := startPython(t, inflightClient, proxy.sock)
			var mu sync.Mutex
			acks, result := 0, ""
			done := make(chan struct{})
			go func() {
				for l := range client.lines {
					mu.Lock()
					if strings.HasPrefix(l, "acks ") {
						fmt.Sscan(l[5:], &acks)
					} else if strings.HasPrefix(l, "result ") {
						result = l[7:]
					}
					mu.Unlock()
				}
				close(done)
			}()
			ackCount := func() int { mu.Lock(); defer mu.Unlock(); return acks }
			for k := 0; k < 3; k++ {
				// Writes are flowing (a good number acknowledged since
				// the last restart): kill the server under them.
				want := ackCount() + 1000
				waitFor(t, time.Minute, fmt.Sprintf("%d acknowledged writes", want),
					func() bool { return ackCount() >= want }, client.proc, proxy)
				server.kill()
				server.relaunch()
			}
			want := ackCount() + 1000
			waitFor(t, time.Minute, fmt.Sprintf("%d acknowledged writes after the last restart", want),
				func() bool { return ackCount() >= want }, client.proc, proxy)
			client.stdin.Write([]byte("stop\n"))
			select {
			case <-done:
			case <-time.After(time.Minute):
				t.Fatalf("the client did not finish: %s", client.stderr)
			}
			client.wait()
			var r inflightResult
			if err := json.Unmarshal([]byte(result), &r); err != nil {
				t.Fatalf("no result from the client (%v): %s", err, client.stderr)
			}
			t.Logf("%d writes acknowledged, %d failed, across 3 kills", r.Acks, r.Failed)
			if r.Failed != 0 || len(r.Bad) != 0 {
				t.Fatalf("%d writes failed, chunks %v read back wrong:\n%s", r.Failed, r.Bad, client.stderr)
			}
			// The server's disk holds the same.
			if err := proxy.stop(30 * time.Second); err != nil {
				t.Fatal(err)
			}
			if err := server.stop(30 * time.Second); err != nil {
				t.Fatal(err)
			}
			b, err := os.ReadFile(disk)
			if err != nil {
				t.Fatal(err)
			}
			for c, g := range r.Held {
				chunk := b[c<<16 : (c+1)<<16]
				var pat [8]byte
				binary.LittleEndian.PutUint32(pat[:], uint32(c))
				binary.LittleEndian.PutUint32(pat[4:], g)
				if g != 0 && !bytes.Equal(chunk, bytes.Repeat(pat[:], 1<<13)) {
					t.Errorf("chunk %d on the server's disk is not generation %d", c, g)
				}
			}
		})
	}
}

// restartClient, busy, writes and reads back its own 64 KiB block until
// a line on stdin; idle, it writes its block, waits for a line on stdin
// and then writes and reads back again.  Either prints "ok N" at the
// end (N: its rounds), or the error and exits 1.
const restartClient = `
import nbd, os, sys, select
h = nbd.NBD()
h.connect_unix(sys.argv[1])
off, busy, n = int(sys.argv[2]) << 16, sys.argv[3] == "busy", 0
def round():
    b = os.urandom(65536)
    h.pwrite(b, off)
    assert h.pread(65536, off) == b, "read back differs"
round()
print("ready", flush=True)
while busy and not select.select([sys.stdin], [], [], 0)[0]:
    round(); n += 1
sys.stdin.readline()
round(); h.flush()
print("ok", n, flush=True)
`

// systemctl restart with 8 clients through the proxy, 4 busy, 4 idle:
// on SIGTERM nbdkit answers requests with NBD_ESHUTDOWN but waits for
// its clients to go; the proxy ends its other connections to that
// server too, so that it exits at once.  Then every client, busy or
// idle, goes on writing its own block without an error.
func TestRestartGracefulLetsServerGo(t *testing.T) {
	need(t, "nbdkit-file-plugin", pythonNbd)
	disk := diskFile(t, 16<<20)
	server := start(t, procOpts{}, "file", disk)
	proxy := start(t, procOpts{}, plugin, "socket="+server.sock, "reconnect-delay=10")
	var clients []*lineProc
	for i := 0; i < 8; i++ {
		mode := "idle"
		if i < 4 {
			mode = "busy"
		}
		c := startPython(t, restartClient, proxy.sock, fmt.Sprint(i), mode)
		c.expect(t, "ready", 30*time.Second)
		clients = append(clients, c)
	}
	waitClientConns(t, server, 8)
	began := time.Now()
	if err := server.stop(systemdStopTimeout); err != nil {
		t.Fatalf("the old server did not go: %v", err)
	}
	took := time.Since(began)
	t.Logf("the server exited %.2f s after SIGTERM with 8 client connections", took.Seconds())
	if took > 5*time.Second {
		t.Errorf("the server took %v to exit after SIGTERM", took)
	}
	server.relaunch()
	for _, c := range clients {
		c.stdin.Write([]byte("go\n"))
	}
	for i, c := range clients {
		out := c.rest(t, time.Minute)
		if err := c.wait(); err != nil || !strings.HasPrefix(out, "ok") {
			t.Errorf("client %d failed across the restart: %v %s\n%s", i, err, out, c.stderr)
		}
	}
}
