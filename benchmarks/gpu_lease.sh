#!/usr/bin/env bash
# Every GPU measurement of docs/benchmarks.md in one call of a short device lease (about 10 minutes on an H100/H200):
#   benchmarks/gpu_lease.sh ROUTERS_DIR OUT_DIR
# STAGES="name ..." runs only the stages named. ROUTERS_DIR holds the paper's four released routers; OUT_DIR gets results.tgz (each stage's log and JSON), rewritten
# after every stage so that a lease cut short still returns what finished. Stages run cheapest and surest first, each
# under its own time limit; a failing stage does not stop the next. Random weights throughout: latency does not depend
# on them. tf32 is the DiT sampling scripts' fp32 (TF32 matmuls); compiled arms are timed beside eager bf16 in the
# same process, so their ratios need no other run.
set -u
routers=${1:?usage: benchmarks/gpu_lease.sh ROUTERS_DIR OUT_DIR}
out=${2:?usage: benchmarks/gpu_lease.sh ROUTERS_DIR OUT_DIR}
cd "$(dirname "$0")/.."
source benchmarks/gpu_stages.sh

speed=("$python" benchmarks/bench_speed.py --routers "$routers" --device cuda)

# 1. DiT-XL/2, DDIM-20 and -50, batch 8 with guidance: the released router, FORA and TaylorSeer, eager tf32 and bf16
stage dit-eager 130 "${speed[@]}" --models DiT-XL/2 --steps 20,50 --arms eager/tf32,eager/bf16 \
  --plans fora:3,taylorseer-o2:3,taylorseer-o2:5 --repeats 5 --json "$res/dit-eager.json"
# 2. router training at XL size: seconds per iteration at the official batch, and the projected GPU-hours
stage router-training 80 "$python" benchmarks/bench_router_training.py --device cuda --dtype bf16 --batch-size 64 \
  --iterations 5 --json "$res/router-training.json"
# 3. U-ViT-H/2, DPM-Solver-2 NFE 20 and 50: the released router and TaylorSeer, eager
stage uvit-eager 90 "${speed[@]}" --models U-ViT-H/2 --steps 20,50 --arms eager/tf32,eager/bf16 \
  --plans taylorseer-o2:3 --repeats 3 --json "$res/uvit-eager.json"
# 4. compiled blocks (torch.compile default mode) against eager, bf16, DiT-XL/2 DDIM-50
stage dit-compiled 170 "${speed[@]}" --models DiT-XL/2 --steps 50 --arms eager/bf16,compiled/bf16 \
  --plans taylorseer-o2:3 --repeats 5 --json "$res/dit-compiled.json"
# 5. CUDA graphs (reduce-overhead) on the same arms
stage dit-cudagraphs 110 "${speed[@]}" --models DiT-XL/2 --steps 50 --arms eager/bf16,compiled/bf16 --warmup 4 \
  --compile-mode reduce-overhead --plans taylorseer-o2:3 --repeats 5 --json "$res/dit-cudagraphs.json"
# 6. batch 64 with guidance (128 rows per model call), where the GPU, not the host's kernel launches, sets the pace
stage dit-batch64-eager 100 "${speed[@]}" --models DiT-XL/2 --steps 50 --batch 64 --arms eager/bf16 \
  --plans fora:3,taylorseer-o2:3,taylorseer-o2:5 --repeats 3 --json "$res/dit-batch64-eager.json"
stage dit-batch64-compiled 120 "${speed[@]}" --models DiT-XL/2 --steps 50 --batch 64 --arms compiled/bf16 \
  --plans taylorseer-o2:3,taylorseer-o2:5 --repeats 3 --json "$res/dit-batch64-compiled.json"
echo "== done $(date +%T)"
