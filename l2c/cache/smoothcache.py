"""SmoothCache (Liu et al., 2024): a training-free static plan from calibrated layer-output changes.

Calibration samples a few images without caching and records every sub-layer's output at every evaluation. The
relative L1 change of reusing the output of evaluation s at evaluation t, ||o_t - o_s||_1 / ||o_s||_1, is averaged
over the sub-layers of one kind (l2c.cache.layout.KINDS: attention and MLP for DiT; joint attention, MLP, context MLP
and fused for FLUX), as SmoothCache does per layer type. The plan then walks the evaluations: a kind is reused while
the change since its last computed evaluation stays below α (and at most `max_reuse` evaluations in a row), and
computed otherwise. All sub-layers of a kind share one schedule. The calibration's rows are the model's kinds in
order of first appearance (`kind_rows`).
"""

from __future__ import annotations

import torch

from .layout import describe, pair_kinds
from .plan import CachePlan


def kind_rows(kinds: list[str]) -> list[str]:
    """The calibration's rows: the kinds present, in order of first appearance (DiT / U-ViT: self_attn, mlp)."""
    return list(dict.fromkeys(kinds))


def _flat(out) -> torch.Tensor:
    # a joint attention returns (image, text): its change is measured over both streams
    parts = out if isinstance(out, tuple) else (out,)
    return torch.cat([p.detach().float().flatten() for p in parts if isinstance(p, torch.Tensor)])


@torch.no_grad()
def calibrate_changes(model, run_sampling, num_evaluations: int) -> torch.Tensor:
    """(K, S, S) mean relative L1 change per sub-layer kind, [kind, s, t] for reusing s at t > s; the K rows are
    `kind_rows` of the model's kinds (DiT / U-ViT: 0 attention, 1 MLP).

    run_sampling(): one uncached sampling run of the model (a few images); every sub-layer must be called the same
    number of times per evaluation (one call with batched guidance, two with separate-call guidance).
    """
    layout = describe(model)
    kinds = [s.kind for s in layout]
    calls: list[list[torch.Tensor]] = [[] for _ in layout]
    handles = [
        s.module.register_forward_hook(lambda mod, inp, out, i=i: calls[i].append(_flat(out)))
        for i, s in enumerate(layout)
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
    rows = kind_rows(kinds)
    changes = torch.zeros(len(rows), num_evaluations, num_evaluations)
    for index, c in enumerate(calls):
        row = rows.index(kinds[index])
        outputs = [torch.cat(c[j * per_eval : (j + 1) * per_eval]) for j in range(num_evaluations)]
        norms = torch.stack([o.abs().sum() for o in outputs]).clamp_min(1e-12)
        for s in range(num_evaluations):
            for t in range(s + 1, num_evaluations):
                changes[row, s, t] += (outputs[t] - outputs[s]).abs().sum() / norms[s]
    counts = torch.tensor([kinds.count(k) for k in rows], dtype=changes.dtype)
    return changes / counts[:, None, None]


def _kinds(changes: torch.Tensor, kinds: list[str] | int) -> list[str]:
    # an int is a sub-layer count in our DiT / U-ViT order (attention, MLP per block)
    kinds = pair_kinds(kinds) if isinstance(kinds, int) else list(kinds)
    if len(kind_rows(kinds)) != changes.shape[0]:
        raise ValueError(
            f"the calibration has {changes.shape[0]} kinds, the model's sub-layers {len(kind_rows(kinds))} "
            f"({', '.join(kind_rows(kinds))}): pass the kinds of the calibrated model (l2c.cache.layout.sublayer_kinds)"
        )
    return kinds


def smoothcache_plan(changes: torch.Tensor, kinds: list[str] | int, alpha: float, max_reuse: int = 3) -> CachePlan:
    """Reuse a kind while its change since the last computed evaluation is below α (≤ max_reuse in a row).

    kinds: each sub-layer's kind, plan order (l2c.cache.layout.sublayer_kinds), or the sub-layer count of a model in
    our DiT / U-ViT order."""
    kinds = _kinds(changes, kinds)
    num_evaluations = changes.shape[1]
    compute = torch.ones(num_evaluations, len(kinds), dtype=torch.bool)
    for row, kind in enumerate(kind_rows(kinds)):
        cols = torch.tensor([k == kind for k in kinds])
        last = 0
        for t in range(1, num_evaluations):
            if t - last <= max_reuse and float(changes[row, last, t]) < alpha:
                compute[t, cols] = False
            else:
                last = t
    return CachePlan(compute)


def alpha_for_budget(changes: torch.Tensor, kinds: list[str] | int, reuse: int, max_reuse: int = 3) -> float:
    """The α whose plan reuses the number of sub-layer evaluations closest to `reuse` (ties: the smaller α);
    `kinds` as for `smoothcache_plan`."""
    candidates = sorted({float(v) for v in changes[changes > 0].flatten()})
    # A plan changes only when α passes one of the calibrated values: try just above each of them.
    best_alpha, best_gap = 0.0, reuse
    for v in candidates:
        alpha = v * (1 + 1e-6)
        gap = abs(int((~smoothcache_plan(changes, kinds, alpha, max_reuse).compute).sum()) - reuse)
        if gap < best_gap:
            best_alpha, best_gap = alpha, gap
    return best_alpha
