"""TaylorSeer (Liu et al., 2025): computed every N-th evaluation, forecast in between by a Taylor expansion of order
O from finite differences of the sub-layer's last computed outputs (TaylorSeer's own form, l2c.cache.schedules).

Knob: the interval N; one method per order O ∈ {1, 2}, and order 2 in Newton's form too ("taylorseer-o2-newton":
the quadratic through the last three computed outputs instead of TaylorSeer's k²/2 term, the same schedule and MACs,
so that what a learned schedule gains can be told apart from what the forecast form alone gains; at order 1 the two
forms are the same). The forecast's arithmetic runs on the device and is counted in MACs (l2c.cache.macs) and in
the measured latency.
"""

from __future__ import annotations

from functools import partial

from ..cache.schedules import taylorseer
from .base import MethodSpec, Point, SweepContext


def _point(order: int, form: str, ctx: SweepContext, interval: float) -> Point:
    n = int(interval)
    plan = taylorseer(ctx.evaluations, ctx.num_sublayers, n, order, form=form)
    name, label = _names(order, form)
    return Point(name, f"{label}, N = {n}", "interval", n, ctx.sampler, ctx.steps, plan)


def _names(order: int, form: str) -> tuple[str, str]:
    if form == "newton":
        return f"taylorseer-o{order}-newton", f"TaylorSeer O{order} (Newton form)"
    return f"taylorseer-o{order}", f"TaylorSeer O{order}"


def _spec(order: int, form: str = "taylorseer") -> MethodSpec:
    name, label = _names(order, form)
    return MethodSpec(name, label, "interval", lambda ctx: [2, 3, 4, 5, 6], partial(_point, order, form))


TAYLORSEER_O1 = _spec(1)
TAYLORSEER_O2 = _spec(2)
TAYLORSEER_O2_NEWTON = _spec(2, "newton")
