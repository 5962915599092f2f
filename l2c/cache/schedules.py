"""Plan builders: the published caching methods written as general CachePlans (one small function each).

* l2c_alternation: Learning-to-Cache's official form: cache steps reuse a sub-layer iff its router score ≤ θ,
  every other evaluation computes everything (what `Router.to_plan(θ)` returns). With `drop=True` the sub-layers
  not computed contribute zero instead (Learning-to-Drop, a baseline flag).
* fora:        FORA(n): every sub-layer computed at evaluations 0, n, 2n, ..., reused in between.
* taylorseer:  TaylorSeer(N, O): every sub-layer computed at evaluations 0, N, 2N, ..., forecast in between with a
  Taylor expansion of order O (TaylorSeer's own form by default; form="newton" for the interpolating polynomial).
"""

from __future__ import annotations

import torch

from .plan import COMPUTE, DROP, FORECAST1, FORECAST2, REUSE, CachePlan


def l2c_alternation(logits: torch.Tensor, cache_steps: list[int], threshold: float, drop: bool = False) -> CachePlan:
    """logits (S, L) of a router; at each cache step compute sub-layer l iff sigmoid(logit) > θ, else reuse
    (or drop); every other evaluation computes everything."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold θ must be in [0, 1], got {threshold}")
    compute = torch.ones(logits.shape, dtype=torch.bool)
    for s in cache_steps:
        compute[s] = torch.sigmoid(logits[s].detach().float().cpu()) > threshold
    return CachePlan.from_actions(torch.where(compute, COMPUTE, DROP if drop else REUSE))


def _every(num_steps: int, num_sublayers: int, interval: int, between: int, name: str, **plan_args) -> CachePlan:
    if interval < 1:
        raise ValueError(f"the {name} interval must be >= 1, got {interval}")
    actions = torch.full((num_steps, num_sublayers), between, dtype=torch.int8)
    actions[::interval] = COMPUTE
    return CachePlan.from_actions(actions, max_skip=interval - 1, **plan_args)


def fora(num_steps: int, num_sublayers: int, interval: int) -> CachePlan:
    """FORA(n): compute everything at evaluations 0, n, 2n, ...; reuse every sub-layer in between."""
    return _every(num_steps, num_sublayers, interval, REUSE, "FORA")


def taylorseer(num_steps: int, num_sublayers: int, interval: int, order: int, form: str = "taylorseer") -> CachePlan:
    """TaylorSeer(N, O): compute everything at evaluations 0, N, 2N, ...; forecast with order O in between.

    Until a sub-layer has been computed O + 1 times its forecasts use the orders available (order 0 = reuse), as
    TaylorSeer's own cache does.
    """
    if order not in (1, 2):
        raise ValueError(f"TaylorSeer order must be 1 or 2, got {order}")
    return _every(num_steps, num_sublayers, interval, FORECAST1 if order == 1 else FORECAST2, "TaylorSeer", form=form)
