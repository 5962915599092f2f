"""Gaussian posterior q(x_{t-1} | x_t, x0) and ADM's learned-range variance (Nichol & Dhariwal 2021, Eq. 15).

All coefficients come from ᾱ at the kept timesteps, so the same code serves the full and the respaced chain
(respaced betas are β_k = 1 - ᾱ_k / ᾱ_{k-1}).
"""

from __future__ import annotations

import math

import numpy as np
import torch


class Posterior:
    """Coefficients of q(x_{k-1} | x_k, x0) for a chain with cumulative products `abar` (float64, (K,))."""

    def __init__(self, abar: np.ndarray):
        abar = np.asarray(abar, dtype=np.float64)
        abar_prev = np.append(1.0, abar[:-1])
        self.betas = 1.0 - abar / abar_prev
        self.variance = self.betas * (1.0 - abar_prev) / (1.0 - abar)
        # The first posterior variance is 0: ADM clips its log with the second one.
        self.log_variance_clipped = np.log(np.append(self.variance[1], self.variance[1:]))
        self.coef_x0 = self.betas * np.sqrt(abar_prev) / (1.0 - abar)
        self.coef_xt = (1.0 - abar_prev) * np.sqrt(1.0 - self.betas) / (1.0 - abar)
        self.abar = abar

    def _take(self, arr: np.ndarray, k: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(arr, dtype=torch.float64)[k.cpu()].to(like.device, like.dtype).view(-1, 1, 1, 1)

    def mean(self, x0: torch.Tensor, x_t: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return self._take(self.coef_x0, k, x_t) * x0 + self._take(self.coef_xt, k, x_t) * x_t

    def model_log_variance(self, var_values: torch.Tensor | None, k: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Learned range: interpolate log between posterior variance and β with v ∈ [-1, 1]; fixed-small if None."""
        min_log = self._take(self.log_variance_clipped, k, like)
        if var_values is None:
            return min_log.expand_as(like)
        max_log = self._take(np.log(self.betas), k, like)
        frac = (var_values + 1) / 2
        return frac * max_log + (1 - frac) * min_log

    def x0_from_eps(self, x_t: torch.Tensor, k: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        a = self._take(self.abar, k, x_t)
        return (1 / a).sqrt() * x_t - (1 / a - 1).sqrt() * eps


def normal_kl(mean1, logvar1, mean2, logvar2):
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _approx_std_normal_cdf(x):
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def discretized_gaussian_log_likelihood(x, means, log_scales):
    """Log-likelihood of 8-bit data in [-1, 1] under a Gaussian discretised to 256 bins (ADM)."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = _approx_std_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = _approx_std_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    cdf_delta = cdf_plus - cdf_min
    return torch.where(
        x < -0.999,
        log_cdf_plus,
        torch.where(x > 0.999, log_one_minus_cdf_min, torch.log(cdf_delta.clamp(min=1e-12))),
    )


def vb_term(eps_detached, var_values, x0, x_t, t, abar) -> torch.Tensor:
    """ADM's L_vb in bits per dim for the variance channels only (the mean uses the detached ε), per sample."""
    post = Posterior(np.asarray(abar, dtype=np.float64))
    true_mean = post.mean(x0, x_t, t)
    true_logvar = post._take(post.log_variance_clipped, t, x_t)
    model_mean = post.mean(post.x0_from_eps(x_t, t, eps_detached), x_t, t)
    model_logvar = post.model_log_variance(var_values, t, x_t)
    kl = normal_kl(true_mean, true_logvar, model_mean, model_logvar).mean(dim=(1, 2, 3)) / math.log(2.0)
    nll = -discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_logvar).mean(dim=(1, 2, 3)) / math.log(2.0)
    return torch.where(t.to(x0.device) == 0, nll, kl)
