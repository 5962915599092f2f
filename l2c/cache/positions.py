"""Where a sampler's evaluations sit, for positioning forecasts (CachePlan.positions).

A forecast extrapolates a sub-layer's output from the evaluations that computed it. By default it counts evaluations
(evaluation j sits at j); a sampler that spaces its evaluations unevenly in its own time (FlowMatchEuler over a shifted
σ grid, DPM-Solver over uniform t) can place them where they are instead:

    plan = plan.at(evaluation_positions(sampler, "time"))

* "index":   j (returns None: the plan's default).
* "time":    the time the model is fed at evaluation j (sampler.model_time): DDIM's integer timestep, DPM-Solver's
             t·1000, FlowMatchEuler's σ·1000. Forecasts are unchanged by an affine map of the positions, so for flow
             matching this is σ as well.
* "log-snr": λ = log(α/σ) at evaluation j (DPM-Solver's own variable; DDIM from ᾱ). Not for flow matching, whose
             first evaluation sits at σ = 1 (λ = -∞).

Samplers are read by duck typing (model_time, and for log-SNR a VP schedule or ᾱ table): the cache does not import
them.
"""

from __future__ import annotations

import math

COORDINATES = ("index", "time", "log-snr")


def default_coordinate(sampler) -> str:
    """The coordinate that measured best for this kind of sampler (docs/forecast-positions.md): "time" for samplers
    with an intermediate evaluation per step (DPM-Solver-2 singlestep: its evaluations alternate between outer times
    and midpoints, far from evenly spaced in t), else "index" (DDIM's timesteps are evenly spaced, so both agree;
    FlowMatchEuler's shifted σ grid measured better by index)."""
    return "time" if getattr(sampler, "evaluations_per_step", 1) > 1 else "index"


def evaluation_positions(sampler, coordinate: str) -> list[float] | None:
    """One position per evaluation of `sampler` in `coordinate` (one of COORDINATES); None for "index"."""
    if coordinate not in COORDINATES:
        raise ValueError(f"unknown forecast position {coordinate!r}; use one of {', '.join(COORDINATES)}")
    if coordinate == "index":
        return None
    times = [float(sampler.model_time(j, 1)[0]) for j in range(sampler.num_evaluations)]
    if coordinate == "time":
        return times
    return _log_snr(sampler, times)


def _log_snr(sampler, times: list[float]) -> list[float]:
    schedule = getattr(sampler, "schedule", None)  # DPM-Solver: a NoiseScheduleVP over t in (0, 1]
    if schedule is not None:
        import torch

        t = torch.tensor([(m - sampler.time_shift) / sampler.time_scale for m in times], dtype=torch.float64)
        return schedule.marginal_lambda(t).tolist()
    abar = getattr(sampler, "abar", None)  # DDIM / DDPM: ᾱ per respaced index, evaluation j at index S - 1 - j
    if abar is not None:
        return [0.5 * math.log(a / (1 - a)) for a in reversed([float(v) for v in abar])]
    raise ValueError(
        f"{getattr(sampler, 'name', type(sampler).__name__)} has no VP noise schedule to take a log-SNR from "
        '(flow matching starts at σ = 1): position forecasts by "time"'
    )
