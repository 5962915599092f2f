"""The forward (noising) process and the training loss of ε-prediction models, per architecture convention.

DiT (ADM): discrete t ∈ {0..T-1}, x_t = sqrt(ᾱ[t]) x0 + sqrt(1-ᾱ[t]) ε, model time = t.
U-ViT: n ∈ {1..T}, the same with ᾱ[n-1] (ᾱ_0 = 1 is "no noise"), model time = n = t_continuous * T.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .sampling.schedules import alphas_cumprod, linear_betas, scaled_linear_betas

SCHEDULES = {"linear": linear_betas, "scaled_linear": scaled_linear_betas}


@dataclass(frozen=True)
class DiffusionSpec:
    """What a trained model expects: its beta schedule and how it is fed time."""

    schedule: str = "linear"  # "linear" (DiT / ADM) or "scaled_linear" (Stable Diffusion, U-ViT ImageNet)
    time_offset: int = 0  # 0: model time = index t (DiT); 1: model time = t + 1 (U-ViT's n = 1..T)
    num_timesteps: int = 1000

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; use one of {list(SCHEDULES)}")

    def betas(self) -> np.ndarray:
        return SCHEDULES[self.schedule](self.num_timesteps)

    def alphas_cumprod(self) -> np.ndarray:
        return alphas_cumprod(self.betas())


def default_spec(arch: str, schedule: str | None = None) -> DiffusionSpec:
    if arch == "dit":
        return DiffusionSpec(schedule or "linear", 0)
    return DiffusionSpec(schedule or "scaled_linear", 1)


def q_sample(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) ε, with t an index into `abar` (N,)."""
    a = abar.to(x0.device, torch.float64)[t].float().view(-1, 1, 1, 1)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def epsilon_loss(model, x0, y, generator, spec: DiffusionSpec, abar: torch.Tensor, min_snr_gamma: float = 0.0):
    """Simple ε-MSE (Ho et al. 2020, Eq. 14), plus DiT's variational term when the model learns its variance.

    min_snr_gamma > 0 weights each sample by min(SNR_t, γ) / SNR_t (Hang et al. 2023, "Min-SNR"): low-noise steps,
    where ε is easy, count less, so the global, class-dependent structure decided at high noise is learned sooner.
    The parameterisation (ε) and the sampler stay those of DiT.
    """
    N = x0.shape[0]
    t = torch.randint(0, spec.num_timesteps, (N,), generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    x_t = q_sample(x0, t, noise, abar)
    out = model(x_t, t + spec.time_offset, y)
    C = x0.shape[1]
    per_sample = (out[:, :C] - noise).square().flatten(1).mean(1)
    if min_snr_gamma > 0:
        a = abar.to(torch.float64)[t]
        snr = a / (1 - a)
        per_sample = per_sample * (snr.clamp(max=min_snr_gamma) / snr).float()
    loss = per_sample.mean()
    if out.shape[1] == 2 * C:
        from .sampling.gaussian import vb_term  # only models with learned sigma need it

        loss = loss + vb_term(out[:, :C].detach(), out[:, C:], x0, x_t, t, abar).mean()
    return loss
