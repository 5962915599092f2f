"""The demo: Learning-to-Cache on a bundled MNIST model, end to end, in a few minutes on a CPU.

1. load the bundled model; 2. train a router for its 20-step sampler (Algorithm 1); 3. sample the same seeds without
and with the cache (real skipping); 4. print NFE, executed sub-layers, MACs, latency (median of repeats, same
process), speedup, MNIST-FID, class accuracy and PSNR against the uncached images; 5. write grids and the heat-map.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..cache.macs import profile_macs
from ..cache.plan import CachePlan
from ..metrics.report import mnist_metrics
from ..metrics.scores import paired_metrics
from ..models import architecture_of, conventions
from ..models.checkpoints import load_model
from ..router.report import plan_macs, plot_router, router_summary
from ..sampling.diffusion import DiffusionSpec
from ..training.train_router import cpu_defaults
from ..utils.io import atomic_write_text
from .generate import SampleConfig, generate, save_grid, to_uint8
from .timing import time_runs


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
    model, meta = load_model(model_name)
    spec = DiffusionSpec(**meta["diffusion"])
    sampler = conventions(model).sampler
    print(
        f"[1/4] {model_name}: {meta['preset']}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params, "
        f"sampler {sampler}-20, guidance 1.5"
    )
    router, threshold = _train_router(model, spec, meta, sampler, model_name, iterations, target_removal, out)
    print(f"      ({time.time() - start:.0f} s so far)")
    plan = router.to_plan(threshold)
    config = SampleConfig(sampler=sampler, steps=20, guidance_scale=1.5, batch_size=100)
    seeds = list(range(images))
    classes = [i % 10 for i in range(images)]
    print(f"[3/4] sampling {images} images without and with the cache")
    plain = to_uint8(generate(model, spec, seeds, classes, config))
    cached = to_uint8(generate(model, spec, seeds, classes, config, plan=plan))
    save_grid(plain[:100], out / "uncached.png", nrow=10, scale=2)
    save_grid(cached[:100], out / "cached.png", nrow=10, scale=2)
    print(f"      ({time.time() - start:.0f} s so far)")
    print(f"[4/4] latency: {repeats} interleaved runs of a {min(64, images)}-image batch each")
    timing = time_runs(
        {
            "uncached": lambda: generate(model, spec, seeds[:64], classes[:64], config, progress=False),
            "cached": lambda: generate(model, spec, seeds[:64], classes[:64], config, plan=plan, progress=False),
        },
        repeats=repeats,
    )
    rows = _rows(model, meta, router, threshold, plan, plain, cached, classes, timing)
    for r in rows:
        r["latency_batch"] = min(64, images)
    print(f"      metrics done ({time.time() - start:.0f} s in all)")
    table = _format(rows, images)
    print(table)
    atomic_write_text(table + "\n", out / "results.md")
    atomic_write_text(json.dumps(rows, indent=2) + "\n", out / "results.json")
    print(f"wrote {out}/uncached.png, cached.png, router.png, router.safetensors, results.md, results.json")
    return 0


def _train_router(model, spec, meta, sampler, model_name, iterations, target_removal, out):
    from ..data.mnist import load_mnist, to_model_range
    from ..data.prepared import ArrayDataset
    from ..router.files import load_router
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
    )
    print(f"      router trained in {time.time() - t0:.0f} s")
    return router, router_meta["threshold"]


def _rows(model, meta, router, threshold, plan, plain, cached, classes, timing):
    macs = profile_macs(meta["preset"])
    full = CachePlan.full(plan.num_steps, plan.num_sublayers)
    summary = router_summary(router, threshold, macs)
    rows = []
    for name, images, p in (("uncached", plain, full), ("L2C cached", cached, plan)):
        m = mnist_metrics(images, np.asarray(classes))
        mac = plan_macs(p, macs)
        t = timing["uncached" if p is full else "cached"]
        rows.append(
            {
                "method": name,
                "nfe": p.num_steps,
                "executed": int(p.compute.sum()),
                "total": int(p.compute.numel()),
                "macs_g": mac["macs_paper"] / 1e9,
                "latency_s": t["median_s"],
                "latency_min_s": t["min_s"],
                "latency_max_s": t["max_s"],
                "fid": m["fid"],
                "class_accuracy": m["class_accuracy"],
                "precision": m["precision"],
                "recall": m["recall"],
                "psnr_db": paired_metrics(images, plain)["psnr_db"],
            }
        )
    for r in rows:
        r["speedup"] = rows[0]["latency_s"] / r["latency_s"]
        r["mac_speedup"] = rows[0]["macs_g"] / r["macs_g"]
    rows[1]["cache_steps_executed"] = f"{summary['executed']}/{summary['total']}"
    return rows


def _format(rows, n) -> str:
    head = (
        f"| method | NFE | executed sub-layers | MACs/img (G) | latency, {rows[0]['latency_batch']} img (s) "
        "| speedup | "
        "MAC speedup | "
        f"MNIST-FID ({n}) | class acc. | PSNR vs uncached (dB) |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        psnr = "∞ (identical)" if r["psnr_db"] == float("inf") else f"{r['psnr_db']:.1f}"
        lines.append(
            f"| {r['method']} | {r['nfe']} | {r['executed']}/{r['total']} | {r['macs_g']:.3f} | "
            f"{r['latency_s']:.3f} | {r['speedup']:.2f}x | {r['mac_speedup']:.2f}x | {r['fid']:.2f} | "
            f"{100 * r['class_accuracy']:.1f}% | {psnr} |"
        )
    return "\n".join(lines)
