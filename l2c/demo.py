"""The demo: Learning-to-Cache on a bundled MNIST model, end to end, in a few minutes on a CPU.

1. load the bundled model; 2. train a router for its 20-step sampler (Algorithm 1); 3. sample the same seeds without
and with the cache (real skipping); 4. print NFE, executed sub-layers, MACs, latency (median of repeats, same
process), speedup, MNIST-FID, class accuracy and PSNR against the uncached images; 5. write grids and the heat-map.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from .bench import time_runs
from .cache.layout import sublayers
from .cache.macs import profile_macs
from .cache.plan import CachePlan
from .commands import resolve_lambda, small_model_defaults
from .diffusion import DiffusionSpec
from .metrics.report import mnist_metrics
from .metrics.scores import paired_metrics
from .models import architecture_of
from .models.checkpoints import load_model
from .pipeline import SampleConfig, generate, save_grid, to_uint8
from .router.report import plan_macs, plot_router, router_summary


def run_demo(args: argparse.Namespace) -> int:
    start = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, meta = load_model(args.model)
    spec = DiffusionSpec(**meta["diffusion"])
    arch = architecture_of(model)
    sampler = "ddim" if arch == "dit" else "dpm-solver-2"
    print(
        f"[1/4] {args.model}: {meta['preset']}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params, "
        f"sampler {sampler}-20, guidance 1.5"
    )
    router, threshold = _train_router(model, spec, sampler, args, out)
    print(f"      ({time.time() - start:.0f} s so far)")
    plan = router.to_plan(threshold)
    cfg = SampleConfig(sampler=sampler, steps=20, cfg=1.5, batch_size=100)
    seeds = list(range(args.images))
    classes = [i % 10 for i in range(args.images)]
    print(f"[3/4] sampling {args.images} images without and with the cache")
    plain = to_uint8(generate(model, spec, seeds, classes, cfg))
    cached = to_uint8(generate(model, spec, seeds, classes, cfg, plan=plan))
    save_grid(plain[:100], out / "uncached.png", nrow=10, scale=2)
    save_grid(cached[:100], out / "cached.png", nrow=10, scale=2)
    print(f"      ({time.time() - start:.0f} s so far)")
    print(f"[4/4] latency: {args.repeats} interleaved runs of a {min(64, args.images)}-image batch each")
    timing = time_runs(
        {
            "uncached": lambda: generate(model, spec, seeds[:64], classes[:64], cfg, progress=False),
            "cached": lambda: generate(model, spec, seeds[:64], classes[:64], cfg, plan=plan, progress=False),
        },
        repeats=args.repeats,
    )
    rows = _rows(model, meta, router, threshold, plan, plain, cached, classes, timing)
    for r in rows:
        r["latency_batch"] = min(64, args.images)
    print(f"      metrics done ({time.time() - start:.0f} s in all)")
    table = _format(rows, args.images)
    print(table)
    (out / "results.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {out}/uncached.png, cached.png, router.png, router.safetensors, results.md, results.json")
    return 0


def _train_router(model, spec, sampler, args, out):
    from .cache.plan import cache_steps_for
    from .data.mnist import load_mnist, to_model_range
    from .data.prepared import ArrayDataset
    from .router.files import save_router
    from .router.router import Router
    from .solvers import SamplerGeometry
    from .training.train_router import RouterTrainConfig, train_router

    settings = small_model_defaults(architecture_of(model))
    threshold = settings.pop("threshold")
    if args.iterations:
        settings["iterations"] = args.iterations
    geometry = SamplerGeometry(sampler, 20, spec)
    router = Router(
        20,
        len(sublayers(model)),
        cache_steps_for(geometry.default_cache_schedule, 20),
        generator=torch.Generator().manual_seed(0),
    )
    x, y = load_mnist("trainval")
    data = ArrayDataset(to_model_range(x), y)
    sample_batch = data.random_batch

    settings["lam"] = resolve_lambda(
        "auto", model, router, geometry, sample_batch, settings["loss"], args.target_removal, settings["batch_size"]
    )
    cfg = RouterTrainConfig(**settings)

    print(
        f"[2/4] training a router: {cfg.iterations} iterations, batch {cfg.batch_size}, λ = {cfg.lam:.3g}, "
        f"lr = {cfg.lr} (Algorithm 1)"
    )
    history = train_router(model, router, geometry, sample_batch, cfg, out_dir=out / "router_work")
    save_router(
        router,
        out / "router.safetensors",
        {
            "model": args.model,
            "sampler": sampler,
            "steps": 20,
            "guidance": 1.5,
            "lambda": cfg.lam,
            "threshold": threshold,
            "arch": architecture_of(model),
            "data": "mnist",
        },
    )
    plot_router(router, threshold, out / "router.png", title=f"{args.model} {sampler}-20, λ = {cfg.lam:.3g}")
    print(f"      router trained in {history['wall_s']:.0f} s")
    return router, threshold


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
