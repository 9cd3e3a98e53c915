#!/usr/bin/env bash
# A throughput-latency curve: marc-loadtest's open-loop `rate` mode at each rate given, against a running
# server, one JSON report per rate, then a markdown table (rate asked, achieved, corrected p50/p99, uncorrected
# p99, late sends, errors). Used for BENCHMARKS.md.
#
#   scripts/loadtest_curve.sh TARGET OUT_DIR "RATE ..." [marc-loadtest rate flags ...]
#   scripts/loadtest_curve.sh 127.0.0.1:50051 /tmp/curve "100 200 400" --duration 10s --tokens 32
set -euo pipefail
target=$1 out=$2 rates=$3
shift 3
bin="$(dirname "$0")/../target/release/marc-loadtest"
mkdir -p "$out"
for rate in $rates; do
    # A broken run is a data point too (for example errors at saturation): keep going.
    "$bin" rate --target "$target" --rps "$rate" --quiet --json "$out/rate-$rate.json" "$@" > "$out/rate-$rate.txt" || true
done
echo "| rate asked (calls/s) | achieved (ok/s) | corrected p50 | corrected p99 | uncorrected p99 | late sends | errors |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
for rate in $rates; do
    jq -r --arg rate "$rate" '"| \($rate) | \(.throughput.ok_per_s * 10 | round / 10) | \(.latency_ms.corrected.p50) ms | \(.latency_ms.corrected.p99) ms | \(.latency_ms.uncorrected.p99) ms | \(.sends.late) of \(.calls.sent) | \(.error_percent * 100 | round / 100)% |"' "$out/rate-$rate.json"
done
