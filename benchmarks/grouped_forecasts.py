"""Grouped forecasts (CacheEngine(..., grouped=True): sub-layers with identical plan columns forecast as one tensor from
shared flat buffers) against the per-sub-layer form: sampling time, interleaved, on a bundled model.

    python benchmarks/grouped_forecasts.py                         # dit-mnist DDIM-20, batch 64, intervals 2 and 3
    python benchmarks/grouped_forecasts.py --model uvit-mnist --batch 256 --device cuda

Each plan computes every sub-layer every N evaluations and forecasts (order 1, order 2 in Newton's form, or FoCa) in
between: every column is alike, so a grouped run forecasts one tensor per model call. The two forms run interleaved
(a, b, a, b, ...) after a warm-up; medians are compared, and the images of the two forms are checked equal.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from l2c.cache import CacheEngine  # noqa: E402
from l2c.cache.layout import sublayers  # noqa: E402
from l2c.cache.plan import COMPUTE, FOCA, FORECAST1, FORECAST2, CachePlan  # noqa: E402
from l2c.jobs.timing import device_name, time_runs  # noqa: E402
from l2c.models.checkpoints import load_model  # noqa: E402
from l2c.sampling.diffusion import DiffusionSpec  # noqa: E402
from l2c.sampling.samplers import default_sampler, make_sampler  # noqa: E402
from l2c.sampling.workload import ClassWorkload  # noqa: E402

ACTIONS = {"F1": FORECAST1, "F2": FORECAST2, "FoCa": FOCA}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="dit-mnist", help="dit-mnist or uvit-mnist")
    p.add_argument("--steps", type=int, default=20, help="steps / NFE")
    p.add_argument("--batch", type=int, default=64, help="images per sampling run")
    p.add_argument("--intervals", type=int, nargs="+", default=[2, 3], help="compute every N evaluations")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per form (median reported)")
    p.add_argument("--device", default="cpu", help="torch device")
    args = p.parse_args()
    if args.batch < 1 or args.repeats < 1 or min(args.intervals) < 2:
        p.error("--batch and --repeats must be >= 1, intervals >= 2")
    model, meta = load_model(args.model)
    model = model.to(args.device)
    spec = DiffusionSpec(**meta["diffusion"])
    sampler = make_sampler(default_sampler(model, spec), args.steps, spec)
    workload = ClassWorkload(model, sampler, 1.5)
    E, L = sampler.num_evaluations, len(sublayers(model))
    seeds = list(range(args.batch))
    print(
        f"{args.model} {sampler.name} {E} evaluations, batch {args.batch}, {device_name(args.device)}, "
        f"{torch.get_num_threads()} threads"
    )
    print("| plan | per sub-layer s | grouped s | grouped / per sub-layer |\n|---|---|---|---|")
    for n in args.intervals:
        for name, action in ACTIONS.items():
            actions = torch.full((E, L), action, dtype=torch.int8)
            actions[::n] = COMPUTE
            plan = CachePlan.from_actions(actions)
            images = {}

            def run(grouped, plan=plan, images=images):
                denoise, copies = workload.denoiser(torch.tensor(seeds))
                with torch.no_grad(), CacheEngine(model, plan, grouped=grouped) as engine:
                    z = workload.noise(seeds)
                    images[grouped] = sampler.sample(engine.wrap(denoise), torch.cat([z] * copies))

            times = time_runs({"alone": lambda: run(False), "grouped": lambda: run(True)}, args.repeats, 1, args.device)
            if not torch.allclose(images[False], images[True], rtol=1e-5, atol=1e-5):
                raise SystemExit(f"{name} N={n}: grouped images differ from the per-sub-layer ones")
            a, b = times["alone"]["median_s"], times["grouped"]["median_s"]
            print(f"| {name} every {n} | {a:.3f} | {b:.3f} | {b / a:.3f} |", flush=True)


if __name__ == "__main__":
    main()
