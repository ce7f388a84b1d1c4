#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Where the time goes with many clients: per-request counts of each
# nbdkit proxy (the C nbd plugin and ours) while fio's nbd engine runs
# 4k random reads at depth 4 on N connections over a Unix socket, with a
# server connection per client and with shared=true, the same workload
# as bench.sh's many-clients rows.
#
# For each run, once the clients are connected (1 s of fio's ramp-up and
# 1 s more; fio runs on for PROFILE_SECS + 8 s, as attaching to 1000
# threads takes perf seconds on a loaded machine), `perf stat -p PID` counts, for PROFILE_SECS seconds, the
# proxy's system calls, futex calls, polls, context switches and CPU
# time, second by second (perf stat -I; the first interval, while perf
# attaches to the threads, is not used; the others are not exactly 1 s
# apart, so figures are good to about 10%).  Each count is divided by the
# requests served in the window (fio's IOPS over the run times the
# window), so the figures are per request.  Targets alternate within a
# round; with PROFILE_ROUNDS > 1 each figure is the median of rounds.
#
# Environment:
#   PROFILE_CLIENTS  client counts (default "16 64")
#   PROFILE_SHARED   0 per-client, 1 shared=true (default "0 1")
#   PROFILE_SECS     seconds counted per run (default 5)
#   PROFILE_ROUNDS   rounds (default 1)
#   PROFILE_RECORD=DIR  also `perf record -g` each proxy for the window
#                    into DIR/N,TARGET.data (perf report -i ... later)
#   PLUGIN           the plugin to test (default ./nbdkit-nbd-go-plugin.so)
# Needs perf (Debian: linux-perf) working in this machine.
set -eu

top=$(cd "$(dirname "$0")/.." && pwd)
plugin=${PLUGIN:-$top/nbdkit-nbd-go-plugin.so}
case $plugin in /*) ;; *) plugin=$PWD/$plugin ;; esac
ns=${PROFILE_CLIENTS:-16 64}
modes=${PROFILE_SHARED:-0 1}
secs=${PROFILE_SECS:-5}
rounds=${PROFILE_ROUNDS:-1}
record=${PROFILE_RECORD:-}

for t in nbdkit fio nbdinfo nbdcopy perf python3; do
  command -v $t >/dev/null || { echo "profile: $t is missing" >&2; exit 1; }
done
[ -f "$plugin" ] || { echo "profile: $plugin not built (run make)" >&2; exit 1; }
perf stat -e 'syscalls:sys_enter_futex' true 2>/dev/null ||
  { echo "profile: perf cannot count syscall tracepoints here" >&2; exit 1; }

# perf stat -p opens a counter per event and thread: over 1000 threads
# with 64 per-client connections.
ulimit -n "$(ulimit -Hn)"

. "$top/tests/bench-common.sh"
bench_begin nbd-profile


# nthreads PID: its thread count.
nthreads() {
  local k v
  while read -r k v; do
    if [ "$k" = Threads: ]; then echo "$v"; return; fi
  done < "/proc/$1/status"
}

# settle PID IDLE: wait (at most 60 s) until the connections of the run
# before have gone, that is until PID is back to its IDLE thread count:
# tearing down 64 connections' threads takes seconds on a loaded machine.
settle() {
  local i
  for i in $(seq 600); do
    [ "$(nthreads "$1")" -le "$2" ] && return 0
    sleep 0.1
  done
  echo "profile: $1 still has $(nthreads "$1") threads" >&2
}

server=$dir/server.sock
nbdkit -f -U "$server" memory 1G & pids+=($!)
wait_ready "nbd+unix:///?socket=$server"
nbdcopy -- [ nbdkit random 1G ] "nbd+unix:///?socket=$server"

declare -A uri pid idle
targets=
for m in $modes; do
  for t in c go; do
    k=$t; sh=()
    if [ "$m" = 1 ]; then k=$t-shared; sh=(shared=true); fi
    s=$dir/$k.sock
    if [ $t = c ]; then
      nbdkit -f -U "$s" nbd socket="$server" "${sh[@]}" & pids+=($!)
    else
      nbdkit -f -U "$s" "$plugin" socket="$server" "${sh[@]}" & pids+=($!)
    fi
    pid[$k]=$!; uri[$k]="nbd+unix:///?socket=$s"
    wait_ready "${uri[$k]}"
    targets="$targets $k"
  done
done
sleep 1   # nbdinfo's connections have gone
for k in $targets; do idle[$k]=$(nthreads "${pid[$k]}"); done

events='raw_syscalls:sys_enter,syscalls:sys_enter_futex,syscalls:sys_enter_poll,syscalls:sys_enter_ppoll,syscalls:sys_enter_write,syscalls:sys_enter_read,context-switches,cpu-migrations,task-clock'
for r in $(seq "$rounds"); do
  for n in $ns; do
    for t in $targets; do
      echo "profile: round $r/$rounds n=$n $t" >&2
      out=$dir/$n,$t,$r
      fio --name=prof --ioengine=nbd --uri="${uri[$t]}" --rw=randread --bs=4k \
          --iodepth=4 --numjobs="$n" --thread --group_reporting \
          --time_based --ramp_time=1 --runtime=$((secs + 8)) --size=1G \
          --output-format=json --output="$out.json" >/dev/null 2>&1 & fpid=$!
      sleep 2
      rec=()
      if [ -n "$record" ]; then
        mkdir -p "$record"
        perf record -q -g -p "${pid[$t]}" -o "$record/$n,$t.data" -- sleep "$secs" \
          >/dev/null 2>&1 & rec=($!)
      fi
      perf stat -I 1000 -x, -e "$events" -p "${pid[$t]}" -o "$out.stat" -- sleep $((secs + 1)) || true
      if [ ${#rec[@]} -gt 0 ]; then wait "${rec[0]}" || true; fi
      wait $fpid
      t4=${EPOCHREALTIME/./}
      settle "${pid[$t]}" "${idle[$t]}"
      echo "profile: $t took $(( (${EPOCHREALTIME/./} - t4) / 1000 )) ms to let go of $n clients" >&2
    done
  done
done

python3 - "$dir" "$secs" "$ns" "$targets" <<'EOF'
import json, os, statistics, sys
d, secs = sys.argv[1], float(sys.argv[2])
ns, targets = sys.argv[3].split(), sys.argv[4].split()
names = {"raw_syscalls:sys_enter": "syscalls",
         "syscalls:sys_enter_futex": "futex",
         "syscalls:sys_enter_poll": "poll",
         "syscalls:sys_enter_ppoll": "ppoll",
         "syscalls:sys_enter_read": "read",
         "syscalls:sys_enter_write": "write",
         "context-switches": "ctx switches",
         "cpu-migrations": "migrations",
         "task-clock": "CPU us"}
per = {}
for f in os.listdir(d):
    if not f.endswith(".stat"):
        continue
    n, t, r = f[:-5].split(",")
    text = open(os.path.join(d, n + "," + t + "," + r + ".json")).read()
    iops = json.loads(text[text.index("{"):])["jobs"][0]["read"]["iops"]
    # perf stat -I 1000: one line per second and event; the first second
    # is dropped (counters still being attached to threads), and the
    # last partial one.
    iv = {}
    for line in open(os.path.join(d, f)):
        p = line.strip().split(",")
        if len(p) > 4 and p[3] in names and p[1] not in ("", "<not counted>"):
            iv.setdefault(float(p[0]), {})[names[p[3]]] = float(p[1])
    ts = sorted(iv)
    if len(ts) < 2:
        continue
    # intervals are not exactly 1 s apart (reading a counter per thread
    # takes perf a while): count from the end of the first one.
    reqs = iops * (ts[-1] - ts[0])
    v = {"IOPS": iops}
    for k in names.values():
        x = sum(iv[x].get(k, 0) for x in ts[1:])
        v[k] = x * (1000 if k == "CPU us" else 1) / reqs
    per.setdefault((n, t), []).append(v)
rows = ["IOPS", "CPU us", "syscalls", "futex", "poll", "ppoll", "read", "write",
        "ctx switches", "migrations"]
cols = [(n, t) for n in ns for t in targets if (n, t) in per]
hdr = ["per request"] + ["%s %s" % (n, t) for n, t in cols]
out = []
for r in rows:
    cells = [r]
    for c in cols:
        vals = [v[r] for v in per[c] if r in v]
        m = statistics.median(vals) if vals else None
        cells.append("-" if m is None else "%.0f" % m if r == "IOPS" else "%.2f" % m)
    out.append(cells)
w = [max(len(x[i]) for x in out + [hdr]) for i in range(len(hdr))]
print("Per request, %g s window, median of rounds (IOPS: fio's, whole run)" % secs)
for i, row in enumerate([hdr] + out):
    print("  ".join(x.ljust(w[k]) if k == 0 else x.rjust(w[k]) for k, x in enumerate(row)))
    if i == 0:
        print("  ".join("-" * x for x in w))
EOF
