"""Measured speedup of cached sampling against the MAC-predicted speedup of the same plan, in one process.

    python benchmarks/bench_speedup.py --model dit-mnist --router demo_out/router.safetensors
    python benchmarks/bench_speedup.py --model DiT-XL/2 --random-init --router ddim20.safetensors --threshold 0.1 \
        --batch 1 --cfg 1 --repeats 3

Uncached and cached runs are interleaved (a, b, a, b, ...) after one warm-up each; medians are compared. The plan's
predicted speedup is full MACs / plan MACs, both per image for the whole run, in the analytic convention (Linear +
attention matmuls) and in the paper's (Linear only). Prints one JSON object (also written with --json).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from l2c.cache.layout import sublayers  # noqa: E402
from l2c.cache.macs import profile_macs  # noqa: E402
from l2c.cache.plan import CachePlan, cache_steps_for  # noqa: E402
from l2c.jobs.generate import SampleConfig, generate  # noqa: E402
from l2c.jobs.loading import load_for_sampling  # noqa: E402
from l2c.jobs.timing import device_name, time_runs  # noqa: E402
from l2c.router.budget import router_plan  # noqa: E402
from l2c.router.files import load_router  # noqa: E402
from l2c.router.report import plan_macs  # noqa: E402
from l2c.utils.cpu_memory import keep_freed_memory  # noqa: E402


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="dit-mnist", help="bundled model or preset (with --ckpt / --random-init)")
    p.add_argument("--ckpt", default=None, help="checkpoint for a preset")
    p.add_argument("--random-init", action="store_true", help="random weights (latency does not depend on them)")
    p.add_argument("--schedule", default=None, help="beta schedule override")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--sampler", default="ddim", help="sampler")
    p.add_argument("--steps", type=int, default=20, help="steps / NFE")
    p.add_argument("--cfg", type=float, default=1.5, help="guidance weight (1 = one model call per step)")
    p.add_argument(
        "--router",
        default=None,
        help="router file; without it a plan caching --remove of the cache steps' sub-layers at random is used",
    )
    p.add_argument("--threshold", type=float, default=None, help="θ (default: the router's own)")
    p.add_argument("--remove", type=float, default=0.44, help="share removed per cache step for the random plan")
    p.add_argument("--batch", type=int, default=64, help="images per sampling run")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per arm (median reported)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    p.add_argument("--json", default=None, help="also write the result here")
    return p.parse_args()


def make_plan(args, model) -> CachePlan:
    L = len(sublayers(model))
    if args.router:
        router, meta = load_router(args.router)
        return router_plan(router, meta, args.threshold)  # a schedule's forecasts included
    g = torch.Generator().manual_seed(0)
    compute = torch.ones(args.steps, L, dtype=torch.bool)
    for s in cache_steps_for("shifted" if args.sampler == "dpm-solver-2" else "alternate", args.steps):
        compute[s] = torch.rand(L, generator=g) >= args.remove
    return CachePlan(compute)


def main() -> None:
    args = parse()
    keep_freed_memory()  # as the `l2c` command does on a CPU
    if args.threads:
        torch.set_num_threads(args.threads)
    model, spec, meta = load_for_sampling(args.model, args.ckpt, args.random_init, args.schedule, args.device)
    plan = make_plan(args, model)
    config = SampleConfig(sampler=args.sampler, steps=args.steps, guidance_scale=args.cfg, batch_size=args.batch)
    seeds, classes = list(range(args.batch)), [i % model.null_class for i in range(args.batch)]
    full = CachePlan.full(plan.num_steps, plan.num_sublayers)
    timing = time_runs(
        {
            "uncached": lambda: generate(model, spec, seeds, classes, config, progress=False),
            "cached": lambda: generate(model, spec, seeds, classes, config, plan=plan, progress=False),
        },
        repeats=args.repeats,
        device=args.device,
    )
    size = {"input_size": model.input_size} if hasattr(model, "final_layer") else {}  # DiT at 256 or 512 px
    macs = profile_macs(meta["preset"], **size)
    pm, fm = plan_macs(plan, macs), plan_macs(full, macs)
    measured = timing["uncached"]["median_s"] / timing["cached"]["median_s"]
    predicted = fm["macs_per_image_plan_with_attention"] / pm["macs_per_image_plan_with_attention"]
    result = {
        "model": meta["preset"],
        "batch": args.batch,
        "cfg": args.cfg,
        "sampler": args.sampler,
        "steps": args.steps,
        "executed_sublayers": int(plan.compute.sum()),
        "total_sublayers": int(plan.compute.numel()),
        "uncached_median_s": timing["uncached"]["median_s"],
        "cached_median_s": timing["cached"]["median_s"],
        "uncached_runs_s": timing["uncached"]["runs"],
        "cached_runs_s": timing["cached"]["runs"],
        "measured_speedup": measured,
        "predicted_speedup_analytic": predicted,
        "predicted_speedup_paper": pm["mac_speedup_linear"],
        "measured_over_predicted": measured / predicted,
        "device": device_name(args.device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "dtype": str(next(model.parameters()).dtype),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
