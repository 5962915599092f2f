"""Numeric precision of sampling and router training: fp32, tf32, bf16 or fp16 mixed precision.

* fp32: everything in float32 (the project's reference; the upstream-fidelity tests run here).
* tf32: float32, with TensorFloat-32 matmuls on CUDA, as DiT's `sample.py` runs (`allow_tf32 = True`); on a CPU
  this is fp32.
* bf16 / fp16: autocast mixed precision, as U-ViT's code runs under accelerate (`mixed_precision='fp16'`):
  parameters and the sampler state stay float32, matmuls and attention run in the half type, and the model's output
  is cast back to float32 before guidance and the solver update see it. fp16 router training also scales the loss
  (GradScaler), because the router's gradient passes through fp16 activations and underflows without it.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
_HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(name: str) -> str:
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}; use one of {', '.join(PRECISIONS)}")
    return name


@contextmanager
def precision_scope(model: nn.Module, precision: str = "fp32"):
    """Run `model` at `precision` inside the block (see the module docstring); restores everything on exit.

    The device is the model's. fp32 changes nothing, so the default path stays bitwise what it was.
    """
    check_precision(precision)
    if precision == "fp32":
        yield
        return
    device = next(model.parameters()).device
    if precision == "tf32":
        with _tf32(device):
            yield
        return
    handle = model.register_forward_hook(_to_float32)
    try:
        with torch.autocast(device.type, dtype=_HALF[precision]):
            yield
    finally:
        handle.remove()


def grad_scaler(model: nn.Module, precision: str) -> torch.amp.GradScaler:
    """A loss scaler that is active for fp16 only (bf16 has float32's exponent range)."""
    device = next(model.parameters()).device
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def _to_float32(module, args, output):
    # Guidance differences (ε_c − ε_u) and the solver update lose digits in a half type; upstream's autocast leaves
    # the output half, but its solvers then promote it against float32 state anyway.
    return output.float() if output.dtype in (torch.bfloat16, torch.float16) else output


@contextmanager
def _tf32(device: torch.device):
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
