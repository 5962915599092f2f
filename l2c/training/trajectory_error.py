"""The schedule search's error: how far a plan's samples land from the uncached ones, on fixed held-out noise.

(The search itself, which asks this error about candidate plans, is l2c.training.schedule_search.)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from ..cache.engine import CacheEngine
from ..cache.hooks import plan_rows
from ..cache.macs import plan_peak_bytes
from ..cache.plan import CachePlan
from ..sampling.samplers import Sampler
from ..sampling.workload import ClassWorkload
from ..utils import distributed


class TrajectoryError:
    """Mean over images of log(MSE) of a plan's final samples against the uncached ones, from fixed held-out noise:
    −PSNR up to constants, so every image counts alike (a plain MSE is carried by the few worst images, and a
    search on it traded typical images for them: on dit-mnist it lowered the held-out MSE and the PSNR of 500
    evaluation images alike).

    The runs are those of `workload` (l2c.jobs.workload: a diffusers transformer with its prompts, say), or of the
    class-conditional `model` with `sampler` and `guidance_scale` where none is given.

    `clip`: the range saved images are clipped to (pixel models: (−1, 1)); both sides are clipped before the error,
    so that what no saved image shows (a background pixel at −1.1 against −1.05) does not count.

    Resuming: a search's candidates differ from the plan it keeps (adopt()) from some evaluation on, so the run of a
    candidate starts from a snapshot of the kept plan's run taken before that evaluation (sampler state and stored
    outputs) instead of from the noise. The samples are bit-identical to a run from the start (tested); the run is
    shorter by the evaluations skipped. `resume_every`: sampler steps between snapshots (None: about ten snapshots
    per run; 0: never resume). Each snapshot holds the stored outputs once more (about 0.1 GB at 64 dit-mnist
    images).

    `reference_sampler`: the sampler of the uncached reference, where it is not the plan's own (None): a schedule
    searched on 14 steps against the 28-step images learns to land where the 28-step sampler does, not where the
    14-step one does. Both samplers take the same noise and the same denoiser."""

    def __init__(
        self,
        model,
        sampler: Sampler,
        guidance_scale: float,
        images: int,
        seed: int,
        clip: tuple[float, float] | None = None,
        resume_every: int | None = None,
        workload=None,
        reference_sampler: Sampler | None = None,
    ):
        workload = workload or ClassWorkload(model, sampler, guidance_scale)
        sampler = workload.sampler
        if sampler.stochastic:
            raise ValueError(f"{sampler.name} draws noise: the search compares deterministic runs (use η = 0)")
        self.model, self.sampler, self.clip = workload.model, sampler, clip
        self.resume_every = -(-sampler.num_steps // 10) if resume_every is None else resume_every
        # Under torchrun each process runs images rank, rank + world, ...; __call__ gathers their errors in image
        # order, so the error (and every choice of the search) is that of one process.
        self.images = images
        mine = list(range(distributed.rank(), images, distributed.world_size()))
        self.z = workload.noise([seed + i for i in mine])
        self.denoise, self.copies = workload.denoiser(torch.tensor(mine, dtype=torch.long))
        self.reference = self.samples(None, reference_sampler or sampler)
        self.evaluations = 0
        self.memory_cap = None  # see cap_memory
        self._kept: _Run | None = None  # the run candidates resume from (adopt)
        self._last: _Run | None = None  # the run of the plan measured last

    @torch.no_grad()
    def samples(self, plan: CachePlan | None, sampler: Sampler | None = None) -> torch.Tensor:
        """Final samples of the held-out noise with `plan` (None: uncached, by `sampler` if given), clipped as the
        error sees them."""
        x = torch.cat([self.z] * self.copies)
        if plan is None:
            x = (sampler or self.sampler).sample(self.denoise, x)
        else:
            x, self._last = self._run(plan)
        x = x[: len(self.z)]
        return x if self.clip is None else x.clamp(*self.clip)

    def cap_memory(self, sublayer_outputs: list[float], max_bytes: float, element_size: int, calls: int) -> None:
        """From now on a plan whose run would store more than `max_bytes` (per image: l2c.cache.macs.plan_peak_bytes
        at batch 1, `element_size` bytes per element, `calls` model calls per evaluation) measures as an infinite
        error, so no search move chooses it."""
        self.memory_cap = (sublayer_outputs, max_bytes, element_size, calls)

    def fits_memory(self, plan: CachePlan) -> bool:
        if self.memory_cap is None:
            return True
        outputs, max_bytes, element_size, calls = self.memory_cap
        return plan_peak_bytes(plan, outputs, 1, element_size, calls) <= max_bytes

    def __call__(self, plan: CachePlan) -> float:
        if not self.fits_memory(plan):
            return float("inf")
        self.evaluations += 1
        local = per_image_mse(self.samples(plan), self.reference).clamp_min(1e-20).log()
        return float(distributed.gather_strided(local, self.images).mean())

    def adopt(self, plan: CachePlan) -> None:
        """Resume later candidates from the run of `plan` (the plan a search keeps): the run measured last when it
        was this plan's, else one run more."""
        rows = plan_rows(plan)
        if self._kept is not None and self._kept.rows == rows and self._kept.form == plan.form:
            return  # kept already (a search step handing its plan to the next)
        if self._last is None or self._last.rows != rows or self._last.form != plan.form:
            self.evaluations += 1
            self._last = self._run(plan)[1]
        self._kept = self._last

    @torch.no_grad()  # adopt() runs it too: snapshots must hold plain tensors (they are deep-copied)
    def _run(self, plan: CachePlan) -> tuple[torch.Tensor, _Run]:
        """(final samples, unclipped; the run's record for later resumes)."""
        rows = plan_rows(plan)
        run = _Run(rows, plan.form, {})
        start, state = 0, None
        if self.resume_every and self._kept is not None and self._kept.form == plan.form:
            agree = next((j for j, (a, b) in enumerate(zip(rows, self._kept.rows)) if a != b), len(rows))
            usable = [i for i in self._kept.snapshots if i * self.sampler.evaluations_per_step <= agree]
            if usable:
                start = max(usable)
                state = self._kept.snapshots[start]
                run.snapshots = {i: self._kept.snapshots[i] for i in usable}  # valid for this plan as well
        with CacheEngine(self.model, plan) as engine:
            denoise = engine.wrap(self.denoise)
            if state is None:
                x, history = torch.cat([self.z] * self.copies), {}
            else:
                x, history, stored = state
                history = copy.deepcopy(history)
                engine.restore(stored)
            for i in range(start, self.sampler.num_steps):
                if self.resume_every and i % self.resume_every == 0 and i not in run.snapshots and i > 0:
                    run.snapshots[i] = (x, copy.deepcopy(history), engine.snapshot())
                x = self.sampler.step(denoise, x, i, history)
        return x, run


@dataclass
class _Run:
    rows: list[tuple]  # plan_rows of the plan run
    form: str  # its forecasts' form (what the stored differences mean)
    snapshots: dict[int, tuple]  # sampler step i -> (x, sampler history, engine snapshot) before step i


def per_image_mse(samples: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """(N,) mean squared error of each sample against its reference, in float64."""
    return (samples - reference).double().square().flatten(1).mean(1)
