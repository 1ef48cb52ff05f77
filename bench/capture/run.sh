#!/usr/bin/env bash
# Throughput and latency through the VIP, bare vs with ftnet's capture
# (NFQUEUE on host a, every segment forwarded to a receiver on host b).
#
#   bench/capture/run.sh [RUNS] [SECS] [RR_COUNT]      (as root; defaults 5 5 20000)
#   MODES="bare batch single nogso" bench/capture/run.sh   (modes to run; default all four)
#
# Builds the `capture` test binary in release mode and runs its roles
# (tests/capture/roles.rs) inside a fresh netns topology (netns-scripts/topo),
# which is removed on exit. Modes: bare (no rules, no queue), batch (capture,
# batch verdicts, GSO), single (capture, one verdict per packet, GSO),
# nogso (capture, batch verdicts, NFQA_CFG_F_GSO off).
# Pinning (taskset): client and receiver on vCPU 0, server and capture on
# vCPU 1 (rr1: the client on vCPU 1 too, so the request/response path stays
# on one vCPU); softirq work runs wherever the kernel puts it.
# Every run is bounded (SECS seconds of bulk, RR_COUNT round trips).
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-5}
SECS=${2:-5}
RR=${3:-20000}
MODES=${MODES:-bare batch single nogso}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target-capture}

bin=$(cargo test --release --test capture --no-run 2>&1 | sed -n 's/.*Executable tests\/capture.rs (\(.*\))/\1/p')
[ -x "$bin" ] || { echo "cannot find the capture test binary" >&2; exit 1; }

name=capb$$
tmp=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    netns-scripts/topo down "$name" >/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
netns-scripts/topo up "$name" >/dev/null
netns-scripts/topo exec "$name-a" -- ip addr add 10.77.0.100/24 dev svc0

VIP=10.77.0.100
PORT=7000
LINK=10.78.0.2:7700

# role HOST CPU ROLE ARGS: runs the test binary's ROLE pinned to CPU inside HOST.
role() {
    local host=$1 cpu=$2 r=$3 args=$4
    FTNET_CAPTURE_ROLE=$r FTNET_CAPTURE_ARGS=$args \
        netns-scripts/topo exec "$name-$host" -- taskset -c "$cpu" "$bin" --exact role_entry --nocapture --test-threads 1
}

# wait_for FILE WORD: waits (≤ 20 s) for WORD in FILE.
wait_for() {
    for _ in $(seq 200); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
    echo "timeout waiting for $2 in $1:" >&2; cat "$1" >&2; exit 1
}

role a 1 server "listen=$VIP:$PORT;mode=bench" >"$tmp/server.out" 2>&1 &
pids+=($!)
wait_for "$tmp/server.out" READY

mkfifo "$tmp/rx.in"
role b 0 receiver "listen=$LINK;services=$VIP:$PORT;mode=until-eof" <"$tmp/rx.in" >"$tmp/rx.out" 2>&1 &
pids+=($!)
exec 8>"$tmp/rx.in"
wait_for "$tmp/rx.out" READY

cap_pid=
start_capture() {
    local extra=$1
    rm -f "$tmp/cap.in" "$tmp/cap.out"
    mkfifo "$tmp/cap.in"
    role a 1 capture "queue=3;vip=$VIP;ports=$PORT;forward=$LINK;$extra" <"$tmp/cap.in" >"$tmp/cap.out" 2>&1 &
    cap_pid=$!
    exec 7>"$tmp/cap.in"
    wait_for "$tmp/cap.out" READY
}
stop_capture() {
    exec 7>&-
    wait "$cap_pid"
    grep -o 'STATS.*' "$tmp/cap.out" >>"$tmp/stats.txt"
}

# measure MODE WHAT ARGS KEY [CPU]: one client run (pinned to CPU, default
# 0) under MODE; appends "MODE WHAT VALUE".
measure() {
    local mode=$1 what=$2 args=$3 key=$4 cpu=${5:-0}
    case $mode in
        bare) ;;
        batch) start_capture "" ;;
        single) start_capture "verdicts=single" ;;
        nogso) start_capture "gso=off" ;;
    esac
    local out
    out=$(role client "$cpu" client "connect=$VIP:$PORT;$args" | grep -o 'RESULT.*')
    [ "$mode" = bare ] || stop_capture
    local v
    v=$(echo "$out" | sed -n "s/.*$key=\([0-9.]*\).*/\1/p")
    echo "$mode $what $v" | tee -a "$tmp/raw.txt"
}

for i in $(seq "$RUNS"); do
    for mode in $MODES; do
        measure "$mode" up "mode=bulk;dir=up;secs=$SECS" gbit
        measure "$mode" down "mode=bulk;dir=down;secs=$SECS" gbit
        measure "$mode" rr_p50_us "mode=rr;count=$RR" p50_us
        measure "$mode" rr1_p50_us "mode=rr;count=$RR" p50_us 1
    done
done

exec 8>&-
echo
echo "## raw (mode, measure, value)"
cat "$tmp/raw.txt"
echo
echo "## capture counters per captured run"
cat "$tmp/stats.txt"
echo
echo "## medians of $RUNS runs (bulk: Gbit/s over ${SECS}s; rr: p50 of $RR round trips, µs)"
python3 - "$tmp/raw.txt" <<'PY'
import sys, statistics
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
vals = {}
for mode, what, v in rows:
    vals.setdefault((mode, what), []).append(float(v))
modes = list(dict.fromkeys(r[0] for r in rows))
whats = list(dict.fromkeys(r[1] for r in rows))
print("| measure | " + " | ".join(modes) + " | " + " | ".join(f"{m}/bare" for m in modes if m != "bare") + " |")
print("|---" * (1 + len(modes) + len([m for m in modes if m != "bare"])) + "|")
for w in whats:
    med = {m: statistics.median(vals[(m, w)]) for m in modes if (m, w) in vals}
    ratios = [f"{med[m] / med['bare']:.2f}" if "bare" in med and m in med and med["bare"] else "-" for m in modes if m != "bare"]
    print(f"| {w} | " + " | ".join(f"{med.get(m, float('nan')):.3g}" for m in modes) + " | " + " | ".join(ratios) + " |")
PY
