"""Rectified-flow sampling as diffusers' FlowMatchEulerDiscreteScheduler runs it in FluxPipeline (and SD3, Qwen-Image,
Wan pipelines): Euler steps on the velocity v = ε − x0 over a shifted σ grid from 1 towards 0.

Registered in SAMPLERS by the package (l2c/sampling/__init__.py), as it builds on samplers.DiffusersScheduler.
"""

from __future__ import annotations

import copy
import json
from typing import ClassVar

import numpy as np

from .diffusion import DiffusionSpec
from .samplers import DiffusersScheduler


def calculate_shift(image_seq_len, base_seq_len=256, max_seq_len=4096, base_shift=0.5, max_shift=1.15) -> float:
    """FluxPipeline's mu, linear in the packed image sequence length (diffusers pipelines/flux/pipeline_flux.py)."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    b = base_shift - m * base_seq_len
    return image_seq_len * m + b


class DiffusersFlowMatchEuler(DiffusersScheduler):
    """FlowMatchEulerDiscreteScheduler in FluxPipeline's loop (rectified flow, velocity prediction v = ε − x0):
    σ = linspace(1, 1/N, N), shifted by the config's `shift`, or under dynamic shifting by mu = calculate_shift(packed
    image sequence length) from the config; x' = x + (σ' − σ) v. Evaluation j is at σ_j; the model time is the
    scheduler's float timestep σ_j · 1000, which FluxPipeline divides by 1000 before the transformer."""

    name = "diffusers-flowmatch-euler"
    scheduler_class = "FlowMatchEulerDiscreteScheduler"
    dynamic_shift: ClassVar[bool] = True  # make_sampler passes the image sequence length

    def __init__(self, scheduler, steps: int, image_seq_len: int | None = None):
        config, mu = scheduler.config, None
        if config.get("use_dynamic_shifting"):
            if image_seq_len is None:
                raise ValueError(f"{self.name} shifts by the image sequence length: pass image_seq_len (tokens)")
            keys = ("base_image_seq_len", "max_image_seq_len", "base_shift", "max_shift")
            mu = calculate_shift(image_seq_len, *(config.get(k, d) for k, d in zip(keys, (256, 4096, 0.5, 1.15))))
        sigmas = None if config.get("use_flow_sigmas") else np.linspace(1.0, 1 / steps, steps)  # as FluxPipeline
        scheduler.set_timesteps(steps if sigmas is None else None, sigmas=sigmas, mu=mu)
        self.scheduler, self.image_seq_len = scheduler, image_seq_len
        self.timesteps = scheduler.timesteps  # float32 (N,): σ · 1000
        self.num_steps = len(self.timesteps)
        self.time_offset = 0

    @classmethod
    def for_spec(cls, steps: int, spec: DiffusionSpec, eta: float = 0.0, image_seq_len: int | None = None):
        import diffusers

        if eta:
            raise ValueError(f"sampler {cls.name} runs the scheduler's deterministic update: drop --eta")
        config = json.loads(spec.scheduler_config) if spec.scheduler_config else {}  # else the scheduler's defaults
        config = {k: v for k, v in config.items() if not k.startswith("_")}
        return cls(diffusers.FlowMatchEulerDiscreteScheduler.from_config(config), steps, image_seq_len)

    def model_time(self, j, batch, device="cpu"):
        return self.timesteps[j].expand(batch).to(device)  # FluxPipeline: t.expand(N), then / 1000 in the call

    def noised(self, x0, i, noise):
        sigma = self.scheduler.sigmas[i].to(x0.dtype)  # scale_noise: σ ε + (1 − σ) x0
        return sigma * noise + (1.0 - sigma) * x0

    def step(self, denoise, x, i, history, randn_like=None):
        if "scheduler" not in history:  # a fresh copy per run, entered at step i (FluxPipeline: set_begin_index(0))
            history["scheduler"] = copy.deepcopy(self.scheduler)
            history["scheduler"].set_begin_index(i)
        scheduler = history["scheduler"]
        v = denoise(x, self.model_time(i, x.shape[0], x.device), i)
        history["denoised"] = x - scheduler.sigmas[i] * v
        return scheduler.step(v, self.timesteps[i], x, return_dict=False)[0]
