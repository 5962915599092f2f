"""Measured against MAC-predicted speedup of general cache plans (reuse, forecasts, learned schedules) on a bundled
model, on a CPU or a GPU, eager or compiled, at several batch sizes.

    python benchmarks/bench_plans.py                          # dit-mnist DDIM-50, guidance 1.5, batches 256 and 1000
    python benchmarks/bench_plans.py --batch-sizes 64 --repeats 5 --json plans.json
    # on a GPU: learned schedules beside TaylorSeer, eager and compiled, batches 64 to 1,000
    python benchmarks/bench_plans.py --device cuda --steps 20 --intervals 3 5 --families taylorseer-o2 \
        --schedule-routers routers/dit20-budget-*.safetensors --arms eager/fp32,compiled/fp32 --batch-sizes 64 256 1000

Per batch size and arm (mode/precision), every plan first runs once (the warm-up; compiled arms compile there, at
the timed batch so that no new shape recompiles later), then the plans run interleaved (a, b, c, a, b, c, ...) so
drift of the machine hits them alike; medians are compared. The MAC speedup is full MACs / plan MACs for the whole
run in the analytic convention (Linear + attention matmuls), the plan's forecasting arithmetic included. Peak stored
is the most memory the engine held at once in cached outputs, differences and forecast buffers. PSNR is against the
uncached images of the same seeds and arm (first repeat). The issue's target is measured / MAC >= 0.9.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from l2c.cache import CacheEngine  # noqa: E402
from l2c.cache.layout import sublayers  # noqa: E402
from l2c.cache.macs import profile_macs  # noqa: E402
from l2c.cache.schedules import fora, taylorseer  # noqa: E402
from l2c.jobs.compile import CompiledCache  # noqa: E402
from l2c.jobs.generate import SampleConfig  # noqa: E402
from l2c.jobs.timing import device_name, time_runs  # noqa: E402
from l2c.metrics.scores import psnr_of_mse  # noqa: E402
from l2c.models.checkpoints import load_model  # noqa: E402
from l2c.router.budget import router_plan  # noqa: E402
from l2c.router.files import check_router_fits, load_router  # noqa: E402
from l2c.sampling import StackedRandomGenerator  # noqa: E402
from l2c.sampling.diffusion import DiffusionSpec  # noqa: E402
from l2c.sampling.guidance import guided_denoiser  # noqa: E402
from l2c.sampling.samplers import default_sampler  # noqa: E402
from l2c.utils.cpu_memory import keep_freed_memory  # noqa: E402
from l2c.utils.precision import precision_scope  # noqa: E402

# --families: (evaluations, sub-layers, interval N) -> plan
FAMILIES = {
    "fora": ("FORA({n})", fora),
    "taylorseer-o1": ("TaylorSeer({n},1)", lambda e, s, n: taylorseer(e, s, n, 1)),
    "taylorseer-o2": ("TaylorSeer({n},2)", lambda e, s, n: taylorseer(e, s, n, 2)),
}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="dit-mnist", help="bundled model")
    p.add_argument("--sampler", default=None, help="sampler (default: the model's own, as `l2c sample`)")
    p.add_argument("--steps", type=int, default=50, help="steps (DDIM) or NFE (DPM-Solver)")
    p.add_argument("--guidance-scale", type=float, default=1.5, help="guidance weight w")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 1000], help="images per sampling run")
    p.add_argument("--intervals", type=int, nargs="*", default=[3], help="N of FORA(N) and TaylorSeer(N, O)")
    p.add_argument(
        "--families", default="fora,taylorseer-o1,taylorseer-o2", help=f"comma-separated: {', '.join(FAMILIES)}"
    )
    p.add_argument(
        "--schedule-routers", nargs="*", default=[], help="learned schedule routers (train-router --target-macs)"
    )
    p.add_argument(
        "--arms", default="eager/fp32", help="comma-separated mode/precision: eager|compiled / fp32|tf32|bf16|fp16"
    )
    p.add_argument("--compile-mode", default="default", help="torch.compile mode of the compiled arms")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per method (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="warm-up runs per method (CUDA graphs record over 2-3)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()
    for family in filter(None, args.families.split(",")):
        if family not in FAMILIES:
            p.error(f"--families: unknown {family!r}; use {', '.join(FAMILIES)}")
    for arm in args.arms.split(","):
        mode, _, dtype = arm.partition("/")
        if mode not in ("eager", "compiled") or dtype not in ("fp32", "tf32", "bf16", "fp16"):
            p.error(f"--arms: {arm!r} is not eager|compiled / fp32|tf32|bf16|fp16")
    if min(args.batch_sizes) < 1 or min(args.intervals, default=1) < 1 or min(args.repeats, args.warmup) < 1:
        p.error("batch sizes, intervals, repeats and warm-ups must be >= 1")
    return args


def make_plans(args, model, config: SampleConfig, evaluations: int) -> dict:
    """label -> plan (None = uncached): the training-free families at each interval, then each learned schedule."""
    num_sublayers = len(sublayers(model))
    plans = {"uncached": None}
    for n in args.intervals:
        for family in filter(None, args.families.split(",")):
            label, make = FAMILIES[family]
            plans[label.format(n=n)] = make(evaluations, num_sublayers, n)
    for path in args.schedule_routers:
        router, meta = load_router(path)
        check_router_fits(router, meta, num_sublayers, config.sampler, evaluations)
        plans[f"learned {Path(path).stem}"] = router_plan(router, meta)
    return plans


@torch.no_grad()
def sample_once(model, sampler, config: SampleConfig, plan, batch: int, device, record: dict) -> None:
    """Samples seeds 0..batch-1 (classes i mod 10); keeps the images and the engine's peak stored bytes in record."""
    y = torch.arange(batch, device=device) % 10
    noise = StackedRandomGenerator(list(range(batch)), device)
    z = noise.randn((batch, model.in_channels, model.input_size, model.input_size), device=device)
    denoise, copies = guided_denoiser(model, y, config.guidance_scale)
    if config.compile:
        engine = CompiledCache(model, plan, config.compile_mode)
    else:
        engine = CacheEngine(model, plan) if plan is not None else None
    try:
        if engine is not None:
            denoise = engine.wrap(denoise)
        with precision_scope(model, config.dtype):
            x = sampler.sample(denoise, torch.cat([z] * copies), noise.randn_like)
        record["images"] = x[:batch]
        record["peak"] = engine.peak_stored_bytes if plan is not None else 0
    finally:
        if engine is not None:
            engine.detach()


def psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    """dB of float images in [-1, 1] (peak-to-peak 2): the 8-bit formula on the MSE rescaled to 0..255."""
    return psnr_of_mse(float((x.float() - ref.float()).square().mean()) * 127.5**2)


def bench_arm(args, model, sampler, config, plans, macs, batch: int, device) -> list[dict]:
    records = {name: {} for name in plans}
    images = {}

    def run(name, plan):
        def fn():
            sample_once(model, sampler, config, plan, batch, device, records[name])
            images.setdefault(name, records[name]["images"])  # the first timed run's images

        return fn

    for name, plan in plans.items():  # warm-up (and compilation) at the timed batch
        for _ in range(args.warmup):
            sample_once(model, sampler, config, plan, batch, device, records[name])
        print(f"  warm-up {name}: done", file=sys.stderr, flush=True)
    timing = time_runs({name: run(name, plan) for name, plan in plans.items()}, args.repeats, warmup=0, device=device)
    base = timing["uncached"]["median_s"]
    full = macs.full("analytic") * sampler.num_evaluations
    rows = []
    for name, plan in plans.items():
        measured = base / timing[name]["median_s"]
        predicted = full / (macs.plan_total(plan, "analytic") if plan is not None else full)
        rows.append(
            {
                "batch": batch,
                "arm": f"{'compiled' if config.compile else 'eager'}/{config.dtype}",
                "method": name,
                "median_s": timing[name]["median_s"],
                "runs_s": timing[name]["runs"],
                "measured_speedup": measured,
                "mac_speedup": predicted,
                "measured_over_mac": measured / predicted,
                "peak_stored_bytes": records[name]["peak"],
                "psnr_vs_uncached_db": psnr(images[name], images["uncached"]),
            }
        )
        print(f"batch {batch} {rows[-1]['arm']} {name}: {measured:.2f}x of {predicted:.2f}x", file=sys.stderr)
    return rows


def print_table(rows: list[dict]) -> None:
    print("| batch | arm | method | median s | measured | MAC | measured/MAC | peak stored | PSNR vs uncached |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['batch']} | {r['arm']} | {r['method']} | {r['median_s']:.3f} | {r['measured_speedup']:.2f}x | "
            f"{r['mac_speedup']:.2f}x | {r['measured_over_mac']:.3f} | {r['peak_stored_bytes'] / 2**20:.1f} MiB | "
            f"{r['psnr_vs_uncached_db']:.1f} dB |"
        )


def main() -> None:
    args = parse()
    device = torch.device(args.device)
    if device.type == "cpu":
        keep_freed_memory()  # as the `l2c` command does on a CPU
    if args.threads:
        torch.set_num_threads(args.threads)
    model, meta = load_model(args.model)
    model = model.to(device).eval().requires_grad_(False)
    spec = DiffusionSpec(**meta["diffusion"])
    sampler_name = args.sampler or default_sampler(model, spec)
    rows = []
    for arm in args.arms.split(","):
        mode, _, dtype = arm.partition("/")
        config = SampleConfig(
            sampler=sampler_name,
            steps=args.steps,
            guidance_scale=args.guidance_scale,
            dtype=dtype,
            compile=mode == "compiled",
            compile_mode=args.compile_mode,
        )
        sampler = config.make_sampler(spec)
        plans = make_plans(args, model, config, sampler.num_evaluations)
        macs = profile_macs(meta["preset"])
        for batch in args.batch_sizes:
            rows += bench_arm(args, model, sampler, config, plans, macs, batch, device)
    name = device_name(device)
    print(
        f"{args.model}, {sampler_name} {args.steps}, guidance {args.guidance_scale}, {name}, torch {torch.__version__}"
    )
    print_table(rows)
    if args.json:
        record = {
            "model": args.model,
            "sampler": sampler_name,
            "steps": args.steps,
            "device": name,
            "torch": torch.__version__,
            "args": vars(args),
            "rows": rows,
        }
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
