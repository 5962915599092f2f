"""`l2c compare`: L2C against fewer steps, FORA, SmoothCache and manual layer selections on the same seeds."""

from __future__ import annotations

from pathlib import Path

from .common import (
    add_conditioning_arg,
    add_model_args,
    add_sampler_args,
    add_size_args,
    advanced,
    decoder_of,
    load_any,
    load_router_for,
    sample_config,
)
from .compare_sweep import add_sweep_arguments, baseline_data, mnist_shaped, model_macs, num_classes, run_sweep_command

HELP = "L2C against fewer steps, FORA and manual layer selections: same seeds, one table"


def add_arguments(p) -> None:
    add_model_args(p)
    add_sampler_args(p)
    p.add_argument(
        "--router",
        default=None,
        help="router file (from train-router or router import); required without --sweep, where it drives the "
        "l2c (θ) and drop methods",
    )
    add_conditioning_arg(p)
    p.add_argument("--images", type=int, default=1000, help="images per method for the quality metrics")
    p.add_argument("--out", default="compare_out", help="output folder (compare.md, compare.json, compare.png)")
    g = advanced(p)
    g.add_argument("--threshold", type=float, default=None, help="θ (default: the one stored in the router file)")
    g.add_argument("--batch-size", type=int, default=100, help="sampling batch for the quality images")
    g.add_argument("--repeats", type=int, default=3, help="latency repeats per method (median reported)")
    g.add_argument("--latency-batch", type=int, default=64, help="images per timed batch")
    g.add_argument("--fora", type=int, nargs="*", default=[2, 3], help="FORA intervals to include")
    g.add_argument("--fewer-steps", type=int, nargs="*", default=[], help="extra step counts without caching")
    g.add_argument(
        "--data",
        default="auto",
        help="single-layer-error baseline images: mnist, generated, a prepared folder, none (auto: per model)",
    )
    g.add_argument("--smoothcache-images", type=int, default=16, help="SmoothCache calibration images (0 = skip it)")
    g.add_argument("--vae", default=None, help="local AutoencoderKL folder (latent models: images compared decoded)")
    g.add_argument("--seed", type=int, default=0, help="seed of the random baseline and the error measurement")
    add_size_args(g)
    add_sweep_arguments(p)


def run(args) -> int:
    if args.sweep:
        return run_sweep_command(args)
    if args.router is None:
        raise ValueError("--router is required (without --sweep)")
    from ..cache.layout import sublayer_kinds
    from ..jobs.compare import run_comparison, standard_methods, write_report
    from ..jobs.generate import network

    model, spec, meta = load_any(args)  # flux-mnist / a FLUX folder: its workload in the model's place
    config = sample_config(args, model, spec, args.batch_size)
    data = baseline_data(args, model)  # refused for a workload before any work
    router, _, threshold = load_router_for(args, model, config)
    macs = model_macs(model, meta)
    errors = _errors(args, model, spec, meta, config, router, data)
    changes = _smoothcache(args, model, spec, config, router)
    kinds = sublayer_kinds(network(model))
    fewer = tuple(args.fewer_steps)
    methods = standard_methods(
        router,
        threshold,
        config.steps,
        config.sampler,
        macs,
        errors,
        changes,
        tuple(args.fora),
        fewer,
        args.seed,
        kinds,
    )
    quality = None
    if mnist_shaped(model):
        from functools import partial

        from ..metrics.report import mnist_metrics

        quality = partial(mnist_metrics, n_boot=args.bootstrap)
    seeds = list(range(args.images))
    classes = [i % num_classes(model) for i in range(args.images)]
    decode = decoder_of(args, model, meta)
    rows, _ = run_comparison(
        model,
        spec,
        macs,
        methods,
        config,
        seeds,
        classes,
        args.repeats,
        args.latency_batch,
        quality,
        decode,
        n_boot=args.bootstrap,
    )
    context = {
        "model": args.model,
        "preset": meta.get("preset", meta.get("class")),
        "router": str(args.router),
        "threshold": threshold,
        "sampler": config.sampler,
        "steps": config.steps,
        "guidance_scale": config.guidance_scale,
        "images": args.images,
        "repeats": args.repeats,
        "bootstrap": args.bootstrap,
    }
    print(write_report(rows, Path(args.out), context))
    print(f"wrote {args.out}/compare.md, compare.json, compare.png")
    return 0


def _errors(args, model, spec, meta, config, router, data: str):
    """Single-layer caching errors for the smallest-error baseline (None without data; a workload has none)."""
    if data == "none":
        return None
    from ..cache.layout import sublayers
    from ..jobs.train_router import batch_source
    from ..models import conventions
    from ..training.train_router import caching_errors

    work = Path(args.out) / "data"
    batches = batch_source(data, model, spec, meta, args.vae, work, config, generated_images=256)
    sampler = config.make_sampler(spec)
    print(f"measuring single-layer caching errors ({len(router.cache_steps)} x {len(sublayers(model))})")
    loss = conventions(model).router_loss
    return caching_errors(model, router, sampler, batches, batch_size=32, loss=loss, seed=args.seed)


def _smoothcache(args, model, spec, config, router):
    if not args.smoothcache_images:
        return None
    from ..cache.smoothcache import calibrate_changes
    from ..jobs.generate import generate, network

    n = args.smoothcache_images
    print(f"calibrating SmoothCache on {n} images")
    seeds = list(range(10**6, 10**6 + n))  # not the evaluation seeds
    classes = [i % num_classes(model) for i in range(n)]
    return calibrate_changes(network(model), lambda: generate(model, spec, seeds, classes, config), router.num_steps)
