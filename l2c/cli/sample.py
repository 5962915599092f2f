"""`l2c sample`: an image grid and optionally an ADM-format .npz, with or without a router."""

from __future__ import annotations

from dataclasses import replace

from ..jobs.compile import COMPILE_MODES
from .common import add_model_args, add_sampler_args, advanced, load_model, load_router_for, sample_config

HELP = "sample an image grid (and optionally an ADM-format .npz), with or without a router"
FLUX = "flux-mnist"  # the bundled FluxTransformer2DModel folder, sampled by diffusers' FluxPipeline


def add_arguments(p) -> None:
    add_model_args(p)
    add_sampler_args(p)
    p.add_argument("--seeds", default="0-15", help="image seeds, e.g. 0-63 or 1,5,9; image i depends only on its seed")
    p.add_argument("--classes", default="0-9", help="class labels, cycled over the seeds")
    p.add_argument("--router", default=None, help="router file (.safetensors); samples with real skipping")
    p.add_argument("--out", default="samples.png", help="output grid PNG")
    p.add_argument(
        "--npz",
        default=None,
        help="write all images as an ADM-format .npz (arr_0: uint8 NHWC, labels, seeds); resumable, and split over "
        "processes under torchrun",
    )
    g = advanced(p)
    g.add_argument(
        "--threshold", type=float, default=None, help="θ: execute a sub-layer iff its score > θ (default: the router's)"
    )
    g.add_argument("--batch-size", type=int, default=64, help="images per batch (does not change the images)")
    g.add_argument("--grid-max", type=int, default=256, help="images in the grid PNG (the first ones)")
    g.add_argument("--vae", default=None, help="local diffusers AutoencoderKL folder, for latent models")
    g.add_argument(
        "--compile", action="store_true", help="run each block as a torch.compile graph (the first batch compiles)"
    )
    g.add_argument(
        "--compile-mode",
        choices=list(COMPILE_MODES),
        default="default",
        help="torch.compile mode with --compile; reduce-overhead / max-autotune add CUDA graphs on a GPU",
    )


def run(args) -> int:
    if args.model == FLUX:
        return _run_flux(args)
    from ..jobs.generate import generate, save_grid, to_uint8
    from ..jobs.loading import decoder_for
    from ..sampling.seeds import parse_int_list
    from ..utils import distributed

    model, spec, meta = load_model(args)
    seeds = parse_int_list(args.seeds)
    labels = parse_int_list(args.classes)
    classes = [labels[i % len(labels)] for i in range(len(seeds))]
    config = replace(
        sample_config(args, model, spec, args.batch_size), compile=args.compile, compile_mode=args.compile_mode
    )
    plan = None
    if args.router:
        from ..router.budget import router_plan

        router, router_meta, threshold = load_router_for(args, model, config)
        plan = router_plan(router, router_meta, threshold)
    decode = decoder_for(meta, args.vae, args.device)
    if args.npz:  # written in resumable parts, split over torchrun processes when launched with torchrun
        from ..jobs.sample_sets import describe_inputs, sample_to_npz

        record = describe_inputs(args.model, args.ckpt, args.router, threshold if args.router else None, args.vae)
        images = sample_to_npz(model, spec, seeds, classes, config, args.npz, plan=plan, decode=decode, record=record)
        if images is None:
            return 0  # not the main process
        images = images[: args.grid_max]
    else:
        if distributed.world_size() > 1:
            raise ValueError("under torchrun, sample writes its images with --npz FILE (the grid alone is not split)")
        grid_seeds, grid_classes = seeds[: args.grid_max], classes[: args.grid_max]
        images = to_uint8(generate(model, spec, grid_seeds, grid_classes, config, plan, decode))
    save_grid(images, args.out, scale=2 if images.shape[1] < 64 else 1)
    print(f"wrote {args.out}" + (f" and {args.npz}" if args.npz else "") + f" ({len(seeds)} images)")
    return 0


def _run_flux(args) -> int:
    from ..jobs.flux_sampling import flux_pipeline, sample_flux_mnist
    from ..jobs.generate import save_grid
    from ..models.flux_mnist import DEFAULT_CFG, DEFAULT_STEPS, load_flux_mnist
    from ..sampling.seeds import parse_int_list

    unsupported = [
        f for f in ("ckpt", "router", "npz", "vae", "schedule", "random_init", "compile") if getattr(args, f)
    ]
    if unsupported or args.sampler not in (None, "diffusers-flowmatch-euler") or args.device != "cpu":
        raise ValueError(f"{FLUX} samples through FluxPipeline on the CPU; drop --{(unsupported or ['sampler'])[0]}")
    steps = DEFAULT_STEPS if args.steps == 20 else args.steps  # 20 / 1.5: the flags' defaults, for DiT
    cfg = DEFAULT_CFG if args.cfg == 1.5 else args.cfg
    seeds = parse_int_list(args.seeds)
    labels = parse_int_list(args.classes)
    classes = [labels[i % len(labels)] for i in range(len(seeds))][: args.grid_max]
    transformer, scheduler, conditioning = load_flux_mnist()
    pipe = flux_pipeline(transformer, scheduler)
    images = sample_flux_mnist(pipe, conditioning, seeds[: args.grid_max], classes, steps, cfg, args.batch_size)
    save_grid(images[..., None], args.out, scale=2)
    print(f"wrote {args.out} ({len(images)} images, FluxPipeline, {steps} steps, true CFG {cfg})")
    return 0
