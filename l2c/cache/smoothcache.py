"""SmoothCache (Liu et al., 2024): a training-free static plan from calibrated layer-output changes.

Calibration samples a few images without caching and records every sub-layer's output at every evaluation. The
relative L1 change of reusing the output of evaluation s at evaluation t, ||o_t - o_s||_1 / ||o_s||_1, is averaged
over the sub-layers of one kind (attention, MLP), as SmoothCache does per layer type. The plan then walks the
evaluations: a kind is reused while the change since its last computed evaluation stays below α (and at most
`max_reuse` evaluations in a row), and computed otherwise. All sub-layers of a kind share one schedule.
"""

from __future__ import annotations

import torch

from .layout import sublayers
from .plan import CachePlan


@torch.no_grad()
def calibrate_changes(model, run_sampling, num_evaluations: int) -> torch.Tensor:
    """(2, S, S) mean relative L1 change per kind (0 attention, 1 MLP), [kind, s, t] for reusing s at t > s.

    run_sampling(): one uncached sampling run of the model (a few images); every sub-layer must be called the same
    number of times per evaluation (one call with batched guidance, two with separate-call guidance).
    """
    modules = sublayers(model)
    calls: list[list[torch.Tensor]] = [[] for _ in modules]
    handles = [
        m.register_forward_hook(lambda mod, inp, out, i=i: calls[i].append(out.detach().float().clone()))
        for i, m in enumerate(modules)
    ]
    try:
        run_sampling()
    finally:
        for h in handles:
            h.remove()
    per_eval = len(calls[0]) // num_evaluations
    if per_eval == 0 or any(len(c) != per_eval * num_evaluations for c in calls):
        raise ValueError(
            f"calibration saw {[len(c) for c in calls][:4]}... sub-layer calls for {num_evaluations} evaluations: "
            "the sampling run must match the plan's step count"
        )
    changes = torch.zeros(2, num_evaluations, num_evaluations)
    for index, c in enumerate(calls):
        outputs = [torch.cat(c[j * per_eval : (j + 1) * per_eval]) for j in range(num_evaluations)]
        norms = torch.stack([o.abs().sum() for o in outputs]).clamp_min(1e-12)
        for s in range(num_evaluations):
            for t in range(s + 1, num_evaluations):
                changes[index % 2, s, t] += (outputs[t] - outputs[s]).abs().sum() / norms[s]
    return changes / (len(modules) // 2)


def smoothcache_plan(changes: torch.Tensor, num_sublayers: int, alpha: float, max_reuse: int = 3) -> CachePlan:
    """Reuse a kind while its change since the last computed evaluation is below α (≤ max_reuse in a row)."""
    num_evaluations = changes.shape[1]
    compute = torch.ones(num_evaluations, num_sublayers, dtype=torch.bool)
    for kind in range(2):
        last = 0
        for t in range(1, num_evaluations):
            if t - last <= max_reuse and float(changes[kind, last, t]) < alpha:
                compute[t, kind::2] = False
            else:
                last = t
    return CachePlan(compute)


def alpha_for_budget(changes: torch.Tensor, num_sublayers: int, reuse: int, max_reuse: int = 3) -> float:
    """The α whose plan reuses the number of sub-layer evaluations closest to `reuse` (ties: the smaller α)."""
    candidates = sorted({float(v) for v in changes[changes > 0].flatten()})
    # A plan changes only when α passes one of the calibrated values: try just above each of them.
    best_alpha, best_gap = 0.0, reuse
    for v in candidates:
        alpha = v * (1 + 1e-6)
        gap = abs(int((~smoothcache_plan(changes, num_sublayers, alpha, max_reuse).compute).sum()) - reuse)
        if gap < best_gap:
            best_alpha, best_gap = alpha, gap
    return best_alpha
