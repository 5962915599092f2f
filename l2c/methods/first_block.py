"""First-block residual caching (diffusers' FirstBlockCache, cache-dit's DBCache): decided per batch at run time.

Knob: the relative-L1 threshold on the first block's residual (0 = never skip). Cost is not known in advance: the
sweep counts the model calls that ran every block (l2c.cache.first_block.FirstBlockCache.full_calls).
"""

from __future__ import annotations

from ..cache.first_block import FirstBlockCache
from .base import MethodSpec, Point, SweepContext

THRESHOLDS = [0.02, 0.05, 0.08, 0.12, 0.2, 0.3]


class Tracker:
    """runtime(model) for generate(); keeps every cache it attached so the sweep can read their call counts."""

    def __init__(self, threshold: float):
        self.threshold = threshold
        self.caches: list[FirstBlockCache] = []

    def __call__(self, model):
        self.caches.append(FirstBlockCache(model, self.threshold))
        return self.caches[-1]

    def calls(self) -> tuple[int, int]:
        """(full calls, first-block-only calls) over every run so far."""
        return sum(c.full_calls for c in self.caches), sum(c.partial_calls for c in self.caches)


def _point(ctx: SweepContext, threshold: float) -> Point:
    label = f"first-block cache, {threshold:g}"
    return Point("first-block", label, "threshold", threshold, ctx.sampler, ctx.steps, runtime=Tracker(threshold))


FIRST_BLOCK = MethodSpec("first-block", "first-block cache", "threshold", lambda ctx: list(THRESHOLDS), _point)
