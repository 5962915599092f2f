"""Noise schedules and timestep spacing.

* DiT / ADM: 1000-step linear betas 1e-4..0.02, respaced with `space_timesteps(1000, "N")` semantics
  (docs/upstream.md §1.4).
* U-ViT: Stable Diffusion's "scaled linear" betas, and DPM-Solver's continuous-time `NoiseScheduleVP('discrete')`:
  log α(t) is piecewise linear on the grid t = n/1000, n = 1..1000 (Lu et al. 2022, App. of DPM-Solver).
"""

from __future__ import annotations

import numpy as np
import torch


def linear_betas(num_timesteps: int = 1000, start: float = 1e-4, end: float = 0.02) -> np.ndarray:
    scale = 1000 / num_timesteps  # ADM scales the range so any T keeps the same total noise
    return np.linspace(scale * start, scale * end, num_timesteps, dtype=np.float64)


def scaled_linear_betas(num_timesteps: int = 1000, start: float = 0.00085, end: float = 0.012) -> np.ndarray:
    return np.linspace(start**0.5, end**0.5, num_timesteps, dtype=np.float64) ** 2


def alphas_cumprod(betas: np.ndarray) -> np.ndarray:
    return np.cumprod(1.0 - betas)


def space_timesteps(num_timesteps: int, section_counts: str | list[int]) -> list[int]:
    """Sorted original timesteps kept by ADM's respacing; "ddimN" gives the strided DDIM variant.

    "N" (what DiT's `create_diffusion(str(N))` uses): one section, stride (T-1)/(N-1), t_k = round(k * stride).
    """
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            desired = int(section_counts[len("ddim") :])
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == desired:
                    return list(range(0, num_timesteps, stride))
            raise ValueError(f"cannot create exactly {desired} DDIM steps from {num_timesteps}")
        section_counts = [int(s) for s in section_counts.split(",")]
    size_per, extra = divmod(num_timesteps, len(section_counts))
    start, kept = 0, []
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"cannot divide a section of {size} steps into {count}")
        if count < 1:
            raise ValueError(f"a section needs at least one step, got {count}")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        kept += [start + round(stride * k) for k in range(count)]
        start += size
    return sorted(set(kept))


def respaced_alphas_cumprod(base_alphas_cumprod: np.ndarray, timesteps: list[int]) -> np.ndarray:
    """ᾱ at the kept timesteps (respaced betas are 1 - ᾱ_k / ᾱ_{k-1}, so ᾱ itself is just indexed)."""
    return base_alphas_cumprod[np.asarray(timesteps)]


class NoiseScheduleVP:
    """DPM-Solver's discrete-time VP schedule in continuous time t ∈ [1/T, 1] (float64 math).

    marginal_log_mean_coeff(t) = log α_t, σ_t = sqrt(1 - α_t²), λ_t = log α_t - log σ_t.
    """

    def __init__(self, betas: np.ndarray):
        self.total_N = len(betas)
        self.t_array = torch.linspace(0.0, 1.0, self.total_N + 1, dtype=torch.float64)[1:]
        self.log_alpha_array = 0.5 * torch.log(1.0 - torch.as_tensor(betas, dtype=torch.float64)).cumsum(0)
        self.T = 1.0
        self.eps = 1.0 / self.total_N

    def marginal_log_mean_coeff(self, t: torch.Tensor) -> torch.Tensor:
        return _interp(t, self.t_array, self.log_alpha_array)

    def marginal_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.marginal_log_mean_coeff(t))

    def marginal_std(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(1.0 - torch.exp(2.0 * self.marginal_log_mean_coeff(t)))

    def marginal_lambda(self, t: torch.Tensor) -> torch.Tensor:
        log_mean = self.marginal_log_mean_coeff(t)
        return log_mean - 0.5 * torch.log(1.0 - torch.exp(2.0 * log_mean))

    def inverse_lambda(self, lamb: torch.Tensor) -> torch.Tensor:
        log_alpha = -0.5 * torch.logaddexp(torch.zeros_like(lamb), -2.0 * lamb)
        return _interp(log_alpha, self.log_alpha_array.flip(0), self.t_array.flip(0))


def _interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation on increasing xp, extrapolating linearly past both ends (as DPM-Solver)."""
    x = torch.as_tensor(x, dtype=torch.float64)
    idx = torch.searchsorted(xp, x.clamp(xp[0], xp[-1])).clamp(1, len(xp) - 1)
    x0, x1, f0, f1 = xp[idx - 1], xp[idx], fp[idx - 1], fp[idx]
    return f0 + (x - x0) * (f1 - f0) / (x1 - x0)
