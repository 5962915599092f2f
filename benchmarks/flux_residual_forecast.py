"""What diffusers' TaylorSeer hook forecasts on FLUX, measured on flux-mnist through FluxPipeline at fewer steps.

    python benchmarks/flux_residual_forecast.py [--images 100] [--steps 14] [--router flux-mnist-s14-1.5x.safetensors]

With every block hooked (double blocks' attn / ff / ff_context, whole single blocks) and forecast at the same
evaluations, the last single block ignores its input: the transformer's output is its output norm and head,
modulated by the current timestep, applied to an order-1 forecast of the last single block's output, the final
residual stream. This script compares, at equal computed evaluations, PSNR against the uncached images of the
benchmark's full step count (28) and of the fewer steps:

* diffusers' TaylorSeer hook (interval 2, its 3 warm-up steps, order 1) on every block;
* the last single block's output forecast at order 1 (its `forward` patched), on the hook's evaluations and on the
  evaluations the searched 14-step 1.5x schedule of docs/compare/side-by-side-flux-mnist.md computes;
* the transformer's whole output forecast at order 1 (no fresh output norm), on the hook's evaluations;
* the l2c schedule itself (--router), if given.

PSNR is the mean over images of the per-image PSNR of the uint8 digits. Results:
docs/compare/side-by-side-flux-mnist.md.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import flux_side_by_side as fsbs  # noqa: E402  (the side by side's pipeline, rows and images, reused as they are)

# The evaluations l2c's 14-step 1.5x schedule computes (the table's flux-mnist-s14-1.5x.safetensors).
L2C_EVALUATIONS = (0, 2, 4, 5, 6, 8, 10, 12)


def hook_evaluations(steps: int, interval: int, warmup: int) -> tuple[int, ...]:
    """The evaluations diffusers' TaylorSeer hook computes: its warm-up, then every `interval`-th from warm-up + 1
    (TaylorSeerCacheConfig's `(step - disable_cache_before_step - 1) % cache_interval == 0`)."""
    return tuple(s for s in range(steps) if s < warmup or (s - warmup - 1) % interval == 0)


class Forecast(fsbs.Method):
    """Order-1 forecast of `module`'s output at the evaluations not in `computed`, one history per CFG call (the
    pipeline calls the transformer for "cond", then "uncond", at every step)."""

    def __init__(self, name: str, steps: int, computed, module_of):
        self.family, self.setting, self.steps = name, f"computes {list(computed)}", steps
        self.computed, self.module_of = set(computed), module_of

    def attach(self, bench):
        self.module = self.module_of(bench.transformer)
        self.original = self.module.forward
        calls, history = [0], {}

        def forward(*args, **kwargs):
            step, guidance_call = divmod(calls[0], 2)
            calls[0] += 1
            step %= self.steps
            if step == 0 and guidance_call == 0:
                history.clear()
            seen = history.setdefault(guidance_call, [])
            if step in self.computed or len(seen) < 2:
                out = self.original(*args, **kwargs)
                self.tuple_output = isinstance(out, tuple)
                seen.append((step, [o.detach().clone() for o in (out if self.tuple_output else (out,))]))
                return out
            (s1, y1), (s2, y2) = seen[-2], seen[-1]
            ys = tuple(b + (b - a) * ((step - s2) / (s2 - s1)) for a, b in zip(y1, y2))
            return ys if self.tuple_output else ys[0]

        self.module.forward = forward

    def detach(self, bench):
        del self.module.forward  # the class's forward again


def psnr(images: np.ndarray, reference: np.ndarray) -> float:
    mse = ((images.astype(np.float64) - reference.astype(np.float64)) ** 2).reshape(len(images), -1).mean(1)
    return float(np.mean(10 * np.log10(255**2 / np.maximum(mse, 1e-10))))


def methods(args, bench) -> list[fsbs.Method]:
    from diffusers.hooks import TaylorSeerCacheConfig

    hooked = hook_evaluations(args.steps, 2, 3)

    def taylorseer(b):  # the side by side's "sub-layers" row at interval 2
        return TaylorSeerCacheConfig(
            cache_interval=2,
            max_order=1,
            disable_cache_before_step=3,
            taylor_factors_dtype=torch.float32,
            cache_identifiers=[fsbs.DOUBLE, fsbs.SINGLE],
        )

    last_block = lambda t: t.single_transformer_blocks[-1]  # noqa: E731
    rows = [
        fsbs.DiffusersHook("diffusers TaylorSeer hook, interval 2", "", taylorseer, steps=args.steps),
        Forecast("the last single block's output forecast", args.steps, hooked, last_block),
        Forecast("the last single block's output forecast", args.steps, L2C_EVALUATIONS, last_block),
        Forecast("the transformer's whole output forecast", args.steps, hooked, lambda t: t),
    ]
    if args.router:
        name = Path(args.router).name
        rows.append(fsbs.L2C("l2c schedule", name, args.router, name, steps=args.steps))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--steps", type=int, default=14, help="the fewer steps every row samples")
    p.add_argument("--router", default=None, help="an l2c schedule searched on --steps steps")
    args = p.parse_args(argv)
    bench = fsbs.Bench(fsbs.parse_args(["--images", str(args.images), "--batch-size", str(args.images)]))
    with torch.no_grad():
        full = fsbs.images_of(fsbs.sample(bench, fsbs.Method(), bench.seeds))
        fewer = fsbs.images_of(fsbs.sample(bench, fsbs.FewerSteps(args.steps), bench.seeds))
        print(f"| {args.steps} steps | setting | against {bench.steps} steps | against {args.steps} steps |")
        print("|---|---|---|---|")
        for method in methods(args, bench):
            method.attach(bench)
            try:
                x = fsbs.images_of(fsbs.sample(bench, method, bench.seeds))
            finally:
                method.detach(bench)
            print(f"| {method.key} | {psnr(x, full):.1f} dB | {psnr(x, fewer):.1f} dB |", flush=True)  # key: 2 cells
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
