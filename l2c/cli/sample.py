"""`l2c sample`: an image grid and optionally an ADM-format .npz, with or without a router."""

from __future__ import annotations

from dataclasses import replace

from ..jobs.compile import COMPILE_MODES
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

HELP = "sample an image grid (and optionally an ADM-format .npz), with or without a router"


def add_arguments(p) -> None:
    add_model_args(p)
    add_sampler_args(p)
    p.add_argument("--seeds", default="0-15", help="image seeds, e.g. 0-63 or 1,5,9; image i depends only on its seed")
    p.add_argument(
        "--classes",
        default=None,
        help="class labels, cycled over the seeds (default 0-9; a FLUX folder: rows of --conditioning, default all)",
    )
    add_conditioning_arg(p)
    add_size_args(advanced(p))
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
    g.add_argument(
        "--vae",
        default=None,
        help="local diffusers AutoencoderKL folder for latent models (a FLUX pipeline folder: its vae/)",
    )
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
    from ..jobs.generate import generate, is_workload, save_grid, to_uint8
    from ..sampling.seeds import parse_int_list
    from ..utils import distributed

    model, spec, meta = load_any(args)  # flux-mnist / a FLUX folder: its workload in the model's place
    seeds = parse_int_list(args.seeds)
    labels = parse_int_list(args.classes) if args.classes else default_classes(model)
    classes = [labels[i % len(labels)] for i in range(len(seeds))]
    check_classes(model, labels)
    config = replace(
        sample_config(args, model, spec, args.batch_size), compile=args.compile, compile_mode=args.compile_mode
    )
    plan = None
    if args.router:
        from ..router.budget import router_plan

        router, router_meta, threshold = load_router_for(args, model, config)
        plan = router_plan(router, router_meta, threshold)
    decode = decoder_of(args, model, meta, latent_only=False)
    if args.npz:  # written in resumable parts, split over torchrun processes when launched with torchrun
        from ..jobs.sample_sets import describe_inputs, sample_to_npz

        record = describe_inputs(args.model, args.ckpt, args.router, threshold if args.router else None, args.vae)
        if is_workload(model):
            record["conditioning"] = _conditioning_identity(args.conditioning)
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
    how = f", {config.sampler} {config.steps} steps, guidance {config.guidance_scale}" if is_workload(model) else ""
    print(f"wrote {args.out}" + (f" and {args.npz}" if args.npz else "") + f" ({len(seeds)} images{how})")
    return 0


def default_classes(model) -> list[int]:
    from ..jobs.generate import is_workload

    return list(range(model.num_prompts if is_workload(model) else 10))


def check_classes(model, labels: list[int]) -> None:
    """Class labels (FLUX folders: prompt rows) the model has, checked before any sampling."""
    from ..jobs.generate import is_workload

    count = model.num_prompts if is_workload(model) else model.null_class
    bad = [c for c in labels if not 0 <= c < count]
    if bad:
        what = "class labels" if not is_workload(model) or model.pixel_space else "prompt rows (--classes)"
        raise ValueError(f"--classes: {what} {bad[:5]} are outside 0..{count - 1} for this model")


def _conditioning_identity(path) -> str | None:
    from ..utils.io import file_sha256

    return f"sha256 {file_sha256(path)}" if path else None
