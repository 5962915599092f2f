"""One harness for L2C and its baselines: the same seeds, classes, sampler and machine for every method, in one process.

Each method is a (step count, cache plan) pair. The harness samples the same seeds with every method, then reports
per image: executed sub-layers, MACs (paper convention), latency (interleaved repeats of one batch), quality (MNIST
metrics for MNIST-shaped models) and the paired PSNR against the uncached images of the full step count. The manual
selections reuse as many sub-layers as the router's plan (equal remove ratio; MACs differ only by the attention /
MLP mix) and the fewer-steps row is the step count of closest MACs, so rows compare at (nearly) equal cost.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..cache.baselines import depth_plan, error_plan, fora_plan, random_plan, reused_count
from ..cache.macs import MacProfile
from ..cache.plan import CachePlan
from ..cache.smoothcache import alpha_for_budget, smoothcache_plan
from ..metrics.bootstrap import psnr_with_ci
from ..metrics.scores import paired_metrics
from ..router.report import plan_macs
from ..router.router import Router
from ..sampling.diffusion import DiffusionSpec
from ..utils.io import atomic_output, atomic_write_text
from .generate import SampleConfig, generate, to_uint8
from .sweep_report import with_interval
from .sweep_store import json_safe
from .timing import device_name, time_runs


@dataclass
class Method:
    name: str
    steps: int  # sampler steps (NFE for DPM-Solver)
    plan: CachePlan | None = None  # None: compute everything


def equal_cost_steps(steps: int, mac_ratio: float, sampler: str) -> int:
    """The step count whose uncached cost is closest to `mac_ratio` of the full run (even NFE for DPM-Solver-2)."""
    unit = 2 if sampler == "dpm-solver-2" else 1
    return max(2, unit * round(steps * mac_ratio / unit))


def standard_methods(
    router: Router,
    threshold: float,
    steps: int,
    sampler: str,
    macs: MacProfile,
    errors: torch.Tensor | None = None,
    changes: torch.Tensor | None = None,
    fora: tuple[int, ...] = (2, 3),
    fewer_steps: tuple[int, ...] = (),
    seed: int = 0,
    kinds: list[str] | None = None,
) -> list[Method]:
    """Uncached, L2C at θ, fewer steps at equal MACs, the manual selections at the router's budget, SmoothCache at
    the α closest to that budget, and FORA.

    errors: (cache steps, L) single-layer caching errors (l2c.training.train_router.caching_errors), for the
    smallest-error selection; changes: SmoothCache's calibration (l2c.cache.smoothcache.calibrate_changes);
    kinds: each sub-layer's kind (l2c.cache.layout.sublayer_kinds), for SmoothCache; None: our DiT / U-ViT order.
    """
    plan = router.to_plan(threshold)
    n, layers, cache_steps = router.num_steps, router.num_sublayers, router.cache_steps
    reuse = reused_count(plan)
    ratio = (
        plan_macs(plan, macs)["macs_per_image_plan_linear"]
        / plan_macs(CachePlan.full(n, layers), macs)["macs_per_image_plan_linear"]
    )
    methods = [Method(f"uncached, {steps} steps", steps), Method(f"L2C (θ = {threshold})", steps, plan)]
    for k in sorted({equal_cost_steps(steps, ratio, sampler), *fewer_steps}, reverse=True):
        if k != steps:
            methods.append(Method(f"fewer steps: {k}", k))
    methods += [
        Method("random sub-layers", steps, random_plan(n, layers, cache_steps, reuse, seed)),
        Method("from bottom", steps, depth_plan(n, layers, cache_steps, reuse, from_top=False)),
        Method("from top", steps, depth_plan(n, layers, cache_steps, reuse, from_top=True)),
    ]
    if errors is not None:
        methods.append(Method("smallest single-layer error", steps, error_plan(n, cache_steps, errors, reuse)))
    if changes is not None:
        kinds = layers if kinds is None else kinds
        alpha = alpha_for_budget(changes, kinds, reuse)
        methods.append(Method(f"SmoothCache (α = {alpha:.3g})", steps, smoothcache_plan(changes, kinds, alpha)))
    methods += [Method(f"FORA, interval {k}", steps, fora_plan(n, layers, k)) for k in sorted(set(fora))]
    return methods


def run_comparison(
    model,
    spec: DiffusionSpec,
    macs: MacProfile,
    methods: list[Method],
    config: SampleConfig,
    seeds: list[int],
    classes: list[int],
    repeats: int = 3,
    latency_batch: int = 64,
    quality=None,
    decode=None,
    n_boot: int = 1000,
) -> tuple[list[dict], dict[str, np.ndarray]]:
    """(rows, uint8 images by method name); the first method is the reference (uncached, full step count).

    quality(images_uint8, classes) -> dict of metrics, or None to report only cost and paired metrics.
    decode: latents -> images for latent models (images are compared decoded; latency excludes decoding).
    """
    reference = methods[0]
    if reference.plan is not None:
        raise ValueError("the first method is the reference and must be uncached")
    images = {}
    for m in methods:
        print(f"sampling {len(seeds)} images: {m.name}", flush=True)
        x = generate(model, spec, seeds, classes, replace(config, steps=m.steps), plan=m.plan, decode=decode)
        images[m.name] = to_uint8(x)
    n = min(latency_batch, len(seeds))
    print(f"latency: {repeats} interleaved runs of a {n}-image batch per method", flush=True)
    timing = time_runs(
        {
            m.name: (
                lambda m=m: generate(
                    model,
                    spec,
                    seeds[:n],
                    classes[:n],
                    replace(config, steps=m.steps, batch_size=n),
                    m.plan,
                    progress=False,
                )
            )
            for m in methods
        },
        repeats=repeats,
    )
    rows = []
    for m in methods:
        plan = m.plan or CachePlan.full(m.steps, len(macs.sublayer_linear))
        cost = plan_macs(plan, macs)
        row = {
            "method": m.name,
            "steps": m.steps,
            "executed": int(plan.compute.sum()),
            "total": int(plan.compute.numel()),
            "macs_g": cost["macs_per_image_plan_linear"] / 1e9,
            "latency_s": timing[m.name]["median_s"],
            "latency_runs_s": timing[m.name]["runs"],
            "latency_batch": n,
            **paired_metrics(images[m.name], images[reference.name]),
            "psnr_ci": list(psnr_with_ci(images[m.name], images[reference.name], n_boot=n_boot)[1:]),
        }
        if quality is not None:
            row.update(quality(images[m.name], np.asarray(classes)))
        rows.append(row)
    for r in rows:
        r["mac_speedup"] = rows[0]["macs_g"] / r["macs_g"]
        r["speedup"] = rows[0]["latency_s"] / r["latency_s"]
    return rows, images


def format_rows(rows: list[dict]) -> str:
    quality = "fid" in rows[0]
    head = "| method | steps | executed sub-layers | MACs/img (G) | MAC speedup | latency (s) | speedup |"
    head += " MNIST-FID [95 % CI] | class acc. | precision | recall |" if quality else ""
    head += " PSNR vs uncached, dB [95 % CI] |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        line = (
            f"| {r['method']} | {r['steps']} | {r['executed']}/{r['total']} | {r['macs_g']:.3f} | "
            f"{r['mac_speedup']:.2f}x | {r['latency_s']:.3f} | {r['speedup']:.2f}x |"
        )
        if quality:
            fid = with_interval(r["fid"], r.get("fid_ci"), ".2f")
            line += f" {fid} | {100 * r['class_accuracy']:.1f} % | {r['precision']:.3f} | {r['recall']:.3f} |"
        lines.append(line + f" {with_interval(r['psnr_db'], r.get('psnr_ci'), '.1f')} |")
    return "\n".join(lines)


def plot_rows(rows: list[dict], path, title: str = "") -> None:
    """Quality (FID, or PSNR against the uncached images) against MAC speedup and measured speedup."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key, label = ("fid", "MNIST-FID (lower is better)") if "fid" in rows[0] else ("psnr_db", "PSNR vs uncached (dB)")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, x, xlabel in zip(axes, ("mac_speedup", "speedup"), ("MAC speedup", "measured speedup")):
        for r in rows:
            value = r[key] if np.isfinite(r[key]) else np.nan
            marker = "*" if r["method"].startswith("L2C") else "o"
            ax.scatter(r[x], value, marker=marker, s=120 if marker == "*" else 40, label=r["method"])
        ax.set(xlabel=xlabel, ylabel=label if ax is axes[0] else None)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="best")
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def write_report(rows: list[dict], out: Path, context: dict) -> str:
    out.mkdir(parents=True, exist_ok=True)
    table = format_rows(rows)
    header = (
        f"{context['model']}, {context['sampler']}, guidance {context['guidance_scale']}, {context['images']} images "
        f"(seeds 0..{context['images'] - 1}, classes in turn); latency: median of {context['repeats']} interleaved "
        f"runs of a {rows[0]['latency_batch']}-image batch on {device_name()}. Intervals: 95 % bootstrap over images "
        f"({context['bootstrap']} resamples; FID reference statistics fixed)."
    )
    atomic_write_text(header + "\n\n" + table + "\n", out / "compare.md")
    atomic_write_text(json.dumps(json_safe({"context": context, "rows": rows}), indent=2) + "\n", out / "compare.json")
    plot_rows(rows, out / "compare.png", title=f"{context['model']}: L2C and baselines")
    return header + "\n\n" + table
