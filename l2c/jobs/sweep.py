"""The quality-versus-speed sweep: every method across its budget knob, on the same seeds, in one process.

For each point (method, knob value) the sweep samples every image, measures its cost (executed sub-layers, MACs per
image), its quality with 95 % bootstrap intervals over images (MNIST-FID against fixed reference statistics, class
accuracy, precision / recall; PSNR against the uncached images of the same seeds) and its latency, then appends the
row to the resumable record (l2c.jobs.sweep_store). Latency is measured the same way for every point: one warm-up
each, then `repeats` runs of one batch interleaved with the uncached reference (ref, point, ref, point, ...);
speedup = median(reference) / median(point) from the same interleaving, so slow drift of a long sweep cancels.
Run-time decisions (first-block caching's host read, TaylorSeer's differences) happen inside the timed runs.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..cache.layout import group_by_block
from ..methods import Point, SweepContext, plan_macs
from ..metrics.bootstrap import psnr_with_ci
from ..sampling.diffusion import DiffusionSpec
from ..utils.progress import progress_bar
from .generate import SampleConfig, generate, network, to_uint8
from .sweep_store import SweepStore
from .timing import time_runs


@dataclass
class SweepRun:
    """What every point of one sweep shares."""

    model: torch.nn.Module  # or a workload (l2c.jobs.workload.FluxWorkload), spec None
    spec: DiffusionSpec | None
    ctx: SweepContext
    config: SampleConfig  # the sampler under study at its full step count; batch_size = quality batch
    seeds: list[int]
    classes: list[int]
    store: SweepStore
    repeats: int = 3
    latency_batch: int = 64
    n_boot: int = 1000
    quality: bool = True  # MNIST metrics (the bundled classifier); False: cost, latency and PSNR only
    decode: object = None  # latents -> images (latent models); latency excludes decoding


def reference_point(ctx: SweepContext) -> Point:
    label = f"uncached, {ctx.sampler} {ctx.steps}"
    return Point("uncached", label, "steps", ctx.steps, ctx.sampler, ctx.steps)


def _config(run: SweepRun, point: Point, batch: int | None = None) -> SampleConfig:
    return replace(run.config, sampler=point.sampler, steps=point.steps, batch_size=batch or run.config.batch_size)


def _generate(run: SweepRun, p: Point, seeds, classes, config):
    return generate(run.model, run.spec, seeds, classes, config, p.plan, progress=False, runtime_cache=p.runtime)


def sample_point(run: SweepRun, point: Point, bar=None) -> np.ndarray:
    """uint8 images (N, H, W, C) of every seed, batch by batch (the progress bar counts images)."""
    config, out = _config(run, point), []
    for start in range(0, len(run.seeds), config.batch_size):
        seeds = run.seeds[start : start + config.batch_size]
        classes = run.classes[start : start + config.batch_size]
        x = _generate(run, point, seeds, classes, config)
        out.append(to_uint8(run.decode(x) if run.decode is not None else x))
        if bar is not None:
            bar.update(len(seeds))
    return np.concatenate(out)


def point_cost(run: SweepRun, point: Point) -> dict:
    """Executed sub-layers and MACs per image (paper convention); run-time caches from their call counts."""
    L = run.ctx.num_sublayers
    if point.runtime is None:
        plan_executed = point.steps * L if point.plan is None else int(point.plan.compute.sum())
        return {"executed": plan_executed, "total": point.steps * L, "macs_per_image": plan_macs(run.ctx, point)}
    return _runtime_cost(run, point)


def _runtime_cost(run: SweepRun, point: Point) -> dict:
    full, partial = point.runtime.calls()
    batches = -(-len(run.seeds) // run.config.batch_size)
    slots = (full + partial) / (batches * point.steps)  # model calls per evaluation (2 with two-call guidance)
    per_run = batches * slots  # calls are averaged over batches: each batch decides for itself
    blocks = run.ctx.block_macs()
    full_macs = run.ctx.macs.full("paper")
    partial_macs = full_macs - sum(blocks[1:])
    L, first = run.ctx.num_sublayers, len(group_by_block(run.ctx.sublayer_blocks)[0])
    return {
        "executed": (full * L + partial * first) / per_run,  # a first-block-only call runs block 0 only
        "total": point.steps * L,
        "macs_per_image": (full * full_macs + partial * partial_macs) / per_run,
        "full_evaluations": full / per_run,
    }


def point_quality(run: SweepRun, images: np.ndarray, reference: np.ndarray) -> dict:
    psnr, lo, hi = psnr_with_ci(images, reference, n_boot=run.n_boot)
    out = {"psnr": psnr, "psnr_ci": [lo, hi], "n_images": len(images)}
    if run.quality:
        out.update(mnist_quality(images, np.asarray(run.classes), run.n_boot))
    return out


@functools.lru_cache(maxsize=1)
def _classifier():
    from ..metrics.classifier import load_classifier

    return load_classifier()


def mnist_quality(images: np.ndarray, classes: np.ndarray, n_boot: int) -> dict:
    from ..metrics.report import mnist_metrics

    point = mnist_metrics(images, classes, classifier=_classifier(), n_boot=n_boot)
    return {
        "fid": point["fid"],
        "fid_ci": point["fid_ci"],
        "accuracy": point["class_accuracy"],
        "precision": point["precision"],
        "recall": point["recall"],
        "inception_score": point["inception_score"],
    }


def point_latency(run: SweepRun, point: Point, reference: Point) -> dict:
    n = min(run.latency_batch, len(run.seeds))
    seeds, classes = run.seeds[:n], run.classes[:n]

    def runner(p: Point):
        config = _config(run, p, n)
        return lambda: _generate(run, p, seeds, classes, config)

    fns = {"reference": runner(reference)}
    if point is not reference:
        fns["point"] = runner(point)
    t = time_runs(fns, repeats=run.repeats, warmup=1, device=next(network(run.model).parameters()).device)
    own = t.get("point", t["reference"])
    return {
        "latency_s": own["median_s"],
        "latency_spread_s": [own["min_s"], own["max_s"]],
        "latency_runs_s": own["runs"],
        "latency_ref_s": t["reference"]["median_s"],
        "latency_batch": n,
        "speedup": t["reference"]["median_s"] / own["median_s"],
    }


def measure(run: SweepRun, point: Point, reference: Point, reference_images, bar=None):
    images = sample_point(run, point, bar)
    row = {
        "method": point.method,
        "label": point.label,
        "knob": {"name": point.knob, "value": point.value},
        "sampler": point.sampler,
        "steps": point.steps,
        **point.info,
        **point_cost(run, point),
    }
    row.update(point_quality(run, images, images if reference_images is None else reference_images))
    row.update(point_latency(run, point, reference))
    return row, images


def run_sweep(run: SweepRun, points: list[Point]) -> list[dict]:
    """Measure the reference and every point not yet in the record; returns every row of the record."""
    reference = reference_point(run.ctx)
    ref_images = run.store.load_reference()
    todo = [p for p in [reference, *points] if not run.store.done(p.method, p.value)]
    with progress_bar(total=len(todo), desc="sweep", unit="point") as outer:
        for p in todo:
            outer.set_postfix_str(p.label)
            with progress_bar(total=len(run.seeds), desc=p.label, unit="img", leave=False) as inner:
                if ref_images is None and p is not reference:  # resumed without the saved reference images
                    ref_images = sample_point(run, reference)
                    run.store.save_reference(ref_images)
                row, images = measure(run, p, reference, ref_images if p is not reference else None, inner)
            if p is reference:
                ref_images = images
                run.store.save_reference(images)
            ref_row = run.store.row(reference.method, reference.value) or row
            row["mac_speedup"] = ref_row["macs_per_image"] / row["macs_per_image"]
            run.store.append(row)
            outer.update(1)
    return run.store.rows
