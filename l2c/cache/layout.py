"""Where the cacheable sub-layers of each architecture live: an explicit table, not name-guessing.

A model's layout is a list of block groups in execution order (FLUX: `transformer_blocks`, then
`single_transformer_blocks`). Each group names, per block class, its branches: the children whose output is cached.
Every branch's child returns the *ungated* update (the block applies its gate and residual outside the child), so
reusing or forecasting the child's output is exact bookkeeping, not surgery. A branch may be absent in some blocks
(SD3's `attn2` outside its dual-attention layers, its last block's `ff_context`): it is then simply not a sub-layer
there.

`describe(model)` flattens the layout into one list of named sub-layers, e.g.

    transformer_blocks.0.attn          joint_attn   (returns (image, text): one sub-layer, its tuple kept)
    transformer_blocks.0.ff            mlp
    transformer_blocks.0.ff_context    mlp_context
    single_transformer_blocks.0.proj_out  fused     (attn ‖ proj_mlp -> proj_out: skipped together)

and that list, in that order, is what plans, routers, MAC profiles, reports and schedule interchange index. For DiT
and U-ViT it is [block0.attn, block0.mlp, block1.attn, ...], the order of the official router vectors
(docs/upstream.md §1.3).

Adding an architecture means adding one entry to LAYOUTS (our models) or DIFFUSERS_LAYOUTS (diffusers classes, by
name: diffusers is optional and never imported here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from ..models import DiT, UViT

KINDS = ("self_attn", "joint_attn", "cross_attn", "mlp", "mlp_context", "fused")
ATTENTION_KINDS = ("self_attn", "joint_attn", "cross_attn")


@dataclass(frozen=True)
class Branch:
    """One cacheable child of a block.

    child:    the attribute holding the module whose output is cached (ungated, before the residual).
    kind:     one of KINDS (reports and heat-maps group by it).
    inputs:   children that only this branch reads (pure pre-norms, or the parallel producers of a fused output
              projection): while the branch is not computed they are not computed either. A module listed by
              several branches runs while any of them computes. Never a norm that also emits gates.
    optional: the child may be missing or None in some blocks of the class.
    """

    child: str
    kind: str
    inputs: tuple[str, ...] = ()
    optional: bool = False

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown sub-layer kind {self.kind!r}; use one of {KINDS}")


@dataclass(frozen=True)
class BlockGroup:
    """Blocks of one container, in execution order, and their branches.

    blocks:   the container's attribute name on the model ("transformer_blocks"), or a function model -> blocks.
    branches: the branches of every block, or {block class name: branches} where a container holds several block
              classes (HunyuanVideo's token-replace variants share a container with the plain ones).
    """

    blocks: str | Callable[[nn.Module], list[nn.Module]]
    branches: tuple[Branch, ...] | dict[str, tuple[Branch, ...]]

    def modules(self, model: nn.Module) -> list[nn.Module]:
        if callable(self.blocks):
            return list(self.blocks(model))
        container = getattr(model, self.blocks, None)
        return [] if container is None else list(container)

    def branches_of(self, block: nn.Module) -> tuple[Branch, ...]:
        if not isinstance(self.branches, dict):
            return self.branches
        for cls in type(block).__mro__:
            if cls.__name__ in self.branches:
                return self.branches[cls.__name__]
        raise ValueError(
            f"block class {type(block).__name__} has no branches in this layout (known: {', '.join(self.branches)})"
        )

    def name(self, model: nn.Module) -> str:
        return self.blocks if isinstance(self.blocks, str) else "blocks"


@dataclass(frozen=True)
class ModelLayout:
    groups: tuple[BlockGroup, ...]

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        """Every block of every group, in execution order."""
        return [block for group in self.groups for block in group.modules(model)]


class BlockLayout(ModelLayout):
    """The single-group layout of a plain DiT-like model: one block list, the same branches in every block.

    `branches` are child names, `inputs` their pre-norms aligned with them (or () for none), as in our DiT / U-ViT.
    Branch kinds: the first is attention ("self_attn"), the rest MLPs.
    """

    def __init__(self, blocks, branches=("attn", "mlp"), inputs=()):
        if inputs and len(inputs) != len(branches):
            raise ValueError(f"inputs {inputs} must name one pre-norm per branch {branches}, or none")
        spec = tuple(
            Branch(name, "self_attn" if i == 0 else "mlp", (inputs[i],) if inputs else ())
            for i, name in enumerate(branches)
        )
        object.__setattr__(self, "block_fn", blocks)
        object.__setattr__(self, "branches", tuple(branches))
        object.__setattr__(self, "inputs", tuple(inputs))
        object.__setattr__(self, "groups", (BlockGroup(blocks, spec),))


@dataclass(frozen=True)
class Sublayer:
    """One entry of the flat sub-layer list (see the module docstring)."""

    name: str  # "single_transformer_blocks.7.proj_out"
    kind: str
    block: int  # the block's position over all groups, in execution order
    branch: str  # the child's attribute name
    module: nn.Module
    inputs: tuple[nn.Module, ...]


# ---------------------------------------------------------------------------------------------------------- tables

LAYOUTS: dict[type, ModelLayout] = {
    DiT: BlockLayout(lambda m: list(m.blocks), inputs=("norm1", "norm2")),
    UViT: BlockLayout(lambda m: m.blocks, inputs=("norm1", "norm2")),  # in_blocks, mid_block, out_blocks
}


def _group(container: str, *branches: Branch) -> BlockGroup:
    return BlockGroup(container, tuple(branches))


# Branch specs shared by several models. In every block below the gates and residuals are applied in the block's
# forward, outside these children (read from diffusers 0.42.1; ../shared docs: diffusers-layouts.md).
_BASIC_DIT = (Branch("attn1", "self_attn"), Branch("ff", "mlp"))  # DiT's BasicTransformerBlock: norm1 emits gates
_BASIC_TEXT = (  # PixArt / Sana / LTX: cross-attention reads the raw stream (no pre-norm)
    Branch("attn1", "self_attn", ("norm1",)),
    Branch("attn2", "cross_attn"),
    Branch("ff", "mlp", ("norm2",)),
)
# Double-stream blocks (FLUX, SD3, HunyuanVideo): a joint attention returning (image, text) in one computation,
# then one FF per stream. norm1 / norm1_context emit the gates (never skipped); norm2 / norm2_context are plain.
_DOUBLE = (
    Branch("attn", "joint_attn"),
    Branch("ff", "mlp", ("norm2",)),
    Branch("ff_context", "mlp_context", ("norm2_context",)),
)
# FLUX-style single blocks: attention ‖ MLP feed one output projection, gated outside it. One fused sub-layer
# (proj_out) whose producers are bypassed with it: skipping it saves attn + proj_mlp + proj_out, which two
# separate branches (attn, proj_mlp) never could, as proj_out (5d·d of the block's ~12d·d MACs per token) would
# always run; and its cache point is d wide, not 5d.
_PARALLEL = (Branch("proj_out", "fused", ("attn", "proj_mlp", "act_mlp")),)

_FLUX = ModelLayout((_group("transformer_blocks", *_DOUBLE), _group("single_transformer_blocks", *_PARALLEL)))
_HUNYUAN_VIDEO = _FLUX  # same children; its single-block attn returns (image, text), bypassed as a tuple
_SD3 = ModelLayout(
    (
        _group(
            "transformer_blocks",
            Branch("attn", "joint_attn"),
            Branch("attn2", "self_attn", optional=True),  # SD3.5's dual-attention layers only
            Branch("ff", "mlp", ("norm2",)),
            Branch("ff_context", "mlp_context", ("norm2_context",), optional=True),  # absent in the last block
        ),
    )
)
_FLUX2 = ModelLayout(
    (
        _group("transformer_blocks", *_DOUBLE),
        # Flux2ParallelSelfAttention fuses QKV + MLP-in and attention + MLP-out in one module: one sub-layer.
        _group("single_transformer_blocks", Branch("attn", "fused", ("norm",))),
    )
)
_WAN = ModelLayout(
    (
        _group(
            "blocks",
            Branch("attn1", "self_attn", ("norm1",)),
            Branch("attn2", "cross_attn", ("norm2",)),
            Branch("ffn", "mlp", ("norm3",)),
        ),
    )
)
_QWEN = ModelLayout(
    (
        _group(
            "transformer_blocks",
            Branch("attn", "joint_attn", ("img_norm1", "txt_norm1")),
            Branch("img_mlp", "mlp", ("img_norm2",)),
            Branch("txt_mlp", "mlp_context", ("txt_norm2",)),
        ),
    )
)
_COGVIDEOX = ModelLayout(  # norm1 / norm2 are CogVideoXLayerNormZero (gates): not skippable; one FF for both streams
    (_group("transformer_blocks", Branch("attn1", "joint_attn"), Branch("ff", "mlp")),)
)
_Z_IMAGE = ModelLayout(  # post-norms (attention_norm2, ffn_norm2) sit between the child and the gate: recomputed
    (
        _group(
            "layers",
            Branch("attention", "self_attn", ("attention_norm1",)),
            Branch("feed_forward", "mlp", ("ffn_norm1",)),
        ),
    )
)

DIFFUSERS_LAYOUTS: dict[str, ModelLayout] = {
    "DiTTransformer2DModel": ModelLayout((_group("transformer_blocks", *_BASIC_DIT),)),
    "PixArtTransformer2DModel": ModelLayout((_group("transformer_blocks", *_BASIC_TEXT),)),
    "SanaTransformer2DModel": ModelLayout((_group("transformer_blocks", *_BASIC_TEXT),)),
    "LTXVideoTransformer3DModel": ModelLayout((_group("transformer_blocks", *_BASIC_TEXT),)),
    "FluxTransformer2DModel": _FLUX,
    "Flux2Transformer2DModel": _FLUX2,
    "SD3Transformer2DModel": _SD3,
    "WanTransformer3DModel": _WAN,
    "WanVACETransformer3DModel": _WAN,  # the Wan blocks; the vace_blocks hints are not cached
    "SkyReelsV2Transformer3DModel": _WAN,
    "QwenImageTransformer2DModel": _QWEN,
    "HunyuanVideoTransformer3DModel": _HUNYUAN_VIDEO,
    "CogVideoXTransformer3DModel": _COGVIDEOX,
    "ZImageTransformer2DModel": _Z_IMAGE,
}


# ---------------------------------------------------------------------------------------------------------- lookup


def _diffusers_layout(model: nn.Module) -> ModelLayout | None:
    for cls in type(model).__mro__:
        if cls.__module__.split(".")[0] == "diffusers" and cls.__name__ in DIFFUSERS_LAYOUTS:
            return DIFFUSERS_LAYOUTS[cls.__name__]
    return None


def supported_models() -> list[str]:
    return [c.__name__ for c in LAYOUTS] + [f"diffusers {name}" for name in DIFFUSERS_LAYOUTS]


def layout_for(model: nn.Module) -> ModelLayout:
    for cls, layout in LAYOUTS.items():
        if isinstance(model, cls):
            return layout
    layout = _diffusers_layout(model)
    if layout is not None:
        return layout
    raise TypeError(
        f"no cache layout for {type(model).__name__} (supported: {', '.join(supported_models())}); "
        "add one to l2c.cache.layout.LAYOUTS"
    )


def _child(block: nn.Module, name: str) -> nn.Module | None:
    module = getattr(block, name, None)
    return module if isinstance(module, nn.Module) else None


def _missing(model: nn.Module, index: int, block: nn.Module, name: str) -> ValueError:
    children = ", ".join(n for n, _ in block.named_children())
    found = type(getattr(block, name, None)).__name__
    return ValueError(
        f"{type(model).__name__}: block {index} ({type(block).__name__}) has no sub-layer {name!r} "
        f"(it is {found}; the block's children are: {children})"
    )


def describe(model: nn.Module) -> list[Sublayer]:
    """The flat, named list of the model's cacheable sub-layers (the order every plan and router indexes).

    Raises ValueError naming the block and child that is missing (unless its branch is optional): a layout that finds
    nothing must not turn into a cache that silently skips nothing.
    """
    layout = layout_for(model)
    found: list[Sublayer] = []
    index = 0
    for group in layout.groups:
        prefix = group.name(model)
        for position, block in enumerate(group.modules(model)):
            for branch in group.branches_of(block):
                module = _child(block, branch.child)
                if module is None:
                    if branch.optional:
                        continue
                    raise _missing(model, index, block, branch.child)
                inputs = tuple(m for m in (_child(block, name) for name in branch.inputs) if m is not None)
                name = f"{prefix}.{position}.{branch.child}"
                found.append(Sublayer(name, branch.kind, index, branch.child, module, inputs))
            index += 1
    if not found:
        raise ValueError(f"{type(model).__name__} has no transformer blocks: nothing to cache")
    return found


def sublayers(model: nn.Module) -> list[nn.Module]:
    """Cacheable sub-layer modules in plan order (DiT / U-ViT: [block0.attn, block0.mlp, block1.attn, ...])."""
    return [s.module for s in describe(model)]


def sublayer_inputs(model: nn.Module) -> list[tuple[nn.Module, ...]] | None:
    """The skippable producers feeding each sub-layer (plan order), or None where the layout names none."""
    inputs = [s.inputs for s in describe(model)]
    return inputs if any(inputs) else None


def sublayer_names(model: nn.Module) -> list[str]:
    return [s.name for s in describe(model)]


def sublayer_kinds(model: nn.Module) -> list[str]:
    return [s.kind for s in describe(model)]


def sublayer_blocks(model: nn.Module) -> list[int]:
    """Each sub-layer's block index (plan order; DiT / U-ViT: [0, 0, 1, 1, ...], FLUX: 3 per double block, then 1)."""
    return [s.block for s in describe(model)]


def group_by_block(blocks: list[int]) -> list[list[int]]:
    """The sub-layer indices of each block, in block order, from each sub-layer's block index (`sublayer_blocks`)."""
    groups: dict[int, list[int]] = {}
    for index, block in enumerate(blocks):
        groups.setdefault(block, []).append(index)
    return [groups[b] for b in sorted(groups)]


def pairs(num_sublayers: int) -> list[int]:
    """The block index of each sub-layer in our DiT / U-ViT order (attention, MLP per block): [0, 0, 1, 1, ...].
    For plans and routers made without a model at hand; anything with a model reads `sublayer_blocks(model)`."""
    if num_sublayers % 2:
        raise ValueError(
            f"{num_sublayers} sub-layers are not (attention, MLP) pairs: pass the model's layout "
            "(l2c.cache.layout.describe) for its blocks and kinds"
        )
    return [i // 2 for i in range(num_sublayers)]


def pair_kinds(num_sublayers: int) -> list[str]:
    """The kinds in our DiT / U-ViT order, (self_attn, mlp) per block; see `pairs`."""
    return ["self_attn", "mlp"] * len(group_by_block(pairs(num_sublayers)))


def describe_preset(preset: str, **overrides) -> list[Sublayer]:
    """`describe` of a model preset (l2c.models.MODELS), built on the meta device: no weights, no memory."""
    import torch

    from ..models import create_model

    with torch.device("meta"):
        return describe(create_model(preset, **overrides))
