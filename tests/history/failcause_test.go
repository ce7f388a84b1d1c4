// SPDX-License-Identifier: BSD-3-Clause

package history

import "testing"

// nbdkit's lines, as the plugin writes them, and their causes: a line
// that fails no request has none.
func TestFailCauseOf(t *testing.T) {
	for _, c := range []struct{ line, cause string }{
		{"nbdkit: nbd-go.11: error: trim: not sending a write to bytes 106496-118783: an earlier write to bytes 114688-126975 was sent on a server connection that ended before the server answered, and the server may still carry it out over this one; it is in doubt and the server that had it has not exited within reconnect-delay", FailInDoubt},
		{"nbdkit: nbd-go.9: error: pwrite: Input/output error", FailServer},
		{"nbdkit: nbd-go.9: error: pread: server connection failed: Transport endpoint is not connected", FailConnFailed},
		{"nbdkit: nbd-go.5: error: flush: writes acknowledged on a server connection that has since failed may have been lost with the server's write cache", FailLost},
		{"nbdkit: nbd-go.3: error: pwrite: no working server connection within reconnect-delay=3", FailNoConn},
		{"nbdkit: nbd-go.3: error: pread: the server did not answer within timeout=0.5", FailTimeout},
		{"nbdkit: nbd-go.3: error: zero: the server is shutting down (NBD_ESHUTDOWN)", FailShutdown},
		{"nbdkit: nbd-go.5: error: server connection failed: nbd_aio_notify_read: Invalid argument; reconnecting for up to reconnect-delay=5", ""},
		{"nbdkit: nbd-go.11: error: repair: the server had lost 2 of 2 unflushed writes (12288 bytes); written again", ""},
		{"nbdkit: nbd-go[2]: error: nbd_connect_unix: connect: Connection refused", ""},
		{"nbdkit: nbd-go.1: error: pwrite: something new", FailOther},
		{"nbdkit: nbd-go.7: error: zero: not sending a write to bytes 237568-249855: an earlier write over them has not ended within this request's bounds", FailOverlap},
		{"nbdkit: nbd-go.1: error: pread: Cannot send after transport endpoint shutdown", FailShutdown},
	} {
		if got := failCauseOf(c.line); got != c.cause {
			t.Errorf("%q: cause %q, want %q", c.line, got, c.cause)
		}
	}
	fc := countFailCauses("nbdkit: nbd-go.11: error: repair: the server had lost 2 of 3 unflushed writes (12288 bytes); written again\n")
	if fc.Repairs != 1 || fc.Rewritten != 2 || fc.Total != 0 {
		t.Errorf("a repair's notice: %+v", fc)
	}
}
