"""Plan interchange with the other static-cache tools: SmoothCache JSON schedules and cache-dit step masks.

SmoothCache (Roblox/SmoothCache, `SmoothCacheHelper`): a JSON object mapping a component to a list of 0/1, one
per sampling step, 1 = run the component, 0 = reuse its last computed output. A key is "<component>-<block>"
(one block, e.g. "attn-3") or "<component>" (every block); the block-specific key wins, components without a key
always run, and a component with nothing cached yet runs whatever its list says. Components are the child names
inside each block: "attn" / "mlp" for the original DiT, "attn1" / "ff" (and PixArt's "attn2") for diffusers, and in
general each sub-layer's branch (l2c.cache.layout.describe); the block number is the sub-layer's block index over
all block groups in execution order (FLUX: single_transformer_blocks.0 follows the 19 double blocks as block 19),
which keeps keys unique where two groups use the same child name (FLUX.2's "attn"). Note
that SmoothCache's `DiffuserCacheHelper` wraps only "attn1"; "ff" entries take effect with a `SmoothCacheHelper`
built with components_to_wrap=["attn1", "ff"]. Its step counter counts calls per module, so one call per step
(batched guidance) as here. Our plans reuse "the output of the last step that computed it", the same rule.

cache-dit (`DBCacheConfig(steps_computation_mask=...)`): a list of 0/1 per step, 1 = compute the step, 0 = the
step may be cached (statically, or under its dynamic policy, as `steps_computation_policy` says). It is step-level
only, so a plan converts when each of its steps computes all sub-layers or none.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from ..cache.layout import Sublayer, describe
from ..cache.plan import CachePlan

# What names the sub-layers: the components of every block, in router order (all blocks alike, e.g. ("attn1", "ff")),
# or the model's sub-layer list (describe(model)), or the model itself.
Components = tuple[str, ...] | list[Sublayer] | nn.Module


def components_of(model: nn.Module) -> tuple[str, ...]:
    """The model's component names (sub-layer branches) in order of first appearance, e.g. ("attn1", "ff") for
    diffusers' DiT, ("attn", "ff", "ff_context", "proj_out") for FLUX: SmoothCache's keys."""
    return tuple(dict.fromkeys(s.branch for s in describe(model)))


# --------------------------------------------------------------------------------------------- SmoothCache
def to_smoothcache(plan: CachePlan, branches: Components = ("attn", "mlp"), shared: bool = False) -> dict:
    """SmoothCache schedule of `plan`; `branches`: the block's component names in router order (every block has
    them all), or the model's sub-layers (describe(model), or the model) for any layout.

    shared=True writes one "<component>" list per component; the plan must then use the same schedule in every
    block that has it (SmoothCache's per-layer-type form), else ValueError.
    """
    keys = _keys(branches, plan.num_sublayers)
    if shared:
        out: dict[str, list[int]] = {}
        for i, (name, _) in enumerate(keys):
            column = plan.compute[:, i].int().tolist()
            if out.setdefault(name, column) != column:
                raise ValueError("shared=True needs the same schedule in every block; this plan differs across blocks")
        return out
    return {f"{name}-{b}": plan.compute[:, i].int().tolist() for i, (name, b) in enumerate(keys)}


def from_smoothcache(
    schedule: dict | str | Path,
    num_blocks: int | list[Sublayer] | nn.Module,
    branches: tuple[str, ...] = ("attn", "mlp"),
):
    """CachePlan of a SmoothCache schedule (dict or JSON file) for a model with `num_blocks` blocks of `branches`
    each, or for the model's sub-layers: pass describe(model), or the model, as `num_blocks` (`branches` is then
    not read).

    Unknown keys raise (a typo would otherwise cache nothing, silently); step 0 is computed whatever the list says,
    as SmoothCache does when nothing is cached yet.
    """
    if not isinstance(schedule, dict):
        schedule = json.loads(Path(schedule).read_text())
    lengths = {len(v) for v in schedule.values()}
    if len(lengths) != 1:
        raise ValueError(f"SmoothCache lists of different lengths {sorted(lengths)}: one entry per step is needed")
    if isinstance(num_blocks, int):
        keys = _keys(branches, num_blocks * len(branches))
        model = f"a {num_blocks}-block model with components {branches}"
    else:
        keys = _keys(num_blocks, None)
        names = tuple(dict.fromkeys(name for name, _ in keys))
        model = f"a model of {len({b for _, b in keys})} blocks with components {names}"
    known = {name for name, _ in keys} | {f"{name}-{b}" for name, b in keys}
    unknown = sorted(set(schedule) - known)
    if unknown:
        raise ValueError(f"SmoothCache keys {unknown} name no sub-layer of {model}")
    steps = lengths.pop()
    compute = torch.ones(steps, len(keys), dtype=torch.bool)
    for i, (name, b) in enumerate(keys):
        values = schedule.get(f"{name}-{b}", schedule.get(name))
        if values is not None:
            compute[:, i] = torch.tensor([_bit(v) for v in values], dtype=torch.bool)
    compute[0] = True
    return CachePlan(compute)


def save_smoothcache(plan: CachePlan, path: str | Path, branches: Components = ("attn", "mlp"), **kw) -> None:
    """Write to_smoothcache(plan) as JSON (atomically: temporary file, then rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(to_smoothcache(plan, branches, **kw)))
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------- cache-dit
def to_cache_dit_mask(plan: CachePlan, partial: str = "error") -> list[int]:
    """cache-dit steps_computation_mask: 1 where a step computes every sub-layer, 0 where it computes none.

    partial: what a step computing only some sub-layers becomes: "error" (default; the learned plan does not fit
    a step-level tool), "compute" (1: keeps quality, loses that step's savings) or "cache" (0).
    """
    if partial not in ("error", "compute", "cache"):
        raise ValueError(f"partial must be 'error', 'compute' or 'cache', got {partial!r}")
    full, none = plan.compute.all(1), ~plan.compute.any(1)
    mixed = [s for s in range(plan.num_steps) if not (full[s] or none[s])]
    if mixed and partial == "error":
        raise ValueError(
            f"steps {mixed[:8]}{'...' if len(mixed) > 8 else ''} compute only some sub-layers: cache-dit masks are "
            "step-level; pass partial='compute' or 'cache' to round them"
        )
    return [1 if full[s] or (s in mixed and partial == "compute") else 0 for s in range(plan.num_steps)]


def from_cache_dit_mask(mask: list[int], num_sublayers: int) -> CachePlan:
    """The step-level CachePlan of a cache-dit mask (0 = reuse every sub-layer at that step)."""
    rows = torch.tensor([_bit(v) for v in mask], dtype=torch.bool)
    return CachePlan(rows[:, None].expand(len(mask), num_sublayers).clone())


# --------------------------------------------------------------------------------------------- helpers
def _keys(components: Components, num_sublayers: int | None) -> list[tuple[str, int]]:
    """(component, block) of each sub-layer, plan order; `num_sublayers`: the plan's count, checked (None: any)."""
    if isinstance(components, nn.Module):
        components = describe(components)
    if components and isinstance(components[0], Sublayer):
        keys = [(s.branch, s.block) for s in components]
    else:  # every block has these components, in this order
        if num_sublayers is None or num_sublayers % len(components):
            raise ValueError(f"{num_sublayers} sub-layers are not a whole number of {len(components)}-branch blocks")
        keys = [(name, b) for b in range(num_sublayers // len(components)) for name in components]
    if num_sublayers is not None and len(keys) != num_sublayers:
        raise ValueError(f"the plan has {num_sublayers} sub-layers per step, the model {len(keys)}")
    return keys


def _bit(value) -> bool:
    if value not in (0, 1, True, False):
        raise ValueError(f"schedule entries are 0 or 1, got {value!r}")
    return bool(value)
