"""What a cached sub-layer does when it is called: one behaviour per class, switched by the CacheEngine.

Every behaviour is called as `behaviour(step, slot, index, forward, args, kwargs)`, where `forward` runs the
sub-layer, `step` is the model evaluation (from the sampler), `slot` the model call within it (two-call guidance
has two), and `index` the sub-layer in router order. Lookups are Python lists and dicts: nothing reads a tensor
back to the host.

* Bypass:  compute, store nothing (the teacher in router training; the engine's state when there is no plan).
* Record:  compute every sub-layer and store every output, detached (the full evaluation before a cache step).
* Blend:   router training, the paper's Eq. 6 with α = 1: β·fresh + (1 − β)·recorded (gradients reach β only).
* RunPlan: sampling with a CachePlan: compute, reuse, forecast (Taylor / Newton, or FoCa) or drop, storing only what
           later evaluations read.

A sub-layer's output is a tensor or a tuple of tensors (a joint attention's (image, text) pair): every behaviour maps
over the tuple and returns the same structure.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .forecast import map_output, new_history
from .grouped import FlatGroup, Member, plan_groups
from .plan import COMPUTE, DROP, FOCA, FORECAST1, FORECAST2, REUSE, CachePlan

_FORECAST_ORDER = {FORECAST1: 1, FORECAST2: 2, FOCA: "foca"}


class OutputShape(NamedTuple):
    size: torch.Size
    dtype: torch.dtype
    device: torch.device


class Bypass:
    def __call__(self, step, slot, index, forward, args, kwargs):
        return forward(*args, **kwargs)


class Record:
    """Stores every output of the current call in `outputs[(slot, index)]` (replacing what was there)."""

    def __init__(self, outputs: dict):
        self.outputs = outputs

    def __call__(self, step, slot, index, forward, args, kwargs):
        out = forward(*args, **kwargs)
        self.outputs[(slot, index)] = map_output(torch.Tensor.detach, out)
        return out


class Blend:
    def __init__(self, outputs: dict, beta: torch.Tensor):
        self.outputs = outputs
        self.beta = beta  # (L,) one weight per sub-layer

    def __call__(self, step, slot, index, forward, args, kwargs):
        out = forward(*args, **kwargs)
        try:
            stored = self.outputs[(slot, index)]
        except KeyError:
            raise RuntimeError(
                f"sub-layer {index} blends with a recorded output (model call {slot}) but none is recorded: "
                "run the evaluation before it under engine.recording(), with the same model calls"
            ) from None
        w = self.beta[index]
        return map_output(lambda fresh, old: w * fresh + (1 - w) * old, out, stored)


class RunPlan:
    """Executes a CachePlan. `histories[(slot, index)]` holds what later evaluations of that sub-layer read.

    grouped: sub-layers with identical plan columns keep their histories in shared flat buffers and are forecast as
    one tensor (l2c.cache.grouped); outputs are those of the per-sub-layer form."""

    def __init__(self, plan: CachePlan, grouped: bool = False):
        self.plan = plan
        # Python lists: one list lookup per call, no tensor indexing on the hot path.
        self.actions = plan.actions.tolist()
        self.keep = plan.history_orders().tolist()
        self.release = _last_reads(plan)
        self.newton = plan.form == "newton"
        self.positions = None if plan.positions is None else [float(p) for p in plan.positions]
        self.histories: dict[tuple, object] = {}  # SublayerHistory, or TupleHistory for tuple outputs
        # The input shapes each stored output was computed from: a call with other shapes (a batch or a sequence
        # length that changed mid-run) computes instead of reusing a stale tensor.
        self.signatures: dict[tuple, tuple] = {}
        self.stored_bytes = 0  # bytes held by the histories now
        self.peak_bytes = 0  # the most held at once since reset()
        self.drops = bool((plan.actions == DROP).any())
        self._shapes: dict[tuple, object] = {}  # (slot, index) -> the output's structure of OutputShape (for DROP)
        self._zeros: dict[OutputShape, torch.Tensor] = {}
        self.group_of = plan_groups(self.actions) if grouped else None  # per sub-layer: its group, or None
        self.groups: dict[tuple, FlatGroup] = {}  # (slot, group) -> the live group
        self.ungrouped: set[tuple] = set()  # (slot, group) whose members keep their own histories this run

    def reset(self) -> None:
        self.groups.clear()
        self.ungrouped.clear()
        self.histories.clear()
        self.signatures.clear()
        self._shapes.clear()
        self.stored_bytes = self.peak_bytes = 0

    def snapshot(self) -> dict:
        """The stored histories as they stand, as copies that running on leaves unchanged (see restore), with the
        argument shapes and output structures they were computed from."""
        return {
            "histories": {key: history.copy() for key, history in self.histories.items()},
            "signatures": dict(self.signatures),
            "shapes": dict(self._shapes),
        }

    def restore(self, state: dict) -> None:
        """Continue from a snapshot() (itself kept unchanged, so it can be restored again); the memory peak counts
        from here."""
        self.histories = {key: history.copy() for key, history in state["histories"].items()}
        self.groups.clear()  # the copies are the members' own histories
        self.signatures, self._shapes = dict(state["signatures"]), dict(state["shapes"])
        self.stored_bytes = self.peak_bytes = sum(h.nbytes() for h in self.histories.values())

    def __call__(self, step, slot, index, forward, args, kwargs):
        action = self.actions[step][index]
        key = (slot, index)
        shapes = signature(args, kwargs)
        if self.signatures.get(key) != shapes:
            # Nothing stored for this call (a model call this slot has not made before: a third guidance call, a
            # second expert), or stored from other shapes (a batch or sequence length that changed mid-run): start
            # this sub-layer's history afresh from a computation, never from a stale tensor.
            if isinstance(self.histories.get(key), Member):
                self._split(slot, self.histories[key].group)
            self._forget(key)
            self.signatures[key] = shapes
            if action != COMPUTE:
                out = forward(*args, **kwargs)
                self._remember_shape(key, out)
                if not self.release[step][index]:
                    self._store(step, key, out, want=0)
                return out
        if action == COMPUTE:
            out = forward(*args, **kwargs)
            self._remember_shape(key, out)
            self._store(step, key, out)
            return out
        return self.answer(step, slot, index)

    def answer(self, step, slot, index):
        """A non-computed cell's output (reused, forecast, or zeros) from what this model-call slot stored, with its
        bookkeeping; the caller has checked that the stored outputs were computed from this call's shapes."""
        key, action = (slot, index), self.actions[step][index]
        if action == DROP:
            # (A compiled block makes its own zeros and kept no shape: it calls here for the bookkeeping only.)
            out = self._zeros_for(key) if key in self._shapes else None
        else:
            history = self._history(key, step)
            out = history.f0 if action == REUSE else self._forecast(history, step, _FORECAST_ORDER[action])
        if self.release[step][index]:
            self._forget(key)
        return out

    def _remember_shape(self, key, out) -> None:
        # A dropped sub-layer returns zeros shaped like its *output* (an output projection is 5d -> d, a joint
        # attention returns a pair): the structure of its last computed output, kept only if the plan drops.
        if self.drops and out is not None:  # None: a compiled block computed it and keeps nothing (l2c.jobs.compile)
            self._shapes[key] = output_shape(out)

    def _zeros_for(self, key):
        return zeros_of(self._shapes[key], self)

    def zeros(self, shape: OutputShape) -> torch.Tensor:
        """One shared zero tensor per shape (never written: DROP and skipped inputs only read it)."""
        if shape not in self._zeros:
            self._zeros[shape] = torch.zeros(shape.size, dtype=shape.dtype, device=shape.device)
        return self._zeros[shape]

    def output_structure(self, slot, index):
        """The structure (output_shape) of the sub-layer's last computed output in this model-call slot, where the
        plan drops and it was handed over; else None."""
        return self._shapes.get((slot, index))

    def has_outputs(self, slot, indices) -> bool:
        """Whether each of these sub-layers has been computed in this model-call slot (so none is recomputed by
        the fresh-history rule of __call__)."""
        return all((slot, i) in self.signatures for i in indices)

    def forecast_terms(self, step, slot, index):
        """A FORECAST cell as (f0, [(difference, coefficient), ...]) for a caller that sums the terms itself (compiled
        blocks, fused with the block's gate and residual); the bookkeeping (the release of a history nobody reads
        again) is that of __call__."""
        key = (slot, index)
        terms = self._history(key, step).terms(step, _FORECAST_ORDER[self.actions[step][index]])
        if self.release[step][index]:
            self._forget(key)
        return terms

    def _forecast(self, history, step, order):
        before = _held(history)
        out = history.forecast(step, order)
        self._grow(_held(history) - before)  # the output buffer, allocated at a history's first forecast
        return out

    def _grow(self, nbytes: int) -> None:
        self.stored_bytes += nbytes
        self.peak_bytes = max(self.peak_bytes, self.stored_bytes)

    def _store(self, step, key, out, want: int | None = None):
        want = self.keep[step][key[1]] if want is None else want
        if want < 0:
            self._forget(key)
            return
        history = self.histories.get(key)
        if history is None:
            history = self.histories[key] = self._new_history(key, out)
        before = _held(history)
        history.push(out, step, want)
        self._grow(_held(history) - before)
        if isinstance(history, Member) and not history.group.flat_ok:
            self._split(key[0], history.group)

    def _new_history(self, key, out):
        slot, index = key
        g = None if self.group_of is None else self.group_of[index]
        if g is not None and (slot, g) not in self.ungrouped:
            group = self.groups.get((slot, g))
            if not isinstance(out, torch.Tensor):  # a tuple output: the group's members keep their own histories
                if group is not None:
                    self._split(slot, group)
                self.ungrouped.add((slot, g))
            else:
                if group is None:
                    group = self.groups[(slot, g)] = FlatGroup(
                        [i for i, h in enumerate(self.group_of) if h == g], self.newton, self.positions
                    )
                return Member(group, index)
        return new_history(out, self.newton, self.positions)

    def _split(self, slot, group: FlatGroup) -> None:
        """The group's members keep their own histories from now on (until the next run)."""
        g = self.group_of[group.members[0]]
        self.stored_bytes -= group.nbytes()
        for index in group.members:
            if isinstance(self.histories.get((slot, index)), Member):
                self.histories[(slot, index)] = history = group.split(index)
                self.stored_bytes += history.nbytes()
        self.groups.pop((slot, g), None)
        self.ungrouped.add((slot, g))

    def _forget(self, key):
        history = self.histories.pop(key, None)  # none after a computation that kept nothing (then drops)
        if isinstance(history, Member):
            group = history.group
            group.live.discard(key[1])
            if not group.live:  # the last member read: the buffers go
                self.stored_bytes -= group.nbytes()
                if self.groups.get((key[0], self.group_of[key[1]])) is group:
                    del self.groups[(key[0], self.group_of[key[1]])]
        elif history is not None:
            self.stored_bytes -= history.nbytes()

    def _history(self, key, step):
        try:
            return self.histories[key]
        except KeyError:
            raise RuntimeError(
                f"sub-layer {key[1]} reuses a cached output at step {step} (model call {key[0]} of the step) "
                f"but none is stored: run the steps in order from step 0, with the same guidance calls per step"
            ) from None


def _held(history) -> int:
    """Bytes a history holds; a grouped member stands for its group's buffers (counted once per change)."""
    return history.group.nbytes() if isinstance(history, Member) else history.nbytes()


def output_shape(out):
    """The structure of a sub-layer's output as OutputShape entries (a tensor, or a tuple with Nones)."""
    return map_output(lambda t: OutputShape(t.shape, t.dtype, t.device), out)


def zeros_of(shapes, runner: RunPlan):
    """Zeros with the structure output_shape() recorded, from the runner's shared zero tensors."""
    if isinstance(shapes, OutputShape):
        return runner.zeros(shapes)
    return type(shapes)(None if s is None else runner.zeros(s) for s in shapes)


def signature(args, kwargs) -> tuple:
    """The shapes of a call's tensor arguments (host-side metadata: no device sync). Called on every sub-layer call:
    one tuple, no intermediate lists."""
    shapes = tuple(a.shape for a in args if isinstance(a, torch.Tensor))
    if kwargs:
        shapes += tuple(v.shape for v in kwargs.values() if isinstance(v, torch.Tensor))
    return shapes


def plan_rows(plan: CachePlan) -> list[tuple]:
    """Per evaluation, everything RunPlan does at it: the actions, the orders kept at computed cells and the histories
    released. Two plans whose rows agree before evaluation j leave the same stored outputs at j, so a run of one can
    be resumed as a run of the other from a snapshot taken there."""
    keep = plan.history_orders().tolist()
    release = _last_reads(plan)
    return [(tuple(a), tuple(k), tuple(r)) for a, k, r in zip(plan.actions.tolist(), keep, release)]


def _last_reads(plan: CachePlan) -> list[list[bool]]:
    """(S, L) True at a non-computed cell after which the history is not read again (freed right away)."""
    compute = plan.compute.tolist()
    keep = plan.history_orders().tolist()
    last = plan.num_steps - 1

    def last_read(j, sub):
        return not compute[j][sub] and (j == last or (compute[j + 1][sub] and keep[j + 1][sub] < 1))

    return [[last_read(j, sub) for sub in range(plan.num_sublayers)] for j in range(plan.num_steps)]
