"""Δ-DiT (Chen et al., 2024, arXiv 2406.01125), written as reuse of a contiguous block range.

Δ-DiT observes that the front blocks of a DiT shape the outline and the rear blocks the details, and so caches the
REAR blocks in the early sampling stage and the FRONT blocks in the later stage (boundary b), refreshing the cache
every N evaluations. Here: at the paper's cache steps of the sampler (every second evaluation; U-ViT's shifted ones)
the sub-layers of the last `blocks` blocks (DiT: attention and MLP) are reused before evaluation b, those of the first
`blocks` blocks from b on; every other evaluation computes everything (N = 2). b = half the evaluations.

Approximated: Δ-Cache stores the range's residual (output minus input of the range, taken whole) and adds it to the
current input; reusing each sub-layer's output instead keeps the current step's adaLN gates and LayerNorms around
the stale outputs (DiT), so the range's contribution is rescaled by the current gates rather than replayed.

Knob: `blocks`, the number of cached blocks (N_c in the paper).
"""

from __future__ import annotations

import torch

from ..cache.layout import group_by_block, pairs
from ..cache.plan import CachePlan
from .base import MethodSpec, Point, SweepContext


def delta_dit_plan(
    num_steps: int,
    num_sublayers: int,
    cache_steps: list[int],
    blocks: int,
    boundary: int,
    sublayer_blocks: list[int] | None = None,
) -> CachePlan:
    """Reuse the sub-layers of `blocks` blocks at each cache step: the rear ones before `boundary`, the front ones
    from it on. sublayer_blocks: each sub-layer's block index (l2c.cache.layout.sublayer_blocks); None: our DiT /
    U-ViT order, two per block."""
    groups = group_by_block(pairs(num_sublayers) if sublayer_blocks is None else sublayer_blocks)
    if sum(map(len, groups)) != num_sublayers:
        raise ValueError(f"{sum(map(len, groups))} sub-layer blocks for {num_sublayers} sub-layers")
    depth = len(groups)
    if not 0 <= blocks <= depth:
        raise ValueError(f"Δ-DiT caches 0..{depth} blocks, got {blocks}")
    compute = torch.ones(num_steps, num_sublayers, dtype=torch.bool)
    for j in cache_steps:
        first = depth - blocks if j < boundary else 0  # early: rear blocks; late: front blocks
        for cols in groups[first : first + blocks]:
            compute[j, cols] = False
    return CachePlan(compute)


def _defaults(ctx: SweepContext) -> list[int]:
    # At most six block counts, evenly spread up to the whole network (which is FORA n = 2 on the cache steps).
    depth = ctx.depth
    return sorted({max(1, round(depth * k / 6)) for k in range(1, 7)})


def _point(ctx: SweepContext, blocks: float) -> Point:
    k = int(blocks)
    boundary = ctx.evaluations // 2  # b = half the evaluations
    plan = delta_dit_plan(ctx.evaluations, ctx.num_sublayers, ctx.cache_steps, k, boundary, ctx.sublayer_blocks)
    return Point("delta-dit", f"Δ-DiT, {k} blocks", "blocks", k, ctx.sampler, ctx.steps, plan)


DELTA_DIT = MethodSpec("delta-dit", "Δ-DiT", "blocks", _defaults, _point)
