"""Numbers for a bundled model's card: MNIST-FID, IS, precision / recall, class accuracy, time per image.

    python benchmarks/model_card_numbers.py --model dit-mnist --images 2000 --steps 20 50 --json out.json
    python benchmarks/model_card_numbers.py --model flux-mnist --images 2000 --steps 28 --json out.json  # FluxPipeline

FID is in the feature space of the bundled MNIST classifier against the MNIST test set; the floor row is the
MNIST train set (same number of images) against the same reference.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from l2c.data.mnist import load_mnist  # noqa: E402
from l2c.jobs.flux_sampling import flux_pipeline, sample_flux_mnist  # noqa: E402
from l2c.jobs.generate import SampleConfig, generate, save_grid, to_uint8  # noqa: E402
from l2c.jobs.timing import device_name  # noqa: E402
from l2c.metrics.report import mnist_metrics  # noqa: E402
from l2c.models import architecture_of  # noqa: E402
from l2c.models.checkpoints import load_model  # noqa: E402
from l2c.models.flux_mnist import DEFAULT_CFG, load_flux_mnist  # noqa: E402
from l2c.sampling.diffusion import DiffusionSpec  # noqa: E402


def dit_or_uvit(args, classes):
    model, meta = load_model(args.model)
    spec = DiffusionSpec(**meta["diffusion"])
    sampler = "ddim" if architecture_of(model) == "dit" else "dpm-solver-2"
    args.cfg = 1.5 if args.cfg is None else args.cfg

    def sample(steps):
        config = SampleConfig(sampler=sampler, steps=steps, guidance_scale=args.cfg, batch_size=100)
        return to_uint8(generate(model, spec, list(range(args.images)), classes, config))

    return meta["preset"], sampler, sample


def flux_mnist(args, classes):
    # the bundled diffusers folder through FluxPipeline itself (true CFG: two transformer calls per step)
    transformer, scheduler, conditioning = load_flux_mnist()
    pipe = flux_pipeline(transformer, scheduler)
    args.cfg = DEFAULT_CFG if args.cfg is None else args.cfg

    def sample(steps):
        seeds = list(range(args.images))
        return sample_flux_mnist(pipe, conditioning, seeds, classes, steps, args.cfg, batch_size=100)[..., None]

    return "flux-mnist", "diffusers-flowmatch-euler", sample


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="dit-mnist", help="bundled model name or a .safetensors path")
    p.add_argument("--images", type=int, default=2000, help="samples per setting")
    p.add_argument("--steps", type=int, nargs="+", default=[20, 50], help="step counts / NFE to evaluate")
    p.add_argument("--cfg", type=float, default=None, help="guidance weight (default: 1.5; flux-mnist: its true CFG)")
    p.add_argument("--grid", default=None, help="write a 10x10 sample grid (first step count) here")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args()
    classes = [i % 10 for i in range(args.images)]
    preset, sampler, sample = (flux_mnist if args.model == "flux-mnist" else dit_or_uvit)(args, classes)
    results = {
        "model": args.model,
        "preset": preset,
        "device": device_name(),
        "images": args.images,
        "cfg": args.cfg,
    }
    for i, steps in enumerate(args.steps):
        t0 = time.perf_counter()
        x = sample(steps)
        seconds = time.perf_counter() - t0
        if i == 0 and args.grid:
            order = np.argsort(np.asarray(classes[:100]), kind="stable")
            save_grid(x[:100][order], args.grid, nrow=10, scale=2)
        m = mnist_metrics(x, np.asarray(classes))
        m["seconds_per_image"] = seconds / args.images
        results[f"{sampler}-{steps}"] = m
        print(sampler, steps, json.dumps(m), flush=True)
    train, _ = load_mnist("train")
    results["floor_train_vs_test"] = mnist_metrics(train[: args.images])
    print("floor", json.dumps(results["floor_train_vs_test"]))
    results["threads"] = torch.get_num_threads()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
