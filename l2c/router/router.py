"""The Learning-to-Cache router: one learnable logit per sampling step and sub-layer (paper §3.3;
docs/upstream.md §1.3).

Score β = sigmoid(logit) ∈ (0, 1): 1 = compute the sub-layer, 0 = reuse its cached output. Only the rows of cache
steps are trained and used; at sampling time a sub-layer is executed iff β > θ (Algorithm 2; the paper's printed
line is inverted, the official code executes above θ).
"""

from __future__ import annotations

import torch
from torch import nn

from ..cache.plan import CachePlan


class StraightThroughThreshold(torch.autograd.Function):
    """Forward: (s > θ) as 0/1. Backward: identity (Bengio et al. 2013)."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, threshold: float) -> torch.Tensor:
        return (scores > threshold).to(scores.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


class Router(nn.Module):
    """logits: (S, L) — S model evaluations in sampling order, L sub-layers in router order (layout.describe)."""

    def __init__(self, num_steps: int, num_sublayers: int, cache_steps: list[int], generator=None):
        super().__init__()
        bad = [s for s in cache_steps if not 0 < s < num_steps]
        if bad:
            raise ValueError(f"cache steps {bad} are outside 1..{num_steps - 1} (step 0 always computes)")
        self.logits = nn.Parameter(torch.randn(num_steps, num_sublayers, generator=generator))  # N(0, 1) init
        self.cache_steps = list(cache_steps)

    @property
    def num_steps(self) -> int:
        return self.logits.shape[0]

    @property
    def num_sublayers(self) -> int:
        return self.logits.shape[1]

    def scores(self, step: int, ste_threshold: float | None = None) -> torch.Tensor:
        """β for one step, (L,); binary forward / identity backward when ste_threshold is given."""
        s = torch.sigmoid(self.logits[step])
        return s if ste_threshold is None else StraightThroughThreshold.apply(s, ste_threshold)

    @torch.no_grad()
    def to_plan(self, threshold: float) -> CachePlan:
        """Static plan: full steps compute all; at cache steps execute sub-layer l iff sigmoid(logit) > θ."""
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold θ must be in [0, 1], got {threshold}")
        compute = torch.ones(self.num_steps, self.num_sublayers, dtype=torch.bool)
        for s in self.cache_steps:
            compute[s] = torch.sigmoid(self.logits[s].float()) > threshold
        return CachePlan(compute)
