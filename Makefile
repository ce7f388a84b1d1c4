# nbdkit-nbd-go-plugin.  `make` needs no configure step: Go, a C
# compiler, pkg-config, nbdkit-plugin-dev and libnbd-dev.

PLUGIN     = nbdkit-nbd-go-plugin.so
GO        ?= go
CC        ?= cc
PKG_CONFIG ?= pkg-config
GOFLAGS_BUILD = -trimpath -ldflags=-buildid=
CFLAGS    ?= -O2 -g
LOADER_CFLAGS = -fPIC -Wall -Werror=implicit-function-declaration \
	$(shell $(PKG_CONFIG) --cflags nbdkit) -Inbdkit -Ibuild \
	-ffile-prefix-map=$(CURDIR)=.
export CGO_CFLAGS ?= -O2 -g -ffile-prefix-map=$(CURDIR)=.

GO_SOURCES = go.mod $(wildcard go.sum) $(shell find nbdkit libnbd plugin cmd -name '*.go' -o -name '*.c' -o -name '*.h')

MANPAGE    = nbdkit-nbd-go-plugin.1
VERSION    = 1.0.0
prefix    ?= /usr/local
mandir    ?= $(prefix)/share/man
plugindir ?= $(shell $(PKG_CONFIG) --variable=plugindir nbdkit)

all: $(PLUGIN) $(MANPAGE)

$(MANPAGE): nbdkit-nbd-go-plugin.pod
	pod2man --section=1 --center=nbdkit --release=$(VERSION) \
		--date=2026-11-25 --name=nbdkit-nbd-go-plugin $< > $@.tmp
	mv $@.tmp $@

install: all
	install -d $(DESTDIR)$(plugindir) $(DESTDIR)$(mandir)/man1
	install -m 0755 $(PLUGIN) $(DESTDIR)$(plugindir)/$(PLUGIN)
	install -m 0644 $(MANPAGE) $(DESTDIR)$(mandir)/man1/$(MANPAGE)

uninstall:
	rm -f $(DESTDIR)$(plugindir)/$(PLUGIN) $(DESTDIR)$(mandir)/man1/$(MANPAGE)

build/libnbd-go.so: $(GO_SOURCES)
	@mkdir -p build
	$(GO) build $(GOFLAGS_BUILD) -buildmode=c-shared -o $@ ./cmd/nbdkit-nbd-go-plugin
	rm -f build/libnbd-go.h

build/plugin-desc.h: $(GO_SOURCES)
	@mkdir -p build
	$(GO) run $(GOFLAGS_BUILD) ./cmd/nbdkit-nbd-go-plugin > $@.tmp
	mv $@.tmp $@

$(PLUGIN): loader/loader.c loader/embed.S nbdkit/abi.h build/plugin-desc.h build/libnbd-go.so
	$(CC) $(CFLAGS) $(LOADER_CFLAGS) -shared -o $@ \
		-DGO_LIBRARY='"build/libnbd-go.so"' loader/loader.c loader/embed.S -ldl

check: $(PLUGIN)
	$(GO) vet ./...
	@test -z "$$(gofmt -l nbdkit libnbd plugin cmd tests)" || { gofmt -l nbdkit libnbd plugin cmd tests; exit 1; }
	$(GO) test -race -count=1 ./nbdkit ./libnbd ./plugin
	$(GO) test -count=1 -timeout 12m ./tests

demo: $(PLUGIN)
	./tests/demo.sh

bench: $(PLUGIN)
	./tests/bench.sh

clean:
	rm -rf build $(PLUGIN) $(MANPAGE)

.PHONY: all check demo bench install uninstall clean
