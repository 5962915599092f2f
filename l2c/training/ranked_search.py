"""The schedule search, ranked: each unit measured once, then taken in order (the default of train-router).

The exhaustive search (l2c.training.schedule_search) measures every move on its 64 held-out images, and its
starts and fills pass over every candidate again for each unit they add or remove. Here:

* **Moves are screened** on a small subset of the held-out images (`screen`, the first 16 by default): every
  budget-neutral move of a round is measured there once, and those that lower the screened error are ranked by it;
  then, best first, each is applied to the table as it stands (moves made impossible by an earlier one are
  skipped), screened again if the table changed since the ranking, and confirmed on the whole held-out set and the
  check set, as the exhaustive search keeps a move. Most moves fail the screen, at a quarter of the cost.
* **Moves apply to the current table.** The exhaustive search builds a round's candidates from its starting table,
  so a candidate tried after a kept move undoes that move, and its run resumes from before it.
* **Trimming, growing and filling rank once**: one pass measures removing (or adding) each unit, then units are
  removed or added in that order, instead of one pass per unit.

Every function honours a Deadline (train-router --search-minutes): when it passes, the search stops at once with
the best plan it holds within the budget; a trim that the deadline interrupts still removes what the budget needs,
in the order measured so far, so the plan returned always meets the budget.
"""

from __future__ import annotations

import torch

from ..cache.layout import group_by_block, pairs
from ..cache.macs import MacProfile
from ..cache.plan import COMPUTE, FORECAST2, CachePlan
from ..utils.progress import progress_bar
from .deadline import NEVER, Deadline
from .schedule_search import _LOWER, SearchTrace, _resume_from


def keyed_moves(actions: torch.Tensor, blocks: list[list[int]] | None = None):
    """(key, candidate table) of schedule_search._moves, in its order; apply_move(actions, key) rebuilds the
    candidate from a key on another table."""
    E, L = actions.shape
    blocks = group_by_block(pairs(L)) if blocks is None else blocks
    computed = actions == COMPUTE
    full = [j for j in range(1, E) if bool(computed[j].all())]
    keys = [("step", j, k) for j in full for k in (j - 1, j + 1)]
    keys += [("block", j, b, k) for j in full for b in range(len(blocks)) for k in (j - 1, j + 1)]
    for l, current in enumerate(_skip_actions(actions)):
        keys += [("action", l, lower) for lower in (_LOWER.get(current, ()) if current is not None else ())]
    for key in keys:
        moved = apply_move(actions, key, blocks)
        if moved is not None:
            yield key, moved


def apply_move(actions: torch.Tensor, key: tuple, blocks: list[list[int]]) -> torch.Tensor | None:
    """The table with move `key` made (l2c.training.schedule_search._moves), or None where the table no longer
    allows it (its evaluation is no longer fully computed, its target computes already, its action changed)."""
    E, L = actions.shape
    computed = actions == COMPUTE
    skip_action = _skip_actions(actions)
    fallback = next((a for a in skip_action if a is not None), FORECAST2)  # as _moves falls back
    skip_row = torch.tensor([fallback if a is None else a for a in skip_action], dtype=actions.dtype)
    kind = key[0]
    if kind == "action":
        _, l, lower = key
        if skip_action[l] is None or lower not in _LOWER.get(skip_action[l], ()):
            return None
        moved = actions.clone()
        moved[~computed[:, l], l] = lower
        return moved
    j, k = key[1], key[-1]
    if not (0 < j < E and 0 < k < E and bool(computed[j].all())):
        return None
    cols = list(range(L)) if kind == "step" else blocks[key[2]]
    if bool(computed[k, cols].any()):
        return None
    moved = actions.clone()
    moved[j, cols], moved[k, cols] = skip_row[cols], COMPUTE
    return moved


def _skip_actions(actions: torch.Tensor) -> list[int | None]:
    """Each sub-layer's action where it is not computed (None: computed throughout)."""
    return [next((int(a) for a in actions[:, l].tolist() if a != COMPUTE), None) for l in range(actions.shape[1])]


def refine_ranked(
    actions: torch.Tensor,
    error,
    screen,
    form: str = "newton",
    rounds: int = 2,
    max_skip: int | None = None,
    progress: bool = True,
    check=None,
    start_error: float | None = None,
    blocks: list[list[int]] | None = None,
    deadline: Deadline = NEVER,
) -> tuple[torch.Tensor, SearchTrace]:
    """schedule_search.refine's moves and acceptance (the error falls, and the check error given `check`), each
    round's moves screened on `screen` and tried best first (module docstring). Returns the table and its trace."""
    actions, trace = actions.clone(), SearchTrace()
    if not bool((actions != COMPUTE).any()):
        return actions, trace
    E, L = actions.shape
    blocks = group_by_block(pairs(L)) if blocks is None else blocks
    start = CachePlan.from_actions(actions, form=form, max_skip=max_skip)
    best = error(start) if start_error is None else start_error
    best_check = check(start) if check is not None else None
    best_screen = best if screen is error else screen(start)
    for measure in (error, check, screen):
        _resume_from(measure, start)
    trace.errors.append(best)
    if check is not None:
        trace.checks.append(best_check)
    for r in range(rounds):
        ranked, ranked_from = [], actions
        moves = list(keyed_moves(actions, blocks))
        for key, candidate in progress_bar(moves, desc=f"screening moves ({r + 1})", disable=not progress):
            if deadline.passed(f"round {r + 1} of the moves, screening"):
                return actions, trace
            plan = _plan(candidate, form, max_skip)
            if plan is not None and (value := screen(plan)) < best_screen:
                ranked.append((value, len(ranked), key))
        improved = False
        for value, _, key in progress_bar(sorted(ranked), desc=f"confirming moves ({r + 1})", disable=not progress):
            if deadline.passed(f"round {r + 1} of the moves, confirming"):
                return actions, trace
            candidate = apply_move(actions, key, blocks)
            plan = None if candidate is None else _plan(candidate, form, max_skip)
            if plan is None:
                continue
            if actions is not ranked_from and not (value := screen(plan)) < best_screen:
                continue  # screened against a table that has changed since
            full = value if screen is error else error(plan)
            if not full < best:
                continue
            if check is not None:
                confirmed = check(plan)
                if not confirmed < best_check:
                    trace.rejected += 1
                    continue
                best_check = confirmed
                trace.checks.append(confirmed)
            for measure in (error, check, screen):
                _resume_from(measure, plan)
            actions, best, best_screen, improved = candidate, full, value, True
            trace.errors.append(best)
        if not improved:
            break
    return actions, trace


def trim_ranked(
    actions: torch.Tensor,
    error,
    macs: MacProfile,
    target: float,
    skipped: int,
    form: str = "newton",
    max_skip: int | None = None,
    progress: bool = True,
    blocks: list[list[int]] | None = None,
    deadline: Deadline = NEVER,
) -> tuple[torch.Tensor, float]:
    """schedule_search.trim_to_budget with one pass: the error of removing each block computation (all sub-layers of
    a block at one evaluation after the first) measured once, then removals least harmful first until the plan costs
    at most `target`. Blocks the deadline left unmeasured come last, in their order. Returns the table and its
    error (None when the deadline left no time to measure it)."""
    actions = actions.clone()
    E, L = actions.shape
    blocks = group_by_block(pairs(L)) if blocks is None else blocks
    if macs.fraction(CachePlan.from_actions(actions, form=form)) > target:
        _resume_from(error, CachePlan.from_actions(actions, form=form, max_skip=max_skip))
        cells = [(j, cols) for j in range(1, E) for cols in blocks if bool((actions[j, cols] == COMPUTE).all())]
        harm, tried = [], 0
        for i, (j, cols) in enumerate(progress_bar(cells, desc="trimming to the budget", disable=not progress)):
            if deadline.passed("the trimmed start"):
                break
            tried = i + 1
            candidate = actions.clone()
            candidate[j, cols] = skipped
            plan = _plan(candidate, form, max_skip)
            if plan is not None:
                harm.append((error(plan), i))
        order = [i for _, i in sorted(harm)] + list(range(tried, len(cells)))
        for i in order:
            j, cols = cells[i]
            candidate = actions.clone()
            candidate[j, cols] = skipped
            if _plan(candidate, form, max_skip) is None:
                continue
            actions = candidate
            if macs.fraction(CachePlan.from_actions(actions, form=form)) <= target:
                break
        else:
            raise ValueError(f"no block computation can be removed to reach {target:.3f} of the MACs")
    if deadline.passed("the trimmed start"):
        return actions, None
    return actions, error(CachePlan.from_actions(actions, form=form, max_skip=max_skip))


def grow_ranked(
    actions: torch.Tensor,
    error,
    macs: MacProfile,
    target: float,
    form: str = "newton",
    max_skip: int | None = None,
    progress: bool = True,
    check=None,
    deadline: Deadline = NEVER,
) -> tuple[torch.Tensor, float, list[int], str]:
    """schedule_search.grow_to_budget with one pass: the error of adding each whole evaluation measured once, then
    evaluations added in that order while one fits, each kept only if it lowers the error (and the check error);
    the first that does not ends the growth. Returns the table, its error, the evaluations added and why it stopped
    ("budget", "error", "check", or "time" when the deadline passed)."""
    actions = actions.clone()
    plan = CachePlan.from_actions(actions, form=form, max_skip=max_skip)
    value = error(plan)
    best_check = check(plan) if check is not None else None
    _resume_from(error, plan)
    _resume_from(check, plan)
    rows = [j for j in range(1, len(actions)) if not bool((actions[j] == COMPUTE).all())]
    gains = []
    for j in progress_bar(rows, desc="growing to the budget", disable=not progress):
        if deadline.passed("the grown start"):
            return actions, value, [], "time"
        grown = _with(actions, j)
        if macs.fraction(CachePlan.from_actions(grown, form=form)) <= target:
            gains.append((error(CachePlan.from_actions(grown, form=form, max_skip=max_skip)), j))
    added = []
    for first, j in sorted(gains):
        if deadline.passed("the grown start"):
            return actions, value, added, "time"
        grown = _with(actions, j)
        if macs.fraction(CachePlan.from_actions(grown, form=form)) > target:
            continue
        plan = CachePlan.from_actions(grown, form=form, max_skip=max_skip)
        measured = first if not added else error(plan)  # the first is measured on the table it was ranked on
        if not measured < value:
            return actions, value, added, "error"
        if check is not None:
            confirmed = check(plan)
            if not confirmed < best_check:
                return actions, value, added, "check"
            best_check = confirmed
        _resume_from(error, plan)
        _resume_from(check, plan)
        actions, value = grown, measured
        added.append(j)
    return actions, value, added, "budget"


def fill_ranked(
    actions: torch.Tensor,
    error,
    macs: MacProfile,
    target: float,
    form: str = "newton",
    max_skip: int | None = None,
    progress: bool = True,
    blocks: list[list[int]] | None = None,
    deadline: Deadline = NEVER,
) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """schedule_search.fill_budget with one pass: the error of adding each block computation measured once, then
    blocks added lowest error first while they fit (whatever the error, as fill_budget does). Returns the table and
    the (evaluation, block) cells added in order."""
    actions, added = actions.clone(), []
    E, L = actions.shape
    blocks = group_by_block(pairs(L)) if blocks is None else blocks
    _resume_from(error, CachePlan.from_actions(actions, form=form, max_skip=max_skip))
    cells = [
        (j, b) for j in range(1, E) for b, cols in enumerate(blocks) if not bool((actions[j, cols] == COMPUTE).all())
    ]
    measured = []
    for j, b in progress_bar(cells, desc="filling the budget", disable=not progress):
        if deadline.passed("the fill"):
            return actions, added
        candidate = actions.clone()
        candidate[j, blocks[b]] = COMPUTE
        plan = CachePlan.from_actions(candidate, form=form, max_skip=max_skip)
        if macs.fraction(plan) <= target:
            measured.append((error(plan), (j, b)))
    for _, (j, b) in sorted(measured):
        candidate = actions.clone()
        candidate[j, blocks[b]] = COMPUTE
        if macs.fraction(CachePlan.from_actions(candidate, form=form)) <= target:
            actions = candidate
            added.append((j, b))
    return actions, added


def _with(actions: torch.Tensor, row: int) -> torch.Tensor:
    grown = actions.clone()
    grown[row] = COMPUTE
    return grown


def _plan(actions: torch.Tensor, form: str, max_skip: int | None) -> CachePlan | None:
    try:
        return CachePlan.from_actions(actions, form=form, max_skip=max_skip)
    except ValueError:  # over the skip cap
        return None
