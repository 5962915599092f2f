"""MNIST quality report of a set of samples, using the bundled classifier as the feature network."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .classifier import classify, load_classifier
from .fid import feature_statistics, frechet_distance
from .scores import class_accuracy, inception_score, paired_metrics, precision_recall

ASSETS = Path(__file__).resolve().parent.parent / "assets"
REFERENCE_STATS = ASSETS / "mnist-test-stats.npz"


def _default_classifier():
    if "classifier" not in _REFERENCE_CACHE:
        _REFERENCE_CACHE["classifier"] = load_classifier()
    return _REFERENCE_CACHE["classifier"]


def reference_statistics() -> tuple[np.ndarray, np.ndarray]:
    if not REFERENCE_STATS.exists():
        raise FileNotFoundError(f"{REFERENCE_STATS} is missing; regenerate it with `python -m l2c.metrics.report`")
    ref = np.load(REFERENCE_STATS)
    return ref["mu"], ref["sigma"]


def mnist_metrics(
    images_uint8: np.ndarray, labels: np.ndarray | None = None, classifier=None, pr_reference: int = 10000
) -> dict:
    """FID against the MNIST test set, IS, precision / recall (k = 3), and class accuracy when labels are given."""
    images_uint8 = np.asarray(images_uint8)
    if images_uint8.dtype != np.uint8 or images_uint8.reshape(len(images_uint8), -1).shape[1] != 784:
        raise ValueError(f"need uint8 MNIST images (N, 28, 28[, 1]), got {images_uint8.dtype} {images_uint8.shape}")
    classifier = classifier or _default_classifier()
    feats, logits = classify(classifier, images_uint8)
    mu_r, sigma_r = reference_statistics()
    mu, sigma = feature_statistics(feats)
    out = {
        "n": len(images_uint8),
        "fid": frechet_distance(mu, sigma, mu_r, sigma_r),
        "inception_score": inception_score(logits),
    }
    try:
        out["precision"], out["recall"] = precision_recall(_reference_features(classifier, pr_reference), feats)
    except FileNotFoundError:
        out["precision"] = out["recall"] = None  # the MNIST cache is not fetched; FID still works
    if labels is not None:
        out["class_accuracy"] = class_accuracy(logits, labels)
    return out


_REFERENCE_CACHE: dict = {}


def _reference_features(classifier, n: int) -> np.ndarray:
    # The MNIST test features are the same for every call with the bundled classifier: compute them once.
    key = (id(classifier), n)
    if key not in _REFERENCE_CACHE:
        from ..data.mnist import load_mnist

        test_images, _ = load_mnist("test")
        _REFERENCE_CACHE[key] = classify(classifier, test_images[:n])[0]
    return _REFERENCE_CACHE[key]


def evaluate_npz(path: str, reference: str | None = None) -> dict:
    data = np.load(path)
    if "arr_0" not in data:
        raise ValueError(f"{path} has no 'arr_0' array (ADM sample format)")
    result = mnist_metrics(data["arr_0"], data["labels"] if "labels" in data else None)
    if reference:
        ref = np.load(reference)["arr_0"]
        result.update(paired_metrics(data["arr_0"], ref))
    return result


def write_reference_statistics() -> None:
    """Features of the 10k MNIST test images under the bundled classifier (committed; regenerate after retraining)."""
    from ..data.mnist import load_mnist

    images, _ = load_mnist("test")
    feats, _ = classify(load_classifier(), images)
    mu, sigma = feature_statistics(feats)
    np.savez(REFERENCE_STATS, mu=mu, sigma=sigma)


if __name__ == "__main__":
    write_reference_statistics()
    print(f"wrote {REFERENCE_STATS}")
