"""Router files: our own format (safetensors + JSON metadata) and import of the four official files.

Own format: tensor "logits" (S, L) in sampling order; metadata key "l2c_router" holds JSON with the format version,
model preset, checkpoint hash, sampler, steps, cache schedule and steps, guidance, λ, θ and the training config.

Official files (docs/upstream.md §5): DiT `DDIM{N}_router.pt` = {"routers": {"{k}.prob": [56]}, "opt",
"args": Namespace}, k the respaced index (k = 0 least noisy) -> our step j = N - 1 - k. U-ViT
`dpm{NFE}_router.pth` = {"{i}.prob": [58]}, i the outer DPM-Solver-2 step -> our evaluation j = 2 i (the shifted
cache step).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..cache.plan import cache_steps_for
from ..utils.io import atomic_output, safe_torch_load
from .router import Router

FORMAT = "l2c-router"
VERSION = 1


def save_router(router: Router, path: str | Path, meta: dict) -> None:
    from safetensors.torch import save_file

    path = Path(path)
    meta = {
        **meta,
        "format": FORMAT,
        "version": VERSION,
        "num_steps": router.num_steps,
        "num_sublayers": router.num_sublayers,
        "cache_steps": router.cache_steps,
    }
    with atomic_output(path) as tmp:
        tensors = {"logits": router.logits.detach().float().contiguous()}
        save_file(tensors, str(tmp), metadata={"l2c_router": json.dumps(meta)})


def load_router(path: str | Path) -> tuple[Router, dict]:
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"router file not found: {path} (tried {path.resolve()})")
    if path.suffix in (".pt", ".pth"):
        raise ValueError(
            f"{path} looks like an official router file: convert it first with "
            f"`l2c router import {path} --arch dit|uvit --steps N --out ROUTER.safetensors`"
        )
    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {}).get("l2c_router", "null"))
            logits = f.get_tensor("logits")
    except (SafetensorError, OSError, json.JSONDecodeError) as e:
        raise ValueError(f"router file {path} is truncated or corrupt ({e}); train or import it again") from e
    if not meta or meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not an l2c router file (no '{FORMAT}' metadata)")
    if meta["version"] > VERSION:
        raise ValueError(f"{path} has router format version {meta['version']}; this l2c reads up to {VERSION}: upgrade")
    if not torch.isfinite(logits).all():
        raise ValueError(f"router {path} holds NaN or infinite logits; retrain it (lower the router lr)")
    router = Router(logits.shape[0], logits.shape[1], meta["cache_steps"])
    router.logits.data.copy_(logits)
    return router, meta


def import_official(path: str | Path, arch: str, steps: int) -> tuple[Router, dict]:
    """Convert an official router file; `steps` = DDIM steps (DiT) or NFE (U-ViT, 2 evaluations per outer step)."""
    obj = safe_torch_load(path, safe_globals=[argparse.Namespace])
    if arch == "dit":
        if not isinstance(obj, dict) or "routers" not in obj:
            raise ValueError(
                f"{path} is not an official DiT router file (no 'routers' entry); is it U-ViT (--arch uvit)?"
            )
        probs, args = obj["routers"], obj.get("args")
    elif arch == "uvit":
        if isinstance(obj, dict) and "routers" in obj:
            raise ValueError(f"{path} is an official DiT router file; use --arch dit")
        probs, args = obj, None
    else:
        raise ValueError(f"unknown architecture {arch!r}; use 'dit' or 'uvit'")
    rows = _ordered_rows(probs, path)
    if len(rows) != steps:
        raise ValueError(
            f"{path} holds {len(rows)} routers but --steps is {steps}: it was trained for {len(rows)} "
            f"{'DDIM steps' if arch == 'dit' else 'NFE'}"
        )
    logits = torch.stack(rows).float()
    if arch == "dit":
        # Official k = respaced index, k = 0 least noisy; sampling runs k = N-1 -> 0. Cache steps: even k.
        ours = logits.flip(0)
        cache_steps = sorted(steps - 1 - k for k in range(steps) if k % 2 == 0 and k != steps - 1)
        meta = {
            "arch": "dit",
            "sampler": "ddim",
            "steps": steps,
            "schedule": "alternate",
            "threshold": 0.1,
            "model": "DiT-XL/2",
            "guidance": 1.5,
        }
        if args is not None:
            meta["lambda"] = getattr(args, "l1", None)
            meta["training"] = {
                k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool, type(None)))
            }
    else:
        if steps % 2:
            raise ValueError(f"U-ViT routers are for DPM-Solver-2 with an even NFE, got {steps}")
        ours = torch.zeros_like(logits)
        cache_steps = cache_steps_for("shifted", steps)
        for j in cache_steps:
            ours[j] = logits[j // 2]  # evaluation j = 2i uses official router i
        meta = {
            "arch": "uvit",
            "sampler": "dpm-solver-2",
            "steps": steps,
            "schedule": "shifted",
            "threshold": 0.9,
            "model": "U-ViT-H/2",
            "guidance": 1.4,
            "lambda": 0.1,
        }
    meta["imported_from"] = Path(path).name
    router = Router(steps, logits.shape[1], cache_steps)
    router.logits.data.copy_(ours)
    return router, meta


def _ordered_rows(probs: dict, path) -> list[torch.Tensor]:
    try:
        index = {int(k.split(".")[0]): v for k, v in probs.items() if k.endswith(".prob")}
    except (ValueError, AttributeError) as e:
        raise ValueError(f"{path}: router keys should look like '3.prob' ({e})") from e
    if sorted(index) != list(range(len(index))) or not index:
        raise ValueError(f"{path}: router indices are not 0..N-1: {sorted(index)[:5]}...")
    return [index[i].detach().cpu() for i in range(len(index))]


def check_router_fits(router: Router, meta: dict, num_sublayers: int, sampler: str, num_evaluations: int) -> None:
    """Reject a router made for another model size or sampling run, naming what would fit."""
    if router.num_sublayers != num_sublayers:
        raise ValueError(
            f"the router has {router.num_sublayers} scores per step but this model has {num_sublayers} cacheable "
            f"sub-layers: it was made for {meta.get('model', 'another model')}"
        )
    if router.num_steps != num_evaluations:
        raise ValueError(
            f"the router covers {router.num_steps} model evaluations but {sampler} here makes {num_evaluations}: "
            f"use --steps {meta.get('steps', router.num_steps)}"
        )
    if meta.get("sampler") and meta["sampler"] != sampler:
        raise ValueError(
            f"the router was trained for {meta['sampler']}, not {sampler}: pass --sampler {meta['sampler']}"
        )
