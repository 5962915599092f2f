"""Atomic file writes and safe checkpoint reads.

Every output is written to a temporary file with a unique name in the destination's own folder (so the final rename
is atomic and two runs never share a temporary file), then renamed over the destination. On any failure the
temporary file is removed and an existing destination is left untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
import warnings
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary path beside `path`; on success rename it to `path`, on failure delete it.

    The temporary name keeps the destination's suffix, because writers such as np.savez and PIL choose the
    format from it. Missing parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp" + path.suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, _mode_for(path))  # mkstemp makes the file owner-only; give it the usual permissions
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _mode_for(path: Path) -> int:
    if path.exists():
        return path.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_torch_save(obj, path: str | Path) -> None:
    """torch.save through atomic_output: a crash never leaves a half-written checkpoint."""
    with atomic_output(path) as tmp:
        torch.save(obj, tmp)


def atomic_write_text(text: str, path: str | Path) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(obj, path: str | Path) -> None:
    atomic_write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", path)


def atomic_savez(path: str | Path, **arrays) -> None:
    with atomic_output(path) as tmp:
        np.savez(tmp, **arrays)


def safe_torch_load(path: str | Path, safe_globals: list | None = None):
    """torch.load with weights_only=True and one-line errors for a missing, truncated, foreign or hostile file.

    Only tensors and plain containers are ever unpickled; a file that needs anything else (code, custom classes) is
    refused with our own message. torch's own message would suggest weights_only=False, which runs the file's code.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path} (tried {path.resolve()})")
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a checkpoint file")
    if path.stat().st_size == 0:
        raise ValueError(f"checkpoint {path} is empty (0 bytes): the download or save was interrupted; get it again")
    try:
        with torch.serialization.safe_globals(safe_globals or []), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pickle-protocol warnings say nothing the user can act on
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "global" not in str(e).lower():  # garbage also ends in the unpickler; code is asked for by a global
            raise _corrupt_checkpoint(path, e) from None
        raise ValueError(
            f"{path} is not a plain checkpoint: it needs {_unsupported(e)} to load, and l2c loads only tensors and "
            "plain containers, never code; if the file is yours, re-save its state_dict with torch.save"
        ) from None
    except Exception as e:  # truncated zips, foreign formats: torch raises many types, none worth a traceback
        raise _corrupt_checkpoint(path, e) from None


def _corrupt_checkpoint(path: Path, e: Exception) -> ValueError:
    return ValueError(f"checkpoint {path} is truncated, corrupt or not a torch file ({_first_line(e)})")


def _unsupported(e: Exception) -> str:
    # torch names what it refused ("Unsupported global: GLOBAL os.system"); keep that part, drop its advice
    for line in str(e).splitlines():
        line = line.strip()
        if "GLOBAL" in line:
            return f"more than weights ({line.rstrip('.')})"
    return "more than weights"


def _first_line(e: Exception) -> str:
    text = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {text[:160]}" if text else type(e).__name__


def load_npz(path: str | Path, what: str = "file") -> dict[str, np.ndarray]:
    """All arrays of an .npz, read without pickle (object arrays are refused) and with one-line errors."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path} (tried {path.resolve()})")
    if path.is_dir():
        raise ValueError(f"{what} {path} is a folder, not an .npz file")
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic == b"\x93NUMPY":
        raise ValueError(f"{what} {path} is a single .npy array, not an .npz archive")
    if not magic.startswith(b"PK"):  # every .npz is a zip archive; anything else would reach numpy's pickle path
        raise ValueError(f"{what} {path} is corrupt or not an .npz (it is not a zip archive)")
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError(f"{what} {path} is a single .npy array, not an .npz archive")
        with data:
            return {k: data[k] for k in data.files}
    except ValueError as e:
        if "pickle" in str(e):  # numpy's text suggests allow_pickle=True, which would run the file's code
            raise ValueError(f"{what} {path} holds Python objects, not plain arrays; l2c never unpickles") from None
        if str(e).startswith(f"{what} {path}"):
            raise
        raise ValueError(f"{what} {path} is truncated, corrupt or not an .npz ({_first_line(e)})") from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise ValueError(f"{what} {path} is truncated, corrupt or not an .npz ({_first_line(e)})") from None


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
