"""Human-readable views of a router / plan: per-step table, JSON summary with MACs, heat-map PNG."""

from __future__ import annotations

import torch

from ..cache.macs import MacProfile
from ..cache.plan import CachePlan
from ..utils.io import atomic_output
from .router import Router


def router_summary(
    router: Router, threshold: float, macs: MacProfile | None = None, plan: CachePlan | None = None
) -> dict:
    """Executed counts over the router's cache steps (the paper's "active layers"), per step, the actions of the
    whole run, and MACs per image. `plan`: the router's plan when it is not the paper's alternation at θ (a
    schedule router, l2c.router.budget.router_plan)."""
    plan = router.to_plan(threshold) if plan is None else plan
    summary = plan.summary(router.cache_steps)
    per_step_all = plan.executed_per_step()
    summary.update(
        threshold=threshold,
        num_steps=router.num_steps,
        cache_steps=router.cache_steps,
        per_step=[per_step_all[s] for s in router.cache_steps],
        per_step_attn=plan.compute[router.cache_steps, 0::2].sum(1).tolist(),
        per_step_mlp=plan.compute[router.cache_steps, 1::2].sum(1).tolist(),
        per_step_all=per_step_all,
        executed_all=int(plan.compute.sum()),
        total_all=int(plan.compute.numel()),
        actions=plan.action_counts(),
        # which order-2 forecast (l2c.cache.plan): it moves quality by 1-2 dB at equal MACs (docs/benchmarks.md)
        forecast_form=plan.form if plan.forecasts else None,
    )
    summary["removed_ratio"] = 1 - summary["executed"] / summary["total"]
    if macs is not None:
        summary.update(plan_macs(plan, macs))
    return summary


MACS_CONVENTION = (
    "MACs per generated image over the whole sampling run, one model evaluation at batch 1 (a guided run's doubled "
    "batch is not counted twice); _linear: nn.Linear and nn.Conv2d only, the paper's counting; _with_attention: "
    "plus the attention matmuls QK^T and AV; a plan's MACs include its forecasting arithmetic"
)


def plan_macs(plan: CachePlan, macs: MacProfile) -> dict:
    """MACs per generated image for the whole run of `plan` and of the uncached run of the same evaluations, in both
    conventions (MACS_CONVENTION; docs/json-keys.md), and the ratios."""
    rows = plan.compute.tolist()
    out = {}
    for convention, suffix in (("paper", "linear"), ("analytic", "with_attention")):
        executed = sum(macs.per_evaluation(r, convention) for r in rows) + macs.forecast_macs(plan)
        uncached = macs.full(convention) * plan.num_steps
        out[f"macs_per_image_plan_{suffix}"] = executed
        out[f"macs_per_image_uncached_{suffix}"] = uncached
        out[f"mac_speedup_{suffix}"] = uncached / executed
    out["macs_convention"] = MACS_CONVENTION
    return out


def format_table(summary: dict) -> str:
    """Per cache step (sampling order): executed sub-layers, attention / MLP split; then totals and MACs."""
    lines = [f"{'step':>5} {'executed':>9} {'attn':>5} {'mlp':>5}"]
    for row in zip(summary["cache_steps"], summary["per_step"], summary["per_step_attn"], summary["per_step_mlp"]):
        lines.append("{:>5} {:>9} {:>5} {:>5}".format(*row))
    steps = len(summary["cache_steps"])
    lines.append(
        f"{steps} cache steps x {summary['total'] // max(steps, 1)} sub-layers: executed "
        f"{summary['executed']}/{summary['total']} (attention {summary['executed_attn']}/{summary['total_attn']}, "
        f"MLP {summary['executed_mlp']}/{summary['total_mlp']}); removed {100 * summary['removed_ratio']:.2f}% "
        f"at θ = {summary['threshold']}"
    )
    counts = ", ".join(f"{name} {n}" for name, n in summary["actions"].items() if n)
    form = f"; forecasts in {summary['forecast_form']} form" if summary.get("forecast_form") else ""
    lines.append(f"whole run, every evaluation: {counts}{form}")
    if "macs_per_image_plan_linear" in summary:
        lines.append(
            "MACs per image, whole run (Linear/Conv, paper convention): "
            f"{summary['macs_per_image_plan_linear'] / 1e9:.2f} G of "
            f"{summary['macs_per_image_uncached_linear'] / 1e9:.2f} G ({summary['mac_speedup_linear']:.2f}x fewer)"
        )
    return "\n".join(lines)


def plot_router(router: Router, threshold: float, path, title: str = "") -> None:
    """Heat-map of sigmoid scores (cache steps x blocks), attention and MLP side by side; dots = executed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = router.cache_steps
    scores = torch.sigmoid(router.logits.detach()[steps]).numpy()
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.3 * len(steps) + 2), sharey=True)
    for ax, branch, name in zip(axes, (0, 1), ("attention", "MLP")):
        s = scores[:, branch::2]
        im = ax.imshow(s, vmin=0, vmax=1, cmap="viridis", aspect="auto", interpolation="nearest")
        ys, xs = (s > threshold).nonzero()
        ax.scatter(xs, ys, s=6, c="white", marker="o", linewidths=0)
        ax.set(title=f"{name} (dot = executed, θ = {threshold})", xlabel="block")
        ax.set_yticks(range(len(steps)), [str(x) for x in steps])
    axes[0].set_ylabel("cache step (sampling order)")
    fig.colorbar(im, ax=axes, fraction=0.02, label="sigmoid(router logit)")
    if title:
        fig.suptitle(title)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_training_history(history: dict, path) -> None:
    """Loss (and its distillation part) and the mean cache-step score over router-training iterations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(9, 3))
    ax[0].plot(history["iteration"], history["loss"], lw=0.5, label="loss")
    ax[0].plot(history["iteration"], history["distill"], lw=0.5, label="distillation part")
    ax[0].set(xlabel="iteration", yscale="log" if min(history["loss"], default=0) > 0 else "linear")
    ax[0].legend()
    ax[1].plot(history["iteration"], history["active"])
    ax[1].set(xlabel="iteration", ylabel="mean score of cache steps")
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
