package tests

import "testing"

// Data requests normally bypass Go (the direct path, plugin/direct.c);
// -D nbd-go.godata=1 sends them through the Go callbacks, which also
// serve every request after a reconnect.  Both must behave as the C
// plugin does.
func TestGoDataPathParity(t *testing.T) {
	var out [2][]string
	for i, args := range [][]string{
		{"-D", "nbd-go.godata=1", plugin},
		{"nbd"},
	} {
		s := startServer(t, "memory", "1M")
		out[i] = probe(t, unixURI(startNbdkit(t, append(args, "socket="+s)...)))
	}
	sameLines(t, "request sequence through the Go callbacks", out[0], out[1])
	server := startServer(t, "memory", "8M")
	proxy := startNbdkit(t, "-D", "nbd-go.godata=1", plugin, "socket="+server)
	copyThrough(t, unixURI(proxy), unixURI(server), 4<<20)
}
