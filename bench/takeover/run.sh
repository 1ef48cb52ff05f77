#!/usr/bin/env bash
# Takeover benchmark: takeover time for 1, 100, 1,000 and 10,000 connections
# split into socket building, VIP, gratuitous ARP and rule changes; the
# client's stall (round trip for N connections, per direction for one
# saturated connection); and the keepalived/VRRP baseline. Everything runs
# inside network namespaces built by netns-scripts/topo (root required).
#
#   bench/takeover/run.sh                      # all sizes, 3 runs each
#   FT_BENCH_CONNS=1,100 FT_BENCH_RUNS=5 bench/takeover/run.sh
#   FT_BENCH_RUNS=5 bench/takeover/run.sh nudge_experiment   # early-retransmit nudges
#   FT_FEED=tap bench/takeover/run.sh     # feed b from a test-only wire tap instead of ftnet's capture
#
# Prints BENCHRUN lines per run and BENCH lines with medians (copy into RESULTS.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ "$(id -u)" != 0 ]; then
    echo "bench/takeover/run.sh: run as root (network namespaces, TCP_REPAIR)" >&2
    exit 1
fi
command -v keepalived >/dev/null || {
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends keepalived >/dev/null
}
exec cargo test --release --test takeover_bench -- --ignored --nocapture --test-threads 1 "${1:-bench_takeover}" 2>&1 |
    grep -E "^(BENCH|STALL|NUDGE)|BENCHFAIL|panicked|test result"
