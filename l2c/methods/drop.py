"""Learning-to-Drop: the sub-layers a router does not execute contribute nothing (the engine's DROP action).

The L2C paper's ablation trains the router with dropping in place of reuse. Approximated here: the router trained for
caching (the `--router` file) chooses the sub-layers, and the plan drops them instead of reusing them; a router
trained with the drop objective needs a drop-aware blend in router training (not available yet).

Knob: θ, as for L2C.
"""

from __future__ import annotations

from ..cache.schedules import l2c_alternation
from .base import MethodSpec, Point, SweepContext, theta_grid


def _point(ctx: SweepContext, theta: float) -> Point:
    plan = l2c_alternation(ctx.router.logits, ctx.router.cache_steps, theta, drop=True)
    return Point("drop", f"Learning-to-Drop, θ = {theta:g}", "θ", theta, ctx.sampler, ctx.steps, plan)


DROP = MethodSpec("drop", "Learning-to-Drop", "θ", lambda ctx: theta_grid(), _point, needs=("router",))
