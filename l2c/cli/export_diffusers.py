"""`l2c export-diffusers`: a DiT as a diffusers folder (DiTTransformer2DModel + DDIMScheduler config)."""

from __future__ import annotations

from pathlib import Path

from .common import add_model_args, is_flux, load_model

HELP = "write a DiT (bundled dit-mnist, or a preset with --ckpt) as a diffusers DiTTransformer2DModel folder"


def add_arguments(p) -> None:
    add_model_args(p)
    p.add_argument("--out", required=True, help="output folder (written beside, then renamed into place)")


def run(args) -> int:
    from ..integrations.diffusers_convert import export_diffusers
    from ..models import architecture_of

    if is_flux(args):  # nothing to convert: diffusers loads it as it is
        from ..models.flux_mnist import ASSET

        where = ASSET if args.model == "flux-mnist" else args.model
        raise ValueError(
            f"{args.model} is already a diffusers folder ({where}: FluxTransformer2DModel in transformer/, "
            "scheduler/): load or copy it as it is"
        )
    model, _, meta = load_model(args)
    if architecture_of(model) != "dit":
        raise ValueError(f"{args.model} is not a DiT: diffusers' DiTTransformer2DModel holds DiTs only")
    out = export_diffusers(model.cpu(), Path(args.out), meta)
    print(
        f"wrote {out}: DiTTransformer2DModel + scheduler config. Its timestep embedding differs from DiT's "
        "(diffusers' frequency shift 1 vs 0; docs/diffusers.md measures the effect)"
    )
    return 0
