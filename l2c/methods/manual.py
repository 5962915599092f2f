"""The paper's "Manual" selections at a budget (Fig. 4): random sub-layers, from the bottom, from the top, and the
smallest single-layer caching error ("Manual: Metrics"), all reusing sub-layers in the sampler's cache steps only.

Knob: `removed`, the share of the cache steps' sub-layers reused (1.0 = every cache step fully reused). The reused
sets are nested as the share grows (one fixed ranking per method), so cost falls monotonically.
"""

from __future__ import annotations

from functools import partial

from ..cache.baselines import depth_plan, error_plan, random_plan
from .base import MethodSpec, Point, SweepContext, reuse_budget

SHARES = [0.25, 0.5, 0.75, 1.0]
TITLES = {"random": "random sub-layers", "bottom": "from bottom", "top": "from top", "error": "smallest error"}


def _plan(kind: str, ctx: SweepContext, reuse: int):
    n, layers, steps = ctx.evaluations, ctx.num_sublayers, ctx.cache_steps
    if kind == "random":
        return random_plan(n, layers, steps, reuse, seed=0)
    if kind == "error":
        return error_plan(n, steps, ctx.errors(), reuse)
    return depth_plan(n, layers, steps, reuse, from_top=kind == "top")


def _point(kind: str, ctx: SweepContext, share: float) -> Point:
    plan = _plan(kind, ctx, reuse_budget(ctx, share))
    label = f"{TITLES[kind]}, {share:.0%} removed"
    return Point(kind, label, "removed", share, ctx.sampler, ctx.steps, plan)


def _spec(kind: str) -> MethodSpec:
    needs = ("errors",) if kind == "error" else ()
    return MethodSpec(kind, TITLES[kind], "removed", lambda ctx: list(SHARES), partial(_point, kind), needs)


RANDOM, BOTTOM, TOP, ERROR = (_spec(k) for k in ("random", "bottom", "top", "error"))
