"""`l2c compare --sweep`: every method across its budget knob on the same seeds (quality-versus-speed curves)."""

from __future__ import annotations

import platform
from pathlib import Path

import torch

from .common import advanced, check_fits, decoder_of, load_any, load_router_for, sample_config


def add_sweep_arguments(p) -> None:
    from ..methods import METHODS

    p.add_argument("--sweep", action="store_true", help="sweep every method across its knob (resumable, see --out)")
    p.add_argument(
        "--methods",
        nargs="+",
        default=None,
        choices=list(METHODS),
        metavar="METHOD",
        help=f"methods for --sweep (default: every one the inputs allow): {', '.join(METHODS)}",
    )
    p = advanced(p, "advanced: --sweep")
    p.add_argument(
        "--values",
        action="append",
        default=[],
        metavar="METHOD=V1,V2",
        help="knob values of one method for --sweep (repeatable); default: the method's own grid",
    )
    p.add_argument(
        "--lambda-routers",
        nargs="+",
        default=[],
        metavar="FILE",
        help="--sweep: routers trained at several --target-removal values (method l2c-lambda, λ from each file)",
    )
    p.add_argument(
        "--schedule-routers",
        nargs="+",
        default=[],
        metavar="FILE",
        help="--sweep: learned schedules (train-router --target-macs), one point per file (method learned)",
    )
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95 %% intervals")


def parse_values(items: list[str]) -> dict[str, list[float]]:
    from ..methods import METHODS

    out = {}
    for item in items:
        name, sep, values = item.partition("=")
        if not sep or name not in METHODS:
            raise ValueError(f"--values {item!r}: use METHOD=V1,V2 with METHOD one of {', '.join(METHODS)}")
        try:
            out[name] = [float(v) for v in values.split(",") if v]
        except ValueError:
            raise ValueError(f"--values {item!r}: the values must be numbers") from None
    return out


def _router_files(paths, model, config) -> list:
    from ..router.files import load_router

    routers = []
    for path in paths:
        router, meta = load_router(path)
        check_fits(router, meta, model, config)
        routers.append((path, router, meta))
    return routers


# What differs between our class-conditional models and a workload in model's place (flux-mnist, FLUX folders).
def model_macs(model, meta):
    """The MAC profile: from the preset (our models), or measured on the transformer (a workload)."""
    from ..cache.macs import profile_macs
    from ..jobs.generate import is_workload

    if is_workload(model):
        from ..jobs.diffusers_workload import workload_macs

        return workload_macs(model)
    return profile_macs(meta["preset"])


def num_classes(model) -> int:
    from ..jobs.generate import is_workload

    return model.num_prompts if is_workload(model) else model.null_class


def mnist_shaped(model) -> bool:
    """Whether samples are MNIST digits (the bundled classifier's quality metrics apply)."""
    from ..jobs.generate import is_workload

    if is_workload(model):
        return model.pixel_space
    return model.in_channels == 1 and model.input_size == 28


def baseline_data(args, model) -> str:
    """The images single-layer caching errors are measured on (auto: MNIST for MNIST-shaped models of ours)."""
    from ..jobs.generate import is_workload

    if is_workload(model):
        if args.data not in ("auto", "none"):
            raise ValueError(f"--data {args.data}: single-layer errors are measured on our DiT / U-ViT only; drop it")
        return "none"
    return ("mnist" if mnist_shaped(model) else "none") if args.data == "auto" else args.data


def _cached(path: Path, compute):
    """() -> tensor, computed once and kept in the output folder (a resumed sweep reuses it)."""
    from ..utils.io import atomic_torch_save

    def get():
        if path.exists():
            return torch.load(path, weights_only=True)
        value = compute()
        atomic_torch_save(value, path)
        return value

    return _memo(get)


def _memo(fn):
    box = []
    return lambda: box[0] if box else (box.append(fn()) or box[0])


def build_context(args, model, spec, meta, config):
    from ..cache.first_block import block_linear_macs
    from ..cache.layout import describe
    from ..cache.plan import cache_steps_for
    from ..jobs.generate import is_workload, network
    from ..methods import SweepContext

    sampler = model.with_steps(config.steps).sampler if is_workload(model) else config.make_sampler(spec)
    evaluations = sampler.num_evaluations
    router = load_router_for(args, model, config)[0] if args.router else None
    out = Path(args.out)
    layout = describe(network(model))
    ctx = SweepContext(
        sampler=config.sampler,
        steps=config.steps,
        evaluations=evaluations,
        num_sublayers=len(layout),
        cache_steps=cache_steps_for(sampler.cache_schedule, evaluations),
        macs=model_macs(model, meta),
        router=router,
        lambda_routers=_router_files(args.lambda_routers, model, config),
        schedule_routers=_router_files(args.schedule_routers, model, config),
        block_macs=None if is_workload(model) else _memo(lambda: block_linear_macs(meta["preset"])),
        kinds=[s.kind for s in layout],
        blocks=[s.block for s in layout],
    )
    if baseline_data(args, model) != "none":
        ctx.errors = _cached(out / "calibration-errors.pt", lambda: _errors(args, model, spec, meta, config, ctx))
    if args.smoothcache_images:
        ctx.changes = _cached(out / "calibration-smoothcache.pt", lambda: _changes(args, model, spec, config, ctx))
    return ctx


def _errors(args, model, spec, meta, config, ctx):
    from ..jobs.train_router import batch_source
    from ..models import conventions
    from ..router.router import Router
    from ..training.train_router import caching_errors

    data = baseline_data(args, model)
    batches = batch_source(data, model, spec, meta, args.vae, Path(args.out) / "data", config, 256)
    probe = Router(ctx.evaluations, ctx.num_sublayers, ctx.cache_steps)  # only its shape and cache steps are read
    print(f"measuring single-layer caching errors ({len(ctx.cache_steps)} x {ctx.num_sublayers})", flush=True)
    loss = conventions(model).router_loss
    sampler = config.make_sampler(spec)
    return caching_errors(model, probe, sampler, batches, batch_size=32, loss=loss, seed=args.seed)


def _changes(args, model, spec, config, ctx):
    from ..cache.smoothcache import calibrate_changes
    from ..jobs.generate import generate, network

    n = args.smoothcache_images
    print(f"calibrating SmoothCache on {n} images", flush=True)
    seeds = list(range(10**6, 10**6 + n))  # not the evaluation seeds
    classes = [i % num_classes(model) for i in range(n)]
    return calibrate_changes(network(model), lambda: generate(model, spec, seeds, classes, config), ctx.evaluations)


# Methods that run another sampler or need per-block MACs of a preset: our DiT / U-ViT only.
NOT_FOR_WORKLOADS = ("dpm-solver-2m", "first-block")


def select_points(args, ctx, workload: bool = False) -> list:
    from ..methods import METHODS

    values = parse_values(args.values)
    names = args.methods or [n for n, m in METHODS.items() if all(getattr(ctx, k) for k in m.needs)]
    if workload:
        refused = [n for n in NOT_FOR_WORKLOADS if n in (args.methods or [])]
        if refused:
            raise ValueError(f"--methods {refused[0]} runs our DiT / U-ViT only, not {args.model}: drop it")
        names = [n for n in names if n not in NOT_FOR_WORKLOADS]
    return [p for n in names for p in METHODS[n].points(ctx, values.get(n))]


def settings_of(args, meta, config) -> dict:
    from ..jobs.timing import device_name
    from ..utils.io import file_sha256

    return {
        "model": args.model,
        "preset": meta.get("preset", meta.get("class")),
        "checkpoint": args.ckpt,
        "sampler": config.sampler,
        "steps": config.steps,
        "guidance_scale": config.guidance_scale,
        "eta": config.eta,
        "images": args.images,
        "classes": "i mod classes",
        "batch_size": config.batch_size,
        "latency_batch": args.latency_batch,
        "repeats": args.repeats,
        "bootstrap": args.bootstrap,
        "router_sha256": file_sha256(args.router) if args.router else None,
        "lambda_routers_sha256": sorted(file_sha256(p) for p in args.lambda_routers),
        "schedule_routers_sha256": sorted(file_sha256(p) for p in args.schedule_routers),
        "data": args.data,
        "smoothcache_images": args.smoothcache_images,
        "seed": args.seed,
        "device": device_name(args.device),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def _with_conditioning(settings: dict, args) -> dict:
    # only where given, so that the records of sweeps without one stay resumable
    if getattr(args, "conditioning", None):
        from ..utils.io import file_sha256

        settings["conditioning_sha256"] = file_sha256(args.conditioning)
    return settings


def header_of(settings: dict) -> str:
    s = settings
    return (
        f"{s['model']}, {s['sampler']} {s['steps']}, guidance {s['guidance_scale']}, {s['images']} images (seeds 0.."
        f"{s['images'] - 1}, classes in turn), quality batch {s['batch_size']}. Latency: one warm-up, then the median "
        f"of {s['repeats']} runs of a {s['latency_batch']}-image batch interleaved with the uncached reference on "
        f"{s['device']} (torch {s['torch']}); speedup = reference median / method median of the same interleaving. "
        f"Intervals: 95 % bootstrap over images ({s['bootstrap']} resamples; FID reference statistics fixed)."
    )


def run_sweep_command(args) -> int:
    from ..jobs.generate import is_workload
    from ..jobs.sweep import SweepRun, run_sweep
    from ..jobs.sweep_report import write_sweep_report
    from ..jobs.sweep_store import SweepStore

    model, spec, meta = load_any(args)  # flux-mnist / a FLUX folder: its workload in the model's place
    config = sample_config(args, model, spec, args.batch_size)
    settings = _with_conditioning(settings_of(args, meta, config), args)
    store = SweepStore(args.out, settings)  # refuses a different run before any work
    ctx = build_context(args, model, spec, meta, config)
    points = select_points(args, ctx, is_workload(model))
    seeds = list(range(args.images))
    run = SweepRun(model, spec, ctx, config, seeds, [i % num_classes(model) for i in seeds], store)
    run.repeats, run.latency_batch, run.n_boot = args.repeats, args.latency_batch, args.bootstrap
    run.quality = mnist_shaped(model)
    run.decode = decoder_of(args, model, meta)
    rows = run_sweep(run, points)
    write_sweep_report(rows, Path(args.out), header_of(settings), f"{args.model}, {config.sampler} {config.steps}")
    print(f"{len(rows)} rows; wrote {args.out}/compare.md, compare.json, compare.png (record: {store.path})")
    return 0
