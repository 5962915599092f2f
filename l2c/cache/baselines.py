"""Hand-made cache plans that a learned router is compared with (paper Fig. 4 and Tables 5/7, anchors §5.2).

* FORA: every sub-layer computed at every N-th evaluation and reused in between (the static all-layer baseline).
* "Manual" selections at a given budget, over the router's own cache steps (the other steps compute everything):
  random sub-layers, sub-layers from the bottom (first blocks) or the top (last blocks) of the network, or the
  sub-layers whose single-layer caching error is smallest (the paper's "Manual: Metrics", Eq. 7 greedy).

A budget is the number of sub-layer evaluations to *reuse* over all cache steps: a baseline built with the budget
of a router's plan removes as many sub-layers as the plan (the paper's "remove ratio" comparisons); its MACs differ
from the plan's only through the mix of attention and MLP sub-layers it picks.
"""

from __future__ import annotations

import torch

from .plan import CachePlan


def fora_plan(num_steps: int, num_sublayers: int, interval: int) -> CachePlan:
    """Compute everything at evaluations 0, N, 2N, ...; reuse every sub-layer at the evaluations in between."""
    if interval < 1:
        raise ValueError(f"the FORA interval must be >= 1, got {interval}")
    compute = torch.zeros(num_steps, num_sublayers, dtype=torch.bool)
    compute[::interval] = True
    return CachePlan(compute)


def reused_count(plan: CachePlan) -> int:
    """Sub-layer evaluations a plan reuses instead of computing (the budget of an equal-remove-ratio baseline)."""
    return int((~plan.compute).sum())


def ranked_plan(num_steps: int, cache_steps: list[int], order: torch.Tensor, reuse: int) -> CachePlan:
    """Reuse the `reuse` cells with the smallest `order` value, a (len(cache_steps), L) tensor (ties: first cell)."""
    capacity = order.numel()
    if not 0 <= reuse <= capacity:
        raise ValueError(f"cannot reuse {reuse} sub-layer evaluations: the cache steps hold {capacity}")
    flat = torch.zeros(capacity, dtype=torch.bool)
    flat[order.flatten().argsort(stable=True)[:reuse]] = True
    compute = torch.ones(num_steps, order.shape[1], dtype=torch.bool)
    compute[cache_steps] = ~flat.view(order.shape)
    return CachePlan(compute)


def random_plan(num_steps: int, num_sublayers: int, cache_steps: list[int], reuse: int, seed: int = 0) -> CachePlan:
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(cache_steps) * num_sublayers, generator=gen).view(len(cache_steps), num_sublayers)
    return ranked_plan(num_steps, cache_steps, order, reuse)


def depth_plan(num_steps: int, num_sublayers: int, cache_steps: list[int], reuse: int, from_top: bool) -> CachePlan:
    """Reuse sub-layers block by block from the bottom (or top) of the network, spread evenly over the cache steps.

    The rank of cell (step i, sub-layer l) is depth * S + i, so every cache step loses its first (last) sub-layer
    before any step loses its second: the budget is shared by the steps and differs between them by at most one.
    """
    steps = len(cache_steps)
    depth = torch.arange(num_sublayers).flip(0) if from_top else torch.arange(num_sublayers)
    order = depth[None, :] * steps + torch.arange(steps)[:, None]
    return ranked_plan(num_steps, cache_steps, order, reuse)


def error_plan(num_steps: int, cache_steps: list[int], errors: torch.Tensor, reuse: int) -> CachePlan:
    """Reuse the cells whose measured single-layer caching error (cache steps, L) is smallest."""
    if errors.shape[0] != len(cache_steps):
        raise ValueError(f"errors have {errors.shape[0]} rows but there are {len(cache_steps)} cache steps")
    return ranked_plan(num_steps, cache_steps, errors, reuse)
