#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
#
# go-plugin.sh SRC OUT [BUILDDIR]: build the Go main package in directory
# SRC (anywhere on disk) into OUT, one self-contained nbdkit plugin: the
# loader (loader.c, forks.c) with the Go library inside (embed.S).  The
# Makefile runs it from the kit's directory, for `make go-plugin` and for
# its GO_PLUGIN rule, with GO, CC, CPPFLAGS, CFLAGS, LDFLAGS,
# LOADER_CFLAGS and GO_LDFLAGS in the environment.  Relative paths are
# relative to the kit's directory.
#
# Three steps: SRC run as a program writes the loader's header (its main
# calls nbdkit.Main, which also refuses what nbdkit would refuse at load
# time: the build stops there, with one line saying why); SRC built with
# -buildmode=c-shared is the Go library; the loader is compiled with
# both.  BUILDDIR keeps the intermediate files; without it they go to a
# temporary directory, removed at the end.
#
# The module SRC is built in (`go env GOMOD` in SRC):
#  - the kit's own (SRC in this tree): as it is;
#  - another one (SRC has a go.mod, or is under one): that go.mod, copied
#    into BUILDDIR with a require and a replace of nbdkit-nbd-go-plugin
#    by this kit added, used with -modfile: the author's files are not
#    changed.  A module with a vendor/ directory is built in a mirror of
#    it in BUILDDIR instead (its files linked, the go.mod copied), whose
#    vendor/ adds the kit to the author's: -modfile would take vendor/
#    from the author's module, whose modules.txt does not list the kit;
#  - none: a module made in BUILDDIR, with SRC linked into it, that
#    requires the kit only (so such a plugin imports only the standard
#    library and the kit), in the language version of the Go building.
set -eu

[ $# -eq 2 ] || [ $# -eq 3 ] || { echo "usage: $0 SRC OUT [BUILDDIR]" >&2; exit 2; }
kit=$(pwd)
[ -f "$kit/loader/loader.c" ] || { echo "$0: run it in the kit's directory" >&2; exit 2; }
[ -d "$1" ] || { echo "go-plugin: SRC=$1 is not a directory" >&2; exit 1; }
src=$(cd "$1" && pwd)
out=$2
GO=${GO:-go}
CC=${CC:-cc}

prefix_map=
if [ $# -eq 3 ]; then
  build=$3
  mkdir -p "$build"
else
  build=$(mktemp -d "${TMPDIR:-/tmp}/nbdkit-go-plugin.XXXXXX")
  trap 'rm -rf "$build"' EXIT
  trap 'exit 1' HUP INT TERM
  # Keep the temporary directory's name out of the debug information.
  prefix_map=-ffile-prefix-map=$build=build
fi
buildabs=$(cd "$build" && pwd)

echo "go-plugin: $out from $src"
# run ARGS: print a command, then run it.
run() {
  for a; do case $a in *" "*) printf "'%s' " "$a" ;; *) printf '%s ' "$a" ;; esac; done
  echo
  "$@"
}

# In which directory, and on which package, go build runs (never in a
# go.work: the build says which modules it uses).
export GOWORK=off
gomod=$(cd "$src" && "$GO" env GOMOD)
modpath=
if [ -n "$gomod" ] && [ "$gomod" != /dev/null ]; then
  modpath=$("$GO" mod edit -json "$gomod" |
    sed -n '/"Module": {/,/}/s/.*"Path": "\(.*\)".*/\1/p')
fi
modfile=
if [ "$modpath" = nbdkit-nbd-go-plugin ]; then
  godir=$src pkg=.
elif [ -n "$modpath" ]; then
  godir=$src pkg=. modfile=-modfile=$buildabs/go.mod
  cp "$gomod" "$buildabs/go.mod"
  rm -f "$buildabs/go.sum"
  if [ -f "${gomod%.mod}.sum" ]; then cp "${gomod%.mod}.sum" "$buildabs/go.sum"; fi
  run "$GO" mod edit -require=nbdkit-nbd-go-plugin@v0.0.0 \
    -replace=nbdkit-nbd-go-plugin="$kit" "$buildabs/go.mod"
  root=$(dirname "$gomod")
  if [ -f "$root/vendor/modules.txt" ]; then
    mirror=$buildabs/module
    mkdir -p "$mirror/vendor"
    for f in "$root"/* "$root"/.[!.]*; do
      [ -e "$f" ] || continue
      case ${f##*/} in go.mod|go.sum|vendor) continue ;; esac
      ln -s "$f" "$mirror/${f##*/}"
    done
    for f in "$root"/vendor/*; do
      case ${f##*/} in modules.txt|nbdkit-nbd-go-plugin) continue ;; esac
      ln -s "$f" "$mirror/vendor/${f##*/}"
    done
    ln -s "$kit" "$mirror/vendor/nbdkit-nbd-go-plugin"
    kitgo=$("$GO" mod edit -json "$kit/go.mod" | sed -n 's/^\t"Go": "\(.*\)",*$/\1/p')
    # The author's modules.txt less any word of the kit, then the kit as
    # `go mod vendor` would have written it.
    { awk '/^# / { kit = ($2 == "nbdkit-nbd-go-plugin") } !kit' "$root/vendor/modules.txt"
      printf '# nbdkit-nbd-go-plugin v0.0.0 => %s\n## explicit; go %s\n' "$kit" "${kitgo:-1.19}"
      printf 'nbdkit-nbd-go-plugin/%s\n' nbdkit libnbd
      printf '# nbdkit-nbd-go-plugin => %s\n' "$kit"
    } > "$mirror/vendor/modules.txt"
    mv "$buildabs/go.mod" "$mirror/go.mod"
    if [ -f "$buildabs/go.sum" ]; then mv "$buildabs/go.sum" "$mirror/go.sum"; fi
    rel=${src#"$root"}
    godir=$mirror$rel modfile=
  fi
else
  godir=$buildabs/module pkg=./plugin
  mkdir -p "$godir"
  # The plugin's Go language version: that of the Go building it.
  lang=$("$GO" env GOVERSION | sed -n 's/^go\([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p')
  printf 'module nbdkit-go-plugin.build\n\ngo %s\n\nrequire nbdkit-nbd-go-plugin v0.0.0\n\nreplace nbdkit-nbd-go-plugin => %s\n' \
    "${lang:-1.19}" "$kit" > "$godir/go.mod"
  ln -sfn "$src" "$godir/plugin"
fi
# Both builds take GO_LDFLAGS: an -X there may set what the header says.
gobuild() {
  (cd "$godir" && run "$GO" build ${modfile:+"$modfile"} -trimpath -buildvcs=false \
    -ldflags="${GO_LDFLAGS:--buildid= -s -w}" "$@" "$pkg")
}

# 1. The loader's header: the package run as a program.  A plugin
# nbdkit would refuse stops the build here (nbdkit.Main says why).
echo "cd $godir"
gobuild -o "$buildabs/describe"
"$buildabs/describe" > "$buildabs/plugin-desc.h.tmp"
if ! grep -q '^#define NBDKITGO_NAME ' "$buildabs/plugin-desc.h.tmp"; then
  echo "go-plugin: $1: main wrote no loader header: it must call nbdkit.Main()" >&2
  exit 1
fi
mv "$buildabs/plugin-desc.h.tmp" "$buildabs/plugin-desc.h"
rm -f "$buildabs/describe"

# 2. The Go library.
gobuild -buildmode=c-shared -o "$buildabs/library.so"
rm -f "$buildabs/library.h"

# 3. The loader, carrying the library.  cc runs in the kit, where
# GO_LIBRARY (the path embed.S's .incbin reads) is relative to.
echo "cd $kit"
# shellcheck disable=SC2086 # the flags are lists of words
# $prefix_map is one word, whatever TMPDIR holds.
run $CC ${CPPFLAGS:-} ${CFLAGS:--O2 -g} ${LOADER_CFLAGS:-} ${prefix_map:+"$prefix_map"} \
  ${LDFLAGS:-} -I"$build" -shared -o "$out" \
  -DGO_LIBRARY="\"$build/library.so\"" \
  loader/loader.c loader/forks.c loader/embed.S -ldl
