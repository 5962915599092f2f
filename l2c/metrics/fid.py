"""Fréchet distance between Gaussian fits of features (Heusel et al. 2017), as the ADM evaluator computes it.

`method="eig"` (default): float64, tr sqrt(Σ1 Σ2) from the eigenvalues of sqrt(Σ1) Σ2 sqrt(Σ1) (symmetric, stable).
`method="scipy"`: the ADM / TTUR code path (scipy.linalg.sqrtm, 1e-6 ridge retry, imaginary-part check).
"""

from __future__ import annotations

import numpy as np


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, unbiased covariance) in float64 of features (N, D)."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"need features of shape (N >= 2, D), got {f.shape}")
    if not np.isfinite(f).all():
        raise ValueError("features contain NaN or infinity: the samples or the feature network are broken")
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, method: str = "eig") -> float:
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise ValueError(f"statistics of different dimension: {mu1.shape} vs {mu2.shape}")
    diff = mu1 - mu2
    if method == "eig":
        w, v = np.linalg.eigh(s1)
        sqrt_s1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
        m = sqrt_s1 @ s2 @ sqrt_s1
        tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    elif method == "scipy":
        tr_covmean = _scipy_trace_sqrt(s1, s2)
    else:
        raise ValueError(f"unknown method {method!r}; use 'eig' or 'scipy'")
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def _scipy_trace_sqrt(s1, s2) -> float:
    from scipy import linalg

    def sqrtm(a):
        out = linalg.sqrtm(a)
        return out[0] if isinstance(out, tuple) else out  # older scipy returned (sqrtm, errest) with disp=False

    covmean = sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * 1e-6
        covmean = sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"imaginary component {np.max(np.abs(covmean.imag))} in sqrtm")
        covmean = covmean.real
    return float(np.trace(covmean))
