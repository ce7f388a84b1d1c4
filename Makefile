# SPDX-License-Identifier: BSD-3-Clause
# nbdkit-nbd-go-plugin.  `make` needs no configure step: Go, a C
# compiler, pkg-config, nbdkit-plugin-dev and libnbd-dev.

# ./configure, if run, sets the variables below (see configure.ac).
-include config.mk

PLUGIN     = nbdkit-nbd-go-plugin.so
# PLUGIN= on make's command line names the plugin check-history tests,
# never what make builds (a rule would otherwise rebuild that file).
ifeq ($(origin PLUGIN),command line)
HISTORY_PLUGIN := $(PLUGIN)
override PLUGIN = nbdkit-nbd-go-plugin.so
endif
# The kit's example plugin (examples/ramdisk), built by the same rule.
RAMDISK    = examples/ramdisk/nbdkit-ramdisk-plugin.so
# The one place the version is written; configure.ac, the man page,
# --dump-plugin (plugin.Version, set below with -X) and debian/changelog
# (checked by tests/version_test.go) take it from here.
VERSION   := $(shell cat VERSION)
GO        ?= go
# A Go in /usr/local/go is used when there is none on PATH (the README's
# commands run with a bare PATH; .ci/install-deps installs golang-go
# when neither place has a Go that go.mod accepts).
ifeq ($(shell command -v $(GO)),)
export PATH := $(PATH):/usr/local/go/bin
endif
POD2MAN   ?= pod2man
# Never download a toolchain: builds work offline.
export GOTOOLCHAIN = local
CC        ?= cc
PKG_CONFIG ?= pkg-config
# The Go library's link flags (loader/go-plugin.sh adds -trimpath
# -buildvcs=false to every go build); this plugin's also set its version.
GO_LDFLAGS = -buildid= -s -w
# CFLAGS, CPPFLAGS and LDFLAGS from the environment (dpkg-buildflags
# exports them, with the hardening options), the command line or
# config.mk are used for the loader and, through CGO_CFLAGS and
# CGO_LDFLAGS, for the C that cgo compiles into the Go library.
CFLAGS    ?= -O2 -g
CPPFLAGS  ?=
LDFLAGS   ?=
LOADER_CFLAGS = -fPIC -Wall -Werror=implicit-function-declaration \
	$(shell $(PKG_CONFIG) --cflags nbdkit) -Inbdkit \
	-ffile-prefix-map=$(CURDIR)=.
export CGO_CPPFLAGS ?= $(CPPFLAGS)
export CGO_CFLAGS ?= $(CFLAGS) -ffile-prefix-map=$(CURDIR)=.
export CGO_LDFLAGS ?= $(LDFLAGS)

GO_SOURCES = go.mod $(wildcard go.sum) $(shell find nbdkit libnbd plugin cmd examples -name '*.go' -o -name '*.c' -o -name '*.h')

MANPAGE    = nbdkit-nbd-go-plugin.1
prefix    ?= /usr/local
mandir    ?= $(prefix)/share/man
plugindir ?= $(shell $(PKG_CONFIG) --variable=plugindir nbdkit)

all: $(PLUGIN) $(RAMDISK) $(MANPAGE)

$(MANPAGE): nbdkit-nbd-go-plugin.pod VERSION
	$(POD2MAN) --section=1 --center=nbdkit --release=$(VERSION) \
		--date=2026-11-25 --name=nbdkit-nbd-go-plugin $< > $@.tmp
	mv $@.tmp $@

install: all
	install -d $(DESTDIR)$(plugindir) $(DESTDIR)$(mandir)/man1
	install -m 0755 $(PLUGIN) $(DESTDIR)$(plugindir)/$(PLUGIN)
	install -m 0644 $(MANPAGE) $(DESTDIR)$(mandir)/man1/$(MANPAGE)

uninstall:
	rm -f $(DESTDIR)$(plugindir)/$(PLUGIN) $(DESTDIR)$(mandir)/man1/$(MANPAGE)

# GO_PLUGIN(OUTPUT, MAIN, BUILDDIR) builds the Go main package in the
# directory MAIN (its init calls nbdkit.Register, its main nbdkit.Main)
# into OUTPUT: the loader with the Go library inside.  BUILDDIR holds
# the intermediate files, one per plugin.  loader/go-plugin.sh does the
# work, for `make go-plugin` too.
LOADER_SOURCES = loader/loader.c loader/forks.c loader/forks.h loader/embed.S \
	loader/go-plugin.sh nbdkit/abi.h
GO_PLUGIN_SH = GO='$(GO)' CC='$(CC)' CPPFLAGS='$(CPPFLAGS)' CFLAGS='$(CFLAGS)' \
	LDFLAGS='$(LDFLAGS)' LOADER_CFLAGS='$(LOADER_CFLAGS)' \
	GO_LDFLAGS='$(GO_LDFLAGS)' ./loader/go-plugin.sh
define GO_PLUGIN
$(1): $$(GO_SOURCES) $$(LOADER_SOURCES) VERSION
	@$$(GO_PLUGIN_SH) ./$(2) $(1) $(3)
endef
$(PLUGIN): GO_LDFLAGS += -X nbdkit-nbd-go-plugin/plugin.Version=$(VERSION)

$(eval $(call GO_PLUGIN,$(PLUGIN),cmd/nbdkit-nbd-go-plugin,build/nbd-go))
$(eval $(call GO_PLUGIN,$(RAMDISK),examples/ramdisk,build/ramdisk))

# make go-plugin SRC=DIR OUT=FILE: build the Go main package in DIR,
# anywhere on disk, with or without its own go.mod, into the plugin
# FILE (relative paths are relative to this directory).  See README,
# "Writing your own plugin with the kit".
go-plugin:
	@test -n "$(SRC)" && test -n "$(OUT)" || \
		{ echo "usage: make go-plugin SRC=DIR OUT=FILE" >&2; exit 2; }
	@$(GO_PLUGIN_SH) '$(SRC)' '$(OUT)'

# The whole suite; its last line is a short campaign of the history
# checker (check-history below; .ci/run runs a longer one).
check: all check-engine
	$(GO) vet ./...
	$(GO) vet -tags packaging ./tests
	@test -z "$$(gofmt -l nbdkit libnbd plugin cmd examples tests)" || { gofmt -l nbdkit libnbd plugin cmd examples tests; exit 1; }
	$(GO) test -race -count=1 ./nbdkit ./libnbd ./plugin/...
	$(GO) test -count=1 -timeout 12m ./tests
	cd tests/history && HISTORY_SCHEDULES=20 $(GO) test -count=1 -parallel 2 -timeout 10m

# The history checker (tests/history): SCHEDULES schedules (default 20),
# each drawn from a seed (FIRST_SEED on, default 1; SEED=N replays one),
# of libnbd clients through nbdkit and PLUGIN (default: this tree's,
# built first; "nbd" is nbdkit's C plugin) in front of an adversarial
# NBD server that crashes, restarts, stops, is replaced and lands stale
# writes late; every history, and the storage at the end, is held
# against the contract a client may rely on (tests/history/checker.go).
# Two schedules at a time; a violation fails the run, reported with its
# seed, its ops and the server's log.  `make check` runs the unit tests
# and 20 schedules (about 30 s); .ci/run runs a longer campaign
# (SCHEDULES=150, a few minutes).
SCHEDULES ?= 20
ifeq ($(HISTORY_PLUGIN),)
HISTORY_DEPS = $(PLUGIN)
HISTORY_PLUGIN_PATH = $(CURDIR)/$(PLUGIN)
else
HISTORY_DEPS =
HISTORY_PLUGIN_PATH = $(if $(filter nbd none,$(HISTORY_PLUGIN)),$(HISTORY_PLUGIN),$(abspath $(HISTORY_PLUGIN)))
endif
check-history: $(HISTORY_DEPS)
	cd tests/history && HISTORY_PLUGIN='$(HISTORY_PLUGIN_PATH)' HISTORY_SCHEDULES='$(SCHEDULES)' \
		HISTORY_SEED='$(SEED)' HISTORY_FIRST_SEED='$(FIRST_SEED)' \
		$(GO) test -count=1 -parallel 2 -timeout 60m -run 'TestHistory$$'

# The history checker must catch builds weakened on purpose: the plugin
# built with -DNBDGO_WEAKEN_DOUBT (a doubt ends as soon as its
# connection ended) and with -DNBDGO_WEAKEN_REPAIR (a repair writes the
# oldest acknowledged write of a range again), each run on schedules
# that can show it (SCHEDULES of them at most, default 40) until one
# shows a violation; it fails if either shows none
# (tests/history/weak_test.go).  Not part of `make check`.
WEAK_DOUBT  = build/nbdkit-nbd-go-plugin-weak-doubt.so
WEAK_REPAIR = build/nbdkit-nbd-go-plugin-weak-repair.so
$(WEAK_DOUBT) $(WEAK_REPAIR): GO_LDFLAGS += -X nbdkit-nbd-go-plugin/plugin.Version=$(VERSION)
$(WEAK_DOUBT): $(GO_SOURCES) $(LOADER_SOURCES) VERSION
	@CGO_CFLAGS='$(CGO_CFLAGS) -DNBDGO_WEAKEN_DOUBT' $(GO_PLUGIN_SH) ./cmd/nbdkit-nbd-go-plugin $@ build/weak-doubt
$(WEAK_REPAIR): $(GO_SOURCES) $(LOADER_SOURCES) VERSION
	@CGO_CFLAGS='$(CGO_CFLAGS) -DNBDGO_WEAKEN_REPAIR' $(GO_PLUGIN_SH) ./cmd/nbdkit-nbd-go-plugin $@ build/weak-repair
WEAK_SCHEDULES = $(if $(filter command line,$(origin SCHEDULES)),$(SCHEDULES),)
check-history-weak: $(WEAK_DOUBT) $(WEAK_REPAIR)
	cd tests/history && HISTORY_WEAK='doubt=$(CURDIR)/$(WEAK_DOUBT) repair=$(CURDIR)/$(WEAK_REPAIR)' \
		HISTORY_SCHEDULES='$(WEAK_SCHEDULES)' HISTORY_FIRST_SEED='$(FIRST_SEED)' \
		$(GO) test -count=1 -timeout 60m -run 'TestWeakBuilds$$'

# The filesystem test in full (tests/filesystem_test.go): ext4 on a
# loop device on nbdfuse through the plugin, through kill -9 and
# systemd-style restarts of nbdkit and qemu-nbd, and of a server that
# loses its write cache.  Needs root; `make check` runs its short case.
check-filesystem: $(PLUGIN)
	NBDGO_FILESYSTEM=full $(GO) test -count=1 -v -timeout 10m -run 'TestFilesystemRestarts' ./tests

# What the Debian package build runs (debian/rules, unless
# DEB_BUILD_OPTIONS=nocheck): the unit tests and one smoke test of the
# built plugin.
check-unit: $(PLUGIN)
	$(GO) test -count=1 ./nbdkit ./libnbd ./plugin/...
	./tests/smoke.sh $(PLUGIN)

# The tests that install things on this machine (as root): the build
# dependencies of debian/control (apt-get build-dep), then the Debian
# package, built with Debian's Go, checked by lintian, installed and
# removed (tests/packaging_debian_test.go).  Not part of `make check`.
check-packaging: all
	apt-get build-dep -y ./
	apt-get install -y --no-install-recommends lintian
	$(GO) test -tags packaging -count=1 -v -run 'TestDebian' -timeout 20m ./tests

# `make check` on Debian 13, in a debootstrap chroot (.ci/check-debian13).
check-debian13:
	./.ci/check-debian13

# The command engine (plugin/datapath/engine.c) under ThreadSanitizer: a C stress
# test (tests/engine/stress.c) against real nbdkit servers: many threads
# on one handle, server errors, the server killed, timeouts, engine_close with the server stopped.  A race TSan sees
# fails the run (exit status 66), as does any failed check.
# -Wno-tsan: GCC warns that TSan does not model atomic_thread_fence;
# every atomic in engine.c is seq_cst, so the accesses themselves carry
# the ordering TSan checks.  -Wno-unused-parameter: libnbd's callback
# signatures.  About 15-25 s; ENGINE_STRESS_SLACK_MS (default 2000)
# widens the time bounds on a loaded machine.
ENGINE_STRESS = build/engine-stress
ENGINE_STRESS_CFLAGS = -fsanitize=thread -g -O1 -Wall -Wextra -Wno-tsan \
	-Wno-unused-parameter -Iplugin/datapath $(shell $(PKG_CONFIG) --cflags libnbd)
$(ENGINE_STRESS): tests/engine/stress.c plugin/datapath/engine.c plugin/datapath/engine.h
	@mkdir -p build
	$(CC) $(ENGINE_STRESS_CFLAGS) -o $@ tests/engine/stress.c plugin/datapath/engine.c \
		$(shell $(PKG_CONFIG) --libs libnbd) -lpthread

check-engine: $(ENGINE_STRESS)
	TSAN_OPTIONS='halt_on_error=1 exitcode=66 second_deadlock_stack=1' \
		./$(ENGINE_STRESS)

# A short fuzzing run of the configuration parser (seeds in
# plugin/testdata/fuzz).
# A count, not a duration: with -fuzztime 10s, Go's fuzzing coordinator
# sometimes fails the run with "context deadline exceeded" when the time
# is up while a worker is busy (seen on a loaded machine, no crasher).
# 300000 runs take about 8 s here.
fuzz:
	$(GO) test -run XXX -fuzz FuzzConfig -fuzztime 300000x ./plugin

# The whole suite once more with cgo's strict pointer checks compiled in.
check-cgocheck2:
	$(MAKE) clean
	GOEXPERIMENT=cgocheck2 $(MAKE) all
	$(GO) test -count=1 -short -timeout 12m ./tests
	$(MAKE) clean

demo: $(PLUGIN)
	./tests/demo.sh

bench: $(PLUGIN)
	./tests/bench.sh

bench-extents: $(PLUGIN)
	./tests/bench-extents.sh

clean:
	rm -rf build $(PLUGIN) $(RAMDISK) $(MANPAGE)

distclean: clean
	rm -rf config.mk config.status config.log autom4te.cache

# The tarball: the tracked files plus the generated configure.  No Go
# module is downloaded to build it (go.sum is empty), so it builds
# offline.
DISTNAME = nbdkit-nbd-go-plugin-$(VERSION)
dist: configure
	rm -rf build/dist && mkdir -p build/dist/$(DISTNAME)
	git ls-files | tar -cf - -T - | tar -C build/dist/$(DISTNAME) -xf -
	cp configure build/dist/$(DISTNAME)/
	tar -C build/dist --sort=name --owner=0 --group=0 --numeric-owner \
		--mtime=2026-11-25 -czf $(DISTNAME).tar.gz $(DISTNAME)
	rm -rf build/dist
	@echo "made $(DISTNAME).tar.gz"

configure: configure.ac
	autoreconf -fi

# Unpack the tarball, configure, build, install into a DESTDIR, serve
# with the installed file, uninstall, and check that nothing is left.
distcheck: dist
	rm -rf build/distcheck && mkdir -p build/distcheck
	tar -C build/distcheck -xzf $(DISTNAME).tar.gz
	cd build/distcheck/$(DISTNAME) && ./configure --prefix=/usr \
		&& $(MAKE) && $(MAKE) install DESTDIR=$(CURDIR)/build/distcheck/root
	./tests/smoke.sh build/distcheck/root$(plugindir)/$(PLUGIN)
	test -f build/distcheck/root/usr/share/man/man1/$(MANPAGE)
	cd build/distcheck/$(DISTNAME) && $(MAKE) uninstall DESTDIR=$(CURDIR)/build/distcheck/root
	test -z "$$(find build/distcheck/root -type f)"
	rm -rf build/distcheck
	@echo "$(DISTNAME).tar.gz is ready for distribution"

.PHONY: all go-plugin check check-engine check-history check-history-weak check-filesystem check-unit check-packaging check-debian13 fuzz check-cgocheck2 demo bench bench-extents install uninstall clean distclean dist distcheck
