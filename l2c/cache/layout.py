"""Where the cacheable sub-layers of each architecture live: an explicit table, not name-guessing.

Sub-layer index l = 2 * block + branch (branch 0 = attention, 1 = MLP), the order of the official router vectors
(spec §1.3). Adding an architecture (a diffusers transformer, say) means adding one entry to LAYOUTS.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from ..models import DiT, UViT


@dataclass(frozen=True)
class BlockLayout:
    blocks: Callable[[nn.Module], list[nn.Module]]  # blocks in execution order
    branches: tuple[str, ...] = ("attn", "mlp")  # child modules whose outputs are cached (pre-gate / pre-residual)


LAYOUTS: dict[type, BlockLayout] = {
    DiT: BlockLayout(lambda m: list(m.blocks)),
    UViT: BlockLayout(lambda m: m.blocks),  # in_blocks, mid_block, out_blocks
}


def layout_for(model: nn.Module) -> BlockLayout:
    for cls, layout in LAYOUTS.items():
        if isinstance(model, cls):
            return layout
    raise TypeError(f"no cache layout for {type(model).__name__}; add one to l2c.cache.layout.LAYOUTS")


def sublayers(model: nn.Module) -> list[nn.Module]:
    """Cacheable sub-layer modules in router order [block0.attn, block0.mlp, block1.attn, ...]."""
    layout = layout_for(model)
    return [getattr(block, name) for block in layout.blocks(model) for name in layout.branches]
