"""Block shortcuts (l2c.cache.shortcuts) against running every block hooked: sampling time of flux-mnist through
FluxPipeline, uncached / hooked / shortcut interleaved in one process, and the images of the two cached forms checked
bit-identical.

    python benchmarks/block_shortcuts.py                                  # batch 16, 28 steps, true CFG 2
    python benchmarks/block_shortcuts.py --routers r2x.safetensors r4x.safetensors --json block_shortcuts.json

Plans: every sub-layer reused after evaluation 0 (the most a plan can skip), TaylorSeer order 1 at intervals 2 and 3
(l2c.cache.schedules), and any router files given. "Hooked" runs the same plan with the shortcuts turned off (the
engine's lookup of a block's shortcut patched to find none), i.e. every block entered and its skipped sub-layers
answered from the cache inside it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from l2c.cache.layout import sublayers  # noqa: E402
from l2c.cache.plan import COMPUTE, REUSE, CachePlan  # noqa: E402
from l2c.cache.schedules import taylorseer  # noqa: E402
from l2c.integrations.diffusers import apply, resolve_plan  # noqa: E402
from l2c.jobs.flux_sampling import flux_mnist_latents, flux_pipeline  # noqa: E402
from l2c.jobs.timing import device_name, time_runs  # noqa: E402
from l2c.models.flux_mnist import DEFAULT_CFG, DEFAULT_STEPS, load_flux_mnist  # noqa: E402
from l2c.utils.cpu_memory import keep_freed_memory  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=16, help="images per pipeline call")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per form (median reported)")
    p.add_argument("--routers", nargs="*", default=[], help="router / schedule files for flux-mnist")
    p.add_argument("--json", help="write the measurements here")
    args = p.parse_args()
    if args.batch < 1 or args.repeats < 1:
        p.error("--batch and --repeats must be >= 1")
    for path in args.routers:
        if not Path(path).is_file():
            p.error(f"router file not found: {path}")
    keep_freed_memory()
    transformer, scheduler, conditioning = load_flux_mnist()
    pipe = flux_pipeline(transformer, scheduler)
    S, L = DEFAULT_STEPS, len(sublayers(transformer))
    seeds = list(range(args.batch))

    def sample():
        return flux_mnist_latents(pipe, conditioning, seeds, [s % 10 for s in seeds], S, DEFAULT_CFG)

    reuse = torch.full((S, L), REUSE, dtype=torch.int8)
    reuse[0] = COMPUTE
    plans = {"reuse every sub-layer after evaluation 0": CachePlan.from_actions(reuse)}
    plans.update({f"TaylorSeer order 1, interval {n}": taylorseer(S, L, n, 1) for n in (2, 3)})
    plans.update({Path(path).name: resolve_plan(path) for path in args.routers})

    latents = {}

    def cached(plan, name, shortcuts):
        def run():
            off = mock.patch("l2c.cache.shortcuts.shortcut_for", return_value=None)
            with off if not shortcuts else contextlib.nullcontext():
                handle = apply(pipe, plan)
                try:
                    latents[name] = sample()
                finally:
                    handle.remove()

        return run

    print(f"flux-mnist, FluxPipeline {S} steps, true CFG {DEFAULT_CFG:g}, batch {args.batch}, {device_name('cpu')}")
    print("| plan | uncached s | hooked s | shortcut s | hooked speedup | shortcut speedup | identical |")
    print("|---|---|---|---|---|---|---|")
    records = []
    for name, plan in plans.items():
        times = time_runs(
            {"uncached": sample, "hooked": cached(plan, "hooked", False), "shortcut": cached(plan, "shortcut", True)},
            repeats=args.repeats,
        )
        u, h, s = (times[k]["median_s"] for k in ("uncached", "hooked", "shortcut"))
        same = bool(torch.equal(latents["hooked"], latents["shortcut"]))
        print(f"| {name} | {u:.3f} | {h:.3f} | {s:.3f} | {u / h:.2f}x | {u / s:.2f}x | {same} |", flush=True)
        records.append({"plan": name, "identical": same, **{k: v for k, v in times.items()}})
    if args.json:
        meta = {"batch": args.batch, "steps": S, "cfg": DEFAULT_CFG, "device": device_name("cpu")}
        Path(args.json).write_text(json.dumps({**meta, "threads": torch.get_num_threads(), "rows": records}, indent=1))


if __name__ == "__main__":
    main()
