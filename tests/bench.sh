#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Benchmark: nbdkit-nbd-go-plugin against nbdkit's C nbd plugin, qemu-nbd
# as a proxy, and the backend server directly (the ceiling).
#
# Everything runs on this machine over loopback.  The backend is
# `nbdkit memory 1G` filled with pseudo-random data.  For each transport
# (Unix socket, TCP on 127.0.0.1, TLS-PSK on 127.0.0.1 between proxy and
# server) fio's nbd engine runs a set of workloads against each target in
# turn, alternating targets within a round so that a noisy neighbour hurts
# all of them alike, and starting each round with another target; each
# figure is the median of the rounds.  Over TLS
# only the proxy->server hop is encrypted (the client->proxy hop stays
# plain TCP); fio cannot speak TLS-PSK to the server, so TLS has no
# "direct" column.
#
# Environment:
#   BENCH_ROUNDS   rounds per scenario (default 3)
#   BENCH_RUNTIME  seconds per fio run (default 5)
#   BENCH_QUICK=1  short run: 1 round of 2 s, Unix socket and TCP only
#   BENCH_TRANSPORTS  which transports, e.g. "unix tcp" (default "unix tcp tls");
#                  "none" measures start-up only
#   BENCH_WORKLOADS  subset of workloads by name (default: all five)
#   BENCH_TARGETS  subset of "direct c go qemu" (default: all)
#   BENCH_THREADS  nbdkit --threads for both nbdkit proxies (default: nbdkit's)
#   BENCH_CLIENTS  client connections for the many-clients rows (default
#                  "1 4 16 64"; quick: "1 64"; "none": no such rows)
#   BENCH_SHARED   which of those rows: 0 a server connection per client,
#                  1 shared=true on both plugins (default "0 1")
#   PLUGIN         the plugin to test (default ./nbdkit-nbd-go-plugin.so)
#   PLUGIN_B       another build of it (say the one before a change): a
#                  target "b" beside the others, in the same rounds, and
#                  a column ours/B
#   PLUGIN_ARGS, PLUGIN_B_ARGS  more parameters for PLUGIN and PLUGIN_B,
#                  split on spaces (say PLUGIN_B=$PLUGIN
#                  PLUGIN_B_ARGS=repair-memory=0: what keeping writes costs)
#
# Many clients: after the transports, over a Unix socket, fio runs 4k
# random reads at depth 4 on N connections at once (numjobs=N, each job
# its own connection) against the C nbd plugin and ours, alternating,
# once with a server connection per client and once with shared=true on
# both (every client over one server connection).  Each such run has
# 1 s of ramp-up (connecting the clients) outside its figures.  These
# rows add the 99th percentile of completion latency (fio's clat_ns, all
# jobs together), median of rounds; and, for the largest N, each proxy's
# peak RSS and the most threads it had while that N ran.
#
# Prints one table, and one for many clients.  IOPS/MiB/s: median of rounds.  RSS: VmHWM of the
# proxy process at the end of its transport's runs.  Startup: time from
# starting `nbdkit -f` (or qemu-nbd) to the first successful
# `nbdinfo --size` through it, median of 5.
set -eu

top=$(cd "$(dirname "$0")/.." && pwd)
plugin=${PLUGIN:-$top/nbdkit-nbd-go-plugin.so}
case $plugin in /*) ;; *) plugin=$PWD/$plugin ;; esac
plugin_b=${PLUGIN_B:-}
case $plugin_b in /*|"") ;; *) plugin_b=$PWD/$plugin_b ;; esac
read -r -a go_args <<< "${PLUGIN_ARGS:-}"
read -r -a b_args <<< "${PLUGIN_B_ARGS:-}"
rounds=${BENCH_ROUNDS:-3}
runtime=${BENCH_RUNTIME:-5}
transports=${BENCH_TRANSPORTS:-unix tcp tls}
if [ "${BENCH_QUICK:-0}" = 1 ]; then
  rounds=${BENCH_ROUNDS:-1}
  runtime=${BENCH_RUNTIME:-2}
  transports=${BENCH_TRANSPORTS:-unix tcp}
  clients=${BENCH_CLIENTS:-1 64}
fi
clients=${clients:-${BENCH_CLIENTS:-1 4 16 64}}
[ "$clients" = none ] && clients=
shared_modes=${BENCH_SHARED:-0 1}
threads=()
[ -n "${BENCH_THREADS:-}" ] && threads=(--threads="$BENCH_THREADS")

for t in nbdkit fio nbdinfo nbdcopy qemu-nbd psktool python3; do
  command -v $t >/dev/null || { echo "bench: $t is missing" >&2; exit 1; }
done
[ -f "$plugin" ] || { echo "bench: $plugin not built (run make)" >&2; exit 1; }

. "$top/tests/bench-common.sh"
bench_begin nbd-bench
# Between scenarios: the servers go, and their sockets with them.
stop_servers() { stop_all; rm -f "$dir"/*.sock; }

mkdir -p "$dir/res"
psktool -u alice -p "$dir/keys.psk" >/dev/null 2>&1

# Free TCP ports on 127.0.0.1, chosen by the kernel.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}


# The workloads: name rw bs iodepth.
workloads=(
  "randread-4k-qd1 randread 4k 1"
  "randread-4k-qd32 randread 4k 32"
  "randwrite-4k-qd32 randwrite 4k 32"
  "read-256k-qd8 read 256k 8"
  "write-256k-qd8 write 256k 8"
  "write-1M-qd4 write 1M 4"
)

if [ -n "${BENCH_WORKLOADS:-}" ]; then
  sel=()
  for w in "${workloads[@]}"; do
    case " $BENCH_WORKLOADS " in *" ${w%% *} "*) sel+=("$w") ;; esac
  done
  workloads=("${sel[@]}")
fi

declare -A uri rsspid

# start_targets TRANSPORT: the backend and the proxies in front of it.
start_targets() {
  local tr=$1 sport p
  case $tr in
  unix)
    nbdkit -f -U "$dir/server.sock" memory 1G & pids+=($!)
    uri[direct]="nbd+unix:///?socket=$dir/server.sock"
    wait_ready "${uri[direct]}"
    nbdcopy -- [ nbdkit random 1G ] "${uri[direct]}"
    nbdkit -f "${threads[@]}" -U "$dir/c.sock" nbd socket="$dir/server.sock" & pids+=($!)
    rsspid[c]=$!; uri[c]="nbd+unix:///?socket=$dir/c.sock"
    nbdkit -f "${threads[@]}" -U "$dir/go.sock" "$plugin" socket="$dir/server.sock" ${go_args[@]+"${go_args[@]}"} & pids+=($!)
    rsspid[go]=$!; uri[go]="nbd+unix:///?socket=$dir/go.sock"
    if [ -n "$plugin_b" ]; then
      nbdkit -f "${threads[@]}" -U "$dir/b.sock" "$plugin_b" socket="$dir/server.sock" ${b_args[@]+"${b_args[@]}"} & pids+=($!)
      rsspid[b]=$!; uri[b]="nbd+unix:///?socket=$dir/b.sock"
    fi
    qemu-nbd -t -k "$dir/qemu.sock" -f raw "nbd+unix:///?socket=$dir/server.sock" & pids+=($!)
    rsspid[qemu]=$!; uri[qemu]="nbd+unix:///?socket=$dir/qemu.sock"
    ;;
  tcp|tls)
    local tls=() ptls=()
    sport=$(free_port)
    uri[direct]="nbd://127.0.0.1:$sport"
    if [ "$tr" = tls ]; then
      tls=(--tls=require --tls-psk="$dir/keys.psk")
      ptls=(tls=require tls-psk="$dir/keys.psk" tls-username=alice)
      uri[direct]="nbds://alice@127.0.0.1:$sport/?tls-psk-file=$dir/keys.psk"
    fi
    nbdkit -f -i 127.0.0.1 -p "$sport" "${tls[@]}" memory 1G & pids+=($!)
    wait_ready "${uri[direct]}"
    nbdcopy -- [ nbdkit random 1G ] "${uri[direct]}"
    p=$(free_port)
    nbdkit -f "${threads[@]}" -i 127.0.0.1 -p "$p" nbd hostname=127.0.0.1 port="$sport" "${ptls[@]}" & pids+=($!)
    rsspid[c]=$!; uri[c]="nbd://127.0.0.1:$p"
    wait_ready "${uri[c]}"
    p=$(free_port)
    nbdkit -f "${threads[@]}" -i 127.0.0.1 -p "$p" "$plugin" hostname=127.0.0.1 port="$sport" "${ptls[@]}" ${go_args[@]+"${go_args[@]}"} & pids+=($!)
    rsspid[go]=$!; uri[go]="nbd://127.0.0.1:$p"
    if [ -n "$plugin_b" ]; then
      p=$(free_port)
      nbdkit -f "${threads[@]}" -i 127.0.0.1 -p "$p" "$plugin_b" hostname=127.0.0.1 port="$sport" "${ptls[@]}" ${b_args[@]+"${b_args[@]}"} & pids+=($!)
      rsspid[b]=$!; uri[b]="nbd://127.0.0.1:$p"
    fi
    unset 'rsspid[qemu]' 'uri[qemu]'
    ;;
  esac
  for p in c go b qemu; do
    if [ -n "${uri[$p]:-}" ]; then wait_ready "${uri[$p]}"; fi
  done
}

# rotate N WORDS...: the words, starting with the (N mod count)th.
rotate() {
  local n=$1
  shift
  n=$(( n % $# ))
  echo "${@:n+1}" "${@:1:n}"
}

run_fio() {
  local out=$1 u=$2 rw=$3 bs=$4 qd=$5
  fio --name=bench --ioengine=nbd --uri="$u" --rw="$rw" --bs="$bs" \
      --iodepth="$qd" --time_based --runtime="$runtime" --size=1G \
      --output-format=json --output="$out" >/dev/null 2>"$out.err" ||
    { echo "bench: fio failed against $u:" >&2; cat "$out.err" >&2; return 1; }
}

# Startup: median of 5 of (start -> first nbdinfo --size through it).
measure_startup() {
  local name=$1 i t0 t1 pid sock=$dir/start.sock
  shift
  for i in 1 2 3 4 5; do
    rm -f "$sock"
    t0=${EPOCHREALTIME/./}
    "$@" & pid=$!
    # Wait for the socket cheaply first: each nbdinfo tried too early
    # would take CPU from the server starting up.
    until [ -S "$sock" ]; do
      kill -0 $pid 2>/dev/null || { echo "bench: $name died at startup" >&2; return 1; }
      sleep 0.001
    done
    until nbdinfo --size "nbd+unix:///?socket=$sock" >/dev/null 2>&1; do
      kill -0 $pid 2>/dev/null || { echo "bench: $name died at startup" >&2; return 1; }
      sleep 0.002
    done
    t1=${EPOCHREALTIME/./}
    kill $pid; wait $pid 2>/dev/null || true
    echo $(( t1 - t0 )) >> "$dir/res/startup_$name"   # microseconds
  done
}

started=$(date +%s)
echo "bench: rounds=$rounds runtime=${runtime}s transports: $transports; results in table at the end" >&2

nbdkit -f -U "$dir/server.sock" memory 1G & pids+=($!)
wait_ready "nbd+unix:///?socket=$dir/server.sock"
measure_startup c nbdkit -f "${threads[@]}" -U "$dir/start.sock" nbd socket="$dir/server.sock"
measure_startup go nbdkit -f "${threads[@]}" -U "$dir/start.sock" "$plugin" socket="$dir/server.sock"
measure_startup qemu qemu-nbd -t -k "$dir/start.sock" -f raw "nbd+unix:///?socket=$dir/server.sock"
stop_servers

for tr in $transports; do
  [ "$tr" = none ] && continue  # BENCH_TRANSPORTS=none: startup only
  uri=(); rsspid=()
  start_targets "$tr"
  targets="direct c go"
  # fio's nbd engine refuses URIs that name local files (tls-psk-file),
  # so over TLS there is no direct figure: use TCP's as the ceiling.
  [ "$tr" = tls ] && targets="c go"
  [ -n "${uri[b]:-}" ] && targets="$targets b"
  [ -n "${uri[qemu]:-}" ] && targets="$targets qemu"
  if [ -n "${BENCH_TARGETS:-}" ]; then
    sel=
    for t in $targets; do
      case " $BENCH_TARGETS " in *" $t "*) sel="$sel $t" ;; esac
    done
    targets=$sel
  fi
  for r in $(seq "$rounds"); do
    # Each round starts with another target: whichever runs later in a
    # round was measured faster (0.88 of itself against itself, one
    # build as two targets), so no target keeps one place.
    order=$(rotate "$r" $targets)
    for w in "${workloads[@]}"; do
      set -- $w
      [ -n "$targets" ] || continue
      for t in $order; do
        echo "bench: $tr round $r/$rounds $1 $t" >&2
        run_fio "$dir/res/$tr,$1,$t,$r.json" "${uri[$t]}" "$2" "$3" "$4"
      done
    done
  done
  for t in c go b qemu; do
    [ -n "${rsspid[$t]:-}" ] || continue
    awk '/^VmHWM/ {print $2}' "/proc/${rsspid[$t]}/status" > "$dir/res/rss_${tr}_$t"
  done
  stop_servers
done
# run_fio_clients OUT URI N: 4k random reads, depth 4, on N connections.
run_fio_clients() {
  local out=$1 u=$2 n=$3
  fio --name=bench --ioengine=nbd --uri="$u" --rw=randread --bs=4k \
      --iodepth=4 --numjobs="$n" --thread --group_reporting \
      --time_based --ramp_time=1 --runtime="$runtime" --size=1G \
      --output-format=json --output="$out" >/dev/null 2>"$out.err" ||
    { echo "bench: fio failed against $u:" >&2; cat "$out.err" >&2; return 1; }
}

# max_threads PID FIOPID OUT: the most threads PID had while FIOPID ran.
max_threads() {
  local pid=$1 fpid=$2 out=$3 max=0 k v
  while kill -0 "$fpid" 2>/dev/null; do
    while read -r k v; do
      if [ "$k" = Threads: ] && [ "$v" -gt "$max" ]; then max=$v; fi
    done < "/proc/$pid/status"
    sleep 0.25
  done
  echo "$max" > "$out"
}

if [ -n "$clients" ]; then
  uri=(); rsspid=()
  nbdkit -f -U "$dir/server.sock" memory 1G & pids+=($!)
  wait_ready "nbd+unix:///?socket=$dir/server.sock"
  nbdcopy -- [ nbdkit random 1G ] "nbd+unix:///?socket=$dir/server.sock"
  ctargets=
  for m in $shared_modes; do
    for t in c go; do
      case " ${BENCH_TARGETS:-c go} " in *" $t "*) ;; *) continue ;; esac
      k=$t; sh=()
      if [ "$m" = 1 ]; then k=$t-shared; sh=(shared=true); fi
      s=$dir/cl-$k.sock
      if [ $t = c ]; then
        nbdkit -f "${threads[@]}" -U "$s" nbd socket="$dir/server.sock" "${sh[@]}" & pids+=($!)
      else
        nbdkit -f "${threads[@]}" -U "$s" "$plugin" socket="$dir/server.sock" "${sh[@]}" & pids+=($!)
      fi
      rsspid[$k]=$!; uri[$k]="nbd+unix:///?socket=$s"
      wait_ready "${uri[$k]}"
      ctargets="$ctargets $k"
    done
  done
  mkdir -p "$dir/res/clients"
  maxn=0
  for n in $clients; do if [ "$n" -gt "$maxn" ]; then maxn=$n; fi; done
  echo "$maxn" > "$dir/res/clients/maxn"
  for r in $(seq "$rounds"); do
    for n in $clients; do
      for t in $(rotate "$r" $ctargets); do
        echo "bench: clients round $r/$rounds n=$n $t" >&2
        out=$dir/res/clients/$n,$t,$r.json
        run_fio_clients "$out" "${uri[$t]}" "$n" & fpid=$!
        tpid=
        if [ "$n" = "$maxn" ]; then
          max_threads "${rsspid[$t]}" $fpid "$dir/res/clients/threads_$t.$r" & tpid=$!
        fi
        wait $fpid
        if [ -n "$tpid" ]; then wait "$tpid"; fi
      done
    done
  done
  for t in $ctargets; do
    awk '/^VmHWM/ {print $2}' "/proc/${rsspid[$t]}/status" > "$dir/res/clients/rss_$t"
  done
  stop_servers
fi
echo "bench: took $(( $(date +%s) - started )) s" >&2

python3 - "$dir/res" "$transports" "$top/tests" <<'EOF'
import json, os, statistics, sys
sys.path.insert(0, sys.argv[3])
from bench_table import print_table
res = sys.argv[1]
transports = [t for t in sys.argv[2].split() if t != "none"]
wls = ["randread-4k-qd1", "randread-4k-qd32", "randwrite-4k-qd32",
       "read-256k-qd8", "write-256k-qd8", "write-1M-qd4"]
targets = ["direct", "c", "go", "b", "qemu"]
runs = {}
for f in os.listdir(res):
    if not f.endswith(".json"):
        continue
    tr, wl, t, r = f[:-5].split(",")
    with open(os.path.join(res, f)) as fh:
        j = json.load(fh)["jobs"][0]
    side = j["read"] if j["read"]["io_bytes"] else j["write"]
    runs.setdefault((tr, wl, t), {})[int(r)] = (side["iops"], side["bw_bytes"] / 2**20)

def med(tr, wl, t):
    v = runs.get((tr, wl, t))
    if not v:
        return None
    return (statistics.median(x[0] for x in v.values()),
            statistics.median(x[1] for x in v.values()))

# A ratio is the median of the rounds' ratios: the two runs of a round
# were measured close together, whereas the machine's speed drifts
# from round to round.
def ratio(tr, wl, a, b):
    va, vb = runs.get((tr, wl, a)), runs.get((tr, wl, b))
    if not va or not vb:
        return "-"
    rs = [va[r][0] / vb[r][0] for r in va if r in vb and vb[r][0]]
    return "%.2f" % statistics.median(rs) if rs else "-"

have_b = any(k[2] == "b" for k in runs)
hdr = ("scenario", "direct", "C nbd", "ours", "qemu-nbd", "ours/C", "ours/direct")
if have_b:
    hdr += ("B", "ours/B")
rows = []
for tr in transports:
    for wl in wls:
        m = {t: med(tr, wl, t) for t in targets}
        if not any(m.values()):
            continue
        cell = lambda t: "-" if m[t] is None else "%.0f/%.0f" % m[t]
        row = ("%s %s" % (tr, wl), cell("direct"), cell("c"), cell("go"),
               cell("qemu"), ratio(tr, wl, "go", "c"), ratio(tr, wl, "go", "direct"))
        if have_b:
            row += (cell("b"), ratio(tr, wl, "go", "b"))
        rows.append(row)
for tr in transports:
    def rss(t):
        p = os.path.join(res, "rss_%s_%s" % (tr, t))
        return int(open(p).read()) / 1024 if os.path.exists(p) else None
    r = {t: rss(t) for t in ("c", "go", "b", "qemu")}
    f = lambda x: "-" if x is None else "%.1f" % x
    row = ("%s peak RSS MiB" % tr, "-", f(r["c"]), f(r["go"]), f(r["qemu"]),
           "%+.1f" % (r["go"] - r["c"]) if r["go"] and r["c"] else "-", "-")
    if have_b:
        row += (f(r["b"]), "%+.1f" % (r["go"] - r["b"]) if r["go"] and r["b"] else "-")
    rows.append(row)
def startup(t):
    p = os.path.join(res, "startup_" + t)
    return statistics.median(int(x) for x in open(p)) / 1000 if os.path.exists(p) else None
s = {t: startup(t) for t in ("c", "go", "qemu")}
f = lambda x: "-" if x is None else "%.0f" % x
rows.append(("startup ms (unix)", "-", f(s["c"]), f(s["go"]), f(s["qemu"]),
             "%+.0f" % (s["go"] - s["c"]) if s["go"] and s["c"] else "-", "-")
            + (("-", "-") if have_b else ()))
print("IOPS/MiB/s, median of rounds; ratios: of IOPS, median of the rounds' (RSS, startup: ours-C)")
print_table(hdr, rows)
EOF

[ -z "$clients" ] || python3 - "$dir/res/clients" "$top/tests" <<'EOF'
import json, os, statistics, sys
sys.path.insert(0, sys.argv[2])
from bench_table import print_table
res = sys.argv[1]
runs = {}
for f in os.listdir(res):
    if not f.endswith(".json"):
        continue
    n, t, r = f[:-5].split(",")
    with open(os.path.join(res, f)) as fh:
        text = fh.read()
    # fio's nbd engine says "fio: connected to NBD server" per job first.
    rd = json.loads(text[text.index("{"):])["jobs"][0]["read"]
    runs.setdefault((int(n), t), []).append(
        (rd["iops"], rd["clat_ns"]["percentile"]["99.000000"] / 1000))
ns = sorted(set(n for n, t in runs))

def med(n, t, i):
    v = runs.get((n, t))
    return statistics.median(x[i] for x in v) if v else None

def ratio(a, b):
    return "%.2f" % (a / b) if a and b else "-"

f0 = lambda x: "-" if x is None else "%.0f" % x
f1 = lambda x: "-" if x is None else "%.1f" % x
hdr = ("4k randread, depth 4 each", "C IOPS", "ours IOPS", "ours/C",
       "C p99 us", "ours p99 us", "p99 ours/C")
modes = (("", "per-client"), ("-shared", "shared"))
rows = []
for sfx, label in modes:
    for n in ns:
        c, g = "c" + sfx, "go" + sfx
        if (n, c) not in runs and (n, g) not in runs:
            continue
        ci, gi, cp, gp = med(n, c, 0), med(n, g, 0), med(n, c, 1), med(n, g, 1)
        rows.append(("%s %d client%s" % (label, n, "" if n == 1 else "s"),
                     f0(ci), f0(gi), ratio(gi, ci), f0(cp), f0(gp), ratio(gp, cp)))
maxn = int(open(os.path.join(res, "maxn")).read())
def rss(t):
    p = os.path.join(res, "rss_" + t)
    return int(open(p).read()) / 1024 if os.path.exists(p) else None
def thr(t):
    v = [int(open(os.path.join(res, x)).read()) for x in os.listdir(res)
         if x.startswith("threads_%s." % t)]
    return statistics.median(v) if v else None
for sfx, label in modes:
    c, g = "c" + sfx, "go" + sfx
    rc, rg, tc, tg = rss(c), rss(g), thr(c), thr(g)
    if rc is None and rg is None:
        continue
    rows.append(("%s peak RSS MiB" % label, f1(rc), f1(rg),
                 "%+.1f" % (rg - rc) if rc and rg else "-", "", "", ""))
    rows.append(("%s threads at %d" % (label, maxn), f0(tc), f0(tg),
                 "%+.0f" % (tg - tc) if tc and tg else "-", "", "", ""))
print()
print("Many clients (Unix socket): IOPS and 99th percentile completion latency,")
print("median of rounds; RSS: VmHWM at the end; threads: most while %d ran" % maxn)
print_table(hdr, rows)
EOF
