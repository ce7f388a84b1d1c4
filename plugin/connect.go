// SPDX-License-Identifier: BSD-3-Clause

package plugin

import (
	"fmt"
	"time"

	"nbdkit-nbd-go-plugin/libnbd"
	"nbdkit-nbd-go-plugin/nbdkit"
)

// dial connects to the server, asking for export.  A failed attempt is
// tried again: retries more times, one second apart (retry=), and until
// deadline if it is not zero (reconnect-delay), sooner at first.
// accept, if not nil, may refuse a connection (which counts as a failed
// attempt).  With optMode the handle stays in option negotiation (for
// listing exports and asking for names).
func dial(export string, optMode bool, retries uint, deadline time.Time, accept func(*libnbd.Handle) error) (*libnbd.Handle, error) {
	pause := 50 * time.Millisecond
	for attempt := uint(0); ; attempt++ {
		h, err := connectOnce(export, optMode, connectTimeout(deadline))
		if err == nil && accept != nil {
			if err = accept(h); err != nil {
				h.Close()
				nbdkit.Errorf("refusing the new server connection: %v", err)
			}
		}
		if err == nil {
			return h, nil
		}
		switch {
		case attempt < retries:
			nbdkit.Debugf("connecting to the server failed, retrying in 1 s: %v", err)
			time.Sleep(time.Second)
		case !deadline.IsZero() && time.Until(deadline) > 0:
			nbdkit.Debugf("connecting to the server failed, trying again: %v", err)
			if left := time.Until(deadline); left < pause {
				pause = left
			}
			time.Sleep(pause)
			if pause *= 2; pause > time.Second {
				pause = time.Second
			}
		default:
			return nil, err
		}
	}
}

// connectTimeout bounds one connection attempt: by timeout= if set, and
// by deadline if it is not zero.
func connectTimeout(deadline time.Time) time.Duration {
	if deadline.IsZero() {
		return cfg.timeout
	}
	left := time.Until(deadline)
	if left < time.Millisecond {
		left = time.Millisecond
	}
	if cfg.timeout > 0 && cfg.timeout < left {
		return cfg.timeout
	}
	return left
}

// connectOnce makes one attempt, bounded by timeout (0: none).
func connectOnce(export string, optMode bool, timeout time.Duration) (*libnbd.Handle, error) {
	h, err := libnbd.Create()
	if err != nil {
		return nil, err
	}
	h.SetConnectTimeout(timeout)
	if err := setUp(h, export, optMode); err != nil {
		h.Close()
		return nil, err
	}
	return h, nil
}

// setUp configures h, connects it in the configured mode and, where
// needed, finishes option negotiation.
func setUp(h *libnbd.Handle, export string, optMode bool) error {
	if nbdkit.DebugFlag("verbose") != 0 {
		if err := h.SetDebug(true, func(context, msg string) {
			nbdkit.Debugf("libnbd: %s: %s", context, msg)
		}); err != nil {
			return err
		}
	}
	// nbdkit hands us initialised buffers: libnbd need not zero them.
	for _, f := range []func() error{
		func() error { return h.SetExportName(export) },
		func() error { return h.AddMetaContext(libnbd.ContextBaseAllocation) },
		func() error { return h.SetFullInfo(true) },
		func() error { return h.SetPreadInitialize(false) },
		func() error { return setTLS(h) },
	} {
		if err := f(); err != nil {
			return err
		}
	}

	// A URI names its own export; dynamic-export overrides it, which
	// needs option mode to set the name after connecting.
	uriOverride := cfg.uri != "" && cfg.dynamicExport
	if optMode || uriOverride {
		if err := h.SetOptMode(true); err != nil {
			return err
		}
	}
	if err := connectMode(h); err != nil {
		return err
	}
	if uriOverride {
		if err := h.SetExportName(export); err != nil {
			return err
		}
		if !optMode {
			return h.OptGo()
		}
	}
	return nil
}

func setTLS(h *libnbd.Handle) error {
	if err := h.SetTLS(cfg.tls); err != nil {
		return err
	}
	if cfg.tlsCertificates != "" {
		if err := h.SetTLSCertificates(cfg.tlsCertificates); err != nil {
			return err
		}
	}
	if cfg.tlsVerify != nil {
		if err := h.SetTLSVerifyPeer(*cfg.tlsVerify); err != nil {
			return err
		}
	}
	if cfg.tlsUsername != "" {
		if err := h.SetTLSUsername(cfg.tlsUsername); err != nil {
			return err
		}
	}
	if cfg.tlsPSK != "" {
		if err := h.SetTLSPSKFile(cfg.tlsPSK); err != nil {
			return err
		}
	}
	return nil
}

func connectMode(h *libnbd.Handle) error {
	if mode == nil {
		return fmt.Errorf("no server configured")
	}
	return mode.connect(h)
}
