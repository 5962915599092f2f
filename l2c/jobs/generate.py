"""Sampling pipeline: seeds + classes -> images, with or without a cache plan. Glue between models and samplers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..cache.engine import CacheEngine
from ..cache.plan import CachePlan
from ..sampling import (
    StackedRandomGenerator,
    batched_cfg_denoiser,
    conditional_denoiser,
    sample_ddim,
    sample_ddpm,
    sample_dpm_solver,
    separate_cfg_denoiser,
)
from ..sampling.diffusion import DiffusionSpec
from ..sampling.solvers import SamplerGeometry


@dataclass(frozen=True)
class SampleConfig:
    sampler: str = "ddim"  # ddim | ddpm | dpm-solver-2 (singlestep, U-ViT) | dpm-solver-2m (multistep)
    steps: int = 20  # DDIM/DDPM steps, or NFE (model evaluations) for DPM-Solver
    cfg: float = 1.5  # guidance weight w: ε_u + w (ε_c - ε_u); 1 = off
    guidance: str = "auto"  # batched (DiT) | separate (U-ViT) | auto (by architecture)
    guided_channels: str = "auto"  # DiT batched only: "auto" = 3 for 4-channel latents (upstream), else all; "all"
    eta: float = 0.0  # DDIM η
    batch_size: int = 64

    def __post_init__(self):
        if self.guidance not in ("auto", "batched", "separate"):
            raise ValueError(f"guidance must be auto, batched or separate, got {self.guidance!r}")
        if self.guided_channels not in ("auto", "all"):
            raise ValueError(f"guided_channels must be 'auto' or 'all', got {self.guided_channels!r}")
        if self.cfg < 0:
            raise ValueError(f"guidance weight must be >= 0, got {self.cfg}")


def _guidance_mode(model: nn.Module, cfg: SampleConfig) -> str:
    if cfg.cfg == 1.0:
        return "none"
    if cfg.guidance != "auto":
        return cfg.guidance
    return "batched" if hasattr(model, "final_layer") else "separate"


def build_denoiser(model: nn.Module, y: torch.Tensor, cfg: SampleConfig):
    mode = _guidance_mode(model, cfg)
    if mode == "none":
        return conditional_denoiser(model, y), 1
    if mode == "separate":
        return separate_cfg_denoiser(model, y, cfg.cfg, model.null_class), 1
    channels = model.in_channels
    if cfg.guided_channels == "auto" and model.in_channels == 4:
        channels = 3  # DiT's upstream quirk, kept for identical numbers with the official DiT-XL/2 (spec §2.1)
    return batched_cfg_denoiser(model, y, cfg.cfg, model.null_class, channels), 2


def run_sampler(denoise, x: torch.Tensor, geometry: SamplerGeometry, cfg: SampleConfig, noise, callback=None):
    spec = geometry.spec
    if cfg.sampler == "ddim":
        return sample_ddim(
            denoise,
            x,
            geometry.timesteps,
            alphas_cumprod=geometry.abar,
            eta=cfg.eta,
            randn_like=noise.randn_like,
            time_offset=spec.time_offset,
            callback=callback,
        )
    if cfg.sampler == "ddpm":
        return sample_ddpm(
            denoise,
            x,
            geometry.timesteps,
            alphas_cumprod=geometry.abar,
            randn_like=noise.randn_like,
            time_offset=spec.time_offset,
            callback=callback,
        )
    method = "singlestep" if cfg.sampler == "dpm-solver-2" else "multistep"
    return sample_dpm_solver(
        denoise,
        x,
        geometry.outer_times,
        schedule=geometry.schedule,
        method=method,
        time_scale=spec.num_timesteps,
        time_shift=geometry.time_shift,
        callback=callback,
    )


@torch.no_grad()
def generate(
    model: nn.Module,
    spec: DiffusionSpec,
    seeds: list[int],
    classes: list[int],
    cfg: SampleConfig,
    plan: CachePlan | None = None,
    decode=None,
    progress: bool = True,
) -> torch.Tensor:
    """Samples (N, C, H, W) in model space (pixels in [-1, 1], or decoded latents when `decode` is given).

    Image i depends only on seeds[i] and classes[i], whatever the batch size.
    """
    if len(classes) != len(seeds):
        raise ValueError(f"{len(seeds)} seeds but {len(classes)} classes")
    bad = [c for c in classes if not 0 <= c < model.null_class]
    if bad:
        raise ValueError(f"class labels {bad[:5]} are outside 0..{model.null_class - 1} for this model")
    geometry = SamplerGeometry(cfg.sampler, cfg.steps, spec)
    engine = CacheEngine(model, plan) if plan is not None else None
    if plan is not None and plan.num_steps != geometry.num_evaluations:
        engine.detach()
        raise ValueError(
            f"the cache plan has {plan.num_steps} steps but {cfg.sampler} with --steps {cfg.steps} "
            f"makes {geometry.num_evaluations} model evaluations: use a router trained for them"
        )
    out = []
    try:
        batches = range(0, len(seeds), cfg.batch_size)
        for start in tqdm(batches, disable=not progress or len(batches) < 2, desc="sample"):
            out.append(
                _sample_batch(
                    model,
                    spec,
                    geometry,
                    seeds[start : start + cfg.batch_size],
                    classes[start : start + cfg.batch_size],
                    cfg,
                    engine,
                )
            )
    finally:
        if engine is not None:
            engine.detach()
    x = torch.cat(out)
    return decode(x) if decode is not None else x


def _sample_batch(model, spec, geometry, seeds, classes, cfg, engine):
    n = len(seeds)
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    y = torch.tensor(classes, dtype=torch.long, device=device)
    noise = StackedRandomGenerator(seeds, device)
    shape = (n, model.in_channels, model.input_size, model.input_size)
    z = noise.randn(shape, dtype=dtype, device=device)
    denoise, copies = build_denoiser(model, y, cfg)
    if engine is not None:
        denoise = engine.wrap(denoise)
    x = run_sampler(denoise, torch.cat([z] * copies), geometry, cfg, noise)
    return x[:n]


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] (N, C, H, W) -> uint8 (N, H, W, C), DiT's rounding: clamp(127.5 x + 128)."""
    return torch.clamp(127.5 * x + 128.0, 0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def save_grid(images: np.ndarray, path, nrow: int | None = None, scale: int = 1) -> None:
    """uint8 (N, H, W, C) -> one PNG grid with a 2-pixel border."""
    from PIL import Image

    n, h, w, c = images.shape
    nrow = nrow or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / nrow))
    pad = 2
    grid = np.zeros((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + col * (w + pad) : pad + col * (w + pad) + w] = images[
            i
        ]
    img = Image.fromarray(grid[..., 0] if c == 1 else grid)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    img.save(path)
