#!/usr/bin/env bash
# Learned schedules against TaylorSeer on a GPU: measured against MAC-predicted speedup on the bundled models at
# batches 64 to 1,000, eager and compiled (benchmarks/bench_plans.py), in one call of a short device lease:
#   benchmarks/gpu_plans.sh OUT_DIR
# Needs the learned schedule routers in routers/ (benchmarks/curves.sh NAME budgets). STAGES="name ..." runs only the
# stages named. OUT_DIR gets results.tgz (each stage's log and JSON), rewritten after every stage so that a lease cut
# short still returns what finished; each stage runs under its own time limit, and a failing stage does not stop the next.
set -u
out=${1:?usage: benchmarks/gpu_plans.sh OUT_DIR}
cd "$(dirname "$0")/.."
source benchmarks/gpu_stages.sh

dit20=(routers/dit20-budget-0.667.safetensors routers/dit20-budget-0.5-trimmed.safetensors
       routers/dit20-budget-0.4.safetensors routers/dit20-budget-0.333.safetensors routers/dit20-budget-0.25.safetensors)
uvit20=(routers/uvit20-budget-0.667.safetensors routers/uvit20-budget-0.5.safetensors routers/uvit20-budget-0.4.safetensors
        routers/uvit20-budget-0.333.safetensors routers/uvit20-budget-0.25-trimmed.safetensors)
dit50=(routers/dit50-schedule-0.215-newton.safetensors)
common=(--families taylorseer-o2 --repeats 5)
plans() {  # name, time limit (s), bench_plans arguments...
  local name=$1 limit=$2
  shift 2
  stage "$name" "$limit" "$python" benchmarks/bench_plans.py --device cuda --json "$res/$name.json" "$@"
}

# 1. dit-mnist DDIM-20: the five learned budgets beside TaylorSeer order 2 at N 3 and 5, eager tf32
plans dit20-eager 100 --model dit-mnist --steps 20 --intervals 3 5 "${common[@]}" --schedule-routers "${dit20[@]}" \
  --arms eager/tf32 --batch-sizes 64 256 1000
# 2. dit-mnist DDIM-50: the learned schedule at 4.69x MACs beside TaylorSeer N 3 and 5
plans dit50-eager 70 --model dit-mnist --steps 50 --intervals 3 5 "${common[@]}" --schedule-routers "${dit50[@]}" \
  --arms eager/tf32 --batch-sizes 64 1000
# 3. uvit-mnist DPM-Solver-2 NFE 20: the five learned budgets beside TaylorSeer N 3 and 4
plans uvit20-eager 90 --model uvit-mnist --steps 20 --intervals 3 4 "${common[@]}" --schedule-routers "${uvit20[@]}" \
  --arms eager/tf32 --batch-sizes 64 1000
# 4. compiled blocks (torch.compile default mode) at batch 1,000, where launches weigh least
plans dit20-compiled 150 --model dit-mnist --steps 20 --intervals 3 5 "${common[@]}" --schedule-routers "${dit20[@]}" \
  --arms compiled/tf32 --batch-sizes 1000
plans dit50-compiled 90 --model dit-mnist --steps 50 --intervals 5 "${common[@]}" --schedule-routers "${dit50[@]}" \
  --arms compiled/tf32 --batch-sizes 1000
# 5. CUDA graphs (reduce-overhead): launches gone, what is left of each plan's per-sub-layer bookkeeping; three warm-ups
#    let each plan's graphs record before timing
plans dit20-cudagraphs 200 --model dit-mnist --steps 20 --intervals 5 "${common[@]}" --warmup 3 --compile-mode reduce-overhead \
  --schedule-routers routers/dit20-budget-0.5-trimmed.safetensors routers/dit20-budget-0.25.safetensors \
  --arms compiled/tf32 --batch-sizes 1000
echo "== done $(date +%T)"
