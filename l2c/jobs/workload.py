"""A denoising workload: what a sampling run feeds the model, so that generation, comparisons, router training and the
schedule search drive the very same computation, on our models or on a diffusers transformer itself.

A workload holds the model the cache attaches to and the sampler, and answers two questions:

    x = workload.noise(seeds)                      # the initial state of images seeds[i] (image i: seed i only)
    denoise, copies = workload.denoiser(indices)   # denoise(x, t, j) for images `indices`: their conditioning,
                                                   # the guidance form, as many model calls per evaluation as it needs

`copies` is 2 where the sampler state is a doubled batch (DiT's batched guidance), else 1.

* ClassWorkload (l2c.sampling.workload): class-conditional models (our DiT / U-ViT): image i has class
  indices[i] % num_classes, guidance as the architecture runs it (batched or two calls).
* FluxWorkload: a FLUX-family diffusers transformer driven as FluxPipeline drives it with precomputed prompt
  embeddings (packed latents, RoPE ids, timestep / 1000; true CFG as two calls named "cond" / "uncond"); image i takes
  prompt indices[i] % prompts. Its noise is drawn as FluxPipeline draws it from one generator per image, so a run
  equals the pipeline's (tests/test_flow_matching.py).
"""

from __future__ import annotations

import copy

import torch

from ..sampling.seeds import StackedRandomGenerator
from ..sampling.workload import ClassWorkload
from .flux_sampling import flux_denoiser

__all__ = ["ClassWorkload", "FluxWorkload"]

# FLUX-family transformers FluxWorkload can call: FluxPipeline's argument names and latent packing.
FLUX_FAMILY = ("FluxTransformer2DModel",)


class FluxWorkload:
    """prompts: FluxPipeline's call arguments per prompt, `prompt_embeds` (P, S, D) and `pooled_prompt_embeds` (P, D),
    and for true CFG `negative_prompt_embeds` / `negative_pooled_prompt_embeds` (1 or P rows). latent: the unpacked
    latent shape (C, H, W) of one image (FluxPipeline: C = in_channels / 4, H = 2 · (height // 16))."""

    def __init__(
        self, transformer, sampler, prompts: dict, cfg: float, latent: tuple[int, int, int], pixel_space: bool = False
    ):
        name = type(transformer).__name__
        if name not in FLUX_FAMILY:
            raise TypeError(f"FluxWorkload drives {', '.join(FLUX_FAMILY)}, not {name}")
        missing = [k for k in ("prompt_embeds", "pooled_prompt_embeds") if k not in prompts]
        if cfg > 1:
            missing += [k for k in ("negative_prompt_embeds", "negative_pooled_prompt_embeds") if k not in prompts]
        if missing:
            raise ValueError(f"the conditioning has no {', '.join(missing)} (FluxPipeline's argument names)")
        self.model, self.sampler, self.prompts, self.cfg, self.latent = transformer, sampler, prompts, cfg, latent
        self.pixel_space = pixel_space  # flux-mnist: its latents are pixels rearranged 2x2 (images() undoes that)
        from ..models.flux_mnist import image_ids  # FluxPipeline's RoPE positions of the packed tokens

        self.img_ids = image_ids(latent[1], latent[2], dtype=transformer.dtype)

    @property
    def num_prompts(self) -> int:
        return len(self.prompts["prompt_embeds"])

    def with_steps(self, steps: int) -> FluxWorkload:
        """The same workload sampled with `steps` steps (a fresh copy of the scheduler: set_timesteps changes it)."""
        if steps == self.sampler.num_steps:
            return self
        sampler = type(self.sampler)(copy.deepcopy(self.sampler.scheduler), steps, self.sampler.image_seq_len)
        return FluxWorkload(self.model, sampler, self.prompts, self.cfg, self.latent, self.pixel_space)

    def images(self, x: torch.Tensor) -> torch.Tensor:
        """Final packed samples (N, T, 4C) -> latents (N, C, H, W); for flux-mnist pixels (N, 1, 28, 28) in [-1, 1]."""
        from ..models.flux_mnist import latents_to_pixels, unpack_latents

        z = unpack_latents(x.float(), self.latent[1], self.latent[2])
        return latents_to_pixels(z) if self.pixel_space else z

    def noise(self, seeds: list[int]) -> torch.Tensor:
        from ..models.flux_mnist import pack_latents

        # FluxPipeline.prepare_latents with a list of generators: one (1, C, H, W) draw per image, then packed.
        param = next(self.model.parameters())
        z = StackedRandomGenerator(seeds, "cpu").randn((len(seeds), *self.latent), dtype=param.dtype)
        return pack_latents(z).to(param.device)

    def sampling_noise(self, seeds: list[int]):
        """(x, None): FLUX's samplers draw no noise after the first."""
        return self.noise(seeds), None

    def denoiser(self, indices: torch.Tensor):
        rows = indices.cpu() % len(self.prompts["prompt_embeds"])
        chosen = {}
        for key, value in self.prompts.items():
            chosen[key] = value[rows if len(value) > 1 else torch.zeros_like(rows)]
        return flux_denoiser(self.model, chosen, self.cfg, self.img_ids), 1
