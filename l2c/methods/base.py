"""What every method module shares: the sweep context it reads and the sweep point it returns.

A method is one published way of spending less compute, with one budget knob. `MethodSpec.point(ctx, value)` turns a
knob value into a `Point`: the sampler and step count to run, and either a static CachePlan (executed by the cache
engine) or a run-time cache factory (decides while sampling, e.g. first-block caching). The sweep job runs points;
methods never sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ..cache.layout import group_by_block, pair_kinds, pairs
from ..cache.macs import MacProfile
from ..cache.plan import CachePlan
from ..router.router import Router


@dataclass
class SweepContext:
    """The sampling run under study and what some methods need (computed lazily: most sweeps need few of them)."""

    sampler: str  # the sampler under study (the reference runs it uncached at `steps`)
    steps: int  # its steps (NFE for DPM-Solver)
    evaluations: int  # model evaluations of the reference run
    num_sublayers: int  # L, the model's cacheable sub-layers (l2c.cache.layout.describe)
    cache_steps: list[int]  # the paper's cache steps for this sampler (alternate / shifted)
    macs: MacProfile
    router: Router | None = None  # L2C θ sweep and Learning-to-Drop
    lambda_routers: list[tuple[str, Router, dict]] = field(default_factory=list)  # (file, router, metadata)
    schedule_routers: list[tuple[str, Router, dict]] = field(default_factory=list)  # learned schedules, ditto
    errors: Callable[[], torch.Tensor] | None = None  # () -> (cache steps, L) single-layer caching errors
    changes: Callable[[], torch.Tensor] | None = None  # () -> SmoothCache calibration (2, S, S)
    block_macs: Callable[[], list[float]] | None = None  # () -> Linear MACs of each block (first-block caching)
    kinds: list[str] | None = None  # (L,) each sub-layer's kind; None: our DiT / U-ViT order (attention, MLP)
    blocks: list[int] | None = None  # (L,) each sub-layer's block index; None: ditto, two per block

    def __post_init__(self):
        for name in ("kinds", "blocks"):
            value = getattr(self, name)
            if value is not None and len(value) != self.num_sublayers:
                raise ValueError(f"{len(value)} {name} for {self.num_sublayers} sub-layers")

    @property
    def sublayer_kinds(self) -> list[str]:
        return pair_kinds(self.num_sublayers) if self.kinds is None else self.kinds

    @property
    def sublayer_blocks(self) -> list[int]:
        return pairs(self.num_sublayers) if self.blocks is None else self.blocks

    @property
    def depth(self) -> int:
        """Blocks with at least one cacheable sub-layer."""
        return len(group_by_block(self.sublayer_blocks))


@dataclass
class Point:
    method: str  # registry name
    label: str  # for tables and legends
    knob: str  # the knob's name
    value: float  # the knob's value
    sampler: str
    steps: int
    plan: CachePlan | None = None  # None and no runtime: compute everything
    runtime: Callable | None = None  # runtime(model) -> attached run-time cache with wrap() / detach()
    info: dict = field(default_factory=dict)  # extra fields for the row (e.g. the λ of a router file)


@dataclass(frozen=True)
class MethodSpec:
    name: str  # registry / --methods name
    title: str  # legend title
    knob: str
    defaults: Callable[[SweepContext], list]  # knob values swept when none are given
    point: Callable[[SweepContext, float], Point]
    needs: tuple[str, ...] = ()  # context fields it reads: "router", "lambda_routers", "errors", "changes"

    def points(self, ctx: SweepContext, values=None) -> list[Point]:
        missing = [n for n in self.needs if not getattr(ctx, n)]
        if missing:
            raise ValueError(f"method {self.name!r} needs {', '.join(missing)} (see `l2c compare --help`)")
        return [self.point(ctx, v) for v in (self.defaults(ctx) if values is None else values)]


def plan_macs(ctx: SweepContext, point: Point) -> float:
    """MACs per image of a static point, whole run, paper convention (forecast arithmetic included)."""
    # `steps` is the NFE for every sampler here (DPM-Solver-2 counts evaluations), so it is the plan's length.
    plan = point.plan if point.plan is not None else CachePlan.full(point.steps, ctx.num_sublayers)
    return ctx.macs.plan_total(plan, "paper")


def reuse_budget(ctx: SweepContext, share: float) -> int:
    """Sub-layer evaluations to reuse when `share` of the cache steps' sub-layers are removed."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"the removed share must be in [0, 1], got {share}")
    return round(share * len(ctx.cache_steps) * ctx.num_sublayers)


def theta_grid() -> list[float]:
    return [0.1, 0.3, 0.5, 0.7, 0.9]
