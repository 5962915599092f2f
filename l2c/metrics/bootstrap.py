"""95 % bootstrap intervals over images for FID (reference statistics fixed) and paired PSNR.

FID: the generated images' features are resampled with replacement; the reference mean and covariance stay fixed
(they are the population a model is measured against, not part of the sample). A resample holds about 63 % distinct
images, which raises its FID by roughly the finite-sample bias that sets the FID floor, so the raw percentile
interval sits above the point estimate. The interval reported is the bootstrap's 2.5-97.5 % spread around its own
median, placed on the point estimate (the basic bootstrap with the resampling bias removed).

PSNR over a set is 10 log10(255² / mean per-image MSE); resampling the per-image MSEs gives its percentile interval.
"""

from __future__ import annotations

import numpy as np

from .scores import psnr_of_mse


def _sqrt_psd(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def bootstrap_fid(
    features: np.ndarray, mu_ref: np.ndarray, sigma_ref: np.ndarray, n_boot: int = 500, level: float = 0.95, seed=0
) -> tuple[float, float, float]:
    """(FID, low, high) of features (N, D) against fixed reference statistics."""
    f = np.asarray(features, np.float64)
    n = len(f)
    sqrt_ref = _sqrt_psd(np.asarray(sigma_ref, np.float64))  # once: tr sqrt(Σr Σ) = Σ sqrt eig(√Σr Σ √Σr)
    trace_ref = float(np.trace(sigma_ref))

    def fid(weights: np.ndarray) -> float:
        mu = weights @ f / n
        centred = f - mu
        sigma = (centred * weights[:, None]).T @ centred / (n - 1)
        m = sqrt_ref @ sigma @ sqrt_ref
        tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
        diff = mu - mu_ref
        return float(diff @ diff + np.trace(sigma) + trace_ref - 2 * tr_sqrt)

    point = fid(np.ones(n))
    rng = np.random.default_rng(seed)
    boot = np.array([fid(rng.multinomial(n, np.full(n, 1.0 / n)).astype(np.float64)) for _ in range(n_boot)])
    lo, mid, hi = np.quantile(boot, [(1 - level) / 2, 0.5, (1 + level) / 2])
    return point, point - (mid - lo), point + (hi - mid)


def psnr_with_ci(a_uint8: np.ndarray, b_uint8: np.ndarray, n_boot: int = 500, level: float = 0.95, seed=0):
    """(PSNR, low, high) in dB of images a against b (same seeds); infinite when identical."""
    a, b = np.asarray(a_uint8, np.float64), np.asarray(b_uint8, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired metrics need the same images: shapes {a.shape} vs {b.shape}")
    mse = ((a - b) ** 2).reshape(len(a), -1).mean(1)
    rng = np.random.default_rng(seed)
    means = mse[rng.integers(0, len(mse), size=(n_boot, len(mse)))].mean(1)
    # Quantiles of the mean MSE, then PSNR (monotone, decreasing): a resample may hold only identical pairs (inf dB).
    lo_mse, hi_mse = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return psnr_of_mse(mse.mean()), psnr_of_mse(hi_mse), psnr_of_mse(lo_mse)
