"""The class-conditional denoising workload (our DiT / U-ViT); see l2c.jobs.workload for what a workload is and for
the diffusers text-to-image one."""

from __future__ import annotations

import torch

from .guidance import guided_denoiser
from .seeds import StackedRandomGenerator


class ClassWorkload:
    """Image i has class indices[i] % num_classes. `guidance` / `guided_channels`: as l2c.sampling.guidance's
    guided_denoiser ("auto": the architecture's own form; DiT's 3 guided channels of a 4-channel latent)."""

    def __init__(
        self,
        model,
        sampler,
        guidance_scale: float,
        num_classes: int | None = None,
        guidance: str = "auto",
        guided_channels: str = "auto",
    ):
        self.model, self.sampler, self.guidance_scale = model, sampler, guidance_scale
        self.guidance, self.guided_channels = guidance, guided_channels
        self.num_classes = model.null_class if num_classes is None else num_classes  # labels 0 .. null - 1

    @property
    def cfg(self) -> float:
        return self.guidance_scale

    @property
    def num_prompts(self) -> int:
        return self.num_classes

    def noise(self, seeds: list[int]) -> torch.Tensor:
        return self.sampling_noise(seeds)[0]

    def sampling_noise(self, seeds: list[int]):
        """(x, randn_like): the initial state and the source a stochastic sampler draws its later noise from, both
        from each image's own generator (image i depends on seeds[i] only, whatever the batch)."""
        param = next(self.model.parameters())
        m = self.model
        shape = (len(seeds), m.in_channels, m.input_size, m.input_size)
        generator = StackedRandomGenerator(seeds, param.device)
        return generator.randn(shape, dtype=param.dtype, device=param.device), generator.randn_like

    def denoiser(self, indices: torch.Tensor):
        y = indices.to(next(self.model.parameters()).device) % self.num_classes
        return guided_denoiser(self.model, y, self.guidance_scale, self.guidance, self.guided_channels)

    def images(self, x: torch.Tensor) -> torch.Tensor:
        return x
