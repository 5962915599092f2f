"""Timing helpers: warm-up, then the median (and spread) of repeated runs in one process."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_runs(fns: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1, device="cpu") -> dict:
    """Interleave the candidates (a, b, a, b, ...) so drift of the machine hits them alike. Seconds per run."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return {
        name: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v), "runs": v}
        for name, v in times.items()
    }


def device_name(device="cpu") -> str:
    """GPU name, or the CPU model from /proc/cpuinfo, for benchmark records."""
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f" ({torch.get_num_threads()} threads)"
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()
