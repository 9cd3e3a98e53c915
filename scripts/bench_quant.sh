#!/usr/bin/env bash
# The bf16 / NVFP4 w4a16 / NVFP4 w4a4 comparison of BENCHMARKS.md on the 150M benchmark configuration:
# writes the random bf16 checkpoint, a calibration corpus of random token ids, the calibrated NVFP4
# checkpoint, then runs `marc bench` on each, interleaved, and the kernel table of every weight format.
#
#   bash scripts/bench_quant.sh [WORK_DIR (default /tmp/marc-bench-quant)] [ROUNDS (default 2)]
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/marc-bench-quant}
rounds=${2:-2}
mkdir -p "$work"
cargo build --release -p marc-server --bin marc -p marc-kernels --examples >&2
marc=target/release/marc
echo "== $(date -u)  load $(cut -d' ' -f1-3 /proc/loadavg)  $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
echo "== flags: $(grep -o -w 'amx_tile\|avx512_vnni\|avx512_bf16' /proc/cpuinfo | sort -u | tr '\n' ' ')"
if [ ! -f "$work/bf16/config.json" ]; then
  "$marc" bench --threads 2 --shapes 1x32 --iterations 1 --save-model "$work/bf16" >/dev/null
fi
if [ ! -f "$work/corpus.jsonl" ]; then
  # 64 sequences of 128 token ids below the benchmark vocabulary (32000), fixed seed.
  awk 'BEGIN { srand(7); for (i = 0; i < 64; i++) { printf "{\"id\": %d, \"token_ids\": [", i;
       for (t = 0; t < 128; t++) printf "%s%d", (t ? ", " : ""), int(rand() * 32000); print "]}" } }' \
      > "$work/corpus.jsonl"
fi
if [ ! -f "$work/nvfp4/config.json" ]; then
  "$marc" quantize --model "$work/bf16" --output "$work/nvfp4" --calibrate "$work/corpus.jsonl" >&2
fi
echo "== read bandwidth"; RAYON_NUM_THREADS=2 target/release/examples/read_bandwidth 1 | tail -1
echo "== kernels, w4a16"; target/release/examples/weight_formats 2 5
echo "== kernels, w4a4"; PRECISION=w4a4 target/release/examples/weight_formats 2 5
for r in $(seq "$rounds"); do
  for run in "bf16:" "nvfp4:--quant w4a16" "nvfp4:--quant w4a4"; do
    dir=${run%%:*}; quant=${run#*:}
    echo "== round $r: $dir $quant"
    # shellcheck disable=SC2086 # $quant is one flag and its value, or nothing
    "$marc" bench --model "$work/$dir" --threads 2 --iterations 20 --shapes 1x32,16x128 $quant 2>/dev/null \
      | grep -E 'x 32|x 128'
    /usr/bin/time -f "peak RSS at 1 x 32: %M KiB" "$marc" bench --model "$work/$dir" --threads 2 --iterations 5 \
      --shapes 1x32 $quant 2>&1 >/dev/null | grep RSS
  done
done
