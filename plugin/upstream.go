// SPDX-License-Identifier: BSD-3-Clause

package plugin

// An upstream is a server connection as nbdkit's connections see it: the
// data path over the current connection (datapath.Path), and what the
// first connection said about the disk.  With reconnect-delay, the data
// path asks for a new connection when the current one fails; redial
// dials it and hands it over.

import (
	"errors"
	"fmt"
	"time"

	"nbdkit-nbd-go-plugin/libnbd"
	"nbdkit-nbd-go-plugin/nbdkit"
	"nbdkit-nbd-go-plugin/plugin/datapath"
)

type upstream struct {
	export string
	// facts is what nbdkit told clients about the disk; a new connection
	// must show the same, or it is not used.
	facts serverFacts
	path  *datapath.Path
}

// newUpstream connects to the server and reads what it offers.
func newUpstream(export string) (*upstream, error) {
	h, err := dial(export, false, cfg.retry, openDeadline(), nil)
	if err != nil {
		return nil, err
	}
	facts, err := readFacts(h)
	if err != nil {
		h.Close()
		return nil, err
	}
	u := &upstream{export: export, facts: facts}
	if u.path, err = datapath.NewPath(h, export, facts.flush, u.redial); err != nil {
		return nil, err
	}
	return u, nil
}

// configureDataPath gives the data path its settings, once, before the
// first server connection.
func configureDataPath() {
	datapath.Configure(datapath.Settings{
		ReconnectDelay: cfg.reconnectDelay,
		Timeout:        cfg.timeout,
		RepairMemory:   cfg.repairMemory,
		Quiesce:        cfg.quiesce,
		QuiesceGiven:   cfg.quiesceGiven,
		ServerExits:    cfg.command != "",
	})
}

// openDeadline: with reconnect-delay, a client that connects while the
// server is away waits for it as long as a request would.
func openDeadline() time.Time {
	if cfg.reconnectDelay == 0 {
		return time.Time{}
	}
	return time.Now().Add(cfg.reconnectDelay)
}

// newClient starts a client's data path; it must be freed.
func (u *upstream) newClient() (datapath.Client, error) { return u.path.NewClient() }

// close ends the server connection politely (within timeout=, if set)
// and frees everything.
func (u *upstream) close() { u.path.Free() }

// redial connects again and again until a connection to the same disk
// works or deadline passes, then hands it to the data path.
func (u *upstream) redial(deadline time.Time) {
	h, err := dial(u.export, false, 0, deadline, u.facts.match)
	if err != nil {
		nbdkit.Debugf("reconnecting: %v", err)
		u.path.RedialFailed()
		return
	}
	if err := u.path.Install(h); err != nil {
		nbdkit.Debugf("reconnecting: %v", err)
		return
	}
	nbdkit.Debugf("reconnected to the server")
}

// serverFacts is what a connection tells nbdkit about the disk.
type serverFacts struct {
	size                                    int64
	readOnly, flush, fua, rotational, trim  bool
	zero, fastZero, multiConn, cache, alloc bool
	minimum, preferred, maximum             uint32
	description                             string
}

func readFacts(h *libnbd.Handle) (serverFacts, error) {
	var f serverFacts
	var err error
	get := func(dst *bool, src func() (bool, error)) {
		if err == nil {
			*dst, err = src()
		}
	}
	if f.size, err = h.GetSize(); err != nil {
		return f, err
	}
	get(&f.readOnly, h.IsReadOnly)
	get(&f.flush, h.CanFlush)
	get(&f.fua, h.CanFUA)
	get(&f.rotational, h.IsRotational)
	get(&f.trim, h.CanTrim)
	get(&f.zero, h.CanZero)
	get(&f.fastZero, h.CanFastZero)
	get(&f.multiConn, h.CanMultiConn)
	get(&f.cache, h.CanCache)
	get(&f.alloc, func() (bool, error) { return h.CanMetaContext(libnbd.ContextBaseAllocation) })
	for _, s := range []struct {
		dst   *uint32
		which int
	}{{&f.minimum, libnbd.SizeMinimum}, {&f.preferred, libnbd.SizePreferred}, {&f.maximum, libnbd.SizeMaximum}} {
		if err == nil {
			var n int64
			n, err = h.GetBlockSize(s.which)
			*s.dst = uint32(n)
		}
	}
	if d, derr := h.GetExportDescription(); derr == nil {
		f.description = d
	}
	return f, err
}

// errOtherDisk: a new connection shows another disk.
var errOtherDisk = errors.New("the server's disk changed")

// match checks that h serves the disk f describes.
func (f serverFacts) match(h *libnbd.Handle) error {
	g, err := readFacts(h)
	if err != nil {
		return err
	}
	g.description = f.description // may change harmlessly
	if g != f {
		return fmt.Errorf("%w: was %+v, now %+v", errOtherDisk, f, g)
	}
	return nil
}
