# SPDX-License-Identifier: BSD-3-Clause
# Sourced by the benchmark scripts (bench.sh, bench-extents.sh,
# bench-clients-profile.sh): a scratch directory and the processes a
# script starts, both gone when it exits.

# bench_begin NAME: make $dir (/tmp/NAME.XXXXXX) and an empty $pids, to
# which the script adds each process it starts; at exit (or on ^C) they
# are stopped and $dir removed, unless BENCH_KEEP is set.
bench_begin() {
  dir=$(mktemp -d "/tmp/$1.XXXXXX")
  pids=()
  trap bench_end EXIT
  trap 'exit 130' INT TERM
}

# stop_all: stop every process in $pids, wait for them, forget them.
stop_all() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}

bench_end() {
  stop_all
  [ -n "${BENCH_KEEP:-}" ] || rm -rf "$dir"
}

# wait_ready URI: until nbdinfo --size succeeds through URI (10 s at
# most: a server that does not come fails the benchmark).
wait_ready() {
  local i
  for i in $(seq 1000); do
    nbdinfo --size "$1" >/dev/null 2>&1 && return 0
    sleep 0.01
  done
  echo "${0##*/}: $1 never became ready" >&2
  return 1
}
