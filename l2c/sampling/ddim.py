"""DDIM (Song et al. 2021) and ancestral DDPM sampling over ADM/DiT respaced timesteps.

`denoise(x, t, step) -> model output`: x (N, C, H, W); t (N,) model times (the ORIGINAL timesteps, as DiT feeds them);
step = evaluation index in sampling order (0 = first, noisiest). The first C output channels are ε; DDPM uses the
next C (learned-range variance values) when present, DDIM ignores them.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from .gaussian import Posterior

Denoiser = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


def sample_ddim(
    denoise: Denoiser,
    x: torch.Tensor,
    timesteps: list[int],
    *,
    alphas_cumprod: np.ndarray,
    eta: float = 0.0,
    randn_like: Callable[[torch.Tensor], torch.Tensor] | None = None,
    time_offset: int = 0,
    callback: Callable[[dict], None] | None = None,
    disable: bool | None = True,
) -> torch.Tensor:
    """Deterministic (η = 0) or stochastic DDIM from x ~ N(0, I) at timesteps[-1] down to timesteps[0].

    x0 = sqrt(1/ᾱ) x - sqrt(1/ᾱ - 1) ε;  x' = sqrt(ᾱ') x0 + sqrt(1 - ᾱ' - σ²) ε + σ z  (Song et al. Eq. 12),
    σ = η sqrt((1-ᾱ')/(1-ᾱ)) sqrt(1 - ᾱ/ᾱ'); ᾱ' of the last step is 1.
    """
    if eta > 0 and randn_like is None:
        raise ValueError("eta > 0 needs randn_like (per-image noise) for reproducible results")
    abar = np.asarray(alphas_cumprod, dtype=np.float64)[np.asarray(timesteps)]
    C = x.shape[1]
    for step, k in enumerate(tqdm(range(len(timesteps) - 1, -1, -1), disable=disable, desc="ddim")):
        t = torch.full((x.shape[0],), timesteps[k] + time_offset, device=x.device, dtype=torch.long)
        eps = denoise(x, t, step)[:, :C]
        a, a_prev = abar[k], (abar[k - 1] if k > 0 else 1.0)
        x0 = (1 / a) ** 0.5 * x - (1 / a - 1) ** 0.5 * eps
        sigma = eta * ((1 - a_prev) / (1 - a)) ** 0.5 * (1 - a / a_prev) ** 0.5
        x = a_prev**0.5 * x0 + (1 - a_prev - sigma**2) ** 0.5 * eps
        if sigma > 0:
            x = x + sigma * randn_like(x)
        if callback is not None:
            callback({"step": step, "t": timesteps[k], "x": x, "denoised": x0})
    return x


def sample_ddpm(
    denoise: Denoiser,
    x: torch.Tensor,
    timesteps: list[int],
    *,
    alphas_cumprod: np.ndarray,
    randn_like: Callable[[torch.Tensor], torch.Tensor],
    time_offset: int = 0,
    callback: Callable[[dict], None] | None = None,
    disable: bool | None = True,
) -> torch.Tensor:
    """Ancestral sampling p(x_{k-1} | x_k) with the model's learned-range variance (fixed-small when not learned)."""
    abar = np.asarray(alphas_cumprod, dtype=np.float64)[np.asarray(timesteps)]
    post = Posterior(abar)
    C = x.shape[1]
    for step, k in enumerate(tqdm(range(len(timesteps) - 1, -1, -1), disable=disable, desc="ddpm")):
        t = torch.full((x.shape[0],), timesteps[k] + time_offset, device=x.device, dtype=torch.long)
        kk = torch.full((x.shape[0],), k, dtype=torch.long)
        out = denoise(x, t, step)
        x0 = post.x0_from_eps(x, kk, out[:, :C])
        mean = post.mean(x0, x, kk)
        log_var = post.model_log_variance(out[:, C : 2 * C] if out.shape[1] >= 2 * C else None, kk, x)
        x = mean + (torch.exp(0.5 * log_var) * randn_like(x) if k > 0 else 0.0)
        if callback is not None:
            callback({"step": step, "t": timesteps[k], "x": x, "denoised": x0})
    return x
