// SPDX-License-Identifier: BSD-3-Clause

package plugin

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"syscall"
	"time"

	"nbdkit-nbd-go-plugin/libnbd"
	"nbdkit-nbd-go-plugin/nbdkit"
)

// The parameters, set by configKey; configComplete checks them as a
// whole and fills in what follows from them (mode, defaults, the vsock
// port, the URI's scheme in lower case, shared=, tls=).
type config struct {
	// Server modes (serverModes): exactly one is set.
	socket   string   // socket=
	hostname string   // hostname=
	vsock    *uint32  // vsock= (cid=, vhost-cid=)
	uri      string   // [uri=]
	command  string   // command=
	socketFD *int     // socket-fd=
	port     string   // port=, with hostname or vsock
	args     []string // arg=, with command

	vsockPort uint32 // with vsock=: port= as configComplete parsed it, or nbdPort

	export        string
	exportGiven   bool
	dynamicExport bool
	retry         uint
	shared        bool
	sharedGiven   bool

	// Beyond the C plugin; zero keeps its behaviour.
	reconnectDelay time.Duration // reconnect-delay=
	timeout        time.Duration // timeout=
	// How a server connection that failed is recovered from (the man
	// page's CONNECTION FAILURES).
	repairMemory      int64 // repair-memory=, bytes
	repairMemoryGiven bool
	quiesce           time.Duration // quiesce-time=, if quiesceGiven
	quiesceGiven      bool

	tls             libnbd.TLSMode
	tlsGiven        bool
	tlsCertificates string
	tlsVerify       *bool
	tlsUsername     string
	tlsPSK          string
}

var cfg config

// defaultRepairMemory is repair-memory='s default: enough for the writes
// a filesystem leaves unflushed between its flushes, a few seconds' worth.
const defaultRepairMemory = 32 << 20

// maxSize bounds a size parameter: nbdkit's own sizes are int64.
const maxSize = 1 << 62

// nbdPort is NBD's registered port, the default of port=.
const nbdPort = 10809

// The widths of the numbers parseUint takes: a non-negative C int
// (socket-fd=, retry=) and a uint32 (vsock= CID, a vsock port).
const (
	intBits    = 31
	uint32Bits = 32
)

// sunPathMax is the longest Unix socket path (sun_path less its NUL).
const sunPathMax = 107

const configHelp = `[uri=]<URI>            Server to connect to, as an NBD URI (nbd://, nbds://,
                       nbd+unix://, nbds+unix://, nbd+vsock://).
socket=<PATH>          Unix socket of the server.
hostname=<HOST>        TCP server (with port=).
port=<PORT>            TCP or vsock port, or TCP service name (default 10809).
vsock=<CID>            AF_VSOCK server (also cid= or vhost-cid=).
command=<PROGRAM>      Run this server with systemd socket activation.
arg=<ARG>              One argument of command= (repeat for more).
socket-fd=<FD>         Already-connected socket to the server.
export=<NAME>          Export to ask the server for (default "").
dynamic-export=<BOOL>  Pass each client's export name to the server.
retry=<N>              Retry a failed connection N times, 1 s apart (default 0).
shared=<BOOL>          One server connection for all clients (default false;
                       true for command= and socket-fd=).
reconnect-delay=<SECS> Replace a failed server connection, resending its
                       requests, for up to SECS seconds (default 0: off).
timeout=<SECS>         Fail a request the server has not answered in SECS
                       seconds, and connecting too (default 0: none).
repair-memory=<SIZE>   Keep up to SIZE of acknowledged, unflushed writes to
                       write again if the server lost them (default 32M;
                       0: keep none, flushes after a failure fail).
quiesce-time=<SECS>    The server carries out nothing later than SECS after
                       a connection ended (default: not declared).
tls=<MODE>             TLS to the server: off, on, or require.
tls-certificates=<DIR> Directory of X.509 client certificates.
tls-verify=<BOOL>      Verify the server's certificate (default true).
tls-username=<NAME>    User name to present with TLS.
tls-psk=<FILE>         File of TLS pre-shared keys.`

// configKey takes one key=value.
func configKey(key, value string) error {
	var err error
	switch key {
	case "socket":
		cfg.socket, err = absolutePath(key, value)
		if err == nil && len(cfg.socket) > sunPathMax {
			err = fmt.Errorf("socket=%s: path is %d bytes long, a Unix socket path can be at most %d",
				value, len(cfg.socket), sunPathMax)
		}
	case "hostname":
		cfg.hostname = value
	case "port":
		cfg.port = value
	case "vsock", "cid", "vhost-cid":
		var cid uint64
		if cid, err = parseUint(key, value, uint32Bits); err == nil {
			c := uint32(cid)
			cfg.vsock = &c
		}
	case "uri":
		cfg.uri = value
	case "command":
		if cfg.command != "" {
			err = fmt.Errorf("command=%s: command= given twice (the first was %s)", value, cfg.command)
		}
		cfg.command = value
	case "arg":
		if cfg.command == "" {
			err = fmt.Errorf("arg=%s: arg= must follow command=", value)
		}
		cfg.args = append(cfg.args, value)
	case "socket-fd":
		var fd uint64
		if fd, err = parseUint(key, value, intBits); err == nil {
			n := int(fd)
			cfg.socketFD = &n
			err = checkSocketFD(n)
		}
	case "export":
		cfg.export, cfg.exportGiven = value, true
	case "dynamic-export":
		cfg.dynamicExport, err = parseBool(key, value)
	case "retry":
		var n uint64
		n, err = parseUint(key, value, intBits)
		cfg.retry = uint(n)
	case "shared":
		cfg.shared, err = parseBool(key, value)
		cfg.sharedGiven = true
	case "reconnect-delay":
		cfg.reconnectDelay, err = parseSeconds(key, value)
	case "timeout":
		cfg.timeout, err = parseSeconds(key, value)
	case "repair-memory":
		cfg.repairMemory, err = parseSize(key, value)
		cfg.repairMemoryGiven = true
	case "quiesce-time":
		cfg.quiesce, err = parseSeconds(key, value)
		cfg.quiesceGiven = err == nil
	case "tls":
		cfg.tls, err = parseTLS(value)
		cfg.tlsGiven = true
	case "tls-certificates":
		cfg.tlsCertificates, err = absolutePath(key, value)
	case "tls-verify":
		var b bool
		if b, err = parseBool(key, value); err == nil {
			cfg.tlsVerify = &b
		}
	case "tls-username":
		cfg.tlsUsername = value
	case "tls-psk":
		cfg.tlsPSK, err = absolutePath(key, value)
	default:
		err = fmt.Errorf("unknown parameter %s=%s (see nbdkit nbd-go --help)", key, value)
	}
	return err
}

// absolutePath makes a path parameter absolute; nbdkit's own message for
// an empty path does not name the key.
func absolutePath(key, value string) (string, error) {
	if value == "" {
		return "", fmt.Errorf("%s=: empty path", key)
	}
	return nbdkit.AbsolutePath(value)
}

// parseUint parses a decimal number of at most bits bits, with a one-line
// message naming key and value.
func parseUint(key, value string, bits int) (uint64, error) {
	n, err := strconv.ParseUint(value, 10, bits)
	if err != nil {
		if strings.Trim(value, "0123456789") == "" && value != "" {
			return 0, fmt.Errorf("%s=%s: number too large (at most %d)", key, value, uint64(1)<<bits-1)
		}
		return 0, fmt.Errorf("%s=%s: not a non-negative whole number", key, value)
	}
	return n, nil
}

// parseSeconds parses a non-negative number of seconds, such as 10 or
// 0.5, to the millisecond (what the data path counts in); 0 is off.
func parseSeconds(key, value string) (time.Duration, error) {
	f, err := strconv.ParseFloat(value, 64)
	if err != nil || math.IsNaN(f) || f < 0 || f > 1e6 || strings.ContainsAny(value, "xXpP_") {
		return 0, fmt.Errorf("%s=%s: not a number of seconds (such as 10 or 0.5)", key, value)
	}
	d := time.Duration(f * float64(time.Second))
	if f > 0 && d < time.Millisecond {
		return 0, fmt.Errorf("%s=%s: less than a millisecond (0 turns it off)", key, value)
	}
	return d.Round(time.Millisecond), nil
}

// parseSize parses a size as nbdkit does (nbdkit_parse_size): a whole
// number of bytes with an optional unit, b, k, m, g, t, p, e (powers of
// 1024) or s (512 bytes), in either case; with a message naming the key.
func parseSize(key, value string) (int64, error) {
	digits := strings.TrimRight(value, "bBkKmMgGtTpPeEsS")
	unit := value[len(digits):]
	n, err := strconv.ParseUint(digits, 10, 63)
	if err != nil || len(unit) > 1 {
		return 0, fmt.Errorf("%s=%s: not a size (such as 32M, or 0)", key, value)
	}
	scale := uint64(1)
	if unit != "" {
		switch u := strings.ToLower(unit); u {
		case "s":
			scale = 512
		case "b":
		default:
			scale = 1 << (10 * (strings.Index("kmgtpe", u) + 1))
		}
	}
	if n > maxSize/scale {
		return 0, fmt.Errorf("%s=%s: too large (at most %d bytes)", key, value, uint64(maxSize))
	}
	return int64(n * scale), nil
}

// checkSocketFD refuses a socket-fd= that is not an open socket, or that
// is one of nbdkit's standard descriptors (with -s, stdin is the client).
func checkSocketFD(fd int) error {
	if fd <= 2 {
		return fmt.Errorf("socket-fd=%d: a standard descriptor (0, 1, 2) cannot be the server's socket", fd)
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		return fmt.Errorf("socket-fd=%d: %v", fd, err)
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFSOCK {
		return fmt.Errorf("socket-fd=%d: not a socket", fd)
	}
	return nil
}

// parseBool takes the booleans nbdkit_parse_bool takes, with a one-line
// message naming the key (nbdkit's own does not).
func parseBool(key, value string) (bool, error) {
	switch strings.ToLower(value) {
	case "1", "true", "t", "yes", "y", "on":
		return true, nil
	case "0", "false", "f", "no", "n", "off":
		return false, nil
	}
	return false, fmt.Errorf("%s=%s: not a boolean (use true or false)", key, value)
}

// parseTLS takes require (required, force) or an nbdkit boolean.
func parseTLS(value string) (libnbd.TLSMode, error) {
	switch strings.ToLower(value) {
	case "require", "required", "force":
		return libnbd.TLSRequire, nil
	}
	on, err := parseBool("tls", value)
	if err != nil {
		return 0, fmt.Errorf("tls=%s: not one of off, on, require", value)
	}
	if on {
		return libnbd.TLSAllow, nil
	}
	return libnbd.TLSDisable, nil
}

// uriSchemes are the URI schemes libnbd connects to.
var uriSchemes = []string{"nbd://", "nbds://", "nbd+unix://", "nbds+unix://", "nbd+vsock://", "nbds+vsock://"}

// A serverMode is one way of reaching the server: configKey sets its
// fields, configComplete checks that exactly one is given, and
// connectMode (connect.go) connects with it.
type serverMode struct {
	key string
	// given says whether the parameters give it, and how messages name
	// it (key=value).
	given   func() (bool, string)
	connect func(h *libnbd.Handle) error
	// single: it can serve only one connection (one server process, one
	// inherited socket), so every client shares it.
	single bool
}

// serverModes are the modes, in the order messages list them.
var serverModes = []serverMode{
	{key: "socket",
		given:   func() (bool, string) { return cfg.socket != "", "socket=" + cfg.socket },
		connect: func(h *libnbd.Handle) error { return h.ConnectUnix(cfg.socket) }},
	{key: "hostname",
		given: func() (bool, string) { return cfg.hostname != "", "hostname=" + cfg.hostname },
		connect: func(h *libnbd.Handle) error {
			port := cfg.port
			if port == "" {
				port = strconv.Itoa(nbdPort)
			}
			return h.ConnectTCP(cfg.hostname, port)
		}},
	{key: "vsock",
		given: func() (bool, string) {
			if cfg.vsock == nil {
				return false, ""
			}
			return true, fmt.Sprintf("vsock=%d", *cfg.vsock)
		},
		connect: func(h *libnbd.Handle) error { return h.ConnectVsock(*cfg.vsock, cfg.vsockPort) }},
	{key: "uri",
		given:   func() (bool, string) { return cfg.uri != "", "uri=" + cfg.uri },
		connect: func(h *libnbd.Handle) error { return h.ConnectURI(cfg.uri) }},
	{key: "command", single: true,
		given: func() (bool, string) { return cfg.command != "", "command=" + cfg.command },
		connect: func(h *libnbd.Handle) error {
			return h.ConnectSystemdSocketActivation(append([]string{cfg.command}, cfg.args...))
		}},
	{key: "socket-fd", single: true,
		given: func() (bool, string) {
			if cfg.socketFD == nil {
				return false, ""
			}
			return true, fmt.Sprintf("socket-fd=%d", *cfg.socketFD)
		},
		connect: func(h *libnbd.Handle) error { return h.ConnectSocket(*cfg.socketFD) }},
}

// mode is the server mode the parameters give, once configComplete has
// checked that there is exactly one.
var mode *serverMode

// configComplete checks the parameters as a whole and fills in what
// follows from them (see config).
func configComplete() error {
	var given, keys []string
	mode = nil
	for i := range serverModes {
		m := &serverModes[i]
		keys = append(keys, m.key+"=")
		if ok, name := m.given(); ok {
			given = append(given, name)
			mode = m
		}
	}
	switch {
	case len(given) > 1:
		return fmt.Errorf("give only one server, not %s", strings.Join(given, " and "))
	case cfg.port != "" && cfg.hostname == "" && cfg.vsock == nil:
		return fmt.Errorf("port=%s needs hostname= or vsock=", cfg.port)
	case len(given) == 0:
		return fmt.Errorf("no server given: use one of %s or %s",
			strings.Join(keys[:len(keys)-1], ", "), keys[len(keys)-1])
	}

	cfg.vsockPort = nbdPort
	switch {
	case cfg.port == "":
	case cfg.hostname != "":
		if n, err := strconv.ParseUint(cfg.port, 10, 64); err == nil && n > 65535 {
			return fmt.Errorf("port=%s: a TCP port is at most 65535", cfg.port)
		} else if err != nil && strings.Trim(strings.TrimLeft(cfg.port, "+-"), "0123456789") == "" {
			return fmt.Errorf("port=%s: not a port number", cfg.port)
		}
	case cfg.vsock != nil:
		p, err := parseUint("port", cfg.port, uint32Bits)
		if err != nil {
			return err
		}
		cfg.vsockPort = uint32(p)
	}
	if cfg.uri != "" {
		ok := false
		for _, s := range uriSchemes {
			if strings.HasPrefix(strings.ToLower(cfg.uri), s) {
				// A scheme is case-insensitive (RFC 3986); libnbd's
				// parser wants it in lower case.
				cfg.uri = s + cfg.uri[len(s):]
				ok = true
			}
		}
		if !ok {
			return fmt.Errorf("uri=%s: not an NBD URI (it must start with one of %s)",
				cfg.uri, strings.Join(uriSchemes, ", "))
		}
	}

	// One server process (command=) or one inherited socket (socket-fd=)
	// can serve only one connection: every client shares it.  An
	// inherited socket cannot be connected again either.
	if mode.single {
		_, name := mode.given()
		switch {
		case cfg.sharedGiven && !cfg.shared:
			return fmt.Errorf("shared=false cannot be used with %s (it serves every client over one connection)", name)
		case cfg.socketFD != nil && cfg.retry > 0:
			return fmt.Errorf("retry=%d cannot be used with %s (an inherited socket can be connected only once)", cfg.retry, name)
		case cfg.socketFD != nil && cfg.reconnectDelay > 0:
			return fmt.Errorf("reconnect-delay=%v cannot be used with %s (an inherited socket cannot be reconnected)",
				cfg.reconnectDelay.Seconds(), name)
		}
		cfg.shared = true
	}
	if cfg.dynamicExport {
		switch {
		case cfg.exportGiven:
			return fmt.Errorf("dynamic-export=true cannot be used with export=%s", cfg.export)
		case mode.single:
			return fmt.Errorf("dynamic-export=true cannot be used with %s= (it implies shared=true)", mode.key)
		case cfg.shared:
			return fmt.Errorf("dynamic-export=true cannot be used with shared=true")
		}
	}
	if !cfg.tlsGiven && (cfg.tlsCertificates != "" || cfg.tlsVerify != nil ||
		cfg.tlsUsername != "" || cfg.tlsPSK != "") {
		cfg.tls = libnbd.TLSAllow
	}
	if !cfg.repairMemoryGiven {
		cfg.repairMemory = defaultRepairMemory
	}
	return nil
}
