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
* for a block of one sub-layer that has a shortcut (l2c.cache.shortcuts: a FLUX single block), what skipping that
  sub-layer saves besides its own span: the block's norms and concatenations less the shortcut's gated add, both
  timed. It is added to the sub-layer's cost (the plan skips the whole block exactly when it skips that sub-layer).
  A block of several sub-layers saves its own such share only when all of them are skipped, which a per-sub-layer
  cost cannot express: it stays in the evaluation's fixed part (predictions err towards slower, never faster).

It is returned as a MacProfile in seconds (sub-layer "MACs" = seconds, the forecast cost per output element = the
seconds of one pass), so every budget computation (l2c.router.budget, the schedule search) works on it unchanged:
`profile.fraction(plan)` is the predicted fraction of the uncached time.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from .layout import describe, layout_for
from .macs import MacProfile
from .shortcuts import shortcut_for


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
    shortcut_blocks = _one_sublayer_shortcuts(model, subs)
    block_spent = {i: [] for i in shortcut_blocks}
    seen_calls: dict[int, tuple] = {}  # sub-layer -> (block args, kwargs, the sub-layer's output) of one call
    for i, (block, _) in shortcut_blocks.items():

        def block_begin(m, a, k, i=i):
            _sync(device)
            seen_calls.setdefault(i, (a, k))
            started[("block", i)] = time.perf_counter()

        def block_end(m, a, o, i=i):
            _sync(device)
            block_spent[i].append(time.perf_counter() - started.pop(("block", i)))

        def output(m, a, o, i=i):
            if len(seen_calls.get(i, ())) == 2:
                seen_calls[i] = (*seen_calls[i], o)

        handles.append(block.register_forward_pre_hook(block_begin, with_kwargs=True))
        handles.append(block.register_forward_hook(block_end))
        handles.append(subs[i].module.register_forward_hook(output))
    totals = []
    try:
        call()  # warm-up: allocations, kernels, caches
        for lst in (*spent, *block_spent.values()):
            lst.clear()
        started.clear()
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
    for i, (block, shortcut) in shortcut_blocks.items():
        args, kwargs, out = seen_calls[i]
        calls = max(1, len(block_spent[i]) // repeats)  # block calls per evaluation (two-call guidance: 2)
        spans = _per_evaluation(block_spent[i], repeats)
        shortcut_s = calls * _timed(shortcut.run, (block, [out], args, kwargs), device, repeats)
        per_sublayer[i] += max(0.0, statistics.median(spans) - per_sublayer[i] - shortcut_s)
    total = statistics.median(totals)
    always = max(0.0, total - sum(per_sublayer))
    per_pass = element_pass_seconds(int(max(sublayer_outputs)) * batch, next(model.parameters()).dtype, device)
    record = {
        "device": str(device),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "batch": batch,
        "evaluation_s": total,
        "always_s": always,
        "sublayer_s": per_sublayer,
        "pass_s_per_element": per_pass,
    }
    profile = profile_from_record(record, sublayer_outputs)
    return profile, record


def _one_sublayer_shortcuts(model: nn.Module, subs) -> dict:
    """{sub-layer index: (its block, the block's shortcut)} for the blocks with one sub-layer and a shortcut."""
    found = {}
    for b, block in enumerate(layout_for(model).blocks(model)):
        members = [i for i, s in enumerate(subs) if s.block == b]
        if len(members) == 1:
            shortcut = shortcut_for(block, (subs[members[0]].branch,))
            if shortcut is not None:
                found[members[0]] = (block, shortcut)
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
    times = []
    for _ in range(repeats + 1):
        _sync(f0.device)
        t0 = time.perf_counter()
        torch.add(f0, f1, alpha=0.5, out=out)
        _sync(f0.device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:]) / elements


def profile_from_record(record: dict, sublayer_outputs: list[float]) -> MacProfile:
    """The profile of a measure_time_profile record (as a router file keeps it), per image: the budget is a
    fraction, so dividing every part by the batch changes nothing but the units."""
    batch = record["batch"]
    return MacProfile(
        [t / batch for t in record["sublayer_s"]],
        [0.0] * len(record["sublayer_s"]),
        record["always_s"] / batch,
        [n * record["pass_s_per_element"] for n in sublayer_outputs],
    )
