"""DPM-Solver++ (Lu et al. 2022, "DPM-Solver++"), data prediction, as U-ViT samples with it.

Singlestep order 2 (U-ViT's setting: NFE = 2K, r1 = 0.5, time-uniform) and multistep 2M. Times are continuous
t ∈ [1e-3, 1]; the model receives t * time_scale (U-ViT: t * 1000). `denoise(x, t, step)` returns ε; step is the
evaluation index in sampling order.
"""

from __future__ import annotations

from typing import Callable

import torch
from tqdm import tqdm

from .schedules import NoiseScheduleVP

Denoiser = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


def time_uniform(num_steps: int, t_start: float = 1.0, t_end: float = 1e-3) -> torch.Tensor:
    """num_steps + 1 outer times from t_start to t_end. Float32, as U-ViT builds them (its router keys depend on it)."""
    return torch.linspace(t_start, t_end, num_steps + 1, dtype=torch.float32)


def _data_prediction(denoise, schedule, x, t, step, time_scale, time_shift=0.0):
    t64 = t.double()
    t_model = torch.full((x.shape[0],), float(t) * time_scale + time_shift, device=x.device)
    eps = denoise(x, t_model, step)[:, : x.shape[1]]
    alpha, sigma = schedule.marginal_alpha(t64).item(), schedule.marginal_std(t64).item()
    return (x - sigma * eps) / alpha


def sample_dpm_solver(
    denoise: Denoiser,
    x: torch.Tensor,
    timesteps: torch.Tensor,
    *,
    schedule: NoiseScheduleVP,
    method: str = "singlestep",
    r1: float = 0.5,
    time_scale: float = 1000.0,
    time_shift: float = 0.0,
    lower_order_final: bool = True,
    callback: Callable[[dict], None] | None = None,
    disable: bool | None = True,
) -> torch.Tensor:
    """Second-order DPM-Solver++ from timesteps[0] (≈1) to timesteps[-1] (≈1e-3).

    singlestep: len(timesteps) - 1 = K outer steps, 2 evaluations each (at s and at the λ-midpoint s1).
    multistep (2M): len(timesteps) - 1 = NFE steps, one evaluation each, first step first-order.
    The model receives t * time_scale + time_shift (U-ViT: t * 1000; a model fed discrete indices: shift -1).
    """
    ts = (time_scale, time_shift)
    if method == "singlestep":
        return _singlestep(denoise, x, timesteps, schedule, r1, ts, callback, disable)
    if method == "multistep":
        return _multistep(denoise, x, timesteps, schedule, ts, lower_order_final, callback, disable)
    raise ValueError(f"unknown DPM-Solver method {method!r}; use 'singlestep' or 'multistep'")


def _singlestep(denoise, x, timesteps, ns, r1, ts, callback, disable):
    for i in tqdm(range(len(timesteps) - 1), disable=disable, desc="dpm-solver-2"):
        s, t = timesteps[i].double(), timesteps[i + 1].double()
        lam_s, lam_t = ns.marginal_lambda(s), ns.marginal_lambda(t)
        h = lam_t - lam_s
        s1 = ns.inverse_lambda(lam_s + r1 * h)
        model_s = _data_prediction(denoise, ns, x, timesteps[i], 2 * i, *ts)
        sig_s, sig_s1, sig_t = (ns.marginal_std(v).item() for v in (s, s1, t))
        a_s1, a_t = ns.marginal_alpha(s1).item(), ns.marginal_alpha(t).item()
        phi_11, phi_1 = torch.expm1(-r1 * h).item(), torch.expm1(-h).item()
        x_s1 = (sig_s1 / sig_s) * x - (a_s1 * phi_11) * model_s
        model_s1 = _data_prediction(denoise, ns, x_s1, s1.float(), 2 * i + 1, *ts)
        x = (sig_t / sig_s) * x - (a_t * phi_1) * model_s - (0.5 / r1) * (a_t * phi_1) * (model_s1 - model_s)
        if callback is not None:
            callback({"step": 2 * i + 1, "t": float(t), "x": x, "denoised": model_s1})
    return x


def _multistep(denoise, x, timesteps, ns, ts, lower_order_final, callback, disable):
    steps = len(timesteps) - 1
    lam = [ns.marginal_lambda(t.double()) for t in timesteps]
    models = [_data_prediction(denoise, ns, x, timesteps[0], 0, *ts)]
    for i in tqdm(range(1, steps + 1), disable=disable, desc="dpm-solver-2m"):
        t = timesteps[i].double()
        sig_prev, sig_t = ns.marginal_std(timesteps[i - 1].double()).item(), ns.marginal_std(t).item()
        a_t = ns.marginal_alpha(t).item()
        h = lam[i] - lam[i - 1]
        phi_1 = torch.expm1(-h).item()
        order = 1 if i == 1 else 2
        if lower_order_final and steps < 10:
            order = min(order, steps + 1 - i)
        x = (sig_t / sig_prev) * x - (a_t * phi_1) * models[-1]
        if order == 2:
            r0 = ((lam[i - 1] - lam[i - 2]) / h).item()
            x = x - 0.5 * (a_t * phi_1) * (1.0 / r0) * (models[-1] - models[-2])
        if i < steps:
            models = [models[-1], _data_prediction(denoise, ns, x, timesteps[i], i, *ts)]
        if callback is not None:
            callback({"step": i - 1, "t": float(t), "x": x, "denoised": models[-1]})
    return x
