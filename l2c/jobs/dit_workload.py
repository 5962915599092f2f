"""The workload of a diffusers DiTTransformer2DModel driven on itself, as DiTPipeline drives it (l2c.jobs.workload
says what a workload is).

    workload, meta = dit_workload("my-dit/", steps=20, cfg=4.0)     # a transformer or a pipeline folder

A DiT trained in diffusers has its own timestep / label embedder in every block, which our DiT class (one shared
embedder) cannot hold, so such a folder is not converted: the search, and sampling, call the folder's transformer.
The guidance is DiTPipeline's: one doubled batch [x; x] with labels [y; null] (null = the label table's extra row,
1000 for ImageNet DiTs), ε_u + w (ε_c − ε_u) on every latent channel, learned-σ channels dropped by the sampler.
Image i draws its noise from seed i alone, as l2c samples our models, so a run equals DiTPipeline called once per
image with that seed's generator (tests/test_dit_workload.py).
"""

from __future__ import annotations

import json

import torch

from ..cache.macs import MacProfile, measure_macs
from ..sampling.diffusion import DiffusionSpec
from ..sampling.guidance import batched_cfg_denoiser, conditional_denoiser
from ..sampling.samplers import SAMPLERS, make_sampler
from ..sampling.seeds import StackedRandomGenerator


class DiTWorkload:
    def __init__(self, transformer, sampler, cfg: float, spec: DiffusionSpec | None = None, eta: float = 0.0):
        name = type(transformer).__name__
        if name != "DiTTransformer2DModel":
            raise TypeError(f"DiTWorkload drives DiTTransformer2DModel, not {name}")
        config = transformer.config
        if config.num_embeds_ada_norm is None:
            raise ValueError("this DiTTransformer2DModel has no class labels (num_embeds_ada_norm is None)")
        self.model, self.sampler, self.cfg, self.spec, self.eta = transformer, sampler, cfg, spec, eta
        self.num_classes = config.num_embeds_ada_norm  # labels 0 .. num - 1; row num is the null label
        self.shape = (config.in_channels, config.sample_size, config.sample_size)
        self.pixel_space = config.in_channels in (1, 3)  # a latent DiT's samples need its VAE

    @property
    def num_prompts(self) -> int:  # what l2c sample's --classes index
        return self.num_classes

    def with_steps(self, steps: int) -> DiTWorkload:
        """The same workload sampled with `steps` steps (a new sampler: a scheduler's timesteps change with them)."""
        if steps == self.sampler.num_steps:
            return self
        sampler = make_sampler(self.sampler.name, steps, self.spec, self.eta)
        return DiTWorkload(self.model, sampler, self.cfg, self.spec, self.eta)

    def images(self, x: torch.Tensor) -> torch.Tensor:
        return x.float()  # the sampler's state is the model's own space (pixels, or latents for the VAE)

    def noise(self, seeds: list[int]) -> torch.Tensor:
        return self.sampling_noise(seeds)[0]

    def sampling_noise(self, seeds: list[int]):
        """(x, randn_like): the initial state and where a stochastic sampler (DDPM, η > 0) draws on, per image."""
        param = next(self.model.parameters())
        generator = StackedRandomGenerator(seeds, param.device)
        return generator.randn((len(seeds), *self.shape), dtype=param.dtype, device=param.device), generator.randn_like

    def denoiser(self, indices: torch.Tensor):
        transformer = self.model
        y = indices.to(next(transformer.parameters()).device) % self.num_classes

        def model(x, t, labels):
            return transformer(x, timestep=t, class_labels=labels, return_dict=False)[0]

        if self.cfg == 1.0:
            return conditional_denoiser(model, y), 1
        return batched_cfg_denoiser(model, y, self.cfg, self.num_classes, self.shape[0]), 2


def dit_workload(
    folder: str,
    sampler: str | None = None,
    steps: int = 20,
    cfg: float = 1.0,
    eta: float = 0.0,
    device="cpu",
) -> tuple[DiTWorkload, dict]:
    """(workload, metadata) of a DiTTransformer2DModel folder, sampled with its own scheduler where l2c drives it
    (diffusers-ddim / diffusers-dpmpp-2m), else `sampler` (default: DDIM, DiT's)."""
    from ..integrations.diffusers_convert import load_diffusers_folder

    transformer, meta = load_diffusers_folder(folder, as_dit=False)
    spec = DiffusionSpec(**meta["diffusion"])
    name = sampler or _folder_sampler(spec)
    workload = DiTWorkload(transformer.to(device), make_sampler(name, steps, spec, eta), cfg, spec, eta)
    info = {
        "model": str(folder),
        "class": type(transformer).__name__,
        "sampler": name,
        "path": meta["path"],
        "pixel_space": workload.pixel_space,
    }
    return workload, info


def _folder_sampler(spec: DiffusionSpec) -> str:
    """The folder's own scheduler where l2c drives it, else DDIM (DiT's)."""
    scheduler = json.loads(spec.scheduler_config).get("_class_name") if spec.scheduler_config else None
    return next((k for k, s in SAMPLERS.items() if getattr(s, "scheduler_class", None) == scheduler), "ddim")


def dit_macs(workload: DiTWorkload) -> MacProfile:
    """The MAC profile of one unguided call on one image, measured (as the paper counts)."""
    x = workload.noise([0])
    denoise, _ = DiTWorkload(workload.model, workload.sampler, 1.0).denoiser(torch.tensor([0]))
    t = workload.sampler.model_time(0, 1, x.device)
    return measure_macs(workload.model, lambda: denoise(x, t, 0))
