#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Benchmark of block status (extents) through the proxies: nbdkit's C nbd
# plugin and this plugin.  fio has no block
# status workload, so the client is libnbd's Python binding, keeping 16
# requests of 1 MiB in flight over a sparse 4G disk (nbdkit sparse-random,
# runs of 16k: about 65 extents per reply).  Alternating targets, the
# median of BENCH_ROUNDS (default 3) runs of 20000 requests each.
set -eu

top=$(cd "$(dirname "$0")/.." && pwd)
plugin=${PLUGIN:-$top/nbdkit-nbd-go-plugin.so}
case $plugin in /*) ;; *) plugin=$PWD/$plugin ;; esac
rounds=${BENCH_ROUNDS:-3}
py=/usr/bin/python3   # the one with libnbd's nbd module

. "$top/tests/bench-common.sh"
bench_begin nbd-bench-extents

cat > "$dir/client.py" <<'PY'
import nbd, random, sys, time
h = nbd.NBD()
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_unix(sys.argv[1])
n, size, issued, extents = int(sys.argv[2]), h.get_size(), 0, [0]
random.seed(1)
def on_extent(ctx, off, entries, err):
    extents[0] += len(entries) // 2
    return 0
t = time.monotonic()
while issued < n or h.aio_in_flight() > 0:
    while issued < n and h.aio_in_flight() < 16:
        off = random.randrange(0, size - (1 << 20)) // 4096 * 4096
        h.aio_block_status(1 << 20, off, on_extent, completion=lambda e: 1)
        issued += 1
    h.poll(-1)
dt = time.monotonic() - t
if extents[0] < n:
    sys.exit("too few extents: %d" % extents[0])
print(int(n / dt))
PY

nbdkit -f -U "$dir/server.sock" sparse-random 4G percent=50 runlength=16384 & pids+=($!)
nbdkit -f -U "$dir/c.sock" nbd socket="$dir/server.sock" & pids+=($!)
nbdkit -f -U "$dir/go.sock" "$plugin" socket="$dir/server.sock" & pids+=($!)
for t in server c go; do
  until nbdinfo --size "nbd+unix:///?socket=$dir/$t.sock" >/dev/null 2>&1; do sleep 0.05; done
done

declare -A res
for i in $(seq "$rounds"); do
  for t in c go; do
    echo "bench-extents: round $i/$rounds $t" >&2
    res[$t]="${res[$t]:-} $($py "$dir/client.py" "$dir/$t.sock" 20000)"
  done
done
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
c=$(echo ${res[c]} | median); g=$(echo ${res[go]} | median)
printf 'block status, 1 MiB x 16 in flight, requests/s (median of %d)\n' "$rounds"
printf '  C nbd %d   ours %d   ours/C %.2f\n' "$c" "$g" "$(echo "$g $c" | awk '{print $1/$2}')"
