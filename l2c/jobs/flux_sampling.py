"""flux-mnist samples: through diffusers' FluxPipeline itself (the reference), or through l2c's flow-matching sampler
with the same true-CFG denoiser (what caches and schedules drive); tests/test_flow_matching.py shows both bit-equal.

Image i depends only on seeds[i] and classes[i]: its initial noise comes from its own generator, as FluxPipeline
draws a list of generators.
"""

from __future__ import annotations

import numpy as np
import torch

from ..models.flux_mnist import (
    DEFAULT_CFG,
    DEFAULT_STEPS,
    IMAGE_SIZE,
    NULL_CLASS,
    NUM_CLASSES,
    latents_to_pixels,
    unpack_latents,
)
from .generate import to_uint8


def flux_pipeline(transformer, scheduler):
    """FluxPipeline without VAE and text encoders: it is called with precomputed prompt embeddings and returns the
    packed latents (output_type="latent"). Needs `transformers` installed (FluxPipeline imports it)."""
    from diffusers import FluxPipeline
    from diffusers.utils import is_transformers_available

    if not is_transformers_available():  # without it diffusers hands out a stand-in class that fails when called
        raise RuntimeError("FluxPipeline needs the transformers package: pip install transformers")
    pipe = FluxPipeline(
        scheduler=scheduler,
        vae=None,
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        transformer=transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def class_prompts(conditioning: dict, classes: list[int]) -> dict:
    """FluxPipeline's prompt arguments for `classes`: each class's embeddings, and the empty prompt as the negative."""
    bad = [c for c in classes if not 0 <= c < NUM_CLASSES]
    if bad:
        raise ValueError(f"class labels {bad[:5]} are outside 0..{NUM_CLASSES - 1}")
    idx = torch.as_tensor(classes, dtype=torch.long)
    null = torch.full_like(idx, NULL_CLASS)
    return dict(
        prompt_embeds=conditioning["prompt_embeds"][idx],
        pooled_prompt_embeds=conditioning["pooled_prompt_embeds"][idx],
        negative_prompt_embeds=conditioning["prompt_embeds"][null],
        negative_pooled_prompt_embeds=conditioning["pooled_prompt_embeds"][null],
    )


@torch.no_grad()
def flux_mnist_latents(pipe, conditioning: dict, seeds: list[int], classes: list[int], steps: int, cfg: float):
    """Packed latents (n, 49, 16) of one FluxPipeline call: image i from its own generator seeded seeds[i]."""
    return pipe(
        **class_prompts(conditioning, classes),
        true_cfg_scale=cfg,
        height=IMAGE_SIZE,
        width=IMAGE_SIZE,
        num_inference_steps=steps,
        generator=[torch.Generator().manual_seed(s) for s in seeds],
        output_type="latent",
        return_dict=False,
    )[0]


@torch.no_grad()
def sample_flux_mnist(
    pipe,
    conditioning: dict,
    seeds: list[int],
    classes: list[int],
    steps: int = DEFAULT_STEPS,
    cfg: float = DEFAULT_CFG,
    batch_size: int = 64,
) -> np.ndarray:
    """uint8 (N, 28, 28) digits of `classes` from `seeds`, by FluxPipeline (flux_pipeline) with true CFG `cfg`
    (1 = off: one transformer call per step)."""
    if len(seeds) != len(classes):
        raise ValueError(f"{len(seeds)} seeds but {len(classes)} classes")
    out = []
    for start in range(0, len(seeds), batch_size):
        batch = slice(start, start + batch_size)
        latents = flux_mnist_latents(pipe, conditioning, seeds[batch], classes[batch], steps, cfg)
        out.append(to_uint8(latents_to_pixels(unpack_latents(latents.float(), 14, 14)))[..., 0])
    return np.concatenate(out)


def flux_denoiser(transformer, prompts: dict, cfg: float, img_ids: torch.Tensor):
    """denoise(x, t, j) for l2c's samplers, computing what FluxPipeline's loop computes: the transformer on packed
    latents x (N, T, C) at timestep t / 1000, twice with true CFG (cache contexts "cond" and "uncond")."""
    true_cfg = cfg > 1
    txt_ids = torch.zeros(prompts["prompt_embeds"].shape[1], 3, dtype=transformer.dtype)

    def call(x, t, embeds, pooled, context):
        with transformer.cache_context(context):
            return transformer(
                hidden_states=x,
                timestep=t.to(x.dtype) / 1000,
                guidance=None,
                pooled_projections=pooled,
                encoder_hidden_states=embeds,
                txt_ids=txt_ids,
                img_ids=img_ids,
                joint_attention_kwargs={},
                return_dict=False,
            )[0]

    def denoise(x, t, j):
        v = call(x, t, prompts["prompt_embeds"], prompts["pooled_prompt_embeds"], "cond")
        if not true_cfg:
            return v
        neg = call(x, t, prompts["negative_prompt_embeds"], prompts["negative_pooled_prompt_embeds"], "uncond")
        return neg + cfg * (v - neg)

    return denoise


def flux_vae_decoder(folder, device="cpu"):
    """decode(latents (N, C, H, W)) -> images (N, 3, 8H, 8W) in [-1, 1], as FluxPipeline decodes: the latents are
    divided by the VAE's scaling_factor and shifted by its shift_factor first. `folder`: a local AutoencoderKL."""
    from pathlib import Path

    from diffusers import AutoencoderKL

    if not (Path(folder) / "config.json").exists():
        raise ValueError(f"--vae {folder} is not a diffusers AutoencoderKL folder (no config.json)")
    vae = AutoencoderKL.from_pretrained(str(folder), local_files_only=True).to(device).eval().requires_grad_(False)
    scale, shift = vae.config.scaling_factor, vae.config.shift_factor or 0.0

    @torch.no_grad()
    def decode(z: torch.Tensor) -> torch.Tensor:
        return vae.decode(z.to(vae.dtype) / scale + shift, return_dict=False)[0].float()

    return decode
