"""The training loss of ε-prediction models (Ho et al. 2020), with DiT's variational term for learned sigma."""

from __future__ import annotations

import torch

from ..sampling.diffusion import DiffusionSpec, q_sample
from ..sampling.gaussian import vb_term


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
        loss = loss + vb_term(out[:, :C].detach(), out[:, C:], x0, x_t, t, abar).mean()
    return loss
