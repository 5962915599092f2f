"""The Stable Diffusion VAE (diffusers AutoencoderKL) for latent models, from a local folder only (no hub access).

encode: image [-1, 1] (N, 3, H, W) -> latent (N, 4, H/8, W/8) = posterior sample * 0.18215; decode: the inverse.
"""

from __future__ import annotations

from pathlib import Path

import torch

SCALE = 0.18215


class LatentCodec:
    def __init__(self, vae, scale: float = SCALE, generator: torch.Generator | None = None):
        self.vae = vae.eval().requires_grad_(False)
        self.scale = scale
        self.generator = generator

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(x).latent_dist.sample(generator=self.generator) * self.scale

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z / self.scale).sample


def load_vae(folder: str | Path, device="cpu") -> LatentCodec:
    folder = Path(folder)
    if not (folder / "config.json").exists():
        raise FileNotFoundError(
            f"{folder} is not a diffusers AutoencoderKL folder (no config.json); download "
            f"stabilityai/sd-vae-ft-ema elsewhere and pass its local folder"
        )
    try:
        from diffusers import AutoencoderKL
    except ImportError as e:
        raise RuntimeError("latent models need diffusers: pip install 'l2c[latent]'") from e
    return LatentCodec(AutoencoderKL.from_pretrained(str(folder), local_files_only=True).to(device))
