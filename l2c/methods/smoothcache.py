"""SmoothCache (Liu et al., 2024): reuse a layer kind while its calibrated output change stays below α.

Knob: α. The default grid is the α of plans that remove 10 %, 20 %, ... 60 % of all sub-layer evaluations (α is a
property of the calibration, so a fixed grid would mean nothing across models).
"""

from __future__ import annotations

from ..cache.smoothcache import alpha_for_budget, smoothcache_plan
from .base import MethodSpec, Point, SweepContext

SHARES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)


def _defaults(ctx: SweepContext) -> list[float]:
    total = ctx.evaluations * ctx.num_sublayers
    changes = ctx.changes()
    return sorted({round(alpha_for_budget(changes, ctx.sublayer_kinds, round(s * total)), 6) for s in SHARES})


def _point(ctx: SweepContext, alpha: float) -> Point:
    plan = smoothcache_plan(ctx.changes(), ctx.sublayer_kinds, alpha)
    return Point("smoothcache", f"SmoothCache, α = {alpha:.3g}", "α", alpha, ctx.sampler, ctx.steps, plan)


SMOOTHCACHE = MethodSpec("smoothcache", "SmoothCache", "α", _defaults, _point, needs=("changes",))
