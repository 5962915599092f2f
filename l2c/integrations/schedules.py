"""Plan interchange with the other static-cache tools: SmoothCache JSON schedules and cache-dit step masks.

SmoothCache (Roblox/SmoothCache, `SmoothCacheHelper`): a JSON object mapping a component to a list of 0/1, one
per sampling step, 1 = run the component, 0 = reuse its last computed output. A key is "<component>-<block>"
(one block, e.g. "attn-3") or "<component>" (every block); the block-specific key wins, components without a key
always run, and a component with nothing cached yet runs whatever its list says. Components are the child names
inside each block: "attn" / "mlp" for the original DiT, "attn1" / "ff" (and PixArt's "attn2") for diffusers. Note
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

from ..cache.layout import layout_for
from ..cache.plan import CachePlan


def components_of(model: nn.Module) -> tuple[str, ...]:
    """The block's component names in router order, e.g. ("attn1", "ff") for diffusers' DiT: SmoothCache's keys."""
    return layout_for(model).branches


# --------------------------------------------------------------------------------------------- SmoothCache
def to_smoothcache(plan: CachePlan, branches: tuple[str, ...] = ("attn", "mlp"), shared: bool = False) -> dict:
    """SmoothCache schedule of `plan`; `branches` = the block's component names in router order.

    shared=True writes one "<component>" list per component; the plan must then use the same schedule in every
    block (SmoothCache's per-layer-type form), else ValueError.
    """
    per_block = _per_block(plan, len(branches))  # (S, blocks, branches)
    if shared:
        if not bool((per_block == per_block[:, :1]).all()):
            raise ValueError("shared=True needs the same schedule in every block; this plan differs across blocks")
        return {name: per_block[:, 0, j].int().tolist() for j, name in enumerate(branches)}
    return {
        f"{name}-{b}": per_block[:, b, j].int().tolist()
        for b in range(per_block.shape[1])
        for j, name in enumerate(branches)
    }


def from_smoothcache(schedule: dict | str | Path, num_blocks: int, branches: tuple[str, ...] = ("attn", "mlp")):
    """CachePlan of a SmoothCache schedule (dict or JSON file) for a model with `num_blocks` blocks.

    Unknown keys raise (a typo would otherwise cache nothing, silently); step 0 is computed whatever the list says,
    as SmoothCache does when nothing is cached yet.
    """
    if not isinstance(schedule, dict):
        schedule = json.loads(Path(schedule).read_text())
    lengths = {len(v) for v in schedule.values()}
    if len(lengths) != 1:
        raise ValueError(f"SmoothCache lists of different lengths {sorted(lengths)}: one entry per step is needed")
    known = set(branches) | {f"{name}-{b}" for name in branches for b in range(num_blocks)}
    unknown = sorted(set(schedule) - known)
    if unknown:
        raise ValueError(
            f"SmoothCache keys {unknown} name no sub-layer of a {num_blocks}-block model with components {branches}"
        )
    steps = lengths.pop()
    compute = torch.ones(steps, num_blocks, len(branches), dtype=torch.bool)
    for b in range(num_blocks):
        for j, name in enumerate(branches):
            values = schedule.get(f"{name}-{b}", schedule.get(name))
            if values is not None:
                compute[:, b, j] = torch.tensor([_bit(v) for v in values], dtype=torch.bool)
    compute[0] = True
    return CachePlan(compute.reshape(steps, -1))


def save_smoothcache(plan: CachePlan, path: str | Path, branches: tuple[str, ...] = ("attn", "mlp"), **kw) -> None:
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
def _per_block(plan: CachePlan, num_branches: int) -> torch.Tensor:
    if plan.num_sublayers % num_branches:
        raise ValueError(f"{plan.num_sublayers} sub-layers are not a whole number of {num_branches}-branch blocks")
    return plan.compute.reshape(plan.num_steps, -1, num_branches)


def _bit(value) -> bool:
    if value not in (0, 1, True, False):
        raise ValueError(f"schedule entries are 0 or 1, got {value!r}")
    return bool(value)
