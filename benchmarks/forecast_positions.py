"""Forecasts positioned by evaluation index against the sampler's own time (and log-SNR), and FoCa's
predictor-corrector, at equal computation: PSNR against the uncached images of the same seeds, with 95 % intervals.

    python benchmarks/forecast_positions.py --model flux-mnist --images 256            # FlowMatchEuler, 28 steps
    python benchmarks/forecast_positions.py --model dit-mnist --steps 20 --images 256  # DDIM-20
    python benchmarks/forecast_positions.py --model uvit-mnist --steps 20 --images 256 # DPM-Solver-2, NFE 20

Every plan at interval N computes every sub-layer at evaluations 0, N, 2N, ... and does one thing in between: a
forecast of order 1 or 2 (Newton's form) or FoCa (l2c.cache.forecast), positioned by index, by the model's time input
("time") or by log-SNR where the sampler has one. So the plans of one interval compute the same cells; they differ in
element-wise arithmetic only (the MAC column counts it). "cache-dit FoCa" runs cache-dit's own FoCa calibrator state
(cache_dit.caching.cache_contexts.calibrators.foca.FoCaState, one per sub-layer and model call) on the same cells, for
comparison. The interval is the PSNR of the mean squared error, bootstrapped over images; "Δ vs index" is the paired
difference to the same forecast positioned by index (same bootstrap resamples).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from l2c.cache import CacheEngine  # noqa: E402
from l2c.cache.layout import sublayers  # noqa: E402
from l2c.cache.plan import COMPUTE, FOCA, FORECAST1, FORECAST2, CachePlan  # noqa: E402
from l2c.cache.positions import evaluation_positions  # noqa: E402
from l2c.metrics.scores import psnr_of_mse  # noqa: E402

ACTIONS = {"F1": FORECAST1, "F2": FORECAST2, "FoCa": FOCA}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="flux-mnist", help="flux-mnist, dit-mnist or uvit-mnist")
    p.add_argument("--steps", type=int, default=None, help="steps / NFE (default: 28 for flux-mnist, else 20)")
    p.add_argument("--cfg", type=float, default=None, help="guidance (default: 2 for flux-mnist, else 1.5)")
    p.add_argument("--images", type=int, default=256, help="images (seeds 0..images-1)")
    p.add_argument("--batch", type=int, default=128, help="images per sampling run")
    p.add_argument("--intervals", type=int, nargs="+", default=[2, 3, 4], help="compute every N evaluations")
    p.add_argument("--forecasts", default="F1,F2,FoCa", help=f"comma-separated: {', '.join(ACTIONS)}")
    p.add_argument("--no-cache-dit", action="store_true", help="leave out cache-dit's FoCa calibrator")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()
    bad = [f for f in args.forecasts.split(",") if f not in ACTIONS]
    if bad or min(args.intervals) < 2 or args.images < 2 or args.batch < 1:
        p.error(f"--forecasts from {', '.join(ACTIONS)}; intervals >= 2; --images >= 2; --batch >= 1")
    return args


def load(args):
    """(workload, images(x) -> pixels in [-1, 1], positions coordinates the sampler has)."""
    if args.model == "flux-mnist":
        from l2c.jobs.diffusers_workload import flux_workload

        workload, _ = flux_workload("flux-mnist", steps=args.steps or 28, cfg=2.0 if args.cfg is None else args.cfg)
        return workload, workload.images, ("index", "time")
    from l2c.models.checkpoints import load_model
    from l2c.sampling.diffusion import DiffusionSpec
    from l2c.sampling.samplers import default_sampler, make_sampler
    from l2c.sampling.workload import ClassWorkload

    model, meta = load_model(args.model)
    spec = DiffusionSpec(**meta["diffusion"])
    sampler = make_sampler(default_sampler(model, spec), args.steps or 20, spec)
    workload = ClassWorkload(model, sampler, 1.5 if args.cfg is None else args.cfg)
    return workload, lambda x: x, ("index", "time", "log-snr")


class CacheDitFoCa:
    """cache-dit's FoCa calibrator as an engine behaviour: computed cells update its state, the others ask it."""

    def __init__(self, compute: list[list[bool]]):
        from cache_dit.caching.cache_contexts.calibrators.foca import FoCaState

        self.compute, self.states, self.make = compute, {}, FoCaState

    def __call__(self, step, slot, index, forward, args, kwargs):
        if self.compute[step][index]:
            out = forward(*args, **kwargs)
            self.states[(slot, index)] = parts = self.states.get((slot, index)) or _states(out, self.make)
            for state, value in zip(parts, _parts(out)):
                if state is not None:
                    state.current_step = step
                    state.update(value)
            return out
        parts = self.states[(slot, index)]
        values = []
        for state in parts:
            if state is not None:
                state.current_step = step
            values.append(None if state is None else state.approximate())
        return values[0] if len(values) == 1 and not isinstance(parts, tuple) else type(parts)(values)


def _parts(out):
    return [out] if isinstance(out, torch.Tensor) else list(out)


def _states(out, make):
    # one calibrator state per tensor of the output (a joint attention returns a pair); a list for a tensor output,
    # a tuple for a tuple output, so that forecasts come back in the output's structure
    if isinstance(out, torch.Tensor):
        return [make()]
    return tuple(None if o is None else make() for o in out)


@torch.no_grad()
def sample(workload, images, plan, n: int, batch: int, behaviour=None) -> tuple[torch.Tensor, int]:
    """Pixels of seeds 0..n-1 (class / prompt i mod 10) under `plan` (None: uncached) or behaviour() (a fresh one
    per sampling run)."""
    model, sampler = workload.model, workload.sampler
    out, peak = [], 0
    for start in range(0, n, batch):
        seeds = list(range(start, min(n, start + batch)))
        engine = CacheEngine(model, plan) if plan is not None or behaviour is not None else None
        try:
            denoise, copies = workload.denoiser(torch.tensor(seeds))
            if behaviour is not None:
                engine.behaviour = behaviour()
            if engine is not None:
                denoise = engine.wrap(denoise)
            z = workload.noise(seeds)
            x = sampler.sample(denoise, torch.cat([z] * copies))[: len(seeds)]
            out.append(images(x).float().clamp(-1, 1).cpu())
            peak = max(peak, engine.peak_stored_bytes if engine is not None else 0)
        finally:
            if engine is not None:
                engine.detach()
    return torch.cat(out), peak


def interval_plan(evaluations: int, num_sublayers: int, n: int, action: int, positions) -> CachePlan:
    actions = torch.full((evaluations, num_sublayers), action, dtype=torch.int8)
    actions[::n] = COMPUTE
    return CachePlan.from_actions(actions, positions=positions)


def per_image_mse(x: torch.Tensor, ref: torch.Tensor) -> np.ndarray:
    """Per-image MSE on the 8-bit scale (pixels in [-1, 1] -> 0..255)."""
    return ((x - ref).square().flatten(1).mean(1) * 127.5**2).double().numpy()


def psnr_ci(mse: np.ndarray, draws: np.ndarray) -> tuple[float, float, float]:
    means = mse[draws].mean(1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return psnr_of_mse(mse.mean()), psnr_of_mse(hi), psnr_of_mse(lo)


def delta_ci(mse: np.ndarray, base: np.ndarray, draws: np.ndarray) -> tuple[float, float, float]:
    """PSNR(mse) - PSNR(base) with a paired bootstrap interval."""
    d = 10 * np.log10(base[draws].mean(1) / mse[draws].mean(1))
    lo, hi = np.quantile(d, [0.025, 0.975])
    return float(10 * np.log10(base.mean() / mse.mean())), float(lo), float(hi)


def main() -> None:
    args = parse()
    if args.threads:
        torch.set_num_threads(args.threads)
    workload, images, coordinates = load(args)
    sampler = workload.sampler
    E, L = sampler.num_evaluations, len(sublayers(workload.model))
    positions = {c: evaluation_positions(sampler, c) for c in coordinates}
    began = time.time()
    ref, _ = sample(workload, images, None, args.images, args.batch)
    draws = np.random.default_rng(0).integers(0, args.images, size=(1000, args.images))
    print(
        f"{args.model}: {sampler.name}, {E} evaluations, {L} sub-layers, {args.images} images; uncached run "
        f"{time.time() - began:.0f} s",
        flush=True,
    )
    rows = []
    for n in args.intervals:
        base = {}
        arms = [(f, c) for f in args.forecasts.split(",") for c in coordinates]
        arms += [] if args.no_cache_dit else [("cache-dit FoCa", None)]
        for forecast, coordinate in arms:
            if coordinate is None:
                plan = interval_plan(E, L, n, FORECAST1, None)
                compute = plan.compute.tolist()
                x, peak = sample(workload, images, None, args.images, args.batch, partial(CacheDitFoCa, compute))
            else:
                plan = interval_plan(E, L, n, ACTIONS[forecast], positions[coordinate])
                x, peak = sample(workload, images, plan, args.images, args.batch)
            mse = per_image_mse(x, ref)
            row = {"interval": n, "forecast": forecast, "positions": coordinate, "computed": int(plan.compute.sum())}
            row["psnr"], row["low"], row["high"] = psnr_ci(mse, draws)
            if coordinate == "index":
                base[forecast] = mse
            elif forecast in base:
                row["delta"], row["delta_low"], row["delta_high"] = delta_ci(mse, base[forecast], draws)
            row["peak_mib_per_image"] = peak / 2**20 / min(args.batch, args.images)
            rows.append(row)
            delta = (
                f"  Δ vs index {row['delta']:+.2f} [{row['delta_low']:+.2f}, {row['delta_high']:+.2f}]"
                if ("delta" in row)
                else ""
            )
            print(
                f"N={n} {forecast:>14} {coordinate or '(own steps)':>8}: {row['psnr']:.2f} dB "
                f"[{row['low']:.2f}, {row['high']:.2f}]{delta}",
                flush=True,
            )
    print("\n| N | forecast | positions | PSNR dB (95 % CI) | Δ vs index (95 % CI) |\n|---|---|---|---|---|")
    for r in rows:
        d = f"{r['delta']:+.2f} ({r['delta_low']:+.2f}, {r['delta_high']:+.2f})" if "delta" in r else ""
        print(
            f"| {r['interval']} | {r['forecast']} | {r['positions'] or 'its step count'} | "
            f"{r['psnr']:.2f} ({r['low']:.2f}, {r['high']:.2f}) | {d} |"
        )
    if args.json:
        meta = {"model": args.model, "sampler": sampler.name, "evaluations": E, "images": args.images}
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
