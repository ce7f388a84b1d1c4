// SPDX-License-Identifier: BSD-3-Clause

package tests

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// readVersion is the version, from the one place it is written.
func readVersion(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../VERSION")
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func readFile(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// The version and the minimum versions of what the plugin needs are
// written once, or agree where they must be repeated.
func TestVersionsAgree(t *testing.T) {
	v := readVersion(t)
	if out := run(t, "nbdkit", plugin, "--dump-plugin"); !strings.Contains(out, "\nversion="+v+"\n") {
		t.Errorf("--dump-plugin does not say version=%s:\n%s", v, out)
	}
	changelog := readFile(t, "../debian/changelog")
	if m := regexp.MustCompile(`^\S+ \(([^)]+)\)`).FindStringSubmatch(changelog); m == nil || m[1] != v {
		t.Errorf("debian/changelog's first entry is %v, VERSION is %s", m, v)
	}
	readme := readFile(t, "../README")
	for _, m := range regexp.MustCompile(`nbdkit-nbd-go-plugin[-_](\d+\.\d+\.\d+)`).FindAllStringSubmatch(readme, -1) {
		if m[1] != v {
			t.Errorf("README names %s, VERSION is %s", m[0], v)
		}
	}
	// pod2man quotes the .TH fields (Debian 12) or not (Debian 13).
	th := regexp.MustCompile(`(?m)^\.TH .*$`).FindString(readFile(t, "../nbdkit-nbd-go-plugin.1"))
	if !regexp.MustCompile(`[ "]` + regexp.QuoteMeta(v) + `[ "]`).MatchString(th + " ") {
		t.Errorf("the man page's .TH line does not carry version %s: %q", v, th)
	}

	// Go: go.mod, README (configure reads go.mod).
	goMin := regexp.MustCompile(`(?m)^go (\S+)$`).FindStringSubmatch(readFile(t, "../go.mod"))[1]
	if !strings.Contains(readme, "Go "+goMin+" or later") {
		t.Errorf("README does not say Go %s or later (go.mod)", goMin)
	}
	// nbdkit >= 1.32 (loader/forks.c knows its options from 1.32 on),
	// libnbd >= 1.14: configure, debian/control and README.
	configure := readFile(t, "../configure.ac")
	control := readFile(t, "../debian/control")
	for _, want := range []struct{ file, text string }{
		{configure, "nbdkit >= 1.32"}, {configure, "libnbd >= 1.14"},
		{control, "nbdkit-plugin-dev (>= 1.32)"}, {control, "libnbd-dev (>= 1.14)"},
		{readme, "nbdkit 1.32 or later"}, {readme, "libnbd 1.14 or later"},
	} {
		if !strings.Contains(want.file, want.text) {
			t.Errorf("%q is missing from its file", want.text)
		}
	}
}
