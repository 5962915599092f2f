"""What a cached sub-layer does when it is called: one behaviour per class, switched by the CacheEngine.

Every behaviour is called as `behaviour(step, slot, index, forward, args, kwargs)`, where `forward` runs the
sub-layer, `step` is the model evaluation (from the sampler), `slot` the model call within it (two-call guidance
has two), and `index` the sub-layer in router order. Lookups are Python lists and dicts: nothing reads a tensor
back to the host.

* Bypass:  compute, store nothing (the teacher in router training; the engine's state when there is no plan).
* Record:  compute every sub-layer and store every output, detached (the full evaluation before a cache step).
* Blend:   router training, the paper's Eq. 6 with α = 1: β·fresh + (1 − β)·recorded (gradients reach β only).
* RunPlan: sampling with a CachePlan: compute, reuse, forecast or drop, storing only what later evaluations read.
"""

from __future__ import annotations

import torch

from .forecast import SublayerHistory
from .plan import COMPUTE, DROP, FORECAST1, FORECAST2, REUSE, CachePlan

_FORECAST_ORDER = {FORECAST1: 1, FORECAST2: 2}


class Bypass:
    def __call__(self, step, slot, index, forward, args, kwargs):
        return forward(*args, **kwargs)


class Record:
    """Stores every output of the current call in `outputs[(slot, index)]` (replacing what was there)."""

    def __init__(self, outputs: dict):
        self.outputs = outputs

    def __call__(self, step, slot, index, forward, args, kwargs):
        out = forward(*args, **kwargs)
        self.outputs[(slot, index)] = out.detach()
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
        return w * out + (1 - w) * stored


class RunPlan:
    """Executes a CachePlan. `histories[(slot, index)]` holds what later evaluations of that sub-layer read."""

    def __init__(self, plan: CachePlan):
        self.plan = plan
        # Python lists: one list lookup per call, no tensor indexing on the hot path.
        self.actions = plan.actions.tolist()
        self.keep = plan.history_orders().tolist()
        self.release = _last_reads(plan)
        self.newton = plan.form == "newton"
        self.histories: dict[tuple[int, int], SublayerHistory] = {}
        self.stored_bytes = 0  # bytes held by the histories now
        self.peak_bytes = 0  # the most held at once since reset()
        self._zeros: dict[tuple, torch.Tensor] = {}

    def reset(self) -> None:
        self.histories.clear()
        self.stored_bytes = self.peak_bytes = 0

    def snapshot(self) -> dict:
        """The stored histories as they stand, as copies that running on leaves unchanged (see restore)."""
        return {key: history.copy() for key, history in self.histories.items()}

    def restore(self, histories: dict) -> None:
        """Continue from a snapshot() (itself kept unchanged, so it can be restored again); the memory peak counts
        from here."""
        self.histories = {key: history.copy() for key, history in histories.items()}
        self.stored_bytes = self.peak_bytes = sum(h.nbytes() for h in self.histories.values())

    def __call__(self, step, slot, index, forward, args, kwargs):
        action = self.actions[step][index]
        if action == COMPUTE:
            out = forward(*args, **kwargs)
            self._store(step, (slot, index), out)
            return out
        key = (slot, index)
        if action == DROP:
            out = self._zero_like(args[0])
        else:
            history = self._history(key, step)
            out = history.f0 if action == REUSE else self._forecast(history, step, _FORECAST_ORDER[action])
        if self.release[step][index]:
            self._forget(key)
        return out

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
        buffer = history.out
        out = history.forecast(step, order)
        if history.out is not buffer:  # the output buffer was allocated (first forecast of this history)
            self._grow(history.out.numel() * history.out.element_size())
        return out

    def _grow(self, nbytes: int) -> None:
        self.stored_bytes += nbytes
        self.peak_bytes = max(self.peak_bytes, self.stored_bytes)

    def _store(self, step, key, out):
        want = self.keep[step][key[1]]
        if want < 0:
            self._forget(key)
            return
        history = self.histories.get(key)
        if history is None:
            history = self.histories[key] = SublayerHistory(self.newton)
        before = history.nbytes()
        history.push(out, step, want)
        self._grow(history.nbytes() - before)

    def _forget(self, key):
        history = self.histories.pop(key, None)  # none after a computation that kept nothing (then drops)
        if history is not None:
            self.stored_bytes -= history.nbytes()

    def _history(self, key, step) -> SublayerHistory:
        try:
            return self.histories[key]
        except KeyError:
            raise RuntimeError(
                f"sub-layer {key[1]} reuses a cached output at step {step} (model call {key[0]} of the step) "
                f"but none is stored: run the steps in order from step 0, with the same guidance calls per step"
            ) from None

    def _zero_like(self, x: torch.Tensor) -> torch.Tensor:
        # A dropped attention / MLP sub-layer returns the shape of its input; one shared zero tensor per shape.
        key = (x.shape, x.dtype, x.device)
        if key not in self._zeros:
            self._zeros[key] = torch.zeros_like(x)
        return self._zeros[key]


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
