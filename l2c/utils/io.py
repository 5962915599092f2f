"""Atomic file writes and safe checkpoint reads."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import torch


def atomic_torch_save(obj, path: str | Path) -> None:
    """Write to a temporary file in the same folder, then rename: a crash never leaves a half-written checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def atomic_write_text(text: str, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_write_json(obj, path: str | Path) -> None:
    atomic_write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", path)


def safe_torch_load(path: str | Path, safe_globals: list | None = None):
    """torch.load with weights_only=True and clear errors for a missing, truncated or foreign file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path} (tried {path.resolve()})")
    if path.stat().st_size == 0:
        raise ValueError(f"checkpoint {path} is empty (0 bytes): the download or save was interrupted; get it again")
    try:
        with torch.serialization.safe_globals(safe_globals or []):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        msg = str(e)
        if any(k in msg for k in ("central directory", "PytorchStreamReader", "EOF", "zip archive", "truncated")):
            raise ValueError(
                f"checkpoint {path} is truncated or corrupt ({msg.splitlines()[0]}); download or save it again"
            ) from e
        raise


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
