"""What a schedule search costs on a FLUX.1-dev-size transformer (19 double + 38 single blocks, width 3072), and the
memory a schedule stores at 1024².

No FLUX weights are needed: MACs and stored-output sizes are measured on a shape-only (meta) copy of the full
model; the time of one double and one single block is measured on real random weights at a small resolution on
this machine, and the time of a candidate run is projected from them (blocks x evaluations x images). The projected
GPU-hours of a full search at 1024² take the measured MACs at an assumed sustained throughput (--gpu-tflops),
stated in the output: no GPU is measured here.

    python benchmarks/flux_dev_search_cost.py --size 256 --json flux-dev-cost.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from l2c.cache.layout import describe, group_by_block
from l2c.cache.macs import measure_macs, plan_peak_bytes
from l2c.cache.plan import COMPUTE, FORECAST2, CachePlan

FLUX_DEV = dict(guidance_embeds=True)  # diffusers' defaults are FLUX.1-dev's: 19 + 38 blocks, 24 heads x 128
TEXT_TOKENS = 512  # FLUX.1-dev's T5 sequence length


def inputs(size: int, device="cpu", dtype=torch.float32) -> dict:
    tokens = (size // 16) ** 2  # VAE /8, packed 2x2
    kw = dict(device=device, dtype=dtype)
    return dict(
        hidden_states=torch.randn(1, tokens, 64, **kw) if device != "meta" else torch.empty(1, tokens, 64, **kw),
        encoder_hidden_states=torch.zeros(1, TEXT_TOKENS, 4096, **kw),
        pooled_projections=torch.zeros(1, 768, **kw),
        timestep=torch.ones(1, **kw),
        guidance=torch.full((1,), 3.5, **kw),
        img_ids=torch.zeros(tokens, 3, **kw),
        txt_ids=torch.zeros(TEXT_TOKENS, 3, **kw),
    )


def interval_plan(evaluations: int, sublayers: int, interval: int) -> CachePlan:
    """TaylorSeer's interval schedule with order-2 forecasts, the start of a search at about 1/interval MACs."""
    actions = torch.full((evaluations, sublayers), FORECAST2, dtype=torch.int8)
    actions[::interval] = COMPUTE
    return CachePlan.from_actions(actions)


def block_seconds(size: int, repeats: int) -> dict:
    """Median seconds of one double and one single block (and the rest) at `size`, fp32, on random weights."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    model = FluxTransformer2DModel(num_layers=1, num_single_layers=1, **FLUX_DEV).eval()
    times = {"double": [], "single": [], "total": []}
    marks = {}

    def start(name):
        return lambda m, a, k=None: marks.__setitem__(name, time.perf_counter())

    def stop(name):
        return lambda m, a, o, k=None: times[name].append(time.perf_counter() - marks[name])

    for name, block in (("double", model.transformer_blocks[0]), ("single", model.single_transformer_blocks[0])):
        block.register_forward_pre_hook(start(name))
        block.register_forward_hook(stop(name))
    x = inputs(size)
    with torch.no_grad():
        model(**x)  # warm-up
        for name in times:
            times[name].clear()
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(**x)
            times["total"].append(time.perf_counter() - t0)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    med["rest"] = max(0.0, med["total"] - med["double"] - med["single"])  # medians of separate runs: may cross
    return med


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=256, help="image side the blocks are timed at (CPU)")
    p.add_argument("--steps", type=int, default=28, help="FLUX.1-dev's default step count")
    p.add_argument("--interval", type=int, default=4, help="the search's start: compute every N-th evaluation")
    p.add_argument(
        "--images", type=int, default=64, help="held-out images a candidate is measured on (+ as many checks)"
    )
    p.add_argument("--rounds", type=int, default=2, help="search rounds")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--gpu-tflops", type=float, default=400.0, help="assumed sustained bf16 TFLOP/s of one GPU")
    p.add_argument("--json", default=None)
    args = p.parse_args()

    from diffusers import FluxTransformer2DModel

    from l2c.training.schedule_search import _moves

    with torch.device("meta"):
        full = FluxTransformer2DModel(**FLUX_DEV)
    subs = describe(full)
    record = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"}
    for size in (args.size, 1024):
        macs = measure_macs(full, lambda size=size: full(**inputs(size, "meta")))
        record[f"macs_per_evaluation_{size}"] = {
            "paper_T": macs.full("paper") / 1e12,
            "analytic_T": macs.full("analytic") / 1e12,
        }
        plan = interval_plan(args.steps, len(subs), args.interval)
        record[f"stored_GB_bf16_{size}"] = {
            "all_sublayers_once": sum(macs.sublayer_outputs) * 2 / 1e9,
            f"interval_{args.interval}_order2_peak": plan_peak_bytes(plan, macs.sublayer_outputs, 1, 2) / 1e9,
        }
        if size == 1024:
            fraction = macs.fraction(plan)
    blocks_of = group_by_block([s.block for s in subs])
    moves = len(list(_moves(interval_plan(args.steps, len(subs), args.interval).actions, blocks_of)))
    blocks = block_seconds(args.size, args.repeats)
    per_evaluation = 19 * blocks["double"] + 38 * blocks["single"] + blocks["rest"]  # one image, one call
    # A candidate runs the held-out and the check images; a resumed candidate runs about half of the evaluations
    # (schedule_search.TrajectoryError resumes from the kept plan's run) at the plan's MAC fraction.
    candidate_s = per_evaluation * args.steps * 2 * args.images * fraction * 0.5
    search_runs = args.rounds * moves
    gpu_s_per_eval_1024 = 2 * record["macs_per_evaluation_1024"]["analytic_T"] / args.gpu_tflops
    record.update(
        blocks_s=blocks,
        size=args.size,
        per_evaluation_s_cpu=per_evaluation,
        start_plan_mac_fraction=fraction,
        candidates_per_round=moves,
        candidate_run_s_cpu=candidate_s,
        search_hours_cpu=candidate_s * search_runs / 3600,
        search_gpu_hours_1024=gpu_s_per_eval_1024 * args.steps * 2 * args.images * fraction * 0.5 * search_runs / 3600,
        gpu_tflops_assumed=args.gpu_tflops,
    )
    print(json.dumps(record, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=1)


if __name__ == "__main__":
    main()
