"""Refining a schedule by search along its own trajectory, at a fixed budget.

Gradient training of the schedule (l2c.training.trajectory) estimates the effect of flipping one cell from the
sigmoid's slope; on dit-mnist those estimates were poor (a computed evaluation is an anchor of every later
forecast, so a flip changes far more than its own output) and training from TaylorSeer's schedule made the
trajectory loss worse. This search measures instead: a candidate plan is sampled from held-out noise with the real
engine, and its final images are compared with the uncached images of the same noise (image-free: the teacher is
the model without a cache). Moves keep the MACs unchanged:

* step moves: shift one computed evaluation (all sub-layers of it) to a neighbouring evaluation;
* block moves: shift one block's computation from one computed evaluation to
  another evaluation that does not compute it (all of the block's sub-layers together);
* action moves: what one sub-layer does where it is not computed, lowered one way (second-order forecast -> first
  order -> reuse): the per-sub-layer choice between forecasting and reuse. A lower order costs fewer element-wise
  MACs, so these moves never exceed the budget.

A move is kept when the error falls, and, with a second held-out set (`check`), when it falls there too: a move
must be confirmed on noise it was not chosen on. The check costs one evaluation per move that passes the first test,
a few percent of the search. For pixel models the error is measured on the samples clipped to the image range, as
they are saved: on U-ViT NFE 20 a move that lowered the unclipped error on 1,000 unseen seeds lost 0.5 dB in 8-bit
PSNR (docs/benchmarks.md). The result is budget-exact by construction (MACs equal, or lower for action moves).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..cache.layout import group_by_block, pairs
from ..cache.macs import MacProfile
from ..cache.plan import COMPUTE, FOCA, FORECAST1, FORECAST2, REUSE, CachePlan
from ..utils.progress import progress_bar
from .deadline import NEVER, Deadline
from .trajectory_error import TrajectoryError, per_image_mse  # noqa: F401  (per_image_mse: re-exported)


@dataclass
class SearchTrace:
    errors: list[float] = field(default_factory=list)  # the search error at the start and after each kept move
    checks: list[float] = field(default_factory=list)  # the same on the check set (empty without one)
    rejected: int = 0  # moves that lowered the search error but not the check error


def refine(
    actions: torch.Tensor,
    error: TrajectoryError,
    form: str = "newton",
    rounds: int = 2,
    max_skip: int | None = None,
    progress: bool = True,
    check: TrajectoryError | None = None,
    start_error: float | None = None,
    blocks: list[list[int]] | None = None,
    deadline: Deadline = NEVER,
) -> tuple[torch.Tensor, SearchTrace]:
    """Improve an (E, L) action table by budget-neutral moves; returns it and the errors after each kept move.
    A move is kept when it lowers `error` and, given `check` (other held-out noise), lowers that too. Moves that break
    the skip cap are not tried. `start_error`: `error` of the start, when the caller has measured it already.
    `blocks`: the sub-layer indices of each block (l2c.cache.layout.group_by_block of the model's sub-layer blocks;
    default: our DiT / U-ViT order, two per block). `deadline`: stop, with the table kept so far, once it passes."""
    actions = actions.clone()
    trace = SearchTrace()
    if not bool((actions != COMPUTE).any()):
        return actions, trace
    start = CachePlan.from_actions(actions, form=form, max_skip=max_skip)
    best = error(start) if start_error is None else start_error
    best_check = check(start) if check is not None else None
    _resume_from(error, start)
    _resume_from(check, start)
    trace.errors.append(best)
    if check is not None:
        trace.checks.append(best_check)
    for r in range(rounds):
        improved = False
        for candidate in progress_bar(list(_moves(actions, blocks)), desc="schedule search", disable=not progress):
            if deadline.passed(f"round {r + 1} of the moves"):
                return actions, trace
            try:
                plan = CachePlan.from_actions(candidate, form=form, max_skip=max_skip)
            except ValueError:  # over the cap
                continue
            value = error(plan)
            if not value < best:
                continue
            if check is not None:
                confirmed = check(plan)
                if not confirmed < best_check:
                    trace.rejected += 1
                    continue
                best_check = confirmed
                trace.checks.append(confirmed)
            _resume_from(error, plan)
            _resume_from(check, plan)
            actions, best, improved = candidate, value, True
            trace.errors.append(best)
        if not improved:
            break
    return actions, trace


def trim_to_budget(
    actions: torch.Tensor,
    error: TrajectoryError,
    macs: MacProfile,
    target: float,
    skipped: int,
    form: str = "newton",
    max_skip: int | None = None,
    progress: bool = True,
    blocks: list[list[int]] | None = None,
    deadline: Deadline = NEVER,
) -> tuple[torch.Tensor, float | None]:
    """Remove block computations (all sub-layers of a block at one evaluation after the first) one at a time, each
    time the one whose removal raises the error least, until the plan costs at most `target` of the uncached MACs;
    returns the trimmed table and its error. Removed cells do `skipped`. A start for budgets just under a TaylorSeer
    interval: on dit-mnist DDIM-20 the even spread of 9 evaluations at 0.50 lost 5 dB to every other evaluation at
    0.51. `blocks`: the sub-layer indices of each block (as for `refine`). Once `deadline` passes, the best removal
    measured in the pass under way is taken, and after it the first the skip cap allows, unmeasured, until the plan
    fits: the table returned meets the budget, and its error is None."""
    actions, value = actions.clone(), None
    E, L = actions.shape
    blocks = group_by_block(pairs(L)) if blocks is None else blocks
    while macs.fraction(CachePlan.from_actions(actions, form=form)) > target:
        _resume_from(error, CachePlan.from_actions(actions, form=form, max_skip=max_skip))
        best, best_value = None, float("inf")
        cells = [(j, cols) for j in range(1, E) for cols in blocks if bool((actions[j, cols] == COMPUTE).all())]
        for j, cols in progress_bar(cells, desc="trimming to the budget", disable=not progress):
            late = deadline.passed("the trimmed start")
            if late and best is not None:
                break
            candidate = actions.clone()
            candidate[j, cols] = skipped
            try:
                plan = CachePlan.from_actions(candidate, form=form, max_skip=max_skip)
            except ValueError:  # over the skip cap
                continue
            if late:  # no time to measure: the first removal the cap allows
                best, best_value = candidate, None
                break
            value = error(plan)
            if value < best_value:
                best, best_value = candidate, value
        if best is None:
            raise ValueError(f"no block computation can be removed to reach {target:.3f} of the MACs")
        actions, value = best, best_value
    if deadline.passed("the trimmed start"):
        return actions, None
    if value is None:  # within the budget already
        value = error(CachePlan.from_actions(actions, form=form, max_skip=max_skip))
    return actions, value


def grow_to_budget(
    actions: torch.Tensor,
    error: TrajectoryError,
    macs: MacProfile,
    target: float,
    form: str = "newton",
    max_skip: int | None = None,
    progress: bool = True,
    check: TrajectoryError | None = None,
    deadline: Deadline = NEVER,
) -> tuple[torch.Tensor, float, list[int], str]:
    """Add whole evaluations to a plan one at a time, each time the one that lowers the error most, while one still
    fits within `target` of the uncached MACs and the best addition lowers the error (and, given `check`, the check
    error too); returns the grown table, its error and the evaluations added in order. A start for budgets between two
    TaylorSeer intervals: on dit-mnist DDIM-50 the most evaluations that fit 0.40, evenly spread (gaps of 2 and 3),
    lost 2 dB to N = 3 alone at 0.35 (docs/benchmarks.md) — an evaluation is added only where the held-out error says
    it helps, so the rest of the budget may stay unspent. The last value says why the growth stopped: "budget" (no
    whole evaluation more fits), "error" (none that fits lowers the error) or "check" (the best did not lower the
    check error), or "time" (`deadline` passed)."""
    actions = actions.clone()
    plan = CachePlan.from_actions(actions, form=form, max_skip=max_skip)
    value = error(plan)
    best_check = check(plan) if check is not None else None
    added: list[int] = []
    while True:
        _resume_from(error, plan)
        _resume_from(check, plan)
        rows = [(j, j) for j in range(1, len(actions)) if not bool((actions[j] == COMPUTE).all())]
        found = _best_addition(
            actions, rows, error, macs, target, form, max_skip, "growing to the budget", progress, deadline
        )
        if deadline.passed("the grown start"):
            return actions, value, added, "time"
        if found is None:
            return actions, value, added, "budget"
        best, best_value, best_row = found
        if not best_value < value:
            return actions, value, added, "error"
        grown = CachePlan.from_actions(best, form=form, max_skip=max_skip)
        if check is not None:
            confirmed = check(grown)
            if not confirmed < best_check:
                return actions, value, added, "check"
            best_check = confirmed
        actions, value, plan = best, best_value, grown
        added.append(best_row)


def fill_budget(
    actions: torch.Tensor,
    error: TrajectoryError,
    macs: MacProfile,
    target: float,
    form: str = "newton",
    max_skip: int | None = None,
    progress: bool = True,
    blocks: list[list[int]] | None = None,
    deadline: Deadline = NEVER,
) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Spend what a plan leaves of its budget: add block computations (all sub-layers of a block at one evaluation)
    one at a time, each time the one with the lowest error, whether or not it lowers the error, until none fits within
    `target`; returns the table and the (evaluation, block) cells added in order. The mirror of trim_to_budget, for
    a user who asks for the budget spent (train-router --fill-budget): growth by whole evaluations stops up to one
    evaluation short of it (0.02 of the MACs at 50 evaluations), and by default that rest stays unspent: at
    dit-mnist DDIM-50 4x, single cells added by score to fill the budget cost speed and bought nothing measurable
    (docs/benchmarks.md). Costs a pass over the cells per block added. `blocks`: the sub-layer indices of each block
    (as for `refine`); the cells added name blocks by their position in it."""
    actions, added = actions.clone(), []
    E, L = actions.shape
    blocks = group_by_block(pairs(L)) if blocks is None else blocks
    while True:
        _resume_from(error, CachePlan.from_actions(actions, form=form, max_skip=max_skip))
        cells = [
            ((j, b), (j, cols))
            for j in range(1, E)
            for b, cols in enumerate(blocks)
            if not bool((actions[j, cols] == COMPUTE).all())
        ]
        found = _best_addition(
            actions, cells, error, macs, target, form, max_skip, "filling the budget", progress, deadline
        )
        if found is None or deadline.passed("the fill"):
            return actions, added
        best, _, best_cell = found
        actions = best
        added.append(best_cell)


def fill_within_evaluation(
    actions: torch.Tensor,
    error: TrajectoryError,
    macs: MacProfile,
    target: float,
    form: str = "newton",
    max_skip: int | None = None,
    progress: bool = True,
    check: TrajectoryError | None = None,
    start_error: float | None = None,
    start_check: float | None = None,
    deadline: Deadline = NEVER,
) -> tuple[torch.Tensor, dict]:
    """Spend the rest of the budget (when less than a whole evaluation is left: where growth by whole evaluations
    stops) on sub-layers of one evaluation: the one whose whole computation lowers the error most, measured whole
    although it does not fit; then its sub-layers, each measured alone on top of the plan, added lowest error first
    while they fit. The filled plan is kept only if its error (and, given `check`, the check error) is not above the
    unfilled plan's. Returns the table and a record: the evaluation, the sub-layers added, both errors and whether
    the fill was kept. The default fill of train-router: a pass over the evaluations and one over one evaluation's
    sub-layers (about 40 + 12 candidates at dit-mnist DDIM-50, against a pass over 200-300 blocks per block added
    for fill_budget), and a sub-layer is the smallest unit a plan has, so the rest left is under one sub-layer.
    `start_error` / `start_check`: `error` / `check` of `actions`, when the caller has measured them already (the
    search's last kept values). Once `deadline` passes, the plan is returned unfilled."""
    start = CachePlan.from_actions(actions, form=form, max_skip=max_skip)
    before = error(start) if start_error is None else start_error
    record = {"evaluation": None, "sublayers": [], "error_before": before, "error_after": before, "kept": False}
    rows = [j for j in range(1, len(actions)) if not bool((actions[j] == COMPUTE).all())]
    if not rows:
        return actions, record
    _resume_from(error, start)
    units = [(j, j) for j in rows]
    whole = _each_added(actions, units, error, form, max_skip, "filling: which evaluation", progress, deadline)
    if deadline.passed("the fill"):
        return actions, record
    row = whole[0][1]
    cells = [(l, (row, l)) for l in range(actions.shape[1]) if int(actions[row, l]) != COMPUTE]
    ranked = _each_added(actions, cells, error, form, max_skip, "filling: its sub-layers", progress, deadline)
    if deadline.passed("the fill"):
        return actions, record
    filled, added = actions.clone(), []
    for _, l in ranked:
        candidate = filled.clone()
        candidate[row, l] = COMPUTE
        if macs.fraction(CachePlan.from_actions(candidate, form=form)) <= target:
            filled, added = candidate, added + [l]
    record.update(evaluation=row, sublayers=added)
    if not added:
        return actions, record
    plan = CachePlan.from_actions(filled, form=form, max_skip=max_skip)
    after = error(plan)
    record["error_after"] = after
    kept = after <= before
    if kept and check is not None:
        record["check_before"] = check(start) if start_check is None else start_check
        record["check_after"] = check(plan)
        kept = record["check_after"] <= record["check_before"]
    record["kept"] = kept
    return (filled if kept else actions), record


def _each_added(
    actions, units, error, form, max_skip, desc: str, progress: bool, deadline: Deadline = NEVER
) -> list[tuple[float, object]]:
    """(error, name) of `actions` with each of `units` ((name, index into the table)) computed as well, whatever it
    costs, lowest error first (those measured before `deadline` passed)."""
    measured = []
    for name, index in progress_bar(units, desc=desc, disable=not progress):
        if deadline.passed("the fill"):
            break
        candidate = actions.clone()
        candidate[index] = COMPUTE
        measured.append((error(CachePlan.from_actions(candidate, form=form, max_skip=max_skip)), name))
    return sorted(measured, key=lambda pair: pair[0])


def _best_addition(
    actions, units, error, macs: MacProfile, target: float, form, max_skip, desc: str, progress: bool, deadline=NEVER
):
    """Of the tables that compute what `actions` computes plus one of `units` ((name, index into the table)) within
    `target` of the uncached MACs, the one with the lowest error, as (table, error, name); None when none fits (of
    those measured before `deadline` passed)."""
    best = None
    for name, index in progress_bar(units, desc=desc, disable=not progress):
        if deadline.passed(desc):
            break
        candidate = actions.clone()
        candidate[index] = COMPUTE
        plan = CachePlan.from_actions(candidate, form=form, max_skip=max_skip)  # computing more keeps the cap
        if macs.fraction(plan) > target:
            continue
        value = error(plan)
        if best is None or value < best[1]:
            best = (candidate, value, name)
    return best


def _resume_from(error, plan: CachePlan) -> None:
    """Candidates measured next resume from `plan`'s run (TrajectoryError.adopt; a plain error function has none)."""
    adopt = getattr(error, "adopt", None)
    if adopt is not None:
        adopt(plan)


# A sub-layer's other actions the moves try: the lower orders, and FoCa's predictor-corrector (same history as order
# 1 plus one slope buffer) in either direction.
_LOWER = {FORECAST2: (FORECAST1, REUSE, FOCA), FORECAST1: (REUSE, FOCA), FOCA: (FORECAST1, REUSE), REUSE: ()}


def _moves(actions: torch.Tensor, blocks: list[list[int]] | None = None):
    """Budget-neutral neighbours: shift a fully computed evaluation by ±1, or one block's computation elsewhere; and
    lower one sub-layer's action where it is not computed. `blocks`: the sub-layer indices of each block (as for
    `refine`)."""
    E, L = actions.shape
    blocks = group_by_block(pairs(L)) if blocks is None else blocks
    computed = actions == COMPUTE
    # each sub-layer's action where it is not computed (one per column; a column computed throughout keeps none)
    skip_action = [next((int(a) for a in actions[:, l].tolist() if a != COMPUTE), None) for l in range(L)]
    fallback = next((a for a in skip_action if a is not None), FORECAST2)
    skip_row = torch.tensor([fallback if a is None else a for a in skip_action], dtype=actions.dtype)
    full = [j for j in range(1, E) if bool(computed[j].all())]
    for j in full:
        for k in (j - 1, j + 1):
            if 0 < k < E and not bool(computed[k].any()):
                moved = actions.clone()
                moved[j], moved[k] = skip_row, COMPUTE
                yield moved
    for j in full:
        for cols in blocks:
            for k in (j - 1, j + 1):
                if 0 < k < E and not bool(computed[k, cols].any()):
                    moved = actions.clone()
                    moved[j, cols], moved[k, cols] = skip_row[cols], COMPUTE
                    yield moved
    for l, current in enumerate(skip_action):
        for lower in _LOWER.get(current, ()) if current is not None else ():
            moved = actions.clone()
            moved[~computed[:, l], l] = lower
            yield moved
