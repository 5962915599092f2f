"""Does the schedule search's error rank plans as the 8-bit images do? For TaylorSeer's plan and each schedule router
given, sample the same seeds with and without it and print the search's error unclipped and clipped to the image
range (l2c.training.schedule_search.TrajectoryError) beside the PSNR of the saved 8-bit images.

    python benchmarks/search_error_probe.py --model uvit-mnist --steps 20 --interval 4 \
        routers/uvit20-schedule-0.305-checked.safetensors routers/uvit20-schedule-0.305-clipped.safetensors

docs/learned-schedules.md ("What each part of the search adds", the clipped error) quotes its output for U-ViT NFE 20.
"""

from __future__ import annotations

import argparse

import torch

from l2c.cache.layout import sublayers
from l2c.cache.schedules import taylorseer
from l2c.jobs.generate import to_uint8
from l2c.jobs.loading import load_for_sampling
from l2c.metrics.scores import paired_metrics
from l2c.router.budget import router_plan
from l2c.router.files import load_router
from l2c.sampling.samplers import default_sampler, make_sampler
from l2c.training.schedule_search import TrajectoryError, per_image_mse


def errors(cached: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """(mean over images of log MSE, log of the mean MSE)."""
    per_image = per_image_mse(cached, reference)
    return float(per_image.clamp_min(1e-20).log().mean()), float(per_image.mean().log())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("routers", nargs="*", help="schedule router files to probe beside TaylorSeer's plan")
    p.add_argument("--model", default="uvit-mnist")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--interval", type=int, default=4, help="TaylorSeer's interval N (order 2, Newton's form)")
    p.add_argument("--images", type=int, default=1000, help="seeds 0 .. images-1, the sweeps' seeds")
    p.add_argument("--cfg", type=float, default=1.5)
    args = p.parse_args()

    model, spec, _ = load_for_sampling(args.model)
    sampler = make_sampler(default_sampler(model, spec), args.steps, spec)
    probe = TrajectoryError(model, sampler, args.cfg, args.images, seed=0)  # unclipped: the raw samples
    reference = probe.reference
    plans = {
        f"TaylorSeer N {args.interval}, Newton form": taylorseer(
            sampler.num_evaluations, len(sublayers(model)), args.interval, 2, form="newton"
        )
    }
    for path in args.routers:
        plans[path] = router_plan(*load_router(path))
    print("plan | unclipped: mean log-MSE / log mean MSE | clipped | 8-bit PSNR")
    for name, plan in plans.items():
        cached = probe.samples(plan)
        raw = errors(cached, reference)
        clipped = errors(cached.clamp(-1, 1), reference.clamp(-1, 1))
        psnr = paired_metrics(to_uint8(cached), to_uint8(reference))["psnr_db"]
        print(f"{name} | {raw[0]:.3f} / {raw[1]:.3f} | {clipped[0]:.3f} / {clipped[1]:.3f} | {psnr:.2f} dB", flush=True)


if __name__ == "__main__":
    main()
