"""MNIST quality report of a set of samples, using the bundled classifier as the feature network."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..utils.io import atomic_savez, load_npz
from .bootstrap import bootstrap_fid
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
    images_uint8: np.ndarray,
    labels: np.ndarray | None = None,
    classifier=None,
    pr_reference: int = 10000,
    n_boot: int = 0,
) -> dict:
    """FID against the MNIST test set, IS, precision / recall (k = 3), and class accuracy when labels are given;
    with n_boot > 0 also "fid_ci", the 95 % bootstrap interval over images (l2c.metrics.bootstrap)."""
    images_uint8 = np.asarray(images_uint8)
    if images_uint8.dtype != np.uint8 or images_uint8.reshape(len(images_uint8), -1).shape[1] != 784:
        raise ValueError(f"need uint8 MNIST images (N, 28, 28[, 1]), got {images_uint8.dtype} {images_uint8.shape}")
    classifier = classifier or _default_classifier()
    feats, logits = classify(classifier, images_uint8)
    mu_r, sigma_r = reference_statistics()
    out = {"n": len(images_uint8), "inception_score": inception_score(logits)}
    if n_boot > 0:  # the interval's own point estimate (float64 throughout), so that the interval brackets it
        out["fid"], low, high = bootstrap_fid(feats, mu_r, sigma_r, n_boot=n_boot)
        out["fid_ci"] = [low, high]
    else:
        out["fid"] = frechet_distance(*feature_statistics(feats), mu_r, sigma_r)
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
    """Metrics of a samples .npz; with `reference`, paired metrics of the images of the same seeds (and classes)."""
    data = load_npz(path, "samples file")
    if "arr_0" not in data:
        raise ValueError(f"{path} has no 'arr_0' array (ADM sample format)")
    paired = None
    if reference:  # paired first: a mismatch is refused before any metric is computed
        ref = load_npz(reference, "reference file")
        if "arr_0" not in ref:
            raise ValueError(f"{reference} has no 'arr_0' array (ADM sample format)")
        paired = pair_by_seed(data, ref, path, reference)
    result = mnist_metrics(data["arr_0"], data.get("labels"))
    if paired:
        images, ref_images, paired_by = paired
        result.update(paired_metrics(images, ref_images))
        result["paired_by"] = paired_by
    return result


def pair_by_seed(data: dict, ref: dict, path, reference) -> tuple[np.ndarray, np.ndarray, str]:
    """(images, reference images of the same seeds, how they were paired); refuses sets whose seeds differ.

    Paired metrics compare an image with the one made from the same noise, so the pairing is by the stored seeds
    (sets written by `l2c sample --npz` hold them), never by position unless neither set has seeds.
    """
    if "seeds" not in data and "seeds" not in ref:
        if data["arr_0"].shape != ref["arr_0"].shape:
            raise ValueError(f"{path} and {reference} hold {data['arr_0'].shape} vs {ref['arr_0'].shape} images")
        return data["arr_0"], ref["arr_0"], "position (neither file records seeds)"
    for name, d in ((path, data), (reference, ref)):
        if "seeds" not in d:
            raise ValueError(f"{name} records no seeds, so its images cannot be paired by seed (use l2c sample --npz)")
        if len(np.unique(d["seeds"])) != len(d["seeds"]) or len(d["seeds"]) != len(d["arr_0"]):
            raise ValueError(f"{name}: its seeds are repeated or do not match its {len(d['arr_0'])} images")
    seeds, ref_seeds = data["seeds"].tolist(), ref["seeds"].tolist()
    if set(seeds) != set(ref_seeds):
        missing = sorted(set(seeds) ^ set(ref_seeds))[:5]
        raise ValueError(
            f"{path} and {reference} hold different seeds (e.g. {missing} is in only one); paired metrics need "
            "the same seeds: sample both with the same --seeds"
        )
    where = {s: i for i, s in enumerate(ref_seeds)}
    order = np.asarray([where[s] for s in seeds])
    if "labels" in data and "labels" in ref:
        differ = np.nonzero(data["labels"] != ref["labels"][order])[0]
        if len(differ):
            i = int(differ[0])
            raise ValueError(
                f"seed {seeds[i]} has class {data['labels'][i]} in {path} but {ref['labels'][order][i]} in "
                f"{reference}: sample both with the same --classes"
            )
    return data["arr_0"], ref["arr_0"][order], "seed"


def write_reference_statistics() -> None:
    """Features of the 10k MNIST test images under the bundled classifier (committed; regenerate after retraining)."""
    from ..data.mnist import load_mnist

    images, _ = load_mnist("test")
    feats, _ = classify(load_classifier(), images)
    mu, sigma = feature_statistics(feats)
    atomic_savez(REFERENCE_STATS, mu=mu, sigma=sigma)


if __name__ == "__main__":
    write_reference_statistics()
    print(f"wrote {REFERENCE_STATS}")
