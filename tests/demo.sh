#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# The demo: start a real NBD server (nbdkit's memory plugin), serve it
# through nbdkit-nbd-go-plugin in daemon mode, show nbdinfo, and copy
# random data through the proxy and back, verifying it.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
plugin=$top/nbdkit-nbd-go-plugin.so
dir=$(mktemp -d)
cleanup() {
  for p in "$dir"/*.pid; do [ -f "$p" ] && kill "$(cat "$p")" 2>/dev/null || true; done
  rm -rf "$dir"
}
trap cleanup EXIT

echo "== server: nbdkit memory 64M on $dir/server.sock"
nbdkit -U "$dir/server.sock" -P "$dir/server.pid" memory 64M
echo "== proxy: nbdkit $plugin socket=$dir/server.sock (daemon mode)"
nbdkit -U "$dir/proxy.sock" -P "$dir/proxy.pid" "$plugin" socket="$dir/server.sock"
for i in $(seq 50); do [ -S "$dir/proxy.sock" ] && break; sleep 0.1; done

echo "== nbdinfo through the proxy"
nbdinfo "nbd+unix:///?socket=$dir/proxy.sock"

echo "== copy 32 MiB of random data through the proxy, read it back"
head -c 32M /dev/urandom > "$dir/data"
nbdcopy "$dir/data" "nbd+unix:///?socket=$dir/proxy.sock"
nbdcopy "nbd+unix:///?socket=$dir/proxy.sock" "$dir/back"
head -c 32M "$dir/back" | cmp - "$dir/data"
nbdcopy "nbd+unix:///?socket=$dir/server.sock" "$dir/direct"
head -c 32M "$dir/direct" | cmp - "$dir/data"
echo "demo: OK: 32 MiB written through the proxy read back identical, through the proxy and from the server"
