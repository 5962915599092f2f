"""Measured against MAC-predicted speedup of general cache plans (reuse and forecasts) on the bundled dit-mnist.

    python benchmarks/bench_plans.py                          # DDIM-50, guidance 1.5, batches 256 and 1000
    python benchmarks/bench_plans.py --batch-sizes 64 --repeats 5 --json plans.json

Uncached sampling, FORA(3) and TaylorSeer(N=3, order 1 and 2) run in one process: a warm-up run each (8 images),
then the methods interleaved (a, b, c, d, a, b, ...) so drift of the machine hits them alike; medians are compared.
The MAC speedup is full MACs / plan MACs for the whole run in the analytic convention (Linear + attention matmuls),
the plan's forecasting arithmetic included. Peak stored is the most memory the engine held at once in cached
outputs, differences and forecast buffers. PSNR is against the uncached images of the same seeds (first repeat).
The issue's target is measured / MAC >= 0.9.
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

from l2c.cache import CacheEngine  # noqa: E402
from l2c.cache.layout import sublayers  # noqa: E402
from l2c.cache.macs import profile_macs  # noqa: E402
from l2c.cache.schedules import fora, taylorseer  # noqa: E402
from l2c.jobs.generate import SampleConfig  # noqa: E402
from l2c.jobs.timing import device_name  # noqa: E402
from l2c.models.checkpoints import load_model  # noqa: E402
from l2c.sampling import StackedRandomGenerator  # noqa: E402
from l2c.sampling.diffusion import DiffusionSpec  # noqa: E402
from l2c.sampling.guidance import guided_denoiser  # noqa: E402
from l2c.utils.cpu_memory import keep_freed_memory  # noqa: E402


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="dit-mnist", help="bundled model")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps")
    p.add_argument("--guidance-scale", type=float, default=1.5, help="guidance weight w")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 1000], help="images per sampling run")
    p.add_argument("--interval", type=int, default=3, help="N of FORA(N) and TaylorSeer(N, O)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per method (median reported)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    p.add_argument("--json", default=None, help="also write the results here")
    return p.parse_args()


def make_plans(steps: int, num_sublayers: int, interval: int) -> dict:
    return {
        "uncached": None,
        f"FORA({interval})": fora(steps, num_sublayers, interval),
        f"TaylorSeer({interval},1)": taylorseer(steps, num_sublayers, interval, 1),
        f"TaylorSeer({interval},2)": taylorseer(steps, num_sublayers, interval, 2),
    }


@torch.no_grad()
def sample_once(model, sampler, config: SampleConfig, plan, batch: int) -> tuple[float, int, torch.Tensor]:
    """(seconds of the sampling loop, peak stored bytes, images) for seeds 0..batch-1, classes i mod 10."""
    y = torch.arange(batch) % 10
    noise = StackedRandomGenerator(list(range(batch)))
    z = noise.randn((batch, model.in_channels, model.input_size, model.input_size))
    denoise, copies = guided_denoiser(model, y, config.guidance_scale)
    engine = CacheEngine(model, plan) if plan is not None else None
    try:
        if engine is not None:
            denoise = engine.wrap(denoise)
        start = time.perf_counter()
        x = sampler.sample(denoise, torch.cat([z] * copies), noise.randn_like)
        seconds = time.perf_counter() - start
        return seconds, engine.peak_stored_bytes if engine else 0, x[:batch]
    finally:
        if engine is not None:
            engine.detach()


def psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    mse = float((x - ref).square().mean())  # images in [-1, 1]: peak-to-peak 2
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(4.0 / mse)).item()


def bench_batch(model, sampler, config, plans, macs, batch: int, repeats: int) -> list[dict]:
    for plan in plans.values():  # warm-up on a few images: one run of a full-size batch costs minutes on a CPU
        sample_once(model, sampler, config, plan, min(batch, 8))
    runs = {name: [] for name in plans}
    peak, images = {}, {}
    for repeat in range(repeats):
        for name, plan in plans.items():
            seconds, peak[name], x = sample_once(model, sampler, config, plan, batch)
            runs[name].append(seconds)
            print(f"batch {batch}, repeat {repeat + 1}/{repeats}, {name}: {seconds:.2f} s", file=sys.stderr, flush=True)
            if repeat == 0:
                images[name] = x
    base = statistics.median(runs["uncached"])
    full = macs.full("analytic") * config.steps
    rows = []
    for name, plan in plans.items():
        measured = base / statistics.median(runs[name])
        predicted = full / (macs.plan_total(plan, "analytic") if plan is not None else full)
        rows.append(
            {
                "batch": batch,
                "method": name,
                "median_s": statistics.median(runs[name]),
                "runs_s": runs[name],
                "measured_speedup": measured,
                "mac_speedup": predicted,
                "measured_over_mac": measured / predicted,
                "peak_stored_bytes": peak[name],
                "psnr_vs_uncached_db": psnr(images[name], images["uncached"]),
            }
        )
    return rows


def print_table(rows: list[dict]) -> None:
    print("| batch | method | median s | measured | MAC | measured/MAC | peak stored | PSNR vs uncached |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['batch']} | {r['method']} | {r['median_s']:.2f} | {r['measured_speedup']:.2f}x | "
            f"{r['mac_speedup']:.2f}x | {r['measured_over_mac']:.3f} | {r['peak_stored_bytes'] / 2**20:.1f} MiB | "
            f"{r['psnr_vs_uncached_db']:.1f} dB |"
        )


def main() -> None:
    args = parse()
    keep_freed_memory()  # as the `l2c` command does on a CPU
    if args.threads:
        torch.set_num_threads(args.threads)
    model, meta = load_model(args.model)
    model.eval().requires_grad_(False)
    config = SampleConfig(sampler="ddim", steps=args.steps, guidance_scale=args.guidance_scale)
    sampler = config.make_sampler(DiffusionSpec(**meta["diffusion"]))
    plans = make_plans(sampler.num_evaluations, len(sublayers(model)), args.interval)
    macs = profile_macs(meta["preset"])
    rows = []
    for batch in args.batch_sizes:
        rows += bench_batch(model, sampler, config, plans, macs, batch, args.repeats)
    device = device_name("cpu")
    print(f"{args.model}, DDIM-{args.steps}, guidance {args.guidance_scale}, {device}, torch {torch.__version__}")
    print_table(rows)
    if args.json:
        record = {"model": args.model, "steps": args.steps, "device": device, "torch": torch.__version__, "rows": rows}
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
