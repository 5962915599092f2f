"""PSNR of learned schedules against uncached sampling on the same seeds (8-bit images, 95 % bootstrap interval).

    python benchmarks/schedule_psnr.py --model dit-mnist --steps 50 --images 1000 \
        --reference uncached-d50.npy old.safetensors new.safetensors

Seeds 0 .. images - 1, classes in turn (the seeds of the results pages; the schedule search measures its moves on
seeds from 10**7 on, so these are unseen by it). Each router file runs the plan it describes (router_plan: its
forecast actions included). `--reference`: a .npy of the uncached 8-bit images, written on the first call and read
on later ones, so several schedules measured at different times share one reference. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from l2c.jobs.generate import SampleConfig, generate, to_uint8  # noqa: E402
from l2c.jobs.loading import load_for_sampling  # noqa: E402
from l2c.metrics.bootstrap import psnr_with_ci  # noqa: E402
from l2c.router.budget import router_plan  # noqa: E402
from l2c.router.files import load_router  # noqa: E402
from l2c.utils.cpu_memory import keep_freed_memory  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("routers", nargs="+", help="router files (schedules or the paper's routers)")
    p.add_argument("--model", default="dit-mnist", help="bundled model")
    p.add_argument("--sampler", default="ddim", help="sampler")
    p.add_argument("--steps", type=int, default=50, help="steps / NFE")
    p.add_argument("--cfg", type=float, default=1.5, help="guidance weight")
    p.add_argument("--images", type=int, default=1000, help="seeds 0 .. images - 1")
    p.add_argument("--batch", type=int, default=100, help="images per sampling run")
    p.add_argument("--reference", default=None, help=".npy of the uncached images: read if it exists, else written")
    p.add_argument("--json", default=None, help="also write the result here")
    args = p.parse_args()
    keep_freed_memory()  # as the `l2c` command does on a CPU
    model, spec, meta = load_for_sampling(args.model)
    config = SampleConfig(sampler=args.sampler, steps=args.steps, guidance_scale=args.cfg, batch_size=args.batch)
    seeds = list(range(args.images))
    classes = [i % model.null_class for i in seeds]
    reference = Path(args.reference) if args.reference else None
    if reference is not None and reference.exists():
        uncached = np.load(reference)
    else:
        uncached = to_uint8(generate(model, spec, seeds, classes, config, progress=False))
        if reference is not None:
            np.save(reference, uncached)
    result = {"model": args.model, "sampler": args.sampler, "steps": args.steps, "images": args.images, "rows": []}
    for path in args.routers:
        router, router_meta = load_router(path)
        plan = router_plan(router, router_meta)
        images = to_uint8(generate(model, spec, seeds, classes, config, plan=plan, progress=False))
        psnr, low, high = psnr_with_ci(images, uncached, n_boot=1000)
        result["rows"].append(
            {"router": str(path), "psnr_db": psnr, "psnr_ci": [low, high], "executed": int(plan.compute.sum())}
        )
        print(f"{path}: {psnr:.2f} dB [{low:.2f}, {high:.2f}]", file=sys.stderr, flush=True)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
