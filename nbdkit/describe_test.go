// SPDX-License-Identifier: BSD-3-Clause

package nbdkit

import (
	"errors"
	"fmt"
	"os"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"unsafe"
)

type testHandle struct{}

func TestWriteLoaderHeader(t *testing.T) {
	Register(&Plugin[*testHandle]{
		Name:       "test",
		ConfigHelp: "a=<A> \"quoted\"\nb=<B> 100%",
		DebugFlags: []string{"verbose"},
		Preload:    []string{"libfoo.so.1"},
		Open:       func(bool) (*testHandle, error) { return &testHandle{}, nil },
		GetSize:    func(*testHandle) (int64, error) { return 1, nil },
		PRead:      func(*testHandle, []byte, uint64, Flags) error { return nil },
	})
	var b strings.Builder
	if err := WriteLoaderHeader(&b); err != nil {
		t.Fatal(err)
	}
	h := b.String()
	for _, want := range []string{
		`#define NBDKITGO_NAME "test"`,
		`#define NBDKITGO_LONGNAME NULL`,
		`#define NBDKITGO_DEBUG_FLAGS(X) X(verbose)`,
		`#define NBDKITGO_PRELOAD(X) X("libfoo.so.1")`,
		`"a=<A> \"quoted\"\n" \`,
		`#define NBDKITGO_HAS_pread 1`,
		`#define NBDKITGO_HAS_open 1`,
		`#define NBDKITGO_HAS_pwrite 0`,
		`#define NBDKITGO_HAS_extents 0`,
	} {
		if !strings.Contains(h, want) {
			t.Errorf("header lacks %q:\n%s", want, h)
		}
	}
	if strings.Count(h, "NBDKITGO_HAS_") != len(callbackNames) {
		t.Errorf("want %d HAS lines:\n%s", len(callbackNames), h)
	}
}

// What nbdkit would refuse at load time fails the build instead, with
// one line naming the field.
func TestCheck(t *testing.T) {
	open := func(bool) (*testHandle, error) { return &testHandle{}, nil }
	size := func(*testHandle) (int64, error) { return 1, nil }
	read := func(*testHandle, []byte, uint64, Flags) error { return nil }
	good := func() Plugin[*testHandle] {
		return Plugin[*testHandle]{Name: "good-1", Open: open, GetSize: size, PRead: read}
	}
	for _, c := range []struct {
		want   string // in the error; "" for none
		change func(p *Plugin[*testHandle])
	}{
		{"", func(p *Plugin[*testHandle]) {}},
		{"no Open callback", func(p *Plugin[*testHandle]) { p.Open = nil }},
		{"no GetSize callback", func(p *Plugin[*testHandle]) { p.GetSize = nil }},
		{"no PRead callback", func(p *Plugin[*testHandle]) { p.PRead = nil }},
		// A direct data path may serve pread instead.
		{"", func(p *Plugin[*testHandle]) {
			p.PRead = nil
			p.DirectOps = []string{"pread"}
			p.Direct = func(*testHandle) unsafe.Pointer { return nil }
		}},
		{"DirectOps is set but Direct is nil", func(p *Plugin[*testHandle]) { p.DirectOps = []string{"zero"} }},
		{`DirectOps: "read"`, func(p *Plugin[*testHandle]) { p.DirectOps = []string{"read"} }},
		{"no Name", func(p *Plugin[*testHandle]) { p.Name = "" }},
		{`Name "-x"`, func(p *Plugin[*testHandle]) { p.Name = "-x" }},
		{`Name "my_plugin"`, func(p *Plugin[*testHandle]) { p.Name = "my_plugin" }},
		{`Name "a\nb"`, func(p *Plugin[*testHandle]) { p.Name = "a\nb" }},
		{`DebugFlags: "a-b"`, func(p *Plugin[*testHandle]) { p.DebugFlags = []string{"a-b"} }},
		{`"v" is listed twice`, func(p *Plugin[*testHandle]) { p.DebugFlags = []string{"v", "v"} }},
		{`MagicConfigKey "1size"`, func(p *Plugin[*testHandle]) { p.MagicConfigKey = "1size" }},
		{"", func(p *Plugin[*testHandle]) { p.MagicConfigKey = "disk.size_2-x" }},
	} {
		p := good()
		c.change(&p)
		err := check(reflect.ValueOf(&p).Elem())
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%+v: refused: %v", p, err)
		case c.want != "" && err == nil:
			t.Errorf("accepted, want an error with %q", c.want)
		case err != nil && (!strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n")):
			t.Errorf("error %q: want one line with %q", err, c.want)
		}
	}
	for m, ok := range map[ThreadModel]bool{-1: false, 0: true, Parallel: true, 4: false} {
		if err := checkThreadModel(m); (err == nil) != ok {
			t.Errorf("checkThreadModel(%d) = %v", m, err)
		}
	}
}

func TestErrno(t *testing.T) {
	if errnoOf(errors.New("plain")) != syscall.EIO {
		t.Error("a plain error should be EIO")
	}
	wrapped := fmt.Errorf("context: %w", syscall.ENOSPC)
	if errnoOf(wrapped) != syscall.ENOSPC {
		t.Error("the errno in an error's chain is lost")
	}
}

// Outside nbdkit (no loader) the helpers fail cleanly.
func TestHelpersOutsideNbdkit(t *testing.T) {
	if _, err := ParseSize("64M"); err == nil {
		t.Error("ParseSize outside nbdkit should fail")
	}
	if DebugFlag("verbose") != 0 {
		t.Error("no debug flag is set outside nbdkit")
	}
	// AbsolutePath follows nbdkit's rule in Go: as it is, or appended to
	// the working directory uncleaned; empty is an error.
	wd, _ := os.Getwd()
	for in, want := range map[string]string{"/a/../b": "/a/../b", "x/../s": wd + "/x/../s", "k": wd + "/k"} {
		if got, err := AbsolutePath(in); err != nil || got != want {
			t.Errorf("AbsolutePath(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := AbsolutePath(""); err == nil {
		t.Error("AbsolutePath accepts an empty path")
	}
}
