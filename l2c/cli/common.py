"""Arguments and argument-to-library glue shared by several commands."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..jobs.generate import SampleConfig
from ..models import MODELS
from ..sampling.samplers import SAMPLERS, default_sampler
from ..utils.precision import PRECISIONS

# Sampling defaults of --steps / --cfg left out (resolve_sampling_defaults): our DiT / U-ViT models sample with 20
# steps at guidance 1.5 (their cards); flux-mnist with FLUX.1-dev's 28 steps at true CFG 2 (its card); a FLUX
# folder with 28 steps and no true CFG (FLUX.1-dev is guidance-distilled: FluxPipeline's true_cfg_scale is 1).
DEFAULT_STEPS, DEFAULT_CFG = 20, 1.5
FLUX_STEPS, FLUX_CFG, FLUX_FOLDER_CFG = 28, 2.0, 1.0
FLUX_SAMPLER = "diffusers-flowmatch-euler"


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
        help="sampler (default: the model's own: ddim for DiT, dpm-solver-2 for U-ViT, diffusers-flowmatch-euler "
        "for flux-mnist and FLUX folders; a diffusers folder's own scheduler where l2c drives it: diffusers-ddim, "
        "diffusers-dpmpp-2m)",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"DDIM/DDPM steps, or NFE for DPM-Solver (default: the model's own: {DEFAULT_STEPS} for dit-mnist, "
        f"uvit-mnist and presets, {FLUX_STEPS} for flux-mnist and FLUX folders)",
    )
    p.add_argument(
        "--cfg",
        type=float,
        default=None,
        help=f"guidance weight w (1 = off; U-ViT's scale 0.4 = w 1.4; FLUX: true CFG); default: the model's own: "
        f"{DEFAULT_CFG} for dit-mnist, uvit-mnist and presets, {FLUX_CFG} for flux-mnist, 1 for FLUX folders",
    )
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


def resolve_sampling_defaults(args) -> None:
    """Fill in --sampler, --steps and --cfg left out with the model's own (in place), and refuse a sampler that a
    FLUX model cannot run."""
    if not hasattr(args, "steps") or not hasattr(args, "cfg"):
        return
    flux = is_flux(args)
    if flux and args.sampler not in (None, FLUX_SAMPLER):
        raise ValueError(f"{args.model} samples with {FLUX_SAMPLER} (FluxPipeline's loop): drop --sampler")
    if args.steps is None:
        args.steps = FLUX_STEPS if flux else DEFAULT_STEPS
    if args.cfg is None:
        args.cfg = (FLUX_CFG if args.model == "flux-mnist" else FLUX_FOLDER_CFG) if flux else DEFAULT_CFG
    if flux:
        args.sampler = FLUX_SAMPLER


def is_flux(args) -> bool:
    """Whether --model is flux-mnist or a FLUX folder (driven through l2c.jobs.workload.FluxWorkload)."""
    from ..jobs.diffusers_workload import is_flux_model

    return is_flux_model(str(getattr(args, "model", "")))


def load_model(args):
    from ..jobs.loading import load_for_sampling
    from .errors import library_output_held

    with library_output_held():  # a broken folder's library warnings join the error's one line
        return load_for_sampling(args.model, args.ckpt, args.random_init, args.schedule, args.device)


def add_conditioning_arg(p) -> None:
    p.add_argument(
        "--conditioning",
        default=None,
        help="a FLUX folder's prompts: .safetensors of prompt_embeds, pooled_prompt_embeds (and negative_* for "
        "--cfg > 1), named as FluxPipeline's arguments; image i takes prompt --classes[i]",
    )
    p.add_argument(
        "--prompts",
        default=None,
        help="a FLUX pipeline folder's prompts as text, one per line, encoded by the folder's own text encoders "
        "(instead of --conditioning); image i takes prompt --classes[i]",
    )
    g = advanced(p)
    g.add_argument("--negative-prompt", default="", help="the negative prompt of true CFG (--cfg > 1) with --prompts")


def add_size_args(g) -> None:
    g.add_argument("--height", type=int, default=None, help="image height of a FLUX folder's runs (default 1024)")
    g.add_argument("--width", type=int, default=None, help="image width of a FLUX folder's runs (default 1024)")


# Flags that mean something only for our DiT / U-ViT models (name, value that means "not given").
NOT_FOR_FLUX = (
    ("ckpt", None),
    ("random_init", False),
    ("schedule", None),
    ("eta", 0.0),
    ("guided_channels", "auto"),
    ("dtype", "fp32"),
)


def load_workload(args):
    """(workload, metadata) of flux-mnist or a FLUX folder with --conditioning (l2c.jobs.workload.FluxWorkload),
    after refusing the flags it does not take."""
    from ..jobs.diffusers_workload import flux_workload
    from .errors import library_output_held

    for name, unset in NOT_FOR_FLUX:
        if getattr(args, name, unset) != unset:
            flag = name.replace("_", "-")
            raise ValueError(f"--{flag} is for our DiT / U-ViT models; {args.model} is a FLUX transformer: drop it")
    height, width = getattr(args, "height", None), getattr(args, "width", None)
    if args.model == "flux-mnist" and (height or width):
        raise ValueError("flux-mnist samples 28x28 digits (FluxPipeline's 112 x 112): drop --height / --width")
    prompts = None
    if getattr(args, "prompts", None) is not None:
        from ..jobs.prompts import read_prompts

        prompts = read_prompts(args.prompts)  # before any model loads: an empty or unreadable file stops here
    negative = getattr(args, "negative_prompt", "")
    with library_output_held():  # a broken folder's library warnings join the error's one line
        return flux_workload(
            args.model,
            args.conditioning,
            args.steps,
            args.cfg,
            height,
            width,
            args.device,
            prompts=prompts,
            negative_prompt=negative,
        )


def load_any(args):
    """(model, spec, metadata): our model, or for FLUX a workload in the model's place with spec None (l2c.jobs.
    generate.generate takes either)."""
    if is_flux(args):
        workload, meta = load_workload(args)
        return workload, None, meta
    if getattr(args, "conditioning", None) is not None or getattr(args, "prompts", None) is not None:
        raise ValueError("--conditioning / --prompts are for a FLUX folder's prompts; this model is class-conditional")
    if getattr(args, "height", None) or getattr(args, "width", None):
        raise ValueError("--height / --width are for FLUX folders; this model has one image size")
    from ..integrations.diffusers_convert import NotConvertible

    try:
        return load_model(args)
    except NotConvertible:  # a DiT trained in diffusers (an embedder per block): driven on itself, as DiTPipeline does
        workload, meta = load_native_dit(args)
        return workload, None, meta


def load_native_dit(args):
    """(workload, metadata) of a DiTTransformer2DModel folder our DiT cannot hold (l2c.jobs.dit_workload); --sampler
    left out becomes the folder's own scheduler where l2c drives it."""
    from ..jobs.dit_workload import dit_workload
    from .errors import library_output_held

    with library_output_held():
        workload, meta = dit_workload(args.model, args.sampler, args.steps, args.cfg, args.eta, args.device)
    args.sampler = workload.sampler.name
    return workload, meta


def decoder_of(args, model, meta, latent_only: bool = True):
    """The decoder of the model's samples: None for pixel models (flux-mnist's latents are pixels rearranged 2x2);
    a latent model's --vae (a FLUX pipeline folder: its vae/ by default). latent_only=False: --vae is loaded for
    any model of ours (l2c sample's behaviour)."""
    from ..jobs.generate import is_workload
    from ..jobs.loading import decoder_for, is_latent

    if not is_workload(model):
        return decoder_for(meta, args.vae, args.device) if is_latent(meta) or not latent_only else None
    if model.pixel_space:
        if args.vae:
            raise ValueError(f"{args.model} samples pixels (its latents are pixels rearranged 2x2): drop --vae")
        return None
    vae = args.vae or (str(Path(args.model) / "vae") if (Path(args.model) / "vae" / "config.json").exists() else None)
    if not vae:
        raise ValueError(
            f"{args.model} samples VAE latents: pass --vae FOLDER (the FLUX AutoencoderKL folder, e.g. the "
            "pipeline's vae/) to decode them"
        )
    from ..jobs.flux_sampling import flux_vae_decoder

    return flux_vae_decoder(vae, args.device)


def sample_config(args, model, spec, batch_size: int = 64) -> SampleConfig:
    return SampleConfig(
        sampler=args.sampler or default_sampler(model, spec),  # FLUX: set by resolve_sampling_defaults
        steps=args.steps,
        guidance_scale=args.cfg,
        eta=args.eta,
        guided_channels=args.guided_channels,
        batch_size=batch_size,
        dtype=args.dtype,
    )


def load_router_for(args, model, config: SampleConfig):
    """(router, metadata, θ) of --router, checked against the model and sampling run; θ from --threshold or the file."""
    from ..router.files import load_router

    router, meta = load_router(args.router)
    check_fits(router, meta, model, config)
    threshold = args.threshold if args.threshold is not None else meta.get("threshold", 0.5)
    return router, meta, threshold


def check_fits(router, meta: dict, model, config: SampleConfig) -> None:
    """Refuse a router file made for another model or sampling run (`model`: ours, or a workload)."""
    from ..cache.layout import sublayers
    from ..jobs.generate import is_workload, network
    from ..router.files import check_router_fits
    from ..sampling.diffusion import DiffusionSpec

    if is_workload(model):
        evaluations = model.with_steps(config.steps).sampler.num_evaluations
    else:
        evaluations = config.make_sampler(DiffusionSpec()).num_evaluations
    check_router_fits(router, meta, len(sublayers(network(model))), config.sampler, evaluations)
