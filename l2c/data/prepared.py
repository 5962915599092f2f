"""Training datasets: images in memory (MNIST) or an image folder prepared once on disk (ImageNet-size data).

`prepare_image_folder` decodes and centre-crops every image of an ImageNet-layout folder once, in order, into a
uint8 `.npy` (or, for latent models, the VAE latents of each image *and of its mirror image*, as float16), and
training reads random rows through a memory map: memory stays flat however large the folder, and the horizontal
flip of a latent model is the latent of the flipped image (flipping a latent is not the same thing).

Preparation writes in chunks and records its progress atomically, so an interrupted run continues where it stopped;
`meta.json` is written last, and a folder without it is refused as incomplete.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..utils.io import atomic_write_json
from ..utils.progress import progress_bar
from .folder import center_crop_arr, list_image_folder

FORMAT = "l2c-prepared-data/1"


class _Dataset:
    """What the trainers use: len(), batch(rows, flip) and random_batch(generator, n)."""

    def random_batch(self, generator: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """n rows drawn uniformly with replacement: the `sample_batch(generator, n)` the router trainer takes."""
        return self.batch(torch.randint(0, len(self), (n,), generator=generator))


class ArrayDataset(_Dataset):
    """Images already in memory: float32 (N, C, H, W) in [-1, 1] and int64 labels (N,)."""

    def __init__(self, images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor):
        self.images = torch.as_tensor(images)
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")
        if len(self.images) == 0:
            raise ValueError("the dataset is empty")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])

    def batch(self, idx: torch.Tensor, flip: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows idx; where flip is True, mirrored left-right (ADM's random flip). Returns fresh tensors."""
        return _mirror(self.images[idx], flip), self.labels[idx].clone()


class PreparedDataset(_Dataset):
    """A folder written by `prepare_image_folder`, read through memory maps."""

    def __init__(self, root: str | Path):
        root = Path(root)
        meta_path = root / "meta.json"
        if not meta_path.exists():
            hint = (
                "its preparation did not finish: run `l2c prepare-data` again with the same arguments to complete it"
                if (root / "progress.json").exists()
                else "it is not a prepared dataset (make one with `l2c prepare-data FOLDER --out DIR`)"
            )
            raise ValueError(f"{root} has no meta.json: {hint}")
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("format") != FORMAT:
            raise ValueError(f"{meta_path} is format {self.meta.get('format')!r}, expected {FORMAT!r}")
        self.root = root
        self.kind = self.meta["kind"]
        self.classes = self.meta["classes"]
        self.data = np.load(root / f"{self.kind}.npy", mmap_mode="r")
        self.labels = torch.from_numpy(np.load(root / "labels.npy"))
        if len(self.data) != len(self.labels) or len(self.data) != self.meta["count"]:
            raise ValueError(
                f"{root}: {len(self.data)} rows, {len(self.labels)} labels, meta says {self.meta['count']}: "
                "the folder is damaged; prepare it again"
            )

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape[2:] if self.kind == "latents" else self.data.shape[1:])

    def batch(self, idx: torch.Tensor, flip: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        rows = idx.numpy()
        if self.kind == "latents":  # (N, 2, C, h, w): [latent of the image, latent of its mirror image]
            side = flip.long().numpy() if flip is not None else np.zeros_like(rows)
            x = torch.from_numpy(np.asarray(self.data[rows, side], dtype=np.float32))
        else:
            x = _mirror(torch.from_numpy(np.asarray(self.data[rows], dtype=np.float32) / 127.5 - 1.0), flip)
        return x, self.labels[idx].clone()


def _mirror(x: torch.Tensor, flip: torch.Tensor | None) -> torch.Tensor:
    """Left-right mirror of the images where flip is True (ADM's random flip)."""
    return x if flip is None else torch.where(flip[:, None, None, None], x.flip(-1), x)


def is_prepared(path: str | Path) -> bool:
    return (Path(path) / "meta.json").exists() or (Path(path) / "progress.json").exists()


def prepare_image_folder(
    folder: str | Path,
    out: str | Path,
    image_size: int,
    channels: int = 3,
    encode=None,
    chunk: int = 64,
    progress: bool = True,
) -> PreparedDataset:
    """Decode (and VAE-encode, if `encode` is given) FOLDER/<class>/<image> into OUT; resumes an interrupted run."""
    files, labels, classes = list_image_folder(folder)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    kind = "latents" if encode is not None else "images"
    settings = {
        "format": FORMAT,
        "kind": kind,
        "source": str(Path(folder).resolve()),
        "image_size": image_size,
        "channels": channels,
        "count": len(files),
        "classes": classes,
    }
    if (out / "meta.json").exists():
        _check_same(out / "meta.json", settings)
        return PreparedDataset(out)
    done = 0
    progress_path = out / "progress.json"
    data_path = out / f"{kind}.npy"
    if progress_path.exists():
        recorded = _check_same(progress_path, settings)
        done = recorded["done"]
        data = np.load(data_path, mmap_mode="r+")
    else:
        if encode is None:
            shape, dtype = (len(files), channels, image_size, image_size), np.uint8
        else:
            probe = encode(torch.zeros(1, channels, image_size, image_size))
            shape, dtype = (len(files), 2, *probe.shape[1:]), np.float16
        data = np.lib.format.open_memmap(data_path, mode="w+", dtype=dtype, shape=shape)
        np.save(out / "labels.npy", np.asarray(labels, dtype=np.int64))
        atomic_write_json({**settings, "done": 0}, progress_path)
    mode = "L" if channels == 1 else "RGB"
    bar = progress_bar(total=len(files), initial=done, desc=f"prepare {kind}", unit="img", disable=not progress)
    for start in range(done, len(files), chunk):
        stop = min(start + chunk, len(files))
        pixels = np.stack([_read(f, image_size, mode, channels) for f in files[start:stop]])
        if encode is None:
            data[start:stop] = pixels
        else:
            x = torch.from_numpy(pixels.astype(np.float32) / 127.5 - 1.0)
            with torch.no_grad():
                data[start:stop, 0] = encode(x).numpy().astype(np.float16)
                data[start:stop, 1] = encode(x.flip(-1)).numpy().astype(np.float16)
        data.flush()  # rows reach the disk before the progress record says they are there
        atomic_write_json({**settings, "done": stop}, progress_path)
        bar.update(stop - start)
    bar.close()
    del data
    atomic_write_json(settings, out / "meta.json")
    progress_path.unlink()
    return PreparedDataset(out)


def _read(path: Path, image_size: int, mode: str, channels: int) -> np.ndarray:
    try:
        with Image.open(path) as im:
            arr = center_crop_arr(im.convert(mode), image_size)
    except OSError as e:
        raise ValueError(f"cannot read image {path}: {e}; remove or replace it and run again") from e
    return arr.reshape(image_size, image_size, channels).transpose(2, 0, 1)


def _check_same(path: Path, settings: dict) -> dict:
    recorded = json.loads(path.read_text())
    differing = [k for k in settings if recorded.get(k) != settings[k]]
    if differing:
        raise ValueError(
            f"{path.parent} was prepared with other settings ({', '.join(differing)} differ): "
            "remove it or choose another output folder"
        )
    return recorded
