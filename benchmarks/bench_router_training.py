"""Seconds per router-training iteration at DiT-XL/2 size (random weights), and what a full run would cost on GPUs.

    python benchmarks/bench_router_training.py                       # DiT-XL/2, DDIM-20, batch 2, 3 timed iterations
    python benchmarks/bench_router_training.py --device cuda --batch-size 64 --dtype bf16 --json out.json

Each iteration is one step of Algorithm 1 through `l2c.training.train_router` itself: the sampler's step into a
cache evaluation (recording the cache), the full model's target, the router-blended student, its backward to the
router logits, AdamW. The time per iteration is read between consecutive data draws (train_router draws one batch per
iteration), median over the timed iterations after `--warmup` untimed ones.

Projection (printed, an estimate, not a measurement): the official DDIM-20 router is 20,000 iterations at batch 64
(docs/upstream.md). One iteration costs about 5 forward passes per image (teacher step, target, student, and the
student's backward ≈ 2 forwards: activation gradients only, the model is frozen), counted in the analytic MAC
convention (Linear + attention matmuls). GPU-hours = those FLOPs at `--gpu-tflops` sustained; the default 200 TFLOP/s
is a bf16 H100 at about 20 % of its dense peak, a rate to replace with a measured one (`--device cuda`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from l2c.cache.macs import profile_macs  # noqa: E402
from l2c.cache.plan import cache_steps_for  # noqa: E402
from l2c.jobs.timing import device_name  # noqa: E402
from l2c.models import MODELS, architecture_of, conventions, create_model  # noqa: E402
from l2c.router import Router  # noqa: E402
from l2c.sampling import make_sampler  # noqa: E402
from l2c.sampling.diffusion import default_spec  # noqa: E402
from l2c.training.train_router import RouterTrainConfig, train_router  # noqa: E402

FORWARDS_PER_IMAGE = 5  # teacher step, target, student, backward ≈ 2 forwards


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="DiT-XL/2", help="preset (random weights)")
    p.add_argument("--steps", type=int, default=20, help="sampling steps the router is for")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--iterations", type=int, default=3, help="timed iterations")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "tf32", "bf16", "fp16"])
    p.add_argument("--full-iterations", type=int, default=20_000, help="iterations of a full run (official DDIM-20)")
    p.add_argument("--full-batch", type=int, default=64, help="global batch of a full run (official)")
    p.add_argument("--gpu-tflops", type=float, default=200.0, help="sustained GPU TFLOP/s assumed for the projection")
    p.add_argument("--json", default=None, help="also write the numbers here")
    args = p.parse_args(argv)
    if args.model not in MODELS:
        p.error(f"unknown preset {args.model!r}")
    if min(args.batch_size, args.iterations, args.steps - 1) < 1 or args.warmup < 0 or args.gpu_tflops <= 0:
        p.error("--batch-size, --iterations and --gpu-tflops must be positive, --steps >= 2, --warmup >= 0")
    return args


def main(argv=None) -> dict:
    args = parse(argv)
    torch.manual_seed(0)
    model = create_model(args.model).to(args.device).eval().requires_grad_(False)
    spec = default_spec(architecture_of(model))
    sampler = make_sampler(conventions(model).sampler, args.steps, spec)
    router = Router(sampler.num_evaluations, 2 * len(model.blocks), cache_steps_for(sampler.cache_schedule, args.steps))
    shape = (model.in_channels, model.input_size, model.input_size)
    draws: list[float] = []

    def sample_batch(generator, n):
        draws.append(time.perf_counter())  # one draw per iteration: the gaps are the iteration times
        return torch.randn((n, *shape), generator=generator), torch.randint(
            model.num_classes, (n,), generator=generator
        )

    iterations = args.warmup + args.iterations + 1  # the last draw closes the last timed iteration
    config = RouterTrainConfig(
        iterations=iterations, batch_size=args.batch_size, precision=args.dtype, ckpt_every=10**9, lam=1e-6
    )
    train_router(model, router, sampler, sample_batch, config)
    gaps = [b - a for a, b in zip(draws, draws[1:])][args.warmup :]
    per_iteration = statistics.median(gaps)

    forward_macs = profile_macs(args.model).full("analytic")  # batch 1
    flops_per_image = 2 * FORWARDS_PER_IMAGE * forward_macs
    measured_tflops = flops_per_image * args.batch_size / per_iteration / 1e12
    full_flops = flops_per_image * args.full_batch * args.full_iterations
    result = {
        "model": args.model,
        "device": device_name(args.device),
        "threads": torch.get_num_threads(),
        "dtype": args.dtype,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "seconds_per_iteration": per_iteration,
        "iteration_seconds": gaps,
        "seconds_per_image": per_iteration / args.batch_size,
        "forward_gmacs_batch1": forward_macs / 1e9,
        "achieved_tflops": measured_tflops,
        "full_run": {"iterations": args.full_iterations, "batch": args.full_batch},
        "full_run_hours_here": per_iteration / args.batch_size * args.full_batch * args.full_iterations / 3600,
        "projected_gpu_hours": full_flops / (args.gpu_tflops * 1e12) / 3600,
        "assumed_gpu_tflops": args.gpu_tflops,
    }
    print(
        f"{args.model} router training, {args.steps} steps, batch {args.batch_size}, {args.dtype}, "
        f"{result['device']}:\n"
        f"  {per_iteration:.2f} s per iteration (median of {len(gaps)}: "
        f"{', '.join(f'{g:.2f}' for g in gaps)}), {per_iteration / args.batch_size:.2f} s per image\n"
        f"  one forward: {forward_macs / 1e9:.1f} GMACs per image; achieved about {measured_tflops:.3f} TFLOP/s\n"
        f"  a full run ({args.full_iterations} iterations x batch {args.full_batch}) here: "
        f"{result['full_run_hours_here']:.0f} hours; projected on a GPU at {args.gpu_tflops:.0f} TFLOP/s sustained: "
        f"{result['projected_gpu_hours']:.1f} GPU-hours"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
