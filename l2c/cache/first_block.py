"""First-block residual caching (diffusers FirstBlockCache, cache-dit DBCache with one front block), at run time.

At every model call the first block runs. Its residual r = block_0(x) − x is compared with the residual of the last
call that computed every block (same call slot: U-ViT's two-call guidance keeps two states):

    relative change = mean|r − r_full| / mean|r_full|        (diffusers' `_should_compute_remaining_blocks`)

If the change is below the threshold, the other blocks are skipped and the output of the last block is the first
block's output plus the residual the remaining blocks added in that last full call; otherwise every block runs and
the stored residuals are refreshed. The decision is made per batch at run time and needs one device-to-host read
per call, which the sampler waits for: its cost is part of every latency this project measures.

Skipping a block here skips all of it (adaLN modulation, U-ViT's skip_linear, both sub-layers): the middle blocks
return their input, the last one adds the stored residual. Threshold 0 never skips (the comparison is strict), so the
result is the uncached one bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..models import create_model
from .layout import layout_for


@dataclass
class _SlotState:
    first_residual: torch.Tensor | None = None  # block_0(x) − x of the last full call
    tail_residual: torch.Tensor | None = None  # what blocks 1..L-1 added in the last full call
    first_out: torch.Tensor | None = None  # block_0 output of the current call


class FirstBlockCache:
    """Attach to a DiT / U-ViT: replaces each block's `forward` on the instance (state-dict keys unchanged).

    Use `wrap(denoise)` so that evaluation 0 starts a new run, and `detach()` (or a `with` block) afterwards.
    `full_calls` / `partial_calls` count the model calls that ran every block / only the first one.
    """

    def __init__(self, model: nn.Module, threshold: float):
        if not threshold >= 0:
            raise ValueError(f"the first-block threshold must be >= 0, got {threshold}")
        self.model, self.threshold = model, float(threshold)
        self.blocks = layout_for(model).blocks(model)
        self.states: dict[int, _SlotState] = {}
        self.slot = -1  # model call within the evaluation (the root pre-hook counts)
        self.skip = False  # decision of the current call
        self.full_calls = self.partial_calls = 0
        self._saved = []
        if any("forward" in b.__dict__ for b in self.blocks):
            raise RuntimeError("a block's forward is already replaced: detach the other run-time cache first")
        self._handle = model.register_forward_pre_hook(self._count_call)
        for index, block in enumerate(self.blocks):
            block.forward = self._dispatcher(index, block.forward)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.detach()

    def detach(self) -> None:
        if self._handle is None:
            return
        for block in self.blocks:
            del block.forward  # the class's forward shows through again
        self._handle.remove()
        self._handle = None

    def wrap(self, denoise):
        """denoise(x, t, step) -> same; evaluation 0 forgets the stored residuals (a new sampling run)."""

        def cached_denoise(x, t, step):
            if step == 0:
                self.states.clear()
            self.slot = -1
            return denoise(x, t, step)

        return cached_denoise

    def _count_call(self, module, args):
        self.slot += 1

    def _dispatcher(self, index: int, forward):
        last = len(self.blocks) - 1
        if index == 0:
            return lambda x, *a, **k: self._first(forward, x, *a, **k)
        if index == last:
            return lambda x, *a, **k: self._last(forward, x, *a, **k)
        return lambda x, *a, **k: x if self.skip else forward(x, *a, **k)

    def _first(self, forward, x, *args, **kwargs):
        out = forward(x, *args, **kwargs)
        state = self.states.setdefault(self.slot, _SlotState())
        residual = out - x
        self.skip = len(self.blocks) > 1 and self._unchanged(residual, state.first_residual)
        if self.skip:
            self.partial_calls += 1
        else:
            self.full_calls += 1
            state.first_residual = residual
        state.first_out = out
        return out

    def _unchanged(self, residual: torch.Tensor, previous: torch.Tensor | None) -> bool:
        if previous is None or previous.shape != residual.shape:
            return False
        # One host read per call: the sampler cannot go on before it knows which blocks run.
        change = (residual - previous).abs().mean() / previous.abs().mean().clamp_min(1e-12)
        return float(change) < self.threshold

    def _last(self, forward, x, *args, **kwargs):
        state = self.states[self.slot]
        if self.skip:
            return x + state.tail_residual  # x is the first block's output: the middle blocks passed it on
        out = forward(x, *args, **kwargs)
        state.tail_residual = out - state.first_out
        return out


def block_linear_macs(preset: str, **overrides) -> list[float]:
    """(blocks,) Linear MACs of each block for one call at batch 1 (paper convention), counted on a meta model."""
    with torch.device("meta"):
        shadow = create_model(preset, **overrides)
    blocks = layout_for(shadow).blocks(shadow)
    counts = [0.0] * len(blocks)

    def hook(index):
        return lambda mod, inp, out: counts.__setitem__(index, counts[index] + out.numel() * mod.in_features)

    handles = [
        m.register_forward_hook(hook(i)) for i, b in enumerate(blocks) for m in b.modules() if isinstance(m, nn.Linear)
    ]
    x = torch.zeros(1, shadow.in_channels, shadow.input_size, shadow.input_size, device="meta")
    try:
        shadow(x, torch.zeros(1, device="meta"), torch.zeros(1, dtype=torch.long, device="meta"))
    finally:
        for h in handles:
            h.remove()
    return counts
