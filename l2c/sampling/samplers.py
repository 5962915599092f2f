"""The samplers, one class each, registered by name in SAMPLERS. Sampling, cached sampling, router training and
compare all drive them through the same `step`.

A sampler owns its time grid (respacing, or DPM-Solver's continuous outer times), the model time of each model
evaluation, and its number of evaluations. `step(denoise, x, i, history)` advances the state over solver step i;
`sample` is the loop over `step`. `denoise(x, t, j) -> model output` takes model times t (N,) and the evaluation index
j in sampling order (0 = first, noisiest) — the index a cache plan is written in. The first C output channels are ε.

* DDIM (Song et al. 2021) and ancestral DDPM with ADM's learned-range variance, over respaced timesteps: one
  evaluation per step; evaluation j is respaced index k = N - 1 - j; the model sees the ORIGINAL timestep.
* DPM-Solver++ (Lu et al. 2022), data prediction: singlestep order 2 (U-ViT's: r1 = 0.5, time-uniform, two
  evaluations per step, at s and at its λ-midpoint) and multistep 2M (one evaluation per step). The model sees
  t·T + shift (U-ViT: t·1000; a model trained on indices 0..T-1 such as DiT: t·1000 − 1).
"""

from __future__ import annotations

import copy
import json
from typing import Callable, ClassVar

import numpy as np
import torch

from ..models import conventions
from ..utils.progress import progress_bar
from .diffusion import DiffusionSpec
from .gaussian import Posterior
from .schedules import NoiseScheduleVP, space_timesteps

Denoiser = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
RandnLike = Callable[[torch.Tensor], torch.Tensor]


class Sampler:
    name: ClassVar[str]
    evaluations_per_step: ClassVar[int] = 1
    cache_schedule: ClassVar[str] = "alternate"  # the paper's cache steps for it (l2c.cache.plan.cache_steps_for)
    stochastic: ClassVar[bool] = False

    num_steps: int

    @property
    def num_evaluations(self) -> int:
        return self.num_steps * self.evaluations_per_step

    def model_time(self, j: int, batch: int, device="cpu") -> torch.Tensor:
        raise NotImplementedError

    def training_time(self, j: int, batch: int, device="cpu") -> torch.Tensor:
        """Model time of cache evaluation j in router training: the sampling time rounded to an integer.

        Upstream U-ViT router training feeds round(t·1000) to the teacher and the student (sampling feeds the float
        t·1000); DDIM times are integers already, so this only changes the continuous-time samplers.
        """
        return self.model_time(j, batch, device).round()

    def noised(self, x0: torch.Tensor, i: int, noise: torch.Tensor) -> torch.Tensor:
        """The forward process at the start of step i: sqrt(ᾱ) x0 + sqrt(1 − ᾱ) ε (α x0 + σ ε in DPM-Solver's terms)."""
        raise NotImplementedError

    def step_into(self, j: int) -> int:
        """The step whose evaluations lead into evaluation j (j must start a step)."""
        if j % self.evaluations_per_step or not 0 < j < self.num_evaluations:
            raise ValueError(f"evaluation {j} does not start a step of {self.name} with {self.num_evaluations}")
        return j // self.evaluations_per_step - 1

    def step(self, denoise: Denoiser, x, i: int, history: dict, randn_like: RandnLike | None = None):
        """The state after step i. `history` carries what a multistep method keeps between steps."""
        raise NotImplementedError

    def sample(
        self,
        denoise: Denoiser,
        x: torch.Tensor,
        randn_like: RandnLike | None = None,
        callback: Callable[[dict], None] | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        if self.stochastic and randn_like is None:
            raise ValueError(f"{self.name} draws noise: pass randn_like (per-image noise) for reproducible results")
        history: dict = {}
        for i in progress_bar(range(self.num_steps), disable=not progress, desc=self.name):
            x = self.step(denoise, x, i, history, randn_like)
            if callback is not None:
                callback({"step": i, "x": x, "denoised": history.get("denoised")})
        return x


# --------------------------------------------------------------------------------------------- DDIM / DDPM
class DDIM(Sampler):
    """x0 = sqrt(1/ᾱ) x − sqrt(1/ᾱ − 1) ε;  x' = sqrt(ᾱ') x0 + sqrt(1 − ᾱ' − σ²) ε + σ z (Song et al. Eq. 12),
    σ = η sqrt((1 − ᾱ')/(1 − ᾱ)) sqrt(1 − ᾱ/ᾱ'); ᾱ' of the last step is 1."""

    name = "ddim"

    def __init__(self, timesteps: list[int], alphas_cumprod: np.ndarray, time_offset: int = 0, eta: float = 0.0):
        self.timesteps = list(timesteps)  # sorted original timesteps kept by the respacing
        self.abar = np.asarray(alphas_cumprod, dtype=np.float64)[np.asarray(self.timesteps)]
        self.time_offset = time_offset
        self.eta = eta
        self.num_steps = len(self.timesteps)
        self.stochastic = eta > 0

    @classmethod
    def for_spec(cls, steps: int, spec: DiffusionSpec, eta: float = 0.0):
        """Respaced as DiT's `create_diffusion(str(steps))`: one section, stride (T − 1)/(N − 1)."""
        return cls(space_timesteps(spec.num_timesteps, str(steps)), spec.alphas_cumprod(), spec.time_offset, eta)

    def _index(self, j: int) -> int:
        return self.num_steps - 1 - j  # respaced index k of evaluation j

    def model_time(self, j, batch, device="cpu"):
        t = self.timesteps[self._index(j)] + self.time_offset
        return torch.full((batch,), t, dtype=torch.long, device=device)

    def noised(self, x0, i, noise):
        a = float(self.abar[self._index(i)])
        return a**0.5 * x0 + (1 - a) ** 0.5 * noise

    def step(self, denoise, x, i, history, randn_like=None):
        k = self._index(i)
        eps = denoise(x, self.model_time(i, x.shape[0], x.device), i)[:, : x.shape[1]]
        a, a_prev = self.abar[k], (self.abar[k - 1] if k > 0 else 1.0)
        x0 = (1 / a) ** 0.5 * x - (1 / a - 1) ** 0.5 * eps
        sigma = self.eta * ((1 - a_prev) / (1 - a)) ** 0.5 * (1 - a / a_prev) ** 0.5
        x = a_prev**0.5 * x0 + (1 - a_prev - sigma**2) ** 0.5 * eps
        if sigma > 0:
            x = x + sigma * randn_like(x)
        history["denoised"] = x0
        return x


class DDPM(DDIM):
    """Ancestral sampling p(x_{k−1} | x_k) with the model's learned-range variance (fixed-small when not learned)."""

    name = "ddpm"
    stochastic = True

    def __init__(self, timesteps, alphas_cumprod, time_offset=0, eta=0.0):
        super().__init__(timesteps, alphas_cumprod, time_offset)
        self.stochastic = True  # DDIM's __init__ set it from η
        self.posterior = Posterior(self.abar)

    def step(self, denoise, x, i, history, randn_like=None):
        k = self._index(i)
        C = x.shape[1]
        kk = torch.full((x.shape[0],), k, dtype=torch.long)
        out = denoise(x, self.model_time(i, x.shape[0], x.device), i)
        x0 = self.posterior.x0_from_eps(x, kk, out[:, :C])
        mean = self.posterior.mean(x0, x, kk)
        log_var = self.posterior.model_log_variance(out[:, C : 2 * C] if out.shape[1] >= 2 * C else None, kk, x)
        history["denoised"] = x0
        return mean + (torch.exp(0.5 * log_var) * randn_like(x) if k > 0 else 0.0)


# --------------------------------------------------------------------------------------------- DPM-Solver++
def time_uniform(num_steps: int, t_start: float = 1.0, t_end: float = 1e-3) -> torch.Tensor:
    """num_steps + 1 outer times from t_start to t_end. Float32, as U-ViT builds them (its router keys depend on it)."""
    return torch.linspace(t_start, t_end, num_steps + 1, dtype=torch.float32)


class _DPMSolver(Sampler):
    def __init__(self, outer_times: torch.Tensor, schedule: NoiseScheduleVP, time_scale=1000.0, time_shift=0.0):
        self.outer_times = outer_times
        self.schedule = schedule
        self.time_scale, self.time_shift = time_scale, time_shift
        self.num_steps = len(outer_times) - 1

    @classmethod
    def for_spec(cls, steps: int, spec: DiffusionSpec, eta: float = 0.0):
        if steps % cls.evaluations_per_step:
            raise ValueError(f"{cls.name} makes {cls.evaluations_per_step} evaluations per step: use an even NFE")
        outer = time_uniform(steps // cls.evaluations_per_step)
        # A model trained on indices 0..T-1 (DiT) is fed t·T − 1; U-ViT's n = 1..T is fed t·T.
        return cls(outer, NoiseScheduleVP(spec.betas()), spec.num_timesteps, float(spec.time_offset - 1))

    def _time_of(self, j: int) -> torch.Tensor:
        raise NotImplementedError

    def model_time(self, j, batch, device="cpu"):
        return torch.full((batch,), float(self._time_of(j)) * self.time_scale + self.time_shift, device=device)

    def noised(self, x0, i, noise):
        t = self.outer_times[i].double()
        return self.schedule.marginal_alpha(t).item() * x0 + self.schedule.marginal_std(t).item() * noise

    def _data_prediction(self, denoise, x, t: torch.Tensor, j: int) -> torch.Tensor:
        """x̂0 = (x − σ_t ε) / α_t at the float32 time t, as the upstream solver's tensors hold it."""
        t_model = torch.full((x.shape[0],), float(t) * self.time_scale + self.time_shift, device=x.device)
        eps = denoise(x, t_model, j)[:, : x.shape[1]]
        alpha, sigma = self.schedule.marginal_alpha(t.double()).item(), self.schedule.marginal_std(t.double()).item()
        return (x - sigma * eps) / alpha


class DPMSolver2S(_DPMSolver):
    """Singlestep order 2, r1 = 0.5 (U-ViT's sampler; docs/upstream.md §3.2):
    with h = λ_t − λ_s and s1 = λ⁻¹(λ_s + h/2),
    x_s1 = (σ_s1/σ_s) x − α_s1 expm1(−h/2) D(x, s);
    x_t = (σ_t/σ_s) x − α_t expm1(−h) D(x, s) − α_t expm1(−h) (D(x_s1, s1) − D(x, s))."""

    name = "dpm-solver-2"
    evaluations_per_step = 2
    cache_schedule = "shifted"
    r1 = 0.5

    def _midpoint(self, i: int) -> torch.Tensor:
        ns = self.schedule
        s, t = self.outer_times[i].double(), self.outer_times[i + 1].double()
        lam_s = ns.marginal_lambda(s)
        return ns.inverse_lambda(lam_s + self.r1 * (ns.marginal_lambda(t) - lam_s))

    def _time_of(self, j):
        return self.outer_times[j // 2] if j % 2 == 0 else self._midpoint(j // 2).float()

    def step(self, denoise, x, i, history, randn_like=None):
        ns = self.schedule
        s, t = self.outer_times[i].double(), self.outer_times[i + 1].double()
        h = ns.marginal_lambda(t) - ns.marginal_lambda(s)
        s1 = self._midpoint(i)
        model_s = self._data_prediction(denoise, x, self.outer_times[i], 2 * i)
        sig_s, sig_s1, sig_t = (ns.marginal_std(v).item() for v in (s, s1, t))
        a_s1, a_t = ns.marginal_alpha(s1).item(), ns.marginal_alpha(t).item()
        phi_11, phi_1 = torch.expm1(-self.r1 * h).item(), torch.expm1(-h).item()
        x_s1 = (sig_s1 / sig_s) * x - (a_s1 * phi_11) * model_s
        model_s1 = self._data_prediction(denoise, x_s1, s1.float(), 2 * i + 1)
        history["denoised"] = model_s1
        return (sig_t / sig_s) * x - (a_t * phi_1) * model_s - (0.5 / self.r1) * (a_t * phi_1) * (model_s1 - model_s)


class DPMSolver2M(_DPMSolver):
    """Multistep 2M (DPM-Solver++(2M)): first step first-order, lower order at the end when fewer than 10 steps."""

    name = "dpm-solver-2m"
    lower_order_final = True

    def _time_of(self, j):
        return self.outer_times[j]

    def step(self, denoise, x, i, history, randn_like=None):
        # Evaluation i happens at the start of step i, never at the end of step i − 1: router training enters step
        # m − 1 from a noised image and needs the evaluation before m to be m − 1's (what the cache then holds).
        ns, times, steps = self.schedule, self.outer_times, self.num_steps
        models = history.setdefault("models", [])  # data predictions of the last two evaluations
        models.append(self._data_prediction(denoise, x, times[i], i))
        del models[:-2]
        lam = lambda n: ns.marginal_lambda(times[n].double())  # noqa: E731
        t = times[i + 1].double()
        sig_prev, sig_t = ns.marginal_std(times[i].double()).item(), ns.marginal_std(t).item()
        a_t = ns.marginal_alpha(t).item()
        h = lam(i + 1) - lam(i)
        phi_1 = torch.expm1(-h).item()
        order = 1 if len(models) < 2 else 2  # first-order first step (also when entered from a noised image)
        if self.lower_order_final and steps < 10:
            order = min(order, steps - i)
        x = (sig_t / sig_prev) * x - (a_t * phi_1) * models[-1]
        if order == 2:
            r0 = ((lam(i) - lam(i - 1)) / h).item()
            x = x - 0.5 * (a_t * phi_1) * (1.0 / r0) * (models[-1] - models[-2])
        history["denoised"] = models[-1]
        return x


# --------------------------------------------------------------------------------------------- diffusers schedulers
def scheduler_settings(spec: DiffusionSpec) -> dict:
    """diffusers scheduler settings for a model of `spec` (ε-prediction, its β schedule), as `l2c export-diffusers`
    writes them: DDIMScheduler's defaults otherwise ("leading" spacing, the last step to ᾱ = 1)."""
    linear = spec.schedule == "linear"
    return dict(
        num_train_timesteps=spec.num_timesteps,
        beta_schedule="linear" if linear else "scaled_linear",
        beta_start=1e-4 if linear else 0.00085,
        beta_end=0.02 if linear else 0.012,
        prediction_type="epsilon",
        clip_sample=False,
        set_alpha_to_one=True,
        steps_offset=0,
    )


class DiffusersScheduler(Sampler):
    """A diffusers scheduler as a sampler: what a pipeline's own loop computes, so that a router is trained for (and
    sampled with) the timesteps and update rule of the scheduler the pipeline runs.

    Built from the model's folder (spec.scheduler_config) or from scheduler_settings(spec), with `overrides` on top.
    Evaluation j is the scheduler's timesteps[j]; the model is fed that timestep (+ the spec's time offset). A step
    taken from a fresh state (router training enters a step from a noised image) starts a fresh copy of the scheduler,
    which a multistep scheduler treats as its first step: first order, as `DPMSolver2M` does at i = 0.
    """

    scheduler_class: ClassVar[str]
    overrides: ClassVar[dict] = {}

    def __init__(self, scheduler, steps: int, time_offset: int = 0):
        if getattr(scheduler, "order", 1) != 1:
            raise ValueError(
                f"{type(scheduler).__name__} calls the model {scheduler.order} times per step; l2c "
                "drives single-call schedulers (DDIM, DPM-Solver multistep, Euler)"
            )
        scheduler.set_timesteps(steps)
        self.scheduler = scheduler
        self.timesteps = [int(t) for t in scheduler.timesteps]
        self.num_steps = len(self.timesteps)
        self.time_offset = time_offset

    @classmethod
    def for_spec(cls, steps: int, spec: DiffusionSpec, eta: float = 0.0):
        try:
            import diffusers
        except ImportError as e:
            raise ValueError(f"sampler {cls.name} is a diffusers scheduler: pip install diffusers") from e
        if eta:
            raise ValueError(f"sampler {cls.name} runs the scheduler's deterministic update: drop --eta")
        config = json.loads(spec.scheduler_config) if spec.scheduler_config else scheduler_settings(spec)
        config = {k: v for k, v in config.items() if not k.startswith("_")}
        scheduler = getattr(diffusers, cls.scheduler_class).from_config({**config, **cls.overrides})
        return cls(scheduler, steps, spec.time_offset)

    def model_time(self, j, batch, device="cpu"):
        return torch.full((batch,), self.timesteps[j] + self.time_offset, dtype=torch.long, device=device)

    def training_time(self, j, batch, device="cpu"):
        return self.model_time(j, batch, device)

    def noised(self, x0, i, noise):
        return self.scheduler.add_noise(x0, noise, torch.tensor([self.timesteps[i]]))

    def step(self, denoise, x, i, history, randn_like=None):
        if "scheduler" not in history:  # a copy per run: the pipeline's scheduler state starts clean every call
            history["scheduler"] = copy.deepcopy(self.scheduler)
        scheduler, t = history["scheduler"], self.timesteps[i]
        model_in = scheduler.scale_model_input(x, t)
        eps = denoise(model_in, self.model_time(i, x.shape[0], x.device), i)[:, : x.shape[1]]
        out = scheduler.step(eps, t, x)
        history["denoised"] = getattr(out, "pred_original_sample", None)
        return out.prev_sample


class DiffusersDDIM(DiffusersScheduler):
    name = "diffusers-ddim"
    scheduler_class = "DDIMScheduler"


class DiffusersDPMSolverMultistep(DiffusersScheduler):
    """DPMSolverMultistepScheduler as pipelines configure it: DPM-Solver++, order 2."""

    name = "diffusers-dpmpp-2m"
    scheduler_class = "DPMSolverMultistepScheduler"
    overrides = {"algorithm_type": "dpmsolver++", "solver_order": 2}


SAMPLERS: dict[str, type[Sampler]] = {
    cls.name: cls for cls in (DDIM, DDPM, DPMSolver2S, DPMSolver2M, DiffusersDDIM, DiffusersDPMSolverMultistep)
}  # + l2c.sampling.flow_matching's sampler, registered by the package (it builds on DiffusersScheduler)


def default_sampler(model, spec: DiffusionSpec) -> str:
    """The sampler a model runs with unless told otherwise: its diffusers folder's scheduler where l2c drives that
    one (a router is then trained for what the pipeline runs), else its architecture's (DDIM for DiT, DPM-Solver-2
    for U-ViT)."""
    if spec.scheduler_config:
        name = json.loads(spec.scheduler_config).get("_class_name")
        for key, sampler in SAMPLERS.items():
            if getattr(sampler, "scheduler_class", None) == name:
                return key
    return conventions(model).sampler


def make_sampler(
    name: str, steps: int, spec: DiffusionSpec, eta: float = 0.0, image_seq_len: int | None = None
) -> Sampler:
    """The sampler `name` with `steps` steps (DDIM / DDPM) or evaluations (DPM-Solver) for a model of `spec`;
    `image_seq_len` (packed image tokens) sets a flow-matching scheduler's dynamic shift, and is ignored by others."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; use one of {', '.join(SAMPLERS)}")
    if steps < 2:
        raise ValueError(f"need at least 2 steps, got {steps}")
    if getattr(SAMPLERS[name], "dynamic_shift", False):
        return SAMPLERS[name].for_spec(steps, spec, eta, image_seq_len)
    return SAMPLERS[name].for_spec(steps, spec, eta)


# --------------------------------------------------------------------------------------------- one-call forms
# For callers holding raw grids (the reference tests, scripts): build the sampler and run its loop.
def sample_ddim(denoise, x, timesteps, *, alphas_cumprod, eta=0.0, randn_like=None, time_offset=0, callback=None):
    return DDIM(timesteps, alphas_cumprod, time_offset, eta).sample(denoise, x, randn_like, callback)


def sample_ddpm(denoise, x, timesteps, *, alphas_cumprod, randn_like, time_offset=0, callback=None):
    return DDPM(timesteps, alphas_cumprod, time_offset).sample(denoise, x, randn_like, callback)


def sample_dpm_solver(
    denoise, x, timesteps, *, schedule, method="singlestep", time_scale=1000.0, time_shift=0.0, callback=None
):
    """Singlestep: len(timesteps) − 1 = K outer steps of two evaluations; multistep (2M): one evaluation each."""
    methods = {"singlestep": DPMSolver2S, "multistep": DPMSolver2M}
    if method not in methods:
        raise ValueError(f"unknown DPM-Solver method {method!r}; use 'singlestep' or 'multistep'")
    return methods[method](timesteps, schedule, time_scale, time_shift).sample(denoise, x, callback=callback)
