"""l2c's learned schedules (beyond the paper): compute / forecast per evaluation and sub-layer, trained along the
cached sampler's own trajectory to a MAC budget (`l2c train-router --target-macs`; l2c.training.trajectory).

Knob: the MAC fraction. Each schedule router file gives one point at the budget it was trained for (a
`--target-speedup` schedule, budgeted in predicted time: at the MAC fraction it spends, running the file's own plan
as `l2c sample` does); a value asked for with `--values learned=...` exports the router whose budget is closest at
exactly that fraction (l2c.router.budget.threshold_for_budget).
"""

from __future__ import annotations

from ..router.budget import router_plan, schedule_form, schedule_scores, threshold_for_budget
from .base import MethodSpec, Point, SweepContext


def _budget(meta: dict) -> float:
    """The MAC fraction a schedule file stands for: its MAC target, or for a time budget the fraction it spends."""
    return float(meta["target_macs"] if meta.get("target_macs") is not None else meta["met_macs"])


def _defaults(ctx: SweepContext) -> list[float]:
    targets = sorted(_budget(meta) for _, _, meta in ctx.schedule_routers)
    twins = sorted({t for t in targets if targets.count(t) > 1})
    if twins:  # a point is a budget: the second file would silently be measured as the first
        files = [path for path, _, meta in ctx.schedule_routers if _budget(meta) == twins[0]]
        raise ValueError(
            f"schedule routers {', '.join(files)} were trained for the same MAC fraction {twins[0]}: "
            "sweep them in separate runs (--out)"
        )
    return targets


def _point(ctx: SweepContext, fraction: float) -> Point:
    path, router, meta = min(ctx.schedule_routers, key=lambda r: abs(_budget(r[2]) - fraction))
    if meta.get("target_macs") is None and fraction == _budget(meta):
        plan = router_plan(router, meta)  # a time budget: the searched plan itself, at the θ the file keeps
        theta, met = meta.get("threshold", 0.5), ctx.macs.fraction(plan)
    else:
        theta, plan, met = threshold_for_budget(
            schedule_scores(router), fraction, ctx.macs, meta["action"], meta.get("max_skip"), schedule_form(meta)
        )
    label = f"learned schedule, MACs {met:.2f}"
    info = {"router": str(path), "threshold": theta, "trained_for": _budget(meta), "met_macs": met}
    if meta.get("target_time") is not None:
        info["target_time"] = meta["target_time"]
    return Point("learned", label, "MAC fraction", fraction, ctx.sampler, ctx.steps, plan, info=info)


LEARNED = MethodSpec("learned", "l2c learned schedule", "MAC fraction", _defaults, _point, needs=("schedule_routers",))
