"""Block shortcuts: a block none of whose sub-layers is computed at an evaluation runs as its gated residual adds only.

When the plan computes none of a block's sub-layers, the hooked block still runs everything around them: its
pre-norms, the modulation of the norms it skips, the concatenations that feed a fused projection, the stand-ins of
the skipped inputs. None of it reaches the output but the gates. On a small FLUX (flux-mnist, batch 16 on a 2-core
CPU) a FLUX single block with its fused sub-layer reused still took about 1 ms a call against 11 ms computed, and a
plan that reuses every sub-layer ran at 6x where the blocks' bare residual adds would allow 20x: that overhead is what
fewer sampling steps do not pay.

A shortcut is the block's own forward with the sub-layers' outputs given, transcribed for one block class: the same
gates from the same modulation Linear, the same multiplies and adds in the same order, so its output is bit-identical
to the hooked block's (tests/test_shortcuts.py). It is keyed by class name (diffusers is never imported here) and
guarded by a digest of the forward sources it transcribes: under any other diffusers version whose forwards differ
the block simply runs hooked, as before.

Each entry: the block's branches in layout order (l2c.cache.layout), the classes whose forward sources it transcribes
(the block and its gate-emitting norm) with their digests, and `run(block, outputs, args, kwargs)`.
"""

from __future__ import annotations

import hashlib
import inspect
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .layout import layout_for


@dataclass(frozen=True)
class Shortcut:
    branches: tuple[str, ...]  # the block's sub-layer children, in layout order: `outputs` come in this order
    norms: tuple[str, ...]  # the gate-emitting norms the shortcut reads (their class forward is transcribed too)
    digests: dict[str, str]  # class name -> sha256[:16] of its forward's source, for every transcribed class
    run: Callable


def _argument(args, kwargs, position: int, name: str):
    return args[position] if len(args) > position else kwargs.get(name)


def _clip16(x: torch.Tensor) -> torch.Tensor:
    return x.clip(-65504, 65504) if x.dtype == torch.float16 else x


def _flux_single(block, outputs, args, kwargs):
    """FluxSingleTransformerBlock: residual + gate * proj_out(...) over [text; image], split again."""
    (projected,) = outputs
    hidden_states = _argument(args, kwargs, 0, "hidden_states")
    encoder_hidden_states = _argument(args, kwargs, 1, "encoder_hidden_states")
    temb = _argument(args, kwargs, 2, "temb")
    norm = block.norm
    gate = norm.linear(norm.silu(temb)).chunk(3, dim=1)[2].unsqueeze(1)
    text = encoder_hidden_states.shape[1]
    # Element-wise, so the two parts computed apart equal the concatenated computation bit for bit.
    encoder_hidden_states = _clip16(encoder_hidden_states + gate * projected[:, :text])
    hidden_states = _clip16(hidden_states + gate * projected[:, text:])
    return encoder_hidden_states, hidden_states


def _flux_double(block, outputs, args, kwargs):
    """FluxTransformerBlock: each stream gets its gated attention output, then its gated feed-forward output."""
    attention, ff_output, context_ff_output = outputs
    hidden_states = _argument(args, kwargs, 0, "hidden_states")
    encoder_hidden_states = _argument(args, kwargs, 1, "encoder_hidden_states")
    temb = _argument(args, kwargs, 2, "temb")
    _, _, gate_msa, _, _, gate_mlp = block.norm1.linear(block.norm1.silu(temb)).chunk(6, dim=1)
    _, _, c_gate_msa, _, _, c_gate_mlp = block.norm1_context.linear(block.norm1_context.silu(temb)).chunk(6, dim=1)
    attn_output, context_attn_output = attention[0], attention[1]
    hidden_states = hidden_states + gate_msa.unsqueeze(1) * attn_output
    hidden_states = hidden_states + gate_mlp.unsqueeze(1) * ff_output
    if len(attention) == 3:  # an IP-adapter's image-prompt attention output
        hidden_states = hidden_states + attention[2]
    encoder_hidden_states = encoder_hidden_states + c_gate_msa.unsqueeze(1) * context_attn_output
    encoder_hidden_states = _clip16(encoder_hidden_states + c_gate_mlp.unsqueeze(1) * context_ff_output)
    return encoder_hidden_states, hidden_states


# Digests of the forwards as of diffusers 0.42.1.
SHORTCUTS: dict[str, Shortcut] = {
    "FluxSingleTransformerBlock": Shortcut(
        ("proj_out",),
        ("norm",),
        {"FluxSingleTransformerBlock": "57350a6dab842b40", "AdaLayerNormZeroSingle": "d48dfb2b1e75e64f"},
        _flux_single,
    ),
    "FluxTransformerBlock": Shortcut(
        ("attn", "ff", "ff_context"),
        ("norm1", "norm1_context"),
        {"FluxTransformerBlock": "0b184cbe172708b6", "AdaLayerNormZero": "93374820c014f812"},
        _flux_double,
    ),
}

_DIGESTS: dict[type, str | None] = {}


def forward_digest(cls: type) -> str | None:
    """sha256[:16] of the source of `cls.forward` (None where it has none to read)."""
    if cls not in _DIGESTS:
        try:
            _DIGESTS[cls] = hashlib.sha256(inspect.getsource(cls.forward).encode()).hexdigest()[:16]
        except (OSError, TypeError):
            _DIGESTS[cls] = None
    return _DIGESTS[cls]


def shortcut_for(block: nn.Module, branches: tuple[str, ...]) -> Shortcut | None:
    """The shortcut of this block, or None: none for its class, other branches than it was written for (a variant
    with an optional child missing), a norm that embeds the timestep itself, or forwards that differ from those
    transcribed."""
    shortcut = SHORTCUTS.get(type(block).__name__)
    if shortcut is None or branches != shortcut.branches:
        return None
    classes = [type(block), *(type(getattr(block, name, None)) for name in shortcut.norms)]
    if any(getattr(getattr(block, name), "emb", None) is not None for name in shortcut.norms):
        return None  # AdaLayerNormZero with its own timestep embedding: not what FLUX builds
    digests = {cls.__name__: forward_digest(cls) for cls in classes}
    return shortcut if digests == shortcut.digests else None


def shortcut_blocks(model: nn.Module, subs) -> list[tuple[int, nn.Module, Shortcut, list[int]]]:
    """(block position, block, its shortcut, its sub-layer indices in `subs`) of every block of the model that has a
    shortcut; `subs` is l2c.cache.layout.describe(model)."""
    members: dict[int, list[int]] = {}
    for index, sub in enumerate(subs):
        members.setdefault(sub.block, []).append(index)
    found = []
    for b, block in enumerate(layout_for(model).blocks(model)):
        indices = members.get(b)
        shortcut = shortcut_for(block, tuple(subs[i].branch for i in indices)) if indices else None
        if shortcut is not None:
            found.append((b, block, shortcut, indices))
    return found


def norms_unwrapped(block: nn.Module, shortcut: Shortcut) -> bool:
    """Whether the norms the shortcut reads still run their class forward (another tool may have wrapped one since:
    then the block runs hooked, through that wrapper)."""
    return not any("forward" in getattr(block, name).__dict__ for name in shortcut.norms)
