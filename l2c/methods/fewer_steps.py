"""Fewer steps, no caching: the same sampler at fewer steps, and DPM-Solver++ 2M (the solver a user would pick).

Knob: steps (NFE). DPM-Solver-2 (singlestep) needs an even NFE; the grid keeps it even.
"""

from __future__ import annotations

from .base import MethodSpec, Point, SweepContext

SHARES = (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)


def _unit(sampler: str) -> int:
    return 2 if sampler == "dpm-solver-2" else 1


def step_grid(steps: int, sampler: str, include_full: bool = False) -> list[int]:
    """Step counts at SHARES of `steps` (descending), rounded to the sampler's unit, at least 2 evaluations."""
    unit = _unit(sampler)
    grid = {max(2, unit * round(steps * s / unit)) for s in SHARES}
    if include_full:
        grid.add(steps)
    return sorted((k for k in grid if k < steps or (include_full and k == steps)), reverse=True)


def _same_sampler(ctx: SweepContext, steps: float) -> Point:
    k = int(steps)
    return Point("fewer-steps", f"{ctx.sampler}, {k} steps", "steps", k, ctx.sampler, k)


def _dpm_2m(ctx: SweepContext, steps: float) -> Point:
    k = int(steps)
    return Point("dpm-solver-2m", f"DPM-Solver++ 2M, {k} steps", "steps", k, "dpm-solver-2m", k)


FEWER_STEPS = MethodSpec(
    "fewer-steps", "fewer steps", "steps", lambda ctx: step_grid(ctx.steps, ctx.sampler), _same_sampler
)
DPM_2M = MethodSpec(
    "dpm-solver-2m",
    "DPM-Solver++ 2M",
    "steps",
    lambda ctx: step_grid(ctx.steps, "dpm-solver-2m", include_full=True),
    _dpm_2m,
)
