"""Models by name for the jobs: a bundled model, or a preset with its checkpoint, and the decoder of its samples."""

from __future__ import annotations

import torch

from ..integrations.diffusers_convert import is_diffusers_folder, load_diffusers_folder
from ..models import MODELS, architecture_of, create_model
from ..models.checkpoints import BUNDLED, load_model
from ..sampling.diffusion import DiffusionSpec, default_spec


def load_for_sampling(
    name: str, ckpt: str | None = None, random_init: bool = False, schedule: str | None = None, device="cpu"
) -> tuple[torch.nn.Module, DiffusionSpec, dict]:
    """(model, diffusion spec, metadata) of a bundled model, a preset, or a diffusers folder (`name` a path: a
    DiTTransformer2DModel or a pipeline folder, converted to our DiT); `schedule` overrides the β schedule."""
    if (ckpt or name in BUNDLED or is_diffusers_folder(name)) and random_init:
        raise ValueError("--random-init asks for no weights, but the model has some: drop --random-init or --ckpt")
    if name in BUNDLED:
        if ckpt:
            raise ValueError(f"{name} is a bundled model and brings its weights: drop --ckpt (or name a preset)")
        model, meta = load_model(name)
    elif is_diffusers_folder(name):
        if ckpt:
            raise ValueError(f"{name} is a diffusers folder and brings its weights: drop --ckpt")
        model, meta = load_diffusers_folder(name)
    elif name not in MODELS:
        raise ValueError(f"unknown model {name!r}; bundled: {', '.join(BUNDLED)}; presets: {', '.join(MODELS)}")
    elif ckpt:
        model, meta = load_model(ckpt, preset=name)
    elif random_init:
        torch.manual_seed(0)
        model, meta = create_model(name).eval().requires_grad_(False), {"preset": name}
    else:
        raise ValueError(f"preset {name} needs weights: pass --ckpt PATH (or --random-init for a smoke test)")
    if "diffusion" in meta:
        spec = DiffusionSpec(**meta["diffusion"])
        if schedule:
            spec = DiffusionSpec(schedule, spec.time_offset, spec.num_timesteps)  # the folder's scheduler is dropped
    else:
        spec = default_spec(architecture_of(model), schedule)
    return model.to(device), spec, meta


def is_latent(meta: dict) -> bool:
    """Whether the model's samples are VAE latents (from its preset's row)."""
    return MODELS[meta["preset"]].latent


def decoder_for(meta: dict, vae: str | None, device="cpu"):
    """The VAE decode of a latent model's samples (None for pixel models); a latent model needs `vae`."""
    if not vae:
        if is_latent(meta):
            raise ValueError(
                "this is a latent model: pass --vae FOLDER (a local diffusers AutoencoderKL, e.g. "
                "sd-vae-ft-ema) to decode its samples"
            )
        return None
    from ..utils.vae import load_vae

    return load_vae(vae, device=device).decode
