"""Large sample sets (50k images for FID): split over torchrun processes, written in atomic parts, resumable.

Batch k of the seed list goes to process k mod world_size; each finished batch is saved as OUT.npz.parts/<k>.npy
(write to a temporary name, then rename), so a killed job restarted with the same command only makes the batches
that are missing. When every part exists the main process joins them in seed order into one ADM-format .npz
(arr_0 uint8 NHWC, labels, seeds) and removes the parts. Image i depends only on seed i, so the result is the same
for any number of processes.

The parts folder records every setting that changes the images (settings.json); a resume with any other value is
refused, naming the setting. A lock beside OUT refuses a second run writing the same file at the same time.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import socket
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..utils import distributed
from ..utils.io import atomic_output, atomic_savez, atomic_write_json, file_sha256
from ..utils.progress import progress_bar
from .generate import SampleConfig, generate, network, to_uint8


def sample_to_npz(
    model,
    spec,
    seeds: list[int],
    classes: list[int],
    config: SampleConfig,
    out: str | Path,
    plan=None,
    decode=None,
    record: dict | None = None,
) -> np.ndarray | None:
    """Writes OUT; returns its images (uint8 NHWC) on the main process, None on the others.

    `record`: settings the arguments here cannot show (model name, checkpoint, router file, θ, decoder), compared
    with the parts of an interrupted run before they are reused (see `describe_inputs`).
    """
    out = Path(out)
    parts = out.with_name(out.name + ".parts")
    settings = _settings(model, spec, seeds, classes, config, plan, record or {})
    with _exclusive(out):
        _check_parts(parts, settings)
        distributed.barrier()
        if distributed.is_main():
            atomic_write_json(settings, parts / "settings.json")
        distributed.barrier()
        starts = list(range(0, len(seeds), config.batch_size))
        try:
            _make_parts(model, spec, seeds, classes, config, plan, decode, parts, starts)
        except BaseException:
            _remove_if_empty(parts)  # keep finished parts for a resume, but no folder that holds none
            raise
        distributed.barrier()
        if not distributed.is_main():
            return None
        images = np.concatenate([np.load(_part(parts, k)) for k in range(len(starts))])
        atomic_savez(out, arr_0=images, labels=np.asarray(classes), seeds=np.asarray(seeds))
        shutil.rmtree(parts)
        return images


def _make_parts(model, spec, seeds, classes, config, plan, decode, parts: Path, starts: list[int]) -> None:
    rank, world = distributed.rank(), distributed.world_size()
    todo = [k for k in range(len(starts)) if k % world == rank and not _part(parts, k).exists()]
    for k in progress_bar(todo, desc=f"sample (process {rank} of {world})", disable=len(todo) < 2):
        batch = slice(starts[k], starts[k] + config.batch_size)
        x = to_uint8(generate(model, spec, seeds[batch], classes[batch], config, plan, decode, progress=False))
        with atomic_output(_part(parts, k)) as tmp:
            np.save(tmp, x)


def _check_parts(parts: Path, settings: dict) -> None:
    """Refuse the parts of another run, naming the first settings that differ."""
    recorded = parts / "settings.json"
    # Every process checks (before anyone writes), so a mismatch stops all of them instead of leaving some waiting.
    if not recorded.exists():
        return
    try:
        old = json.loads(recorded.read_text())
    except (OSError, ValueError):
        old = None
    if not isinstance(old, dict) or old.get("format") != settings["format"]:
        raise ValueError(
            f"{parts} holds parts of a different sampling run, made by an older l2c or damaged, that cannot be "
            "checked: remove it (or choose another --npz)"
        )
    changed = [k for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k)]
    if changed:
        said = "; ".join(f"{k} was {old.get(k)!r}, now {settings.get(k)!r}" for k in changed[:3])
        raise ValueError(
            f"{parts} holds parts of a different sampling run ({said}): pass the old values to resume it, or "
            f"remove {parts} (or choose another --npz) to start over"
        )


def _remove_if_empty(parts: Path) -> None:
    if distributed.is_main() and parts.is_dir() and not any(parts.glob("[0-9]*.npy")):
        shutil.rmtree(parts, ignore_errors=True)


@contextmanager
def _exclusive(out: Path):
    """One run at a time per OUT: a second run (another shell, another torchrun job) is refused, not raced.

    The main process holds an flock on OUT.lock (released by the kernel even if the process is killed) and every
    process learns whether it got it, so all stop together.
    """
    lock = out.with_name(out.name + ".lock")
    fd = _try_lock(lock) if distributed.is_main() else None
    if not distributed.all_true(fd is not None or not distributed.is_main()):
        holder = _read_holder(lock)
        raise ValueError(
            f"another l2c run{holder} is writing {out} (lock {lock}): wait for it to finish, or choose another --npz"
        )
    try:
        yield
    finally:
        if fd is not None:
            lock.unlink(missing_ok=True)  # removed while still held, so no third run can lock the old file
            os.close(fd)


def _try_lock(lock: Path) -> int | None:
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # The previous holder may have removed the file between our open and our lock: then we lock nothing.
        if os.fstat(fd).st_ino != os.stat(lock).st_ino:
            raise BlockingIOError
    except (BlockingIOError, FileNotFoundError):
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
    return fd


def _read_holder(lock: Path) -> str:
    try:
        pid, host = lock.read_text().split()[:2]
        return f" (process {pid} on {host})"
    except (OSError, ValueError):
        return ""


def describe_inputs(
    model_name: str, ckpt: str | None, router: str | None, threshold: float | None, vae: str | None
) -> dict:
    """The settings of a sampling run that its tensors do not show, for the resume record of its parts."""
    return {
        "model": model_name,
        "checkpoint sha256": file_sha256(ckpt) if ckpt else None,
        "router sha256": file_sha256(router) if router else None,
        "threshold": threshold if router else None,
        "decoder (--vae)": _folder_identity(vae) if vae else None,
    }


def _folder_identity(folder: str) -> str:
    # a VAE folder is large; its real path and the hash of its config name it well enough
    config = Path(folder) / "config.json"
    digest = file_sha256(config)[:16] if config.exists() else "no config.json"
    return f"{os.path.realpath(folder)} ({digest})"


def _part(parts: Path, k: int) -> Path:
    return parts / f"{k:07d}.npy"


def _settings(model, spec, seeds, classes, config: SampleConfig, plan, record: dict) -> dict:
    """Every setting that changes the images, by a readable name (mismatches are reported with these names)."""
    digest = hashlib.sha256()
    net = network(model)  # a workload (FLUX) has no spec: its sampler and scheduler are in `config` and `record`
    for p in net.state_dict().values():
        digest.update(p.detach().float().cpu().numpy().tobytes()[:4096])  # a fingerprint, not a full hash
    return {
        "format": 2,
        "model weights": digest.hexdigest(),
        "dtype": str(next(net.parameters()).dtype),
        **{f"diffusion {k}": v for k, v in (asdict(spec).items() if spec is not None else ())},  # β schedule, time
        **{k: getattr(config, k) for k in config.__dataclass_fields__},
        "seeds": f"{len(seeds)} seeds, sha256 {hashlib.sha256(np.asarray(seeds).tobytes()).hexdigest()[:16]}",
        "classes": f"{len(classes)} labels, sha256 {hashlib.sha256(np.asarray(classes).tobytes()).hexdigest()[:16]}",
        "cache plan": None if plan is None else hashlib.sha256(plan.compute.numpy().tobytes()).hexdigest()[:16],
        **record,
    }
