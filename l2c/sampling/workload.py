"""The class-conditional denoising workload (our DiT / U-ViT); see l2c.jobs.workload for what a workload is and for
the diffusers text-to-image one."""

from __future__ import annotations

import torch

from .guidance import guided_denoiser
from .seeds import StackedRandomGenerator


class ClassWorkload:
    def __init__(self, model, sampler, guidance_scale: float, num_classes: int | None = None):
        self.model, self.sampler, self.guidance_scale = model, sampler, guidance_scale
        self.num_classes = model.null_class if num_classes is None else num_classes  # labels 0 .. null - 1

    def noise(self, seeds: list[int]) -> torch.Tensor:
        param = next(self.model.parameters())
        m = self.model
        shape = (len(seeds), m.in_channels, m.input_size, m.input_size)
        return StackedRandomGenerator(seeds, param.device).randn(shape, dtype=param.dtype, device=param.device)

    def denoiser(self, indices: torch.Tensor):
        y = indices.to(next(self.model.parameters()).device) % self.num_classes
        return guided_denoiser(self.model, y, self.guidance_scale)
