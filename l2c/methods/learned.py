"""l2c's learned schedules (beyond the paper): compute / forecast per evaluation and sub-layer, trained along the
cached sampler's own trajectory to a MAC budget (`l2c train-router --target-macs`; l2c.training.trajectory).

Knob: the MAC fraction. Each schedule router file gives one point at the budget it was trained for; a value asked
for with `--values learned=...` exports the router whose training budget is closest at exactly that fraction
(l2c.router.budget.threshold_for_budget).
"""

from __future__ import annotations

from ..router.budget import schedule_form, schedule_scores, threshold_for_budget
from .base import MethodSpec, Point, SweepContext


def _defaults(ctx: SweepContext) -> list[float]:
    targets = sorted(float(meta["target_macs"]) for _, _, meta in ctx.schedule_routers)
    twins = sorted({t for t in targets if targets.count(t) > 1})
    if twins:  # a point is a budget: the second file would silently be measured as the first
        files = [path for path, _, meta in ctx.schedule_routers if float(meta["target_macs"]) == twins[0]]
        raise ValueError(
            f"schedule routers {', '.join(files)} were trained for the same MAC fraction {twins[0]}: "
            "sweep them in separate runs (--out)"
        )
    return targets


def _point(ctx: SweepContext, fraction: float) -> Point:
    path, router, meta = min(ctx.schedule_routers, key=lambda r: abs(float(r[2]["target_macs"]) - fraction))
    theta, plan, met = threshold_for_budget(
        schedule_scores(router), fraction, ctx.macs, meta["action"], meta.get("max_skip"), schedule_form(meta)
    )
    label = f"learned schedule, MACs {met:.2f}"
    info = {"router": str(path), "threshold": theta, "trained_for": meta["target_macs"], "met_macs": met}
    return Point("learned", label, "MAC fraction", fraction, ctx.sampler, ctx.steps, plan, info=info)


LEARNED = MethodSpec("learned", "l2c learned schedule", "MAC fraction", _defaults, _point, needs=("schedule_routers",))
