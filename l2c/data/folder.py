"""Image folders in ImageNet layout (ROOT/<class>/<image>) and ADM's centre crop.

Training does not read these folders directly: `l2c.data.prepared` decodes them once into a memory-mapped array.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}  # compared lower-case (ImageNet uses .JPEG)


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
            if f.suffix.lower() in EXTENSIONS:
                files.append(f)
                labels.append(index)
    if not files:
        raise ValueError(f"no images ({', '.join(sorted(EXTENSIONS))}) under {root}")
    return files, labels, classes
