#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# smoke.sh PLUGIN: serve a memory server through PLUGIN in daemon mode and
# check that 4 MiB written through it read back identical.
set -eu
plugin=$(readlink -f "$1")
dir=$(mktemp -d)
trap 'for p in "$dir"/*.pid; do [ -f "$p" ] && kill "$(cat "$p")" 2>/dev/null; done; rm -rf "$dir"' EXIT
nbdkit -U "$dir/s.sock" -P "$dir/s.pid" memory 16M
nbdkit -U "$dir/p.sock" -P "$dir/p.pid" "$plugin" socket="$dir/s.sock"
for i in $(seq 50); do [ -S "$dir/p.sock" ] && break; sleep 0.1; done
head -c 4M /dev/urandom > "$dir/data"
nbdcopy "$dir/data" "nbd+unix:///?socket=$dir/p.sock"
nbdcopy "nbd+unix:///?socket=$dir/p.sock" "$dir/back"
head -c 4M "$dir/back" | cmp - "$dir/data"
echo "smoke: $plugin serves"
