"""Learning-to-Cache (Ma et al., 2024): a trained router; execute a sub-layer at a cache step iff its score > θ.

Two knobs: θ over one router ("l2c"), and λ through routers trained at several `--target-removal` values
("l2c-lambda": one point per router file, at the θ stored in the file).
"""

from __future__ import annotations

from .base import MethodSpec, Point, SweepContext, theta_grid


def _theta(ctx: SweepContext, theta: float) -> Point:
    plan = ctx.router.to_plan(theta)
    return Point("l2c", f"L2C, θ = {theta:g}", "θ", theta, ctx.sampler, ctx.steps, plan)


def _lambda_values(ctx: SweepContext) -> list[float]:
    return sorted(float(meta.get("lambda") or 0.0) for _, _, meta in ctx.lambda_routers)


def _lambda(ctx: SweepContext, lam: float) -> Point:
    matches = [(path, r, meta) for path, r, meta in ctx.lambda_routers if float(meta.get("lambda") or 0.0) == lam]
    if not matches:
        raise ValueError(f"no router file has λ = {lam}; the files have {_lambda_values(ctx)}")
    path, router, meta = matches[0]
    theta = float(meta.get("threshold", 0.5))
    plan = router.to_plan(theta)
    info = {"router": str(path), "threshold": theta}
    return Point("l2c-lambda", f"L2C, λ = {lam:.3g}", "λ", lam, ctx.sampler, ctx.steps, plan, info=info)


L2C_THETA = MethodSpec("l2c", "L2C (θ)", "θ", lambda ctx: theta_grid(), _theta, needs=("router",))
L2C_LAMBDA = MethodSpec("l2c-lambda", "L2C (λ)", "λ", _lambda_values, _lambda, needs=("lambda_routers",))
