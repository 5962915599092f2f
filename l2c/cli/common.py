"""Arguments and argument-to-library glue shared by several commands."""

from __future__ import annotations

import argparse

from ..jobs.generate import SampleConfig
from ..models import MODELS
from ..sampling.samplers import SAMPLERS, default_sampler
from ..utils.precision import PRECISIONS


class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each option's default, except the empty ones (None, off, an empty list)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default in ("", [], argparse.SUPPRESS):
            return action.help
        return super()._get_help_string(action)


ADVANCED = "advanced (tuning knobs; the defaults suit most runs)"


def advanced(p: argparse.ArgumentParser, title: str = ADVANCED):
    """The parser's argument group `title`, made once: --help lists the options a user needs first, then these."""
    groups = p.__dict__.setdefault("_l2c_groups", {})
    if title not in groups:
        groups[title] = p.add_argument_group(title)
    return groups[title]


class OneLineParser(argparse.ArgumentParser):
    """A bad argument gets one line and exit code 2, like every other refusal of the command line (argparse's own
    error() prints the whole usage first). Subcommand parsers inherit the class."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default="dit-mnist",
        help=f"bundled model (dit-mnist, uvit-mnist), preset ({', '.join(list(MODELS)[:3])}, ...) with --ckpt, or a "
        "diffusers folder (DiTTransformer2DModel, or a pipeline folder; its scheduler drives --sampler diffusers-*)",
    )
    p.add_argument("--ckpt", default=None, help="checkpoint file for a preset (official .pt/.pth or ours)")
    p.add_argument("--device", default="cpu", help="torch device")
    g = advanced(p)
    g.add_argument("--random-init", action="store_true", help="random weights (smoke tests; no --ckpt needed)")
    g.add_argument("--schedule", default=None, help="beta schedule override (linear | scaled_linear)")


def add_sampler_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--sampler",
        default=None,
        choices=list(SAMPLERS),
        help="sampler (default: ddim for DiT, dpm-solver-2 for U-ViT; a diffusers folder's own scheduler where "
        "l2c drives it: diffusers-ddim, diffusers-dpmpp-2m)",
    )
    p.add_argument("--steps", type=int, default=20, help="DDIM/DDPM steps, or NFE for DPM-Solver")
    p.add_argument("--cfg", type=float, default=1.5, help="guidance weight w (1 = off; U-ViT's scale 0.4 = w 1.4)")
    p = advanced(p)
    p.add_argument("--eta", type=float, default=0.0, help="DDIM η")
    p.add_argument(
        "--guided-channels",
        choices=["auto", "all"],
        default="auto",
        help="DiT batched guidance: 'auto' guides 3 of 4 latent channels as upstream DiT does; 'all' guides all",
    )
    p.add_argument(
        "--dtype",
        choices=list(PRECISIONS),
        default="fp32",
        help="fp32; tf32 (TF32 matmuls on CUDA, DiT's setting); bf16 / fp16 autocast (U-ViT's; state stays fp32)",
    )


def load_model(args):
    from ..jobs.loading import load_for_sampling
    from .errors import library_output_held

    with library_output_held():  # a broken folder's library warnings join the error's one line
        return load_for_sampling(args.model, args.ckpt, args.random_init, args.schedule, args.device)


def sample_config(args, model, spec, batch_size: int = 64) -> SampleConfig:
    return SampleConfig(
        sampler=args.sampler or default_sampler(model, spec),
        steps=args.steps,
        guidance_scale=args.cfg,
        eta=args.eta,
        guided_channels=args.guided_channels,
        batch_size=batch_size,
        dtype=args.dtype,
    )


def load_router_for(args, model, config: SampleConfig):
    """(router, metadata, θ) of --router, checked against the model and sampling run; θ from --threshold or the file."""
    from ..cache.layout import sublayers
    from ..router.files import check_router_fits, load_router
    from ..sampling.diffusion import DiffusionSpec

    router, meta = load_router(args.router)
    evaluations = config.make_sampler(DiffusionSpec()).num_evaluations
    check_router_fits(router, meta, len(sublayers(model)), config.sampler, evaluations)
    threshold = args.threshold if args.threshold is not None else meta.get("threshold", 0.5)
    return router, meta, threshold
