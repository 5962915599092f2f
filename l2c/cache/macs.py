"""Multiply-accumulate counts of a model evaluation, split into cacheable sub-layers and the always-computed rest.

Two conventions (spec §5 "MAC check", metrics.md §6):
* "paper": nn.Linear / nn.Conv2d only, batch 1, one call per evaluation (what thop counted for the L2C tables);
* "analytic": the same plus the attention matmuls (QKᵀ and AV: 2·T²·D per attention sub-layer), which thop and
  the FLOP counters miss for scaled_dot_product_attention.
Counted with forward hooks on a shape-only (meta) copy of the model, so DiT-XL/2 costs nothing to count.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..models import create_model
from .layout import sublayers


@dataclass(frozen=True)
class MacProfile:
    sublayer_linear: list[float]  # (L,) Linear/Conv MACs of each cacheable sub-layer, one call, batch 1
    sublayer_attention: list[float]  # (L,) attention-matmul MACs (non-zero for attention sub-layers only)
    always_linear: float  # Linear/Conv MACs outside the cacheable sub-layers (embeddings, adaLN, skips, head)

    def per_evaluation(self, compute_row, convention: str = "paper") -> float:
        per = (
            self.sublayer_linear
            if convention == "paper"
            else [a + b for a, b in zip(self.sublayer_linear, self.sublayer_attention)]
        )
        return self.always_linear + sum(m for m, c in zip(per, compute_row) if c)

    def full(self, convention: str = "paper") -> float:
        return self.per_evaluation([True] * len(self.sublayer_linear), convention)


def profile_macs(preset: str, **overrides) -> MacProfile:
    with torch.device("meta"):
        model = create_model(preset, **overrides)
    return _count(model)


def _count(model: nn.Module) -> MacProfile:
    counts: dict[nn.Module, float] = {}

    def hook(module, inputs, output):
        if isinstance(module, nn.Linear):
            counts[module] = counts.get(module, 0.0) + output.numel() * module.in_features
        else:
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            counts[module] = counts.get(module, 0.0) + output.numel() * k

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    x = torch.zeros(1, model.in_channels, model.input_size, model.input_size, device="meta")
    tokens: list[int] = []
    attn_hooks = [m.register_forward_hook(lambda mod, i, o: tokens.append(o.shape[1])) for m in sublayers(model)[0::2]]
    try:
        model(x, torch.zeros(1, device="meta"), torch.zeros(1, dtype=torch.long, device="meta"))
    finally:
        for h in handles + attn_hooks:
            h.remove()
    subs = sublayers(model)
    sub_linear = [sum(v for m, v in counts.items() if any(m is c for c in s.modules())) for s in subs]
    attention = []
    for i, s in enumerate(subs):
        attention.append(2.0 * tokens[i // 2] ** 2 * s.proj.in_features if i % 2 == 0 else 0.0)
    return MacProfile(sub_linear, attention, sum(counts.values()) - sum(sub_linear))
