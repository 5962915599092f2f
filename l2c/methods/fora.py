"""FORA (Selvaraju et al., 2024): every sub-layer computed at evaluations 0, n, 2n, ... and reused in between.

Knob: the interval n (n = 1 is the uncached run).
"""

from __future__ import annotations

from ..cache.schedules import fora
from .base import MethodSpec, Point, SweepContext


def _point(ctx: SweepContext, interval: float) -> Point:
    n = int(interval)
    plan = fora(ctx.evaluations, ctx.num_sublayers, n)
    return Point("fora", f"FORA, n = {n}", "interval", n, ctx.sampler, ctx.steps, plan)


FORA = MethodSpec("fora", "FORA", "interval", lambda ctx: [2, 3, 4, 5, 6], _point)
