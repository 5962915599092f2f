"""Sampler geometry shared by cached sampling and router training: per model evaluation, its model time, and the
single solver step that leads into a cache evaluation (Algorithm 1 line "x_m ← SolverStep(model_full, x_s, s → m)").

* DDIM over respaced timesteps (DiT): evaluation j ↔ respaced index k = N - 1 - j; one evaluation per step.
* DPM-Solver-2 singlestep (U-ViT): K outer steps, evaluation 2i at outer time t_i and 2i + 1 at its λ-midpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .diffusion import DiffusionSpec
from .dpm_solver import time_uniform
from .schedules import NoiseScheduleVP, space_timesteps

SAMPLERS = ("ddim", "ddpm", "dpm-solver-2", "dpm-solver-2m")


@dataclass
class SamplerGeometry:
    sampler: str
    steps: int  # DDIM / DDPM steps, or NFE for DPM-Solver
    spec: DiffusionSpec

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; use one of {SAMPLERS}")
        if self.steps < 2:
            raise ValueError(f"need at least 2 steps, got {self.steps}")
        if self.sampler == "dpm-solver-2" and self.steps % 2:
            raise ValueError(f"DPM-Solver-2 singlestep needs an even NFE (2 evaluations per step), got {self.steps}")
        self.abar = self.spec.alphas_cumprod()
        if self.sampler in ("ddim", "ddpm"):
            self.timesteps = space_timesteps(self.spec.num_timesteps, str(self.steps))
        else:
            self.schedule = NoiseScheduleVP(self.spec.betas())
            k = self.steps // 2 if self.sampler == "dpm-solver-2" else self.steps
            self.outer_times = time_uniform(k)

    @property
    def time_shift(self) -> float:
        """DPM-Solver feeds t * T; a model trained on indices 0..T-1 (DiT) needs t * T - 1 (U-ViT's n = 1..T: 0)."""
        return float(self.spec.time_offset - 1)

    @property
    def num_evaluations(self) -> int:
        return self.steps

    @property
    def default_cache_schedule(self) -> str:
        return "shifted" if self.sampler == "dpm-solver-2" else "alternate"

    # --- router training: noise x0 to the evaluation before cache step m, then take the solver step into m.
    def predecessor_state(self, x0: torch.Tensor, m: int, noise: torch.Tensor) -> tuple[torch.Tensor, int]:
        """x at the start of the solver step that ends at cache evaluation m, and that step's first evaluation."""
        if self.sampler in ("ddim", "ddpm"):
            a = float(self.abar[self.timesteps[self.steps - m]])  # evaluation m - 1 ↔ k = N - m
            return a**0.5 * x0 + (1 - a) ** 0.5 * noise, m - 1
        if self.sampler != "dpm-solver-2":
            raise ValueError(f"router training supports ddim and dpm-solver-2, not {self.sampler}")
        t = self.outer_times[m // 2 - 1].double()
        a, s = self.schedule.marginal_alpha(t).item(), self.schedule.marginal_std(t).item()
        return a * x0 + s * noise, m - 2

    def model_time(self, j: int, batch: int, device="cpu") -> torch.Tensor:
        if self.sampler in ("ddim", "ddpm"):
            return torch.full(
                (batch,), self.timesteps[self.steps - 1 - j] + self.spec.time_offset, dtype=torch.long, device=device
            )
        return torch.full(
            (batch,), float(self._continuous_time(j)) * self.spec.num_timesteps + self.time_shift, device=device
        )

    def training_time(self, j: int, batch: int, device="cpu") -> torch.Tensor:
        """Model time of cache evaluation j in router training: the sampling time rounded to an integer.

        Upstream U-ViT router training feeds round(t·1000) to the teacher and the student (sampling feeds the float
        t·1000); DDIM times are integers already, so this only changes the continuous-time samplers.
        """
        return self.model_time(j, batch, device).round()

    def _continuous_time(self, j: int) -> torch.Tensor:
        if self.sampler == "dpm-solver-2m" or j % 2 == 0:
            return self.outer_times[j if self.sampler == "dpm-solver-2m" else j // 2]
        ns, i = self.schedule, j // 2
        s, t = self.outer_times[i].double(), self.outer_times[i + 1].double()
        lam_s = ns.marginal_lambda(s)
        return ns.inverse_lambda(lam_s + 0.5 * (ns.marginal_lambda(t) - lam_s)).float()

    def solver_step(self, eps_fn, x: torch.Tensor, j: int) -> torch.Tensor:
        """From the state at evaluation j to the state at the next cache evaluation (deterministic, no guidance)."""
        if self.sampler in ("ddim", "ddpm"):
            k = self.steps - 1 - j
            a, a_prev = float(self.abar[self.timesteps[k]]), float(self.abar[self.timesteps[k - 1]])
            eps = eps_fn(x, self.model_time(j, x.shape[0], x.device))
            x0 = (1 / a) ** 0.5 * x - (1 / a - 1) ** 0.5 * eps
            return a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * eps
        ns, i = self.schedule, j // 2
        s, s1, t = (
            self.outer_times[i].double(),
            self._continuous_time(j + 1).double(),
            self.outer_times[i + 1].double(),
        )
        h = ns.marginal_lambda(t) - ns.marginal_lambda(s)
        al = {k: ns.marginal_alpha(v).item() for k, v in (("s", s), ("s1", s1), ("t", t))}
        sg = {k: ns.marginal_std(v).item() for k, v in (("s", s), ("s1", s1), ("t", t))}
        d_s = (x - sg["s"] * eps_fn(x, self.model_time(j, x.shape[0], x.device))) / al["s"]
        x_s1 = (sg["s1"] / sg["s"]) * x - al["s1"] * torch.expm1(-0.5 * h).item() * d_s
        d_s1 = (x_s1 - sg["s1"] * eps_fn(x_s1, self.model_time(j + 1, x.shape[0], x.device))) / al["s1"]
        phi = torch.expm1(-h).item()
        return (sg["t"] / sg["s"]) * x - al["t"] * phi * d_s - al["t"] * phi * (d_s1 - d_s)
