"""Where the cacheable sub-layers of each architecture live: an explicit table, not name-guessing.

Sub-layer index l = branches * block + branch (DiT / U-ViT: branch 0 = attention, 1 = MLP), the order of the official
router vectors (docs/upstream.md §1.3). Adding an architecture (a diffusers transformer, say) means adding one
entry to LAYOUTS, or to DIFFUSERS_LAYOUTS for classes of the optional diffusers package.
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
    # Per branch, the child whose output only that branch reads (its pre-norm), or () where there is none: a plan
    # that does not compute the branch need not compute it either (DiT: norm1 = LayerNorm + adaLN modulate -> attn;
    # U-ViT: norm1 = LayerNorm -> attn).
    inputs: tuple[str, ...] = ()


LAYOUTS: dict[type, BlockLayout] = {
    DiT: BlockLayout(lambda m: list(m.blocks), inputs=("norm1", "norm2")),
    UViT: BlockLayout(lambda m: m.blocks, inputs=("norm1", "norm2")),  # in_blocks, mid_block, out_blocks
}


def _transformer_blocks(model: nn.Module) -> list[nn.Module]:
    return list(model.transformer_blocks)


# diffusers transformers, keyed by class name: diffusers is optional, so it is never imported here, and its module
# paths move between releases while the class names stay. A class matches when it, or a class it inherits from,
# comes from the diffusers package and has one of these names. Both build their blocks from BasicTransformerBlock,
# which applies the adaLN-Zero gates (DiT: gate_msa / gate_mlp; PixArt: the scale_shift_table gates) outside attn1
# and ff, so the cached output is the ungated one, as in our DiT. PixArt's cross-attention attn2 has no gate.
DIFFUSERS_LAYOUTS: dict[str, BlockLayout] = {
    "DiTTransformer2DModel": BlockLayout(_transformer_blocks, ("attn1", "ff")),
    "PixArtTransformer2DModel": BlockLayout(_transformer_blocks, ("attn1", "attn2", "ff")),
}


def _diffusers_layout(model: nn.Module) -> BlockLayout | None:
    for cls in type(model).__mro__:
        if cls.__module__.split(".")[0] == "diffusers" and cls.__name__ in DIFFUSERS_LAYOUTS:
            return DIFFUSERS_LAYOUTS[cls.__name__]
    return None


def layout_for(model: nn.Module) -> BlockLayout:
    for cls, layout in LAYOUTS.items():
        if isinstance(model, cls):
            return layout
    layout = _diffusers_layout(model)
    if layout is not None:
        return layout
    known = [c.__name__ for c in LAYOUTS] + [f"diffusers {name}" for name in DIFFUSERS_LAYOUTS]
    raise TypeError(
        f"no cache layout for {type(model).__name__} (supported: {', '.join(known)}); "
        "add one to l2c.cache.layout.LAYOUTS"
    )


def sublayers(model: nn.Module) -> list[nn.Module]:
    """Cacheable sub-layer modules in router order [block0.attn, block0.mlp, block1.attn, ...].

    Raises ValueError naming the block and child that is missing: a layout that finds nothing must not turn into a
    cache that silently skips nothing.
    """
    layout = layout_for(model)
    blocks = layout.blocks(model)
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no transformer blocks: nothing to cache")
    found = []
    for index, block in enumerate(blocks):
        for name in layout.branches:
            module = getattr(block, name, None)
            if not isinstance(module, nn.Module):
                children = ", ".join(n for n, _ in block.named_children())
                raise ValueError(
                    f"{type(model).__name__}: block {index} ({type(block).__name__}) has no sub-layer {name!r} "
                    f"(it is {type(module).__name__}; the block's children are: {children})"
                )
            found.append(module)
    return found


def sublayer_inputs(model: nn.Module) -> list[nn.Module] | None:
    """The pre-norm feeding each cacheable sub-layer, in router order, or None where the layout names none
    (diffusers' DiT: its norm1 also computes the block's adaLN modulation, read by more than attn1)."""
    layout = layout_for(model)
    if not layout.inputs:
        return None
    return [getattr(block, name) for block in layout.blocks(model) for name in layout.inputs]
