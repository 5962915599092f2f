"""Forecasts of several sub-layers as one tensor (CacheEngine(..., grouped=True)).

Sub-layers whose plan columns are identical (computed at the same evaluations, the same action elsewhere: every
sub-layer of an interval plan) hold their histories at the same positions, so each forecast is the same linear
combination of their histories: f0 + k·F1 (+ c·F2, or FoCa's a·F1 + b·S). A FlatGroup keeps those histories as
slices of one flat buffer per term, allocated once and updated in place, and makes the forecast of the whole group in
one op per term at its first member's call; every member returns its view. The arithmetic per element is that of the
per-sub-layer form (l2c.cache.forecast.SublayerHistory), so the outputs are equal.

What it costs: a computed output is copied into its slice of f0 (the per-sub-layer form keeps the tensor the
sub-layer returned), one element-wise pass per computation; what it saves: one op per term and member per forecast
(launches on a GPU, dispatch on a CPU). The first computation keeps the outputs themselves and lays out the buffers.
"""

from __future__ import annotations

import torch

from .forecast import SublayerHistory, _nbytes


class FlatGroup:
    """The histories of `members` (sub-layer indices with identical plan columns) in one model-call slot."""

    def __init__(self, members: list[int], newton: bool, pos):
        self.members = members
        self.core = SublayerHistory(newton, pos)  # the whole group's history, on the flat buffers
        self.slices: dict[int, tuple[int, int, torch.Size]] = {}  # member -> (start, end, shape) in the buffers
        self.stash: dict[int, torch.Tensor] = {}  # outputs of the first computation, until every member is in
        self.pending: set[int] = set()  # members not yet pushed at the evaluation being computed
        self.step = self.order = None  # the evaluation being computed and the order it keeps
        self.slope_update = False  # whether FoCa's S is updated at this computation
        self.forecast_at = None  # the evaluation whose forecast is in core.out
        self.flat_ok = True  # False: the members' outputs cannot share a buffer (the runner splits the group)
        self.live = set(members)  # members whose histories the runner still holds

    def nbytes(self) -> int:
        return self.core.nbytes() + sum(_nbytes(t) for t in self.stash.values())

    # ------------------------------------------------------------------ computing
    def push(self, index: int, out: torch.Tensor, j: int, want: int) -> None:
        core = self.core
        if self.step != j:
            if self.pending:
                raise RuntimeError(f"sub-layers {sorted(self.pending)} were not called at evaluation {self.step}")
            self.step, self.pending = j, set(self.members)
            self.order = min(want, core.order + 1)
            self.slope_update = self.order >= 1 and core.roll is not None and core.order >= 1
            self.slope_from_f1 = core.slope is None  # S = F1 until now (SublayerHistory._update_slope)
            if core.f0 is not None:
                self._allocate(core.f0)
        self.pending.discard(index)
        out = out.detach()
        if core.f0 is None:  # the first computation: the layout is known once every member has returned
            self.stash[index] = out
        else:
            self._update(index, out)
        if not self.pending:
            self._finish(j)

    def _allocate(self, like: torch.Tensor) -> None:
        core = self.core
        if self.order >= 1 and core.f1 is None:
            core.f1 = torch.empty_like(like)
        if self.order >= 2 and core.f2 is None:
            core.f2 = torch.empty_like(like)
        if self.slope_update and core.slope is None:
            core.slope = torch.empty_like(like)

    def _update(self, index: int, out: torch.Tensor) -> None:
        # SublayerHistory.push on this member's slices, with the group's scalars (identical for every member).
        core, order = self.core, self.order
        f0, f1, f2, slope = (self.view(t, index) for t in (core.f0, core.f1, core.f2, core.slope))
        at = core._at
        if order >= 1:
            if self.slope_update:
                s, a, b = core.roll[:3]
                if self.slope_from_f1:
                    torch.sub(out, f0, out=slope).sub_(f1, alpha=a + b).div_(at(self.step) - s)
                else:
                    slope.mul_(-b).add_(f1, alpha=-a).add_(out).sub_(f0).div_(at(self.step) - s)
            gap = at(self.step) - at(core.j0)
            if order == 1:
                torch.sub(out, f0, out=f1).div_(gap)
            else:  # F1_new into the F2 slice, F2 into the F1 slice: the buffers swap names at the end
                torch.sub(out, f0, out=f2).div_(gap)
                torch.sub(f2, f1, out=f1).div_(at(self.step) - at(core.j1) if core.newton else gap)
        f0.copy_(out)

    def _finish(self, j: int) -> None:
        core, order = self.core, self.order
        if core.f0 is None:
            start = 0
            for index in self.members:
                out = self.stash[index]
                self.slices[index] = (start, start + out.numel(), out.shape)
                start += out.numel()
            outputs = [self.stash[i] for i in self.members]
            if len({(o.dtype, o.device) for o in outputs}) == 1:
                core.f0 = torch.cat([o.reshape(-1) for o in outputs])
                self.stash = {}
            else:
                self.flat_ok = False
        if order == 2:
            core.f1, core.f2 = core.f2, core.f1
        core.j1, core.j0, core.order, core.roll = core.j0, j, order, None
        if not self.slope_update:
            core.slope = None
        if order < 2:
            core.f2 = None
        if order < 1:
            core.f1 = core.out = core.slope = None
        self.forecast_at = None

    # ------------------------------------------------------------------ reading
    def view(self, flat: torch.Tensor | None, index: int) -> torch.Tensor | None:
        if flat is None:
            return None
        start, end, shape = self.slices[index]
        return flat[start:end].view(shape)

    def f0(self, index: int) -> torch.Tensor:
        return self.stash[index] if self.core.f0 is None else self.view(self.core.f0, index)

    def forecast(self, index: int, j: int, order) -> torch.Tensor:
        """This member's forecast at evaluation j, the whole group's made at the first member's call."""
        if self.pending:
            raise RuntimeError(f"sub-layers {sorted(self.pending)} were not called at evaluation {self.step}")
        if self.core.f0 is None:
            return self.stash[index]
        if self.forecast_at != j:
            self.flat_out = self.core.forecast(j, order)
            self.forecast_at = j
        return self.view(self.flat_out, index)

    def split(self, index: int) -> SublayerHistory:
        """This member's history on its own tensors (a snapshot, or the group dissolved), also in the middle of a
        computed evaluation (members pushed already hold the new state, the others the old)."""
        core, twin = self.core, SublayerHistory(self.core.newton, self.core.pos)
        if self.pending and index not in self.pending:  # pushed at self.step; the group's scalars not yet moved
            twin.j0, twin.j1, twin.order, twin.roll = self.step, core.j0, self.order, None
            f1, f2 = (core.f2, core.f1) if self.order == 2 else (core.f1, core.f2)
            slope = core.slope if self.slope_update else None
        else:
            twin.j0, twin.j1, twin.order, twin.roll = core.j0, core.j1, core.order, core.roll
            f1, f2 = core.f1, core.f2
            slope = None if self.pending and self.slope_from_f1 else core.slope  # allocated at this step: not yet S
        if core.f0 is None:  # the first computation, not yet laid out: the outputs themselves
            twin.f0 = self.stash.get(index)
            if twin.f0 is None:
                twin.order = -1
            return twin
        twin.f0 = self.view(core.f0, index).clone()
        if twin.order >= 1:
            twin.f1 = self.view(f1, index).clone()
            twin.slope = None if slope is None else self.view(slope, index).clone()
        if twin.order >= 2:
            twin.f2 = self.view(f2, index).clone()
        return twin


class Member:
    """A grouped sub-layer's history, as the runner (l2c.cache.hooks.RunPlan) holds it."""

    __slots__ = ("group", "index")

    def __init__(self, group: FlatGroup, index: int):
        self.group, self.index = group, index

    @property
    def f0(self):
        return self.group.f0(self.index)

    @property
    def order(self) -> int:
        return self.group.core.order

    def nbytes(self) -> int:
        return 0  # the runner counts the group's buffers once (RunPlan._held)

    def copy(self) -> SublayerHistory:
        return self.group.split(self.index)

    def push(self, out, j: int, want: int) -> None:
        self.group.push(self.index, out, j, want)

    def forecast(self, j: int, order):
        return self.group.forecast(self.index, j, order)

    def terms(self, j: int, order):
        return self.forecast(j, order), []  # compiled blocks take it as a given output


def plan_groups(actions: list[list[int]], min_size: int = 2) -> list[int | None]:
    """Per sub-layer, the group it belongs to (None: alone): sub-layers whose action columns are identical."""
    columns: dict[tuple, list[int]] = {}
    for index, column in enumerate(zip(*actions)):
        columns.setdefault(column, []).append(index)
    group_of: list[int | None] = [None] * len(actions[0])
    for g, members in enumerate(m for m in columns.values() if len(m) >= min_size):
        for index in members:
            group_of[index] = g
    return group_of
