"""Load model weights: the bundled models by name, official checkpoints (DiT .pt, U-ViT .pth) or our own files.

Every read goes through `torch.load(weights_only=True)` or safetensors. Mismatches name the first offending keys and
the preset whose shapes would fit.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..utils.io import safe_torch_load
from . import MODELS, create_model

ASSETS = Path(__file__).resolve().parent.parent / "assets"
BUNDLED = {"dit-mnist": "dit-mnist.safetensors", "uvit-mnist": "uvit-mnist.safetensors"}


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Return (state_dict, metadata) from .safetensors or a torch file (plain, {"ema": sd} or {"model": sd})."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file, safe_open

        if not path.exists():
            raise FileNotFoundError(f"checkpoint not found: {path} (tried {path.resolve()})")
        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
            sd = load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise ValueError(f"checkpoint {path} is truncated or corrupt ({e}); download or save it again") from e
        return sd, {k: json.loads(v) for k, v in meta.items()}
    obj = safe_torch_load(path)
    if isinstance(obj, dict) and "ema" in obj and isinstance(obj["ema"], dict):
        return obj["ema"], {k: obj[k] for k in ("config", "diffusion") if k in obj}
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        return obj["model"], {}
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, {}
    raise ValueError(f"{path} holds no model state dict (top-level keys: {list(obj)[:8]})")


def check_state_dict(model: nn.Module, sd: dict[str, torch.Tensor], preset: str) -> None:
    """Raise ValueError naming the first mismatching keys / shapes and the preset that would fit."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong = [
        f"{k}: file {tuple(sd[k].shape)} vs model {expected[k]}"
        for k in expected
        if k in sd and tuple(sd[k].shape) != expected[k]
    ]
    if not (missing or unexpected or wrong):
        return
    lines = [f"checkpoint does not fit preset {preset!r}:"]
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", wrong)):
        if items:
            lines.append(f"  {len(items)} {label}, first: {', '.join(items[:3])}")
    fits = matching_presets(sd)
    lines.append(
        f"  presets whose keys and shapes fit: {', '.join(fits)}"
        if fits
        else "  no known preset fits it (is it a DiT / U-ViT checkpoint?)"
    )
    raise ValueError("\n".join(lines))


def matching_presets(sd: dict[str, torch.Tensor]) -> list[str]:
    fits = []
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    for name in MODELS:
        for overrides in _size_variants(name, shapes):
            with torch.device("meta"):
                ref = {k: tuple(v.shape) for k, v in create_model(name, **overrides).state_dict().items()}
            if ref == shapes:
                fits.append(name + "".join(f" ({k}={v})" for k, v in overrides.items()))
                break
    return fits


def _size_variants(name: str, shapes: dict) -> list[dict]:
    # The input resolution changes only pos_embed; try the one the file implies (e.g. DiT-XL/2 at 512px).
    variants = [{}]
    if "pos_embed" in shapes and MODELS[name].arch == "dit":
        tokens = shapes["pos_embed"][1]
        side = int(round(tokens**0.5)) * MODELS[name].kwargs["patch_size"]
        variants.append({"input_size": side})
    return variants


def load_model(name_or_path: str, preset: str | None = None, **overrides) -> tuple[nn.Module, dict]:
    """Return (model in eval mode, metadata). Bundled names need no preset; files need --model PRESET."""
    if name_or_path in BUNDLED:
        path = ASSETS / BUNDLED[name_or_path]
        if not path.exists():
            raise FileNotFoundError(f"bundled model {name_or_path!r} is missing from the install ({path})")
    else:
        path = Path(name_or_path)
    sd, meta = read_state_dict(path)
    preset = preset or meta.get("preset") or (meta.get("config") or {}).get("model")
    if preset is None:
        fits = matching_presets(sd)
        raise ValueError(f"{path}: name the model preset (--model); presets that fit: {', '.join(fits) or 'none'}")
    if preset not in MODELS:
        raise ValueError(f"unknown model preset {preset!r}; known presets: {', '.join(MODELS)}")
    if "pos_embed" in sd and MODELS[preset].arch == "dit" and "input_size" not in overrides:
        side = int(round(sd["pos_embed"].shape[1] ** 0.5)) * MODELS[preset].kwargs["patch_size"]
        overrides["input_size"] = side
    model = create_model(preset, **overrides)
    check_state_dict(model, sd, preset)
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    meta = {**meta, "preset": preset, "path": str(path)}
    return model.eval().requires_grad_(False), meta
