"""A measured cost model: what each part of a cached evaluation takes in time on this device, so that a budget can
be stated in predicted wall-clock time rather than in MACs.

MACs miss what a forecast costs: its element-wise passes (f0 + k·F1 [+ c·F2], and the difference updates when a
sub-layer is computed) move memory at bandwidth, which on the bundled models is a large share of a forecast
evaluation (docs/benchmarks.md). The model here measures, once, on the device, dtype and batch the schedule is for:

* each sub-layer's computation (its skippable inputs included: they are skipped with it), timed around its call in
  uncached evaluations (median of a few);
* what every evaluation computes whatever the plan (embeddings, gates, residuals, the head): the evaluation's time
  less the sub-layers';
* one element-wise pass over one element (an add with a scale into a preallocated buffer, the forecast's own op);
* for each block that has a shortcut (l2c.cache.shortcuts: FLUX's), its glue: what the block costs besides its
  sub-layers (norms, modulation, concatenations, gated adds) less what its shortcut costs, both timed. The glue is
  paid at an evaluation where any of the block's sub-layers computes, and saved where none does
  (MacProfile.block_glue). Router files made before this record have no glue: it stays in the fixed part.

It is returned as a MacProfile in seconds (sub-layer "MACs" = seconds, the forecast cost per output element = the
seconds of one pass), so every budget computation (l2c.router.budget, the schedule search) works on it unchanged:
`profile.fraction(plan)` is the predicted fraction of the uncached time.
"""

from __future__ import annotations

import statistics
import time
from functools import partial

import torch
from torch import nn

from .layout import describe
from .macs import MacProfile
from .shortcuts import shortcut_blocks


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def measure_time_profile(model: nn.Module, call, sublayer_outputs: list[float], batch: int, repeats: int = 5):
    """(profile in seconds, record) of one uncached evaluation `call()` at `batch` images per call.

    sublayer_outputs: output elements of each sub-layer for one image (MacProfile.sublayer_outputs)."""
    device = next(model.parameters()).device
    subs = describe(model)
    spent = [[] for _ in subs]
    started: dict[int, float] = {}
    handles = []
    for i, s in enumerate(subs):
        modules = [*s.inputs, s.module]  # inputs run first; the sub-layer's call ends the span

        def begin(m, a, k=None, i=i):
            _sync(device)
            started.setdefault(i, time.perf_counter())

        def end(m, a, o, k=None, i=i):
            _sync(device)
            spent[i].append(time.perf_counter() - started.pop(i))

        handles += [m.register_forward_pre_hook(begin) for m in modules]
        handles.append(s.module.register_forward_hook(end))
    glue = _BlockGlue(model, subs, device)
    handles += glue.handles
    totals = []
    try:
        call()  # warm-up: allocations, kernels, caches
        for lst in spent:
            lst.clear()
        started.clear()
        glue.clear()
        for _ in range(repeats):
            _sync(device)
            t0 = time.perf_counter()
            call()
            _sync(device)
            totals.append(time.perf_counter() - t0)
    finally:
        for h in handles:
            h.remove()
    per_sublayer = [statistics.median(_per_evaluation(lst, repeats)) for lst in spent]
    block_glue = glue.costs(per_sublayer, repeats)
    total = statistics.median(totals)
    always = max(0.0, total - sum(per_sublayer) - sum(cost for _, cost in block_glue))
    per_pass = element_pass_seconds(int(max(sublayer_outputs)) * batch, next(model.parameters()).dtype, device)
    record = {
        "device": str(device),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "batch": batch,
        "evaluation_s": total,
        "always_s": always,
        "sublayer_s": per_sublayer,
        "block_glue_s": [[members, cost] for members, cost in block_glue],
        "pass_s_per_element": per_pass,
    }
    profile = profile_from_record(record, sublayer_outputs)
    return profile, record


class _BlockGlue:
    """Times each block that has a shortcut, keeps one call's inputs and its sub-layers' outputs, and gives its glue:
    the block's span less its sub-layers' spans and less its shortcut (timed on that call), per evaluation."""

    def __init__(self, model: nn.Module, subs, device: torch.device):
        self.device = device
        self.blocks = [(block, shortcut, members) for _, block, shortcut, members in shortcut_blocks(model, subs)]
        self.spans = [[] for _ in self.blocks]
        self.calls: list[tuple | None] = [None] * len(self.blocks)  # (args, kwargs) of the block's first call
        self.outputs = [{} for _ in self.blocks]  # sub-layer -> its output in that call
        self.handles = []
        started: dict[int, float] = {}
        for k, (block, _, members) in enumerate(self.blocks):

            def begin(m, a, kw, k=k):
                _sync(device)
                if self.calls[k] is None:
                    self.calls[k] = (a, kw)
                started[k] = time.perf_counter()

            def end(m, a, o, k=k):
                _sync(device)
                self.spans[k].append(time.perf_counter() - started.pop(k))

            def output(m, a, o, k=k, i=None):
                self.outputs[k].setdefault(i, o)

            self.handles.append(block.register_forward_pre_hook(begin, with_kwargs=True))
            self.handles.append(block.register_forward_hook(end))
            self.handles += [subs[i].module.register_forward_hook(partial(output, i=i)) for i in members]

    def clear(self) -> None:
        for spans in self.spans:
            spans.clear()

    def costs(self, per_sublayer: list[float], repeats: int) -> list[tuple[list[int], float]]:
        found = []
        for k, (block, shortcut, members) in enumerate(self.blocks):
            args, kwargs = self.calls[k]
            outputs = [self.outputs[k][i] for i in members]
            calls = max(1, len(self.spans[k]) // repeats)  # block calls per evaluation (two-call guidance: 2)
            span = statistics.median(_per_evaluation(self.spans[k], repeats))
            shortcut_s = calls * _timed(shortcut.run, (block, outputs, args, kwargs), self.device, repeats)
            found.append((members, max(0.0, span - sum(per_sublayer[i] for i in members) - shortcut_s)))
        return found


def _timed(fn, fn_args: tuple, device: torch.device, repeats: int) -> float:
    """Median seconds of fn(*fn_args) over `repeats` runs after one warm-up."""
    times = []
    for _ in range(repeats + 1):
        _sync(device)
        t0 = time.perf_counter()
        fn(*fn_args)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def _per_evaluation(times: list[float], repeats: int) -> list[float]:
    """One duration per evaluation: a sub-layer called k times per evaluation (two-call guidance) sums its calls."""
    if not times:
        return [0.0]
    calls = max(1, len(times) // repeats)
    return [sum(times[i : i + calls]) for i in range(0, calls * repeats, calls)] or [0.0]


def element_pass_seconds(elements: int, dtype: torch.dtype, device, repeats: int = 7) -> float:
    """Seconds per element of one forecast pass: out = f0 + k·F1 into a preallocated buffer."""
    f0 = torch.randn(elements, dtype=dtype, device=device)
    f1, out = torch.randn_like(f0), torch.empty_like(f0)
    return _timed(partial(torch.add, alpha=0.5, out=out), (f0, f1), f0.device, repeats) / elements


def profile_from_record(record: dict, sublayer_outputs: list[float]) -> MacProfile:
    """The profile of a measure_time_profile record (as a router file keeps it), per image: the budget is a
    fraction, so dividing every part by the batch changes nothing but the units."""
    batch = record["batch"]
    return MacProfile(
        [t / batch for t in record["sublayer_s"]],
        [0.0] * len(record["sublayer_s"]),
        record["always_s"] / batch,
        [n * record["pass_s_per_element"] for n in sublayer_outputs],
        [(members, cost / batch) for members, cost in record.get("block_glue_s", [])],
    )
