"""Latency and memory of sampling with the paper's released routers: eager vs compiled, fp32 vs bf16, uncached vs
cached, DiT-XL/2 (DDIM-20 / 50, θ 0.1) and U-ViT-H/2 (DPM-Solver-2 NFE 20 / 50, θ 0.9), random weights.

    # the paper's setting on a GPU (batch 8 with guidance), everything in one run:
    python benchmarks/bench_speed.py --routers official-routers --device cuda --json bench-speed.json
    # small, on a CPU:
    python benchmarks/bench_speed.py --models DiT-XL/2 --steps 20 --batch 1 --image-size 16 --repeats 1
    # FORA and TaylorSeer plans beside the released router (every measurement of a lease: benchmarks/gpu_lease.sh):
    python benchmarks/bench_speed.py --routers official-routers --plans fora:3,taylorseer-o2:3 --arms eager/bf16

Latency does not depend on the weights, so random weights time the official models. Per model and step count, every
arm (mode x precision x cache) first runs once as a warm-up (compiled arms compile there; its time is reported as
"first run"), then the arms run interleaved (a, b, c, ..., a, b, c, ...) and the median of the repeats is reported.
One run = sampling `--batch` images from noise to the last step (no VAE decode). Peak memory is the most over the
timed repeats: torch.cuda.max_memory_allocated on a GPU; on a CPU the process's peak resident set (VmHWM after
resetting it through /proc/self/clear_refs), which includes the weights and everything else in the process.
The MAC-predicted speedup is uncached / plan MACs per image in the paper's convention (Linear layers only).
The official routers' folder: --routers or the environment variable L2C_OFFICIAL_ROUTERS.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from l2c.cache.layout import sublayers  # noqa: E402
from l2c.cache.macs import profile_macs  # noqa: E402
from l2c.cache.schedules import fora, taylorseer  # noqa: E402
from l2c.jobs.compile import COMPILE_MODES  # noqa: E402
from l2c.jobs.generate import SampleConfig, generate  # noqa: E402
from l2c.jobs.timing import device_name, time_runs  # noqa: E402
from l2c.models import create_model  # noqa: E402
from l2c.router.files import import_official  # noqa: E402
from l2c.router.report import plan_macs  # noqa: E402
from l2c.sampling.diffusion import default_spec  # noqa: E402
from l2c.utils.cpu_memory import keep_freed_memory  # noqa: E402
from l2c.utils.precision import PRECISIONS  # noqa: E402

# model -> (architecture, sampler, guidance w, θ, router file per steps): the paper's settings (spec Tables 1, 2, 8)
MODELS = {
    "DiT-XL/2": ("dit", "ddim", 1.5, 0.1, {20: "DDIM20_router.pt", 50: "DDIM50_router.pt"}),
    "U-ViT-H/2": ("uvit", "dpm-solver-2", 1.4, 0.9, {20: "dpm20_router.pth", 50: "dpm50_router.pth"}),
}

# --plans families: (evaluations, sub-layers, interval N) -> plan
PLAN_FAMILIES = {
    "fora": fora,
    "taylorseer-o1": lambda steps, sublayers, n: taylorseer(steps, sublayers, n, 1),
    "taylorseer-o2": lambda steps, sublayers, n: taylorseer(steps, sublayers, n, 2),
}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated: DiT-XL/2, U-ViT-H/2")
    p.add_argument("--steps", default="20,50", help="comma-separated DDIM steps / NFE with an official router")
    p.add_argument("--batch", type=int, default=8, help="images per run (the paper's latency: 8, with guidance)")
    p.add_argument("--no-guidance", action="store_true", help="guidance off (one model call on the batch)")
    p.add_argument("--modes", default="eager,compiled", help="comma-separated: eager, compiled")
    p.add_argument("--dtypes", default="fp32,bf16", help=f"comma-separated: {', '.join(PRECISIONS)}")
    p.add_argument("--compile-mode", default="default", choices=COMPILE_MODES, help="torch.compile mode")
    p.add_argument("--image-size", type=int, default=None, help="latent size (default 32 = 256 px; 16 = 128 px)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per arm after the warm-up (median)")
    p.add_argument("--warmup", type=int, default=1, help="warm-up runs per eager arm (compiled arms: at least 1)")
    p.add_argument(
        "--arms",
        default=None,
        help="only these mode/dtype pairs, e.g. eager/fp32,compiled/fp32,eager/bf16 (default: --modes x --dtypes)",
    )
    p.add_argument(
        "--plans",
        default="",
        help="cached arms beside the released router, comma-separated: fora:N, taylorseer-o1:N, taylorseer-o2:N",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    p.add_argument("--routers", default=os.environ.get("L2C_OFFICIAL_ROUTERS"), help="official routers' folder")
    p.add_argument("--json", default=None, help="also write every number here")
    args = p.parse_args()
    if not args.routers:
        p.error("name the official routers' folder: --routers DIR or L2C_OFFICIAL_ROUTERS=DIR")
    for spec in filter(None, args.plans.split(",")):
        family, _, interval = spec.partition(":")
        if family not in PLAN_FAMILIES or not interval.isdigit() or int(interval) < 1:
            p.error(f"--plans: {spec!r} is not fora:N, taylorseer-o1:N or taylorseer-o2:N with N >= 1")
    return args


# --------------------------------------------------------------------------------------------- memory
def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set


def read_peak(device: torch.device) -> int:
    """Bytes: allocated CUDA memory, or the process's peak resident set on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def with_peak(fn, device: torch.device, peaks: list):
    def run():
        reset_peak(device)
        fn()
        peaks.append(read_peak(device))

    return run


# --------------------------------------------------------------------------------------------- one model
def load_plans(args, name: str, steps: int, num_sublayers: int) -> dict:
    """cache arm -> plan: the released router at the paper's θ ("l2c"), then each of --plans."""
    arch, _, _, theta, files = MODELS[name]
    router, _ = import_official(Path(args.routers) / files[steps], arch, steps)
    if router.num_sublayers != num_sublayers:
        raise ValueError(f"{files[steps]} has {router.num_sublayers} sub-layers, the model {num_sublayers}")
    plans = {"l2c": router.to_plan(theta)}
    evaluations = plans["l2c"].num_steps
    for spec in filter(None, args.plans.split(",")):
        family, _, interval = spec.partition(":")
        plans[spec] = PLAN_FAMILIES[family](evaluations, num_sublayers, int(interval))
    return plans


def arm_runs(args, model, spec, name: str, steps: int, plans: dict) -> dict:
    """name of each arm -> a callable sampling one batch with it."""
    _, sampler, w, _, _ = MODELS[name]
    seeds = list(range(args.batch))
    classes = [(7 * i) % model.null_class for i in seeds]
    arms = {}
    pairs = itertools.product(args.modes.split(","), args.dtypes.split(","))
    if args.arms:
        pairs = [tuple(arm.split("/")) for arm in args.arms.split(",")]
    for (mode, dtype), cache in itertools.product(pairs, ("uncached", *plans)):
        config = SampleConfig(
            sampler=sampler,
            steps=steps,
            guidance_scale=1.0 if args.no_guidance else w,
            batch_size=args.batch,
            dtype=dtype,
            compile=mode == "compiled",
            compile_mode=args.compile_mode,
        )
        arms[(mode, dtype, cache)] = _sampling(model, spec, seeds, classes, config, plans.get(cache))
    return arms


def _sampling(model, spec, seeds, classes, config, plan):
    return lambda: generate(model, spec, seeds, classes, config, plan, progress=False)


def measure(args, arms: dict, device: torch.device) -> dict:
    first = {}
    for key, fn in arms.items():  # warm-up, and compilation for the compiled arms
        for _ in range(max(args.warmup, key[0] == "compiled")):
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            first.setdefault(key, time.perf_counter() - t0)
            print(f"  warm-up {'/'.join(key)}: {time.perf_counter() - t0:.2f} s", flush=True)
    peaks = {key: [] for key in arms}
    named = {"/".join(key): with_peak(fn, device, peaks[key]) for key, fn in arms.items()}
    timing = time_runs(named, repeats=args.repeats, warmup=0, device=device)
    return {key: {**timing["/".join(key)], "first_s": first.get(key), "peak_bytes": max(peaks[key])} for key in arms}


def build(name: str, image_size: int | None, device: torch.device):
    """(model with random weights, diffusion spec, MAC profile); a smaller latent keeps the blocks, so the official
    router still fits, with fewer tokens (for a CPU)."""
    arch = MODELS[name][0]
    size = {} if image_size is None else {("input_size" if arch == "dit" else "img_size"): image_size}
    torch.manual_seed(0)
    model = create_model(name, **size).to(device).eval().requires_grad_(False)
    return model, default_spec(arch), profile_macs(name, **size)


def bench_model(args, name: str, device: torch.device) -> list[dict]:
    model, spec, macs = build(name, args.image_size, device)
    rows = []
    for steps in (int(s) for s in args.steps.split(",")):
        plans = load_plans(args, name, steps, len(sublayers(model)))
        for cache, plan in plans.items():
            print(f"{name}, {steps} steps, {cache}: {int(plan.compute.sum())}/{plan.compute.numel()} sub-layers")
        results = measure(args, arm_runs(args, model, spec, name, steps, plans), device)
        rows += summarize(name, steps, plans, {c: plan_macs(p, macs) for c, p in plans.items()}, results)
    return rows


# --------------------------------------------------------------------------------------------- report
def summarize(name: str, steps: int, plans: dict, predicted: dict, results: dict) -> list[dict]:
    rows = []
    for (mode, dtype, cache), r in results.items():
        plan = plans.get(cache)
        base = results[(mode, dtype, "uncached")]["median_s"]
        reference = results.get(("eager", "fp32", "uncached"), {}).get("median_s")
        rows.append(
            {
                "model": name,
                "steps": steps,
                "mode": mode,
                "dtype": dtype,
                "cache": cache,
                "executed": f"{int(plan.compute.sum())}/{plan.compute.numel()}" if plan is not None else "all",
                "first_s": r["first_s"],
                "median_s": r["median_s"],
                "runs_s": r["runs"],
                "peak_gib": r["peak_bytes"] / 2**30,
                "speedup_vs_uncached": base / r["median_s"],
                "mac_speedup": predicted[cache]["mac_speedup_linear"] if plan is not None else 1.0,
                "speedup_vs_eager_fp32_uncached": reference / r["median_s"] if reference else None,
            }
        )
    return rows


def markdown(rows: list[dict], device: str, memory: str) -> str:
    head = (
        "| model | steps | mode | dtype | cache | executed | first run (s) | median (s) | peak memory (GiB) | "
        "speedup (cached / uncached) | MAC-predicted | measured / predicted | vs eager fp32 uncached |\n"
        + "|---" * 13
        + "|\n"
    )
    lines = []
    for r in rows:
        cells = [r["model"], r["steps"], r["mode"], r["dtype"], r["cache"], r["executed"], _num(r["first_s"], ".2f")]
        cells += [f"{r['median_s']:.3f}", f"{r['peak_gib']:.2f}", f"{r['speedup_vs_uncached']:.3f}x"]
        cells += [f"{r['mac_speedup']:.3f}x", f"{r['speedup_vs_uncached'] / r['mac_speedup']:.3f}"]
        cells += [_num(r["speedup_vs_eager_fp32_uncached"], ".3f")]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return f"device: {device}; peak memory: {memory}\n\n" + head + "\n".join(lines)


def _num(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main() -> None:
    args = parse()
    keep_freed_memory()  # as the `l2c` command does on a CPU
    device = torch.device(args.device)
    rows = []
    for name in args.models.split(","):
        if name not in MODELS:
            raise SystemExit(f"unknown model {name!r}; use {', '.join(MODELS)}")
        rows += bench_model(args, name, device)
    memory = "torch.cuda.max_memory_allocated" if device.type == "cuda" else "process peak RSS (VmHWM)"
    table = markdown(rows, device_name(device), memory)
    print(table)
    if args.json:
        record = {"device": device_name(device), "torch": torch.__version__, "memory": memory, "args": vars(args)}
        Path(args.json).write_text(json.dumps({**record, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
