"""Large sample sets (50k images for FID): split over torchrun processes, written in atomic parts, resumable.

Batch k of the seed list goes to process k mod world_size; each finished batch is saved as OUT.npz.parts/<k>.npy
(write to a temporary name, then rename), so a killed job restarted with the same command only makes the batches
that are missing. When every part exists the main process joins them in seed order into one ADM-format .npz
(arr_0 uint8 NHWC, labels, seeds) and removes the parts. Image i depends only on seed i, so the result is the same
for any number of processes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..utils import distributed
from ..utils.io import atomic_write_json
from .generate import SampleConfig, generate, to_uint8


def sample_to_npz(
    model, spec, seeds: list[int], classes: list[int], config: SampleConfig, out: str | Path, plan=None, decode=None
) -> np.ndarray | None:
    """Writes OUT; returns its images (uint8 NHWC) on the main process, None on the others."""
    out = Path(out)
    parts = out.with_name(out.name + ".parts")
    settings = _settings(model, seeds, classes, config, plan)
    recorded = parts / "settings.json"
    # Every process checks (before anyone writes), so a mismatch stops all of them instead of leaving some waiting.
    if recorded.exists() and json.loads(recorded.read_text()) != settings:
        raise ValueError(
            f"{parts} holds parts of a different sampling run (other model, seeds, sampler, batch size or plan): "
            "remove it or choose another --npz"
        )
    distributed.barrier()
    if distributed.is_main():
        atomic_write_json(settings, recorded)
    distributed.barrier()
    starts = list(range(0, len(seeds), config.batch_size))
    rank, world = distributed.rank(), distributed.world_size()
    todo = [k for k in range(len(starts)) if k % world == rank and not _part(parts, k).exists()]
    for k in tqdm(todo, desc=f"sample (process {rank} of {world})", disable=len(todo) < 2):
        batch = slice(starts[k], starts[k] + config.batch_size)
        x = to_uint8(generate(model, spec, seeds[batch], classes[batch], config, plan, decode, progress=False))
        tmp = parts / f".{k:07d}.tmp.npy"
        np.save(tmp, x)
        os.replace(tmp, _part(parts, k))
    distributed.barrier()
    if not distributed.is_main():
        return None
    images = np.concatenate([np.load(_part(parts, k)) for k in range(len(starts))])
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez(tmp, arr_0=images, labels=np.asarray(classes), seeds=np.asarray(seeds))
    os.replace(tmp, out)
    shutil.rmtree(parts)
    return images


def _part(parts: Path, k: int) -> Path:
    return parts / f"{k:07d}.npy"


def _settings(model, seeds, classes, config: SampleConfig, plan) -> dict:
    digest = hashlib.sha256()
    for p in model.state_dict().values():
        digest.update(p.detach().float().cpu().numpy().tobytes()[:4096])  # a fingerprint, not a full hash
    return {
        "model": digest.hexdigest(),
        "seeds": hashlib.sha256(np.asarray(seeds).tobytes()).hexdigest(),
        "classes": hashlib.sha256(np.asarray(classes).tobytes()).hexdigest(),
        "config": {k: getattr(config, k) for k in config.__dataclass_fields__},
        "plan": None if plan is None else hashlib.sha256(plan.compute.numpy().tobytes()).hexdigest(),
    }
