"""The demo: Learning-to-Cache on a bundled MNIST model, end to end, in a few minutes on a CPU.

1. load the bundled model; 2. train a router for its 20-step sampler (Algorithm 1; our DiT / U-ViT only); 3. sample
the same seeds without and with the cache (real skipping), and with the model's bundled learned schedule (every
evaluation, reuse or forecast, past the paper's 2x cap; `l2c train-router --target-macs / --target-speedup`, see
SCHEDULES); 4. print NFE, executed sub-layers, MACs, latency (median of interleaved repeats, same process), speedup,
MNIST-FID, class accuracy and PSNR against the uncached images; 5. write grids and the heat-map.

flux-mnist (diffusers' FluxTransformer2DModel) runs through its workload (l2c.jobs.workload.FluxWorkload) at its own
28 flow-matching Euler steps and true CFG 2: uncached against its bundled learned schedule.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..cache.layout import describe
from ..cache.macs import MacProfile, profile_macs
from ..cache.plan import CachePlan
from ..metrics.bootstrap import psnr_with_ci
from ..metrics.report import mnist_metrics
from ..models import architecture_of, conventions
from ..models.checkpoints import ASSETS, load_model
from ..router.budget import router_plan
from ..router.files import load_router
from ..router.report import plan_macs, plot_router, router_summary
from ..sampling.diffusion import DiffusionSpec
from ..training.train_router import cpu_defaults
from ..utils.io import atomic_write_text
from .generate import SampleConfig, generate, network, save_grid, to_uint8
from .sweep_report import with_interval
from .sweep_store import json_safe
from .timing import time_runs

# The learned schedules the demo shows beside the router it trains: trained by the project on the bundled model and
# committed, because the search takes minutes (commands and measured results: docs/benchmarks.md, "Past the 2x cap").
#   dit-mnist: l2c train-router --model dit-mnist --steps 20 --target-macs 0.365   (from TaylorSeer N = 3, order 2)
#   flux-mnist: l2c train-router --model flux-mnist --target-speedup 2.5 --cost-batch 64 --search-minutes 4
#               (its defaults: flow-matching Euler, 28 steps, true CFG 2; docs/models/flux-mnist.md)
SCHEDULES = {
    "dit-mnist": "dit-mnist-schedule-ddim20.safetensors",
    "flux-mnist": "flux-mnist-schedule-flowmatch28.safetensors",
}


def run_demo(
    model_name: str = "dit-mnist",
    images: int = 500,
    iterations: int | None = None,
    repeats: int = 5,
    target_removal: float = 0.5,
    out: str | Path = "demo_out",
) -> int:
    start = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    subject = _load(model_name)
    model, spec, sampler, steps, cfg = subject.model, subject.spec, subject.sampler, subject.steps, subject.cfg
    params = sum(p.numel() for p in network(model).parameters()) / 1e6
    print(f"[1/4] {model_name}: {subject.name}, {params:.2f} M params, sampler {sampler}-{steps}, guidance {cfg}")
    arms, router, threshold = {"uncached": None}, None, None
    if subject.trains_router:
        router, threshold = _train_router(
            model, spec, subject.meta, sampler, model_name, iterations, target_removal, out
        )
        arms["L2C cached"] = router.to_plan(threshold)
    else:  # a FLUX transformer: no Algorithm-1 router (it trains on our DiT / U-ViT); its learned schedule is bundled
        print(f"[2/4] {model_name} is cached by its bundled learned schedule (no Algorithm-1 router to train)")
    print(f"      ({time.time() - start:.0f} s so far)")
    schedule = _bundled_schedule(model_name, sampler, steps)
    if schedule is not None:
        arms["learned schedule"] = schedule
    config = SampleConfig(sampler=sampler, steps=steps, guidance_scale=cfg, batch_size=100)
    seeds = list(range(images))
    classes = [i % 10 for i in range(images)]
    print(f"[3/4] sampling {images} images: {', '.join(arms)}")
    samples = {name: to_uint8(generate(model, spec, seeds, classes, config, plan=plan)) for name, plan in arms.items()}
    grids = {"uncached": "uncached.png", "L2C cached": "cached.png", "learned schedule": "learned.png"}
    for name in arms:
        save_grid(samples[name][:100], out / grids[name], nrow=10, scale=2)
    print(f"      ({time.time() - start:.0f} s so far)")
    batch = min(64, images)
    print(f"[4/4] latency: {repeats} interleaved runs of a {batch}-image batch each")

    def timed(plan):
        return lambda: generate(model, spec, seeds[:batch], classes[:batch], config, plan=plan, progress=False)

    timing = time_runs({name: timed(plan) for name, plan in arms.items()}, repeats=repeats)
    rows = _rows(subject, router, threshold, arms, samples, classes, timing)
    for r in rows:
        r["latency_batch"] = batch
    print(f"      metrics done ({time.time() - start:.0f} s in all)")
    table = _format(rows, images)
    print(table)
    atomic_write_text(table + "\n", out / "results.md")
    atomic_write_text(json.dumps(json_safe(rows), indent=2) + "\n", out / "results.json")
    written = [grids[name] for name in arms] + (["router.png", "router.safetensors"] if router is not None else [])
    print(f"wrote {out}/{', '.join(written)}, results.md, results.json")
    return 0


@dataclass
class _Subject:
    """What the demo samples: one of our models (with its diffusion spec), or flux-mnist's workload (spec None)."""

    name: str  # the preset, or the transformer's class
    model: object
    spec: DiffusionSpec | None
    meta: dict
    sampler: str
    steps: int
    cfg: float
    macs: MacProfile
    trains_router: bool  # Algorithm 1 (our DiT / U-ViT)


def _load(model_name: str) -> _Subject:
    if model_name == "flux-mnist":
        from ..models.flux_mnist import DEFAULT_CFG, DEFAULT_STEPS
        from .diffusers_workload import flux_workload, workload_macs

        workload, meta = flux_workload(model_name, steps=DEFAULT_STEPS, cfg=DEFAULT_CFG)
        sampler = workload.sampler.name
        macs = workload_macs(workload)
        return _Subject(meta["class"], workload, None, meta, sampler, DEFAULT_STEPS, DEFAULT_CFG, macs, False)
    model, meta = load_model(model_name)
    spec = DiffusionSpec(**meta["diffusion"])
    macs = profile_macs(meta["preset"])
    return _Subject(meta["preset"], model, spec, meta, conventions(model).sampler, 20, 1.5, macs, True)


def _train_router(model, spec, meta, sampler, model_name, iterations, target_removal, out):
    from ..data.mnist import load_mnist, to_model_range
    from ..data.prepared import ArrayDataset
    from .train_router import RouterJob, train_router_job, unfinished_run

    settings = cpu_defaults(architecture_of(model))
    overrides = (("iterations", iterations),) if iterations else ()
    job = RouterJob(sampler=sampler, steps=20, guidance_scale=1.5, overrides=overrides, target_removal=target_removal)
    x, y = load_mnist("trainval")
    sample_batch = ArrayDataset(to_model_range(x), y).random_batch
    print(
        f"[2/4] training a router: {iterations or settings['iterations']} iterations, batch {settings['batch_size']}, "
        f"λ calibrated to remove {target_removal:.0%} of single-layer errors, lr = {settings['lr']} (Algorithm 1)"
    )
    t0 = time.time()
    path = out / "router.safetensors"
    # a demo interrupted while training its router continues that training when started again (same settings)
    extra = {"model": model_name, "data": "mnist"}
    train_router_job(model, spec, meta, job, sample_batch, path, resume=unfinished_run(path), extra_meta=extra)
    router, router_meta = load_router(path)
    plot_router(
        router,
        router_meta["threshold"],
        out / "router.png",
        title=f"{model_name} {sampler}-20, λ = {router_meta['lambda']:.3g}",
        layout=describe(model),
    )
    print(f"      router trained in {time.time() - t0:.0f} s")
    return router, router_meta["threshold"]


def _bundled_schedule(model_name: str, sampler: str, steps: int):
    """The bundled learned schedule's plan for this model and sampler, or None where none is bundled."""
    if model_name not in SCHEDULES:
        return None
    router, meta = load_router(ASSETS / SCHEDULES[model_name])
    if (meta.get("sampler"), meta.get("steps")) != (sampler, steps):
        raise ValueError(f"bundled schedule {SCHEDULES[model_name]} is for {meta.get('sampler')}-{meta.get('steps')}")
    return router_plan(router, meta)


def _rows(subject: _Subject, router, threshold, arms, samples, classes, timing):
    macs = subject.macs
    cached = next(plan for plan in arms.values() if plan is not None)
    full = CachePlan.full(cached.num_steps, cached.num_sublayers)
    rows = []
    for name, plan in arms.items():
        plan = full if plan is None else plan
        m = mnist_metrics(samples[name], np.asarray(classes), n_boot=1000)
        psnr, psnr_low, psnr_high = psnr_with_ci(samples[name], samples["uncached"], n_boot=1000)
        mac = plan_macs(plan, macs)
        t = timing[name]
        rows.append(
            {
                "method": name,
                "nfe": plan.num_steps,
                "executed": int(plan.compute.sum()),
                "total": int(plan.compute.numel()),
                "macs_g": mac["macs_per_image_plan_linear"] / 1e9,
                "latency_s": t["median_s"],
                "latency_min_s": t["min_s"],
                "latency_max_s": t["max_s"],
                "fid": m["fid"],
                "fid_ci": m["fid_ci"],
                "class_accuracy": m["class_accuracy"],
                "precision": m["precision"],
                "recall": m["recall"],
                "psnr_db": psnr,
                "psnr_ci": [psnr_low, psnr_high],
            }
        )
    for r in rows:
        r["speedup"] = rows[0]["latency_s"] / r["latency_s"]
        r["mac_speedup"] = rows[0]["macs_g"] / r["macs_g"]
    if router is not None:
        summary = router_summary(router, threshold, macs, layout=describe(network(subject.model)))
        rows[1]["cache_steps_executed"] = f"{summary['executed']}/{summary['total']}"
    return rows


def _format(rows, n) -> str:
    head = (
        f"| method | NFE | executed sub-layers | MACs/img (G) | latency, {rows[0]['latency_batch']} img (s) "
        "| speedup | "
        "MAC speedup | "
        f"MNIST-FID ({n}) [95 % CI] | class acc. | PSNR vs uncached, dB [95 % CI] |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        fid, psnr = with_interval(r["fid"], r["fid_ci"], ".2f"), with_interval(r["psnr_db"], r["psnr_ci"], ".1f")
        lines.append(
            f"| {r['method']} | {r['nfe']} | {r['executed']}/{r['total']} | {r['macs_g']:.3f} | "
            f"{r['latency_s']:.3f} | {r['speedup']:.2f}x | {r['mac_speedup']:.2f}x | {fid} | "
            f"{100 * r['class_accuracy']:.1f}% | {psnr} |"
        )
    return "\n".join(lines)
