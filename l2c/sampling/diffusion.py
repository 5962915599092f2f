"""What a trained model expects of its diffusion (β schedule, time feed) and the forward (noising) process.

DiT (ADM): discrete t ∈ {0..T-1}, x_t = sqrt(ᾱ[t]) x0 + sqrt(1-ᾱ[t]) ε, model time = t.
U-ViT: n ∈ {1..T}, the same with ᾱ[n-1] (ᾱ_0 = 1 is "no noise"), model time = n = t_continuous * T.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..models import ARCHITECTURES
from .schedules import alphas_cumprod, linear_betas, scaled_linear_betas

SCHEDULES = {"linear": linear_betas, "scaled_linear": scaled_linear_betas}


@dataclass(frozen=True)
class DiffusionSpec:
    """What a trained model expects: its beta schedule and how it is fed time."""

    schedule: str = "linear"  # "linear" (DiT / ADM) or "scaled_linear" (Stable Diffusion, U-ViT ImageNet)
    time_offset: int = 0  # 0: model time = index t (DiT); 1: model time = t + 1 (U-ViT's n = 1..T)
    num_timesteps: int = 1000
    # A diffusers folder's scheduler_config.json (JSON text), which the diffusers-* samplers start from; None:
    # diffusers' defaults for this schedule (scheduler_settings).
    scheduler_config: str | None = None

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; use one of {list(SCHEDULES)}")

    def betas(self) -> np.ndarray:
        return SCHEDULES[self.schedule](self.num_timesteps)

    def alphas_cumprod(self) -> np.ndarray:
        return alphas_cumprod(self.betas())


def default_spec(arch: str, schedule: str | None = None) -> DiffusionSpec:
    """The architecture's own schedule and time feed (models.ARCHITECTURES), optionally another β schedule."""
    row = ARCHITECTURES[arch]
    return DiffusionSpec(schedule or row.schedule, row.time_offset)


def q_sample(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) ε, with t an index into `abar` (N,)."""
    a = abar.to(x0.device, torch.float64)[t].float().view(-1, 1, 1, 1)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise
