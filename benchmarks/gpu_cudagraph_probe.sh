#!/usr/bin/env bash
# Why CUDA-graph sampling (--compile-mode reduce-overhead) re-records with a cache plan: one small DiT-XL/2 run (8x8
# latents, batch 1) with torch's cudagraphs log on, then the re-recording reasons counted. Usage:
#   benchmarks/gpu_cudagraph_probe.sh ROUTERS_DIR OUT_DIR
set -u
routers=${1:?usage: benchmarks/gpu_cudagraph_probe.sh ROUTERS_DIR OUT_DIR}
out=${2:?usage: benchmarks/gpu_cudagraph_probe.sh ROUTERS_DIR OUT_DIR}
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TORCH_LOGS=cudagraphs
timeout "${LIMIT:-140}" "${PYTHON:-python3}" benchmarks/bench_speed.py --routers "$routers" --device cuda \
  --models DiT-XL/2 --steps 20 --batch 1 --image-size 8 --arms compiled/bf16 --compile-mode reduce-overhead \
  --plans taylorseer-o2:3 --warmup 4 --repeats 2 > "$out/probe.log" 2>&1
echo "exit $?"
grep -E "warm-up|^\| DiT" "$out/probe.log"
echo "re-recordings: $(grep -c 'Re-recording' "$out/probe.log")"
grep -o 'Re-recording function=[^,]*, mode=[^,]*, reason=.\{0,300\}' "$out/probe.log" | sed 's/function=[^,]*/function=F/' |
  sort | uniq -c | sort -rn | head -8
grep -i "skipping cudagraph" "$out/probe.log" | sort | uniq -c | head -5
