"""TaylorSeer (Liu et al., 2025): computed every N-th evaluation, forecast in between by a Taylor expansion of order
O from finite differences of the sub-layer's last computed outputs (TaylorSeer's own form, l2c.cache.schedules).

Knob: the interval N; one method per order O ∈ {1, 2}. The forecast's arithmetic runs on the device and is counted
in MACs (l2c.cache.macs) and in the measured latency.
"""

from __future__ import annotations

from functools import partial

from ..cache.schedules import taylorseer
from .base import MethodSpec, Point, SweepContext


def _point(order: int, ctx: SweepContext, interval: float) -> Point:
    n = int(interval)
    plan = taylorseer(ctx.evaluations, ctx.num_sublayers, n, order)
    name = f"taylorseer-o{order}"
    return Point(name, f"TaylorSeer O{order}, N = {n}", "interval", n, ctx.sampler, ctx.steps, plan)


def _spec(order: int) -> MethodSpec:
    return MethodSpec(
        f"taylorseer-o{order}", f"TaylorSeer O{order}", "interval", lambda ctx: [2, 3, 4, 5, 6], partial(_point, order)
    )


TAYLORSEER_O1 = _spec(1)
TAYLORSEER_O2 = _spec(2)
