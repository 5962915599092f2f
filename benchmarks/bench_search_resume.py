"""Seconds per candidate of the schedule search, resuming each candidate from the kept plan's run against running
it from the noise, on a bundled model (the same candidates, interleaved; their errors must agree exactly).

    python benchmarks/bench_search_resume.py --model dit-mnist --steps 50 --interval 5 --candidates 40
    python benchmarks/bench_search_resume.py --model uvit-mnist --steps 20 --interval 3 --device cuda

The kept plan is TaylorSeer order 2 (Newton form) at `--interval`, the searches' usual start; the candidates are its
first `--candidates` budget-neutral moves (l2c.training.schedule_search._moves), spread over the run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from l2c.cache.layout import sublayers  # noqa: E402
from l2c.cache.plan import CachePlan  # noqa: E402
from l2c.cache.schedules import taylorseer  # noqa: E402
from l2c.jobs.generate import SampleConfig  # noqa: E402
from l2c.jobs.timing import device_name  # noqa: E402
from l2c.models.checkpoints import load_model  # noqa: E402
from l2c.sampling.diffusion import DiffusionSpec  # noqa: E402
from l2c.sampling.samplers import default_sampler  # noqa: E402
from l2c.training.schedule_search import TrajectoryError, _moves  # noqa: E402
from l2c.utils.cpu_memory import keep_freed_memory  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="dit-mnist", help="bundled model")
    p.add_argument("--steps", type=int, default=50, help="steps (DDIM) or NFE (DPM-Solver)")
    p.add_argument("--interval", type=int, default=5, help="TaylorSeer interval of the kept plan")
    p.add_argument("--images", type=int, default=64, help="held-out images per candidate (the search's default)")
    p.add_argument("--candidates", type=int, default=40, help="moves timed")
    p.add_argument("--device", default="cpu", help="torch device")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        keep_freed_memory()
    model, meta = load_model(args.model)
    model = model.to(device).eval().requires_grad_(False)
    spec = DiffusionSpec(**meta["diffusion"])
    sampler = SampleConfig(sampler=default_sampler(model, spec), steps=args.steps).make_sampler(spec)
    E, L = sampler.num_evaluations, len(sublayers(model))
    kept = CachePlan.from_actions(taylorseer(E, L, args.interval, 2).actions, form="newton")
    moves = list(_moves(kept.actions))
    pick = [
        moves[round(i * (len(moves) - 1) / max(1, args.candidates - 1))]
        for i in range(min(args.candidates, len(moves)))
    ]
    candidates = [CachePlan.from_actions(a, form="newton") for a in pick]
    resuming = TrajectoryError(model, sampler, 1.5, args.images, seed=0)
    fresh = TrajectoryError(model, sampler, 1.5, args.images, seed=0, resume_every=0)
    resuming.adopt(kept)
    fresh(kept)  # warm-up alike
    seconds = {"resumed": 0.0, "from the noise": 0.0}
    for plan in candidates:
        values = {}
        for name, error in (("resumed", resuming), ("from the noise", fresh)):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            values[name] = error(plan)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds[name] += time.perf_counter() - t0
        if values["resumed"] != values["from the noise"]:
            raise SystemExit(f"resumed and fresh errors differ: {values}")
    n = len(candidates)
    print(
        f"{args.model}, {sampler.name} {args.steps}, {args.images} images, TaylorSeer N {args.interval} kept, "
        f"{n} of {len(moves)} moves, snapshots every {resuming.resume_every} steps, {device_name(device)}: "
        f"resumed {seconds['resumed'] / n:.3f} s per candidate, from the noise {seconds['from the noise'] / n:.3f} s, "
        f"{seconds['from the noise'] / seconds['resumed']:.2f}x faster; errors identical"
    )


if __name__ == "__main__":
    main()
