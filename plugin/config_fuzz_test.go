// SPDX-License-Identifier: BSD-3-Clause

package plugin

import (
	"math"
	"strconv"
	"strings"
	"testing"

	"nbdkit-nbd-go-plugin/libnbd"
)

// FuzzConfig feeds nbdkit's way of configuring (key=value, one per
// line; a line without = is the magic uri key) to configKey and
// configComplete, the real ones: outside nbdkit, nbdkit.AbsolutePath
// makes paths absolute in Go by nbdkit's rule.  Neither may panic; every
// message is one line naming its key; an accepted configuration has
// exactly one server and consistent settings.
//
// make fuzz runs it for a while; go test runs the seeds (below and in
// testdata/fuzz).
func FuzzConfig(f *testing.F) {
	for _, s := range []string{
		"socket=/tmp/s",
		"nbd://localhost/",
		"hostname=h\nport=70000",
		"vsock=3\nport=4",
		"command=nbdkit\narg=memory\narg=1M\ndynamic-export=true",
		"socket-fd=3\nshared=false",
		"uri=http://x/",
		"socket=/s\ntls=require\ntls-psk=keys\ntls-username=u",
		"port=1",
		"socket=/s\nrepair-memory=64K\nquiesce-time=0",
		"socket=/s\nrepair-memory=1x",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, input string) {
		cfg = config{}
		defer func() { cfg = config{} }()
		for _, line := range strings.Split(input, "\n") {
			key, value, ok := strings.Cut(line, "=")
			if !ok {
				key, value = "uri", line
			}
			if err := configKey(key, value); err != nil {
				checkMessage(t, key+"="+value, err, key)
				return // nbdkit stops at the first error
			}
			checkKey(t, key, value)
		}
		if err := configComplete(); err != nil {
			checkMessage(t, "config_complete", err, "")
			return
		}
		checkAccepted(t, input)
		// Completing again changes nothing (it fills in defaults).
		before := cfg
		if err := configComplete(); err != nil {
			t.Fatalf("%q: configComplete accepted, then refused: %v", input, err)
		}
		if cfg.shared != before.shared || cfg.tls != before.tls || cfg.repairMemory != before.repairMemory {
			t.Fatalf("%q: configComplete is not idempotent", input)
		}
	})
}

// checkMessage: a message is one non-empty line, naming key when given.
func checkMessage(t *testing.T, what string, err error, key string) {
	t.Helper()
	msg := err.Error()
	if msg == "" || strings.ContainsAny(msg, "\n") {
		t.Fatalf("%q: message %q is not one line", what, msg)
	}
	if key != "" && !strings.Contains(msg, key) {
		t.Fatalf("%q: message %q does not name %q", what, msg, key)
	}
}

// checkKey checks what an accepted key=value stored.
func checkKey(t *testing.T, key, value string) {
	t.Helper()
	num := func(bits int) uint64 {
		n, err := strconv.ParseUint(value, 10, bits)
		if err != nil {
			t.Fatalf("%s=%q accepted, but it is not a %d-bit number", key, value, bits)
		}
		return n
	}
	switch key {
	case "retry":
		if uint64(cfg.retry) != num(31) {
			t.Fatalf("retry=%q stored %d", value, cfg.retry)
		}
	case "socket-fd":
		if cfg.socketFD == nil || uint64(*cfg.socketFD) != num(31) {
			t.Fatalf("socket-fd=%q stored wrongly", value)
		}
	case "vsock", "cid", "vhost-cid":
		if cfg.vsock == nil || uint64(*cfg.vsock) != num(32) {
			t.Fatalf("%s=%q stored wrongly", key, value)
		}
	case "shared", "dynamic-export", "tls-verify":
		switch strings.ToLower(value) {
		case "1", "true", "t", "yes", "y", "on", "0", "false", "f", "no", "n", "off":
		default:
			t.Fatalf("%s=%q accepted as a boolean", key, value)
		}
	case "socket":
		if len(cfg.socket) > sunPathMax || !strings.HasPrefix(cfg.socket, "/") {
			t.Fatalf("socket=%q stored %q", value, cfg.socket)
		}
	case "repair-memory":
		if cfg.repairMemory < 0 || value == "" || strings.Trim(value[:1], "0123456789") != "" {
			t.Fatalf("repair-memory=%q stored %d", value, cfg.repairMemory)
		}
	case "quiesce-time":
		if !cfg.quiesceGiven || cfg.quiesce < 0 {
			t.Fatalf("quiesce-time=%q stored %v", value, cfg.quiesce)
		}
	}
}

// checkAccepted checks the invariants of an accepted configuration.
func checkAccepted(t *testing.T, input string) {
	t.Helper()
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf("%q accepted, but "+format, append([]any{input}, args...)...)
	}
	modes := 0
	for _, set := range []bool{cfg.socket != "", cfg.hostname != "", cfg.vsock != nil,
		cfg.uri != "", cfg.command != "", cfg.socketFD != nil} {
		if set {
			modes++
		}
	}
	if modes != 1 {
		fail("%d servers are set", modes)
	}
	if cfg.port != "" {
		switch {
		case cfg.hostname != "":
			if strings.Trim(strings.TrimLeft(cfg.port, "+-"), "0123456789") == "" {
				if n, err := strconv.ParseUint(cfg.port, 10, 16); err != nil || n > math.MaxUint16 {
					fail("TCP port %s", cfg.port)
				}
			}
		case cfg.vsock != nil:
			if _, err := strconv.ParseUint(cfg.port, 10, 32); err != nil {
				fail("vsock port %s", cfg.port)
			}
		default:
			fail("port=%s without hostname= or vsock=", cfg.port)
		}
	}
	if len(cfg.args) > 0 && cfg.command == "" {
		fail("arg= without command=")
	}
	if cfg.uri != "" {
		ok := false
		for _, s := range uriSchemes {
			ok = ok || strings.HasPrefix(strings.ToLower(cfg.uri), s)
		}
		if !ok {
			fail("uri=%s is not an NBD URI", cfg.uri)
		}
	}
	if cfg.socketFD != nil && *cfg.socketFD < 0 {
		fail("socket-fd=%d", *cfg.socketFD)
	}
	if (cfg.command != "" || cfg.socketFD != nil) && !cfg.sharedGiven && !cfg.shared {
		fail("command= or socket-fd= is not shared")
	}
	if cfg.dynamicExport && (cfg.exportGiven || cfg.shared || cfg.command != "" || cfg.socketFD != nil) {
		fail("dynamic-export with export=, shared, command= or socket-fd=")
	}
	if !cfg.tlsGiven && (cfg.tlsCertificates != "" || cfg.tlsVerify != nil ||
		cfg.tlsUsername != "" || cfg.tlsPSK != "") && cfg.tls != libnbd.TLSAllow {
		fail("TLS settings without tls= leave TLS %v", cfg.tls)
	}
	if cfg.tls != libnbd.TLSDisable && cfg.tls != libnbd.TLSAllow && cfg.tls != libnbd.TLSRequire {
		fail("tls mode %v", cfg.tls)
	}
}
