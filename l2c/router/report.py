"""Human-readable views of a router / plan: per-step table, JSON summary with MACs, heat-map PNG."""

from __future__ import annotations

import torch

from ..cache.layout import ATTENTION_KINDS, Sublayer, pair_kinds, pairs
from ..cache.macs import MacProfile, plan_peak_bytes
from ..cache.plan import CachePlan
from ..utils.io import atomic_output
from .router import Router

KIND_TITLES = {
    "self_attn": "attention",
    "joint_attn": "joint attention",
    "cross_attn": "cross-attention",
    "mlp": "MLP",
    "mlp_context": "context MLP",
    "fused": "fused attention + MLP",
}


def router_summary(
    router: Router,
    threshold: float,
    macs: MacProfile | None = None,
    plan: CachePlan | None = None,
    layout: list[Sublayer] | None = None,
) -> dict:
    """Executed counts over the router's cache steps (the paper's "active layers"), per step and per sub-layer kind,
    the actions of the whole run, and MACs per image. `plan`: the router's plan when it is not the paper's
    alternation at θ (a schedule router, l2c.router.budget.router_plan). `layout`: the model's sub-layers
    (l2c.cache.layout.describe); without it the router is read in our DiT / U-ViT order (CachePlan.summary)."""
    plan = router.to_plan(threshold) if plan is None else plan
    kinds = _kinds(layout, plan.num_sublayers)
    summary = plan.summary(router.cache_steps, None if layout is None else kinds)
    per_step_all = plan.executed_per_step()
    summary.update(
        threshold=threshold,
        num_steps=router.num_steps,
        cache_steps=router.cache_steps,
        per_step=[per_step_all[s] for s in router.cache_steps],
        **_per_step_groups(plan, router.cache_steps, kinds),
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


def _kinds(layout: list[Sublayer] | None, num_sublayers: int) -> list[str] | None:
    if layout is not None:
        if len(layout) != num_sublayers:
            raise ValueError(f"the plan has {num_sublayers} sub-layers per step, the model's layout {len(layout)}")
        return [s.kind for s in layout]
    return None if num_sublayers % 2 else pair_kinds(num_sublayers)


def _per_step_groups(plan: CachePlan, steps: list[int], kinds: list[str] | None) -> dict:
    """Executed sub-layers per cache step: per_step_attn (attention kinds), per_step_<kind> for each attention kind
    where there are several, then per_step_<kind> for each other kind."""
    if kinds is None:
        return {}
    present = list(dict.fromkeys(kinds))
    attention = [k for k in present if k in ATTENTION_KINDS]
    groups = {"attn": [k in ATTENTION_KINDS for k in kinds]}
    for kind in (attention if len(attention) > 1 else []) + [k for k in present if k not in ATTENTION_KINDS]:
        groups[kind] = [k == kind for k in kinds]
    rows = plan.compute[steps]
    return {f"per_step_{name}": rows[:, torch.tensor(m)].sum(1).tolist() for name, m in groups.items()}


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
    if len(macs.sublayer_outputs) == plan.num_sublayers:
        # What the plan's run holds at its peak (outputs, differences, forecast buffers), per image and model call,
        # in float32; half precision holds half, and guidance (two calls or a doubled batch) twice as much.
        out["stored_bytes_peak_per_image"] = plan_peak_bytes(plan, macs.sublayer_outputs, 1, 4)
    return out


def format_table(summary: dict) -> str:
    """Per cache step (sampling order): executed sub-layers, split by kind (attention, then each other kind); then
    totals and MACs."""
    columns = [k[len("per_step_") :] for k in summary if k.startswith("per_step_") and k != "per_step_all"]
    widths = [max(5, len(c)) for c in columns]
    lines = [" ".join([f"{'step':>5} {'executed':>9}"] + [f"{c:>{w}}" for c, w in zip(columns, widths)])]
    for i, (step, executed) in enumerate(zip(summary["cache_steps"], summary["per_step"])):
        cells = [f"{summary['per_step_' + c][i]:>{w}}" for c, w in zip(columns, widths)]
        lines.append(" ".join([f"{step:>5} {executed:>9}"] + cells))
    steps = len(summary["cache_steps"])
    split = ", ".join(
        f"{'attention' if c == 'attn' else KIND_TITLES.get(c, c)} {summary[f'executed_{c}']}/{summary[f'total_{c}']}"
        for c in columns
        if f"executed_{c}" in summary
    )
    lines.append(
        f"{steps} cache steps x {summary['total'] // max(steps, 1)} sub-layers: executed "
        f"{summary['executed']}/{summary['total']}{f' ({split})' if split else ''}; "
        f"removed {100 * summary['removed_ratio']:.2f}% at θ = {summary['threshold']}"
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
    if "predicted_speedup" in summary:
        lines.append(
            f"predicted speedup {summary['predicted_speedup']:.2f}x (time of each part measured at training on "
            f"{summary['predicted_on']})"
        )
    if "stored_bytes_peak_per_image" in summary:
        lines.append(
            f"stored at the peak: {summary['stored_bytes_peak_per_image'] / 2**20:.2f} MiB per image and model "
            "call (float32 with --model; else as recorded at training, in the model's dtype; twice with guidance)"
        )
    return "\n".join(lines)


def heatmap_panels(num_sublayers: int, layout: list[Sublayer] | None = None) -> list[tuple[str, list[int], list[int]]]:
    """The heat-map's panels: (title, sub-layer columns, their block indices), one panel per sub-layer kind in order
    of first appearance. Without `layout` (l2c.cache.layout.describe) our DiT / U-ViT order is assumed, or, for an
    odd count, one panel of all sub-layers."""
    if layout is None:
        if num_sublayers % 2:
            return [("sub-layers", list(range(num_sublayers)), list(range(num_sublayers)))]
        kinds, blocks = pair_kinds(num_sublayers), pairs(num_sublayers)
    else:
        if len(layout) != num_sublayers:
            raise ValueError(f"the router has {num_sublayers} sub-layers per step, the model's layout {len(layout)}")
        kinds, blocks = [s.kind for s in layout], [s.block for s in layout]
    panels = []
    for kind in dict.fromkeys(kinds):
        cols = [i for i, k in enumerate(kinds) if k == kind]
        panels.append((KIND_TITLES.get(kind, kind), cols, [blocks[i] for i in cols]))
    return panels


def plot_router(router: Router, threshold: float, path, title: str = "", layout: list[Sublayer] | None = None) -> None:
    """Heat-map of sigmoid scores (cache steps x blocks), one panel per sub-layer kind (`heatmap_panels`; DiT:
    attention and MLP side by side); columns are labelled by block index; dots = executed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = router.cache_steps
    scores = torch.sigmoid(router.logits.detach()[steps]).numpy()
    panels = heatmap_panels(router.num_sublayers, layout)
    widths = [max(len(cols), 4) for _, cols, _ in panels]
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(max(10, 0.15 * sum(widths) + 2), 0.3 * len(steps) + 2),
        sharey=True,
        squeeze=False,
        gridspec_kw={"width_ratios": widths},
    )
    axes = axes[0]
    for ax, (name, cols, blocks) in zip(axes, panels):
        s = scores[:, cols]
        im = ax.imshow(s, vmin=0, vmax=1, cmap="viridis", aspect="auto", interpolation="nearest")
        ys, xs = (s > threshold).nonzero()
        ax.scatter(xs, ys, s=6, c="white", marker="o", linewidths=0)
        ax.set(title=name, xlabel="block")
        ticks = range(0, len(cols), max(1, len(cols) // 12))
        ax.set_xticks(list(ticks), [str(blocks[i]) for i in ticks])
        ax.set_yticks(range(len(steps)), [str(x) for x in steps])
    axes[0].set_ylabel("cache step (sampling order)")
    fig.colorbar(im, ax=axes, fraction=0.02, label="sigmoid(router logit)")
    fig.suptitle(f"{title + ': ' if title else ''}dot = executed at θ = {threshold}", y=1.04)
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
