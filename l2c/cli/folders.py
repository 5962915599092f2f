"""Output folders: a command writes only into a folder that is new, empty, or its own from an earlier run.

A command that writes into a folder (train-model, prepare-data, compare, demo, train-router's working folder) marks
it with a small file, MARKER, naming the command. We chose a marker over a list of the names each command writes:
those names change with the options (one grid per arm, a data sub-folder only for some sources), and a list kept
apart from the code that writes the files would one day refuse a command's own folder. The marker is written just
before the command runs, so the folder of an interrupted run is still recognised when it is resumed; it is taken
away again when the command fails before writing anything, so a refused command leaves no trace. Folders written
before the marker existed are recognised by a file only that command writes (SIGNATURES).

export-diffusers replaces its folder whole (written beside, then renamed into place), so there the test is stricter:
the folder may hold only the files an export writes, with its l2c.json saying so. It needs no marker: l2c.json is one.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

MARKER = ".l2c-output.json"
SIGNATURES = {  # command -> files that only it writes (folders from before the marker)
    "train-model": ("checkpoint.pt",),
    "prepare-data": ("meta.json", "progress.json"),
    "train-router": ("router_training.pt",),
    "compare": ("compare.json", "sweep.jsonl"),
    "demo": ("results.json", "router.safetensors"),
}
EXPORT_FILES = {"config.json", "diffusion_pytorch_model.safetensors", "scheduler_config.json", "l2c.json"}
EXPORT_FORMAT = "l2c-diffusers"  # l2c.json's "format" (l2c.integrations.diffusers_convert)


def check_owned(label: str, path: Path, command: str) -> None:
    """Raise ValueError (one line) unless `path` is absent, an empty folder, or a folder `command` wrote."""
    if not path.is_dir():
        return
    entries = sorted(os.listdir(path))
    if not entries:
        return
    if command == "export-diffusers":
        _check_export(label, path, entries)
        return
    owner = _marked_by(path)
    if owner == command or (owner is None and any(name in entries for name in SIGNATURES.get(command, ()))):
        return
    if owner is not None:
        raise ValueError(f"{label} holds the output of l2c {owner}, not of l2c {command}; name a new or empty folder")
    raise ValueError(
        f"{label} holds files that l2c {command} did not write ({_names(entries)}); l2c writes only into a new or "
        "empty folder, or its own from an earlier run: name another folder"
    )


def _check_export(label: str, path: Path, entries: list[str]) -> None:
    foreign = [name for name in entries if name not in EXPORT_FILES]
    if not foreign and _export_format(path / "l2c.json") == EXPORT_FORMAT:
        return
    what = f"files that l2c export-diffusers did not write ({_names(foreign)})" if foreign else "another model folder"
    raise ValueError(
        f"{label} holds {what}; export-diffusers replaces its folder whole, so it writes only to a new or empty "
        "folder, or one it exported before: name another folder"
    )


def _export_format(meta: Path) -> str | None:
    try:
        return json.loads(meta.read_text()).get("format")
    except (OSError, ValueError, AttributeError):
        return None


def _marked_by(path: Path) -> str | None:
    try:
        return str(json.loads((path / MARKER).read_text())["command"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _names(entries: list[str]) -> str:
    return ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")


@contextmanager
def claimed(folders: list[Path], command: str):
    """Mark each folder as `command`'s for the run; if the run fails having written nothing there, undo the mark
    (and the folders it made)."""
    claims, ok = [], False
    try:
        for folder in folders:
            claims.append(_claim(Path(folder), command))
        yield
        ok = True
    finally:
        if not ok:
            for claim in claims:
                _release(*claim)


def _claim(folder: Path, command: str):
    made = [p for p in [folder, *folder.parents] if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / MARKER
    added = not marker.exists()
    if added:
        note = "this folder is written by l2c; l2c writes into it again only for the same command"
        marker.write_text(json.dumps({"command": command, "note": note}) + "\n")
    return folder, made, added, _state(folder)


def _release(folder: Path, made: list[Path], added: bool, before: dict) -> None:
    if not added or _state(folder) != before:
        return  # the run wrote here: the mark stays, so that the same command may resume
    (folder / MARKER).unlink(missing_ok=True)
    for p in made:  # innermost first
        try:
            p.rmdir()
        except OSError:
            break


def _state(folder: Path) -> dict:
    # names, sizes and modification times below the folder: what a run that wrote anything would change
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = os.path.join(root, name)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            out[p] = (st.st_size, st.st_mtime_ns)
    return out
