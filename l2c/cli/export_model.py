"""`l2c export-model`: a training checkpoint's EMA weights as a self-describing .safetensors."""

from __future__ import annotations

import json

import numpy as np
import torch

HELP = "write a training checkpoint's EMA weights as a self-describing .safetensors"


def add_arguments(p) -> None:
    p.add_argument("checkpoint", help="OUT/checkpoint.pt of train-model")
    p.add_argument("--out", required=True, help="output .safetensors")
    p.add_argument("--half", action="store_true", help="store float16 (loaded back as float32)")


def run(args) -> int:
    from safetensors.torch import save_file

    from ..utils.io import atomic_output, safe_torch_load

    ckpt = safe_torch_load(args.checkpoint)
    if "ema" not in ckpt or "config" not in ckpt:
        raise ValueError(f"{args.checkpoint} is not a train-model checkpoint (needs 'ema' and 'config')")
    dtype = torch.float16 if args.half else torch.float32
    sd = {k: v.to(dtype).contiguous() for k, v in ckpt["ema"].items()}
    meta = {
        "preset": ckpt["config"]["model"],
        "diffusion": ckpt["diffusion"],
        "config": ckpt["config"],
        "train_steps": ckpt["step"],
        "final_loss": float(np.mean(ckpt["losses"][-100:])),
    }
    with atomic_output(args.out) as tmp:
        save_file(sd, str(tmp), metadata={k: json.dumps(v) for k, v in meta.items()})
    print(f"wrote {args.out} ({meta['preset']}, step {meta['train_steps']})")
    return 0
