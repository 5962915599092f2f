"""Generation: seeds + classes -> images, with or without a cache plan. Glue between models and samplers."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..cache.engine import CacheEngine
from ..cache.plan import CachePlan
from ..sampling import make_sampler
from ..sampling.diffusion import DiffusionSpec
from ..sampling.samplers import SAMPLERS
from ..sampling.workload import ClassWorkload
from ..utils.io import atomic_output
from ..utils.precision import check_precision, precision_scope
from ..utils.progress import progress_bar
from .compile import COMPILE_MODES, CompiledCache


@dataclass(frozen=True)
class SampleConfig:
    sampler: str = "ddim"  # a key of l2c.sampling.SAMPLERS
    steps: int = 20  # DDIM/DDPM steps, or NFE (model evaluations) for DPM-Solver
    guidance_scale: float = 1.5  # w of ε_u + w (ε_c − ε_u); 1 = off
    guidance: str = "auto"  # batched (DiT) | separate (U-ViT) | auto (the architecture's own)
    guided_channels: str = "auto"  # DiT batched only: "auto" = 3 for 4-channel latents (upstream), else all; "all"
    eta: float = 0.0  # DDIM η
    batch_size: int = 64
    dtype: str = "fp32"  # fp32 | tf32 | bf16 | fp16 (l2c.utils.precision: autocast for the half types)
    compile: bool = False  # run every block as a torch.compile graph (l2c.jobs.compile.CompiledCache)
    compile_mode: str = "default"  # torch.compile mode; "reduce-overhead" adds CUDA graphs on a GPU

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; use one of {', '.join(SAMPLERS)}")
        if self.guidance not in ("auto", "batched", "separate"):
            raise ValueError(f"guidance must be auto, batched or separate, got {self.guidance!r}")
        if self.guided_channels not in ("auto", "all"):
            raise ValueError(f"guided_channels must be 'auto' or 'all', got {self.guided_channels!r}")
        if not math.isfinite(self.guidance_scale) or self.guidance_scale < 0:
            raise ValueError(f"the guidance scale must be a finite number >= 0, got {self.guidance_scale}")
        if not math.isfinite(self.eta) or not 0 <= self.eta <= 1:
            raise ValueError(f"DDIM η must be in [0, 1], got {self.eta}")
        if self.batch_size < 1:
            raise ValueError(f"the batch size must be >= 1, got {self.batch_size}")
        check_precision(self.dtype)
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"unknown compile mode {self.compile_mode!r}; use one of {', '.join(COMPILE_MODES)}")

    def make_sampler(self, spec: DiffusionSpec):
        return make_sampler(self.sampler, self.steps, spec, self.eta)


@torch.no_grad()
def generate(
    model: nn.Module,
    spec: DiffusionSpec,
    seeds: list[int],
    classes: list[int],
    config: SampleConfig,
    plan: CachePlan | None = None,
    decode=None,
    progress: bool = True,
    runtime_cache=None,
) -> torch.Tensor:
    """Samples (N, C, H, W) in model space (pixels in [-1, 1], or decoded latents when `decode` is given).

    Image i depends only on seeds[i] and classes[i], whatever the batch size. runtime_cache(model) -> an attached
    cache with wrap(denoise) and detach() that decides at run time (l2c.cache.first_block), instead of a plan.

    `model` may also be a workload (l2c.jobs.workload: FLUX, a diffusers DiT; `spec` is then unused): its own
    sampler at config.steps, and classes[i] picks image i's prompt (flux-mnist: its class). Our models run as a
    ClassWorkload, so every model is sampled by the same loop as the schedule search runs it.
    """
    if len(classes) != len(seeds):
        raise ValueError(f"{len(seeds)} seeds but {len(classes)} classes")
    workload = _workload(model, spec, config)
    sampler = workload.sampler
    bad = [c for c in classes if not 0 <= c < workload.num_prompts]
    if bad:
        raise ValueError(f"class labels {bad[:5]} are outside 0..{workload.num_prompts - 1} for this model")
    if plan is not None and plan.num_steps != sampler.num_evaluations:
        raise ValueError(
            f"the cache plan has {plan.num_steps} steps but {config.sampler} with --steps {config.steps} "
            f"makes {sampler.num_evaluations} model evaluations: use a router trained for them"
        )
    if plan is not None and runtime_cache is not None:
        raise ValueError("give a cache plan or a run-time cache, not both")
    if config.compile and runtime_cache is not None:
        raise ValueError("compiled sampling runs a cache plan (or none), not a run-time cache")
    net = workload.model
    if runtime_cache is not None:
        engine = runtime_cache(net)
    elif config.compile:  # compiled blocks, with or without a plan (CompiledCache runs the plan itself)
        engine = CompiledCache(net, plan, config.compile_mode)
    else:
        engine = CacheEngine(net, plan) if plan is not None else None
    out = []
    try:
        batches = range(0, len(seeds), config.batch_size)
        for start in progress_bar(batches, disable=not progress or len(batches) < 2, desc="sample"):
            chosen = slice(start, start + config.batch_size)
            out.append(_sample_batch(workload, seeds[chosen], classes[chosen], config, engine))
    finally:
        if engine is not None:
            engine.detach()
    x = torch.cat(out)
    return decode(x) if decode is not None else x


def is_workload(model) -> bool:
    """Whether `model` is a denoising workload (l2c.jobs.workload) rather than one of our models."""
    return hasattr(model, "denoiser") and hasattr(model, "noise")


def network(model) -> nn.Module:
    """The module a cache attaches to: the model itself, or a workload's transformer."""
    return model.model if is_workload(model) else model


def _workload(model, spec: DiffusionSpec, config: SampleConfig):
    """The workload generation runs: one of our class-conditional models with the configured sampler and guidance
    (the runs of the schedule search, l2c.training.trajectory_error), or a given workload at config.steps."""
    if not is_workload(model):
        sampler = config.make_sampler(spec)
        return ClassWorkload(model, sampler, config.guidance_scale, None, config.guidance, config.guided_channels)
    if config.sampler != model.sampler.name or config.guidance_scale != model.cfg:
        raise ValueError(
            f"this workload samples with {model.sampler.name} at guidance {model.cfg}, not {config.sampler} at "
            f"{config.guidance_scale}"
        )
    return model.with_steps(config.steps)


def _sample_batch(workload, seeds, indices, config: SampleConfig, engine):
    z, randn_like = workload.sampling_noise(seeds)
    denoise, copies = workload.denoiser(torch.tensor(indices, dtype=torch.long))
    if engine is not None:
        denoise = engine.wrap(denoise)
    with precision_scope(workload.model, config.dtype):
        x = workload.sampler.sample(denoise, torch.cat([z] * copies), randn_like)
    return workload.images(x[: len(z)])


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] (N, C, H, W) -> uint8 (N, H, W, C), DiT's rounding: clamp(127.5 x + 128)."""
    return torch.clamp(127.5 * x + 128.0, 0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def save_grid(images: np.ndarray, path, nrow: int | None = None, scale: int = 1) -> None:
    """uint8 (N, H, W, C) -> one PNG grid with a 2-pixel border."""
    from PIL import Image

    n, h, w, c = images.shape
    nrow = nrow or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / nrow))
    pad = 2
    grid = np.zeros((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + col * (w + pad) : pad + col * (w + pad) + w] = images[
            i
        ]
    img = Image.fromarray(grid[..., 0] if c == 1 else grid)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    with atomic_output(path) as tmp:
        img.save(tmp)
