"""Image-folder data (ImageNet layout: ROOT/<class>/<image>) with ADM's centre crop, optionally VAE-encoded.

Loaded into memory once: meant for the modest datasets a CPU can train on; flips are applied per batch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".JPEG"}


def center_crop_arr(image: Image.Image, image_size: int) -> np.ndarray:
    """ADM: halve with BOX while the short side is >= 2x the target, then BICUBIC to size, then centre crop."""
    while min(*image.size) >= 2 * image_size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
    scale = image_size / min(*image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.BICUBIC)
    arr = np.array(image)
    top, left = (arr.shape[0] - image_size) // 2, (arr.shape[1] - image_size) // 2
    return arr[top : top + image_size, left : left + image_size]


def list_image_folder(root: str | Path) -> tuple[list[Path], list[int], list[str]]:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist (expected ROOT/<class>/<images>)")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise ValueError(f"{root} has no class sub-folders (expected ROOT/<class>/<images>)")
    files, labels = [], []
    for index, name in enumerate(classes):
        for f in sorted((root / name).iterdir()):
            if f.suffix in EXTENSIONS:
                files.append(f)
                labels.append(index)
    if not files:
        raise ValueError(f"no images ({', '.join(sorted(EXTENSIONS))}) under {root}")
    return files, labels, classes


def load_image_folder(root: str | Path, image_size: int, channels: int = 3, encode=None, batch: int = 32):
    """Returns (float32 (N, C, S, S) in [-1, 1] — or latents if `encode` is given —, int64 labels (N,))."""
    files, labels, _ = list_image_folder(root)
    mode = "L" if channels == 1 else "RGB"
    arrays = []
    for f in files:
        try:
            with Image.open(f) as im:
                arr = center_crop_arr(im.convert(mode), image_size)
        except OSError as e:
            raise ValueError(f"cannot read image {f}: {e}") from e
        arrays.append(arr.reshape(image_size, image_size, channels))
    x = np.stack(arrays).astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1.0
    if encode is not None:
        import torch

        with torch.no_grad():
            x = np.concatenate([encode(torch.from_numpy(x[i : i + batch])).numpy() for i in range(0, len(x), batch)])
    return x, np.asarray(labels, dtype=np.int64)


def random_flip(x, generator):
    """Horizontal flip of a random half of the batch (ADM's random_flip)."""
    import torch

    flip = torch.rand(x.shape[0], generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)
