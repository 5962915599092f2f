"""Inception Score, improved precision / recall, class accuracy and paired metrics (ADM evaluator semantics)."""

from __future__ import annotations

import numpy as np


def inception_score(logits: np.ndarray, split_size: int = 5000) -> float:
    """IS of class logits (N, K): contiguous splits of `split_size` (no shuffle), mean of per-split scores (ADM)."""
    logits = np.asarray(logits, dtype=np.float64)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    scores = []
    for i in range(0, len(p), split_size):
        part = p[i : i + split_size]
        kl = part * (np.log(part + 1e-30) - np.log(part.mean(0, keepdims=True) + 1e-30))
        scores.append(np.exp(kl.sum(1).mean()))
    return float(np.mean(scores))


def _sq_distances(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    nu, nv = (u * u).sum(1), (v * v).sum(1)
    return np.maximum(nu[:, None] - 2 * u @ v.T + nv[None, :], 0)


def manifold_radii(features: np.ndarray, k: int = 3, block: int = 10000) -> np.ndarray:
    """Squared distance of each point to its k-th nearest neighbour in the same set (self excluded)."""
    f = np.asarray(features, dtype=np.float64)
    radii = np.empty(len(f))
    for i in range(0, len(f), block):
        d = _sq_distances(f[i : i + block], f)
        radii[i : i + block] = np.partition(d, k, axis=1)[:, k]  # index 0 is the point itself
    return radii


def _coverage(queries, points, radii, block):
    inside = np.zeros(len(queries), dtype=bool)
    for i in range(0, len(queries), block):
        for j in range(0, len(points), block):
            d = _sq_distances(queries[i : i + block], points[j : j + block])
            inside[i : i + block] |= (d <= radii[None, j : j + block]).any(1)
    return float(inside.mean())


def precision_recall(ref: np.ndarray, samples: np.ndarray, k: int = 3, block: int = 10000) -> tuple[float, float]:
    """Improved precision / recall (Kynkäänniemi et al. 2019) with ADM's k = 3 and `<=` ties.

    precision = share of samples inside the reference manifold; recall = share of references inside the samples'.
    """
    ref, samples = np.asarray(ref, np.float64), np.asarray(samples, np.float64)
    r_ref, r_smp = manifold_radii(ref, k, block), manifold_radii(samples, k, block)
    return _coverage(samples, ref, r_ref, block), _coverage(ref, samples, r_smp, block)


def class_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((np.asarray(logits).argmax(1) == np.asarray(labels)).mean())


def paired_metrics(a_uint8: np.ndarray, b_uint8: np.ndarray) -> dict:
    """PSNR (dB, peak 255, over the whole set) and mean absolute difference between images made from the same seeds."""
    a, b = np.asarray(a_uint8, np.float64), np.asarray(b_uint8, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired metrics need the same images: shapes {a.shape} vs {b.shape}")
    return {"psnr_db": psnr_of_mse(float(((a - b) ** 2).mean())), "mean_abs_diff": float(np.abs(a - b).mean())}


def psnr_of_mse(mse: float) -> float:
    """PSNR in dB of 8-bit images (peak 255) from a mean squared error; infinite when identical."""
    return float("inf") if mse <= 0 else float(10 * np.log10(255.0**2 / mse))
