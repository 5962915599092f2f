"""Schedules over every evaluation: a router's scores to a plan that meets a MAC budget exactly.

A schedule router holds one score per (evaluation, sub-layer) for every evaluation after the first (its cache steps
are 1 .. E − 1) and names, in its file, what a cell that is not computed does (`action`: reuse, forecast1 or
forecast2 or foca, one for all sub-layers or a list with one per sub-layer, as the schedule search chooses them). At
export the computed cells are taken in order of score until the plan's MACs — counted exactly, forecasting
arithmetic included — reach the target; the threshold θ between the last taken and the first left score is stored.
"""

from __future__ import annotations

import torch

from ..cache.macs import MacProfile
from ..cache.plan import COMPUTE, FOCA, FORECAST1, FORECAST2, REUSE, CachePlan
from .router import Router

ACTION_CODES = {"reuse": REUSE, "forecast1": FORECAST1, "forecast2": FORECAST2, "foca": FOCA}


def schedule_plan(
    scores: torch.Tensor, threshold: float, action: str | list[str], max_skip: int | None, form: str
) -> CachePlan:
    """Compute cell (j, l) iff its score > θ (evaluation 0 always); `action` (or action[l]) elsewhere; then force
    computes where a sub-layer would go more than `max_skip` evaluations in a row without one."""
    compute = scores > threshold
    compute[0] = True
    compute = _cap(compute, max_skip)
    otherwise = action_codes(action, scores.shape[1]).expand_as(compute)
    return CachePlan.from_actions(torch.where(compute, COMPUTE, otherwise), form=form, max_skip=max_skip)


def action_codes(action: str | list[str], num_sublayers: int) -> torch.Tensor:
    """(L,) int8 action codes from one action name or one per sub-layer."""
    names = [action] * num_sublayers if isinstance(action, str) else list(action)
    unknown = sorted(set(names) - set(ACTION_CODES))
    if unknown:
        raise ValueError(f"unknown action {unknown[0]!r}; use one of {', '.join(ACTION_CODES)}")
    if len(names) != num_sublayers:
        raise ValueError(f"{len(names)} actions for {num_sublayers} sub-layers")
    return torch.tensor([ACTION_CODES[a] for a in names], dtype=torch.int8)


def action_names(actions: torch.Tensor) -> str | list[str]:
    """The inverse for an (E, L) action table: the action of each column's non-computed cells, one name when all
    columns agree. A column must not mix actions (the search never makes one)."""
    names = {code: name for name, code in ACTION_CODES.items()}
    per_column = []
    for column in actions.T.tolist():
        skipped = {a for a in column if a != COMPUTE}
        if len(skipped) > 1:
            raise ValueError(f"a sub-layer mixes actions {sorted(skipped)}: a schedule router stores one per sub-layer")
        per_column.append(names[skipped.pop()] if skipped else None)
    chosen = {n for n in per_column if n is not None}
    default = sorted(chosen)[0] if chosen else "forecast2"
    per_column = [n or default for n in per_column]  # an always-computed sub-layer: any action, never used
    return per_column[0] if len(set(per_column)) == 1 else per_column


def _cap(compute: torch.Tensor, max_skip: int | None) -> torch.Tensor:
    if max_skip is None:
        return compute
    compute = compute.clone()
    run = torch.zeros(compute.shape[1], dtype=torch.long)
    for j in range(compute.shape[0]):
        run = torch.where(compute[j], 0, run + 1)
        over = run > max_skip
        compute[j] |= over
        run[over] = 0
    return compute


def threshold_for_budget(
    scores: torch.Tensor,
    target: float,
    macs: MacProfile,
    action: str | list[str],
    max_skip: int | None,
    form: str,  # no default: an export in another form than the file's was a bug (docs/benchmarks.md)
) -> tuple[float, CachePlan, float]:
    """(θ, plan, met fraction): the most computed cells, by score, whose plan costs at most `target`."""
    if not 0.0 < target <= 1.0:
        raise ValueError(f"the target MAC fraction must be in (0, 1], got {target}")
    values = scores[1:].flatten().unique().sort(descending=True).values  # candidate θ = each distinct score
    candidates = torch.cat([values, values.new_tensor([float("-inf")])])

    def plan_at(k: int):  # θ = the k-th largest distinct score: the k best scores computed (k = 0: none)
        theta = float(candidates[k])
        plan = schedule_plan(scores, theta, action, max_skip, form)
        return theta, plan, macs.fraction(plan)

    lo, hi = 0, len(values)  # the largest k with fraction <= target, by bisection (cost grows with k)
    best = plan_at(0)
    if best[2] > target:
        raise ValueError(
            f"the target fraction {target:.3f} (of the uncached MACs, or of its predicted time) is below what "
            "evaluation 0 and the cap alone cost "
            f"({best[2]:.3f}): ask for a smaller speedup or a larger --max-skip"
        )
    while lo < hi:
        mid = (lo + hi + 1) // 2
        candidate = plan_at(mid)
        if candidate[2] <= target:
            lo, best = mid, candidate
        else:
            hi = mid - 1
    return best


def schedule_scores(router: Router) -> torch.Tensor:
    """Scores of a schedule router in float64: sigmoid saturates to 1.0 in float32 for logits above ~17."""
    return torch.sigmoid(router.logits.detach().double().cpu())


def schedule_form(meta: dict) -> str:
    """The forecast form a schedule router file was searched with (files from before forms were stored: Newton's).
    Every export of the file must use it: the two forms differ by 1-2 dB at equal MACs (docs/benchmarks.md)."""
    return meta.get("form", "newton")


def router_plan(router: Router, meta: dict, threshold: float | None = None) -> CachePlan:
    """The plan a router file describes: a schedule over every evaluation (meta kind "schedule") or the paper's
    alternation. θ defaults to the file's own."""
    threshold = meta.get("threshold", 0.5) if threshold is None else threshold
    if meta.get("kind") == "schedule":
        scores = schedule_scores(router)
        return schedule_plan(scores, threshold, meta["action"], meta.get("max_skip"), schedule_form(meta))
    return router.to_plan(threshold)
