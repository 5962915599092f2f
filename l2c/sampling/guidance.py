"""Classifier-free guidance (Ho & Salimans 2022) in the two forms the L2C models use.

`scale` is the usual weight w: ε = ε_u + w (ε_c - ε_u); w = 1 is no guidance. (U-ViT's config writes
ε_c + s (ε_c - ε_u) with s = 0.4, i.e. w = 1 + s = 1.4.)

* Batched (DiT): one forward on a doubled batch with labels [y; null]. As upstream's `forward_with_cfg`, the model
  sees the conditional half twice, [x_c; x_c]: the unconditional pass always starts from the conditional state. Only
  the first `guided_channels` output channels are guided (DiT's 3-channel quirk for 4-channel latents); the rest
  pass through per half, so the sampler's second half drifts in the unguided channels; it is never fed back to the
  model and is dropped at the end. The sampler state is the doubled batch: start from [z; z], keep the first half.
* Separate (U-ViT): two forwards per evaluation, conditional first, then unconditional.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..models import conventions

Model = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def conditional_denoiser(model: Model, y: torch.Tensor):
    """No guidance: denoise(x, t, step) = model(x, t, y)."""

    def denoise(x, t, step):
        return model(x, t, y)

    return denoise


def batched_cfg_denoiser(model: Model, y: torch.Tensor, scale: float, null_class: int, guided_channels: int):
    """DiT's forward_with_cfg: x, t hold 2N rows [cond half; uncond half]; returns 2N rows.

    The model input is the first half duplicated, exactly as upstream: feeding [x_c; x_u] instead changes the samples
    whenever fewer channels are guided than the model has (a 4-channel latent DiT: channel 3).
    """
    y2 = torch.cat([y, torch.full_like(y, null_class)])

    def denoise(x, t, step):
        half = x[: len(x) // 2]
        out = model(torch.cat([half, half]), t, y2)
        eps, rest = out[:, :guided_channels], out[:, guided_channels:]
        cond, uncond = eps.chunk(2)
        guided = uncond + scale * (cond - uncond)
        return torch.cat([torch.cat([guided, guided]), rest], dim=1)

    return denoise


def separate_cfg_denoiser(model: Model, y: torch.Tensor, scale: float, null_class: int):
    """U-ViT's two-call guidance: ε = ε_c + (w - 1)(ε_c - ε_u)."""
    y_null = torch.full_like(y, null_class)

    def denoise(x, t, step):
        eps_c = model(x, t, y)
        eps_u = model(x, t, y_null)
        return eps_c + (scale - 1.0) * (eps_c - eps_u)

    return denoise


def guided_denoiser(model: nn.Module, y: torch.Tensor, scale: float, form: str = "auto", guided_channels="auto"):
    """(denoise, copies): the architecture's guidance (models.ARCHITECTURES) unless `form` names one; `copies` is 2
    when the sampler state is the doubled batch of batched guidance.

    guided_channels "auto" guides 3 channels of a 4-channel model, DiT's upstream rule (docs/upstream.md §2.1),
    else all.
    """
    if scale == 1.0:
        return conditional_denoiser(model, y), 1
    form = conventions(model).guidance if form == "auto" else form
    if form == "separate":
        return separate_cfg_denoiser(model, y, scale, model.null_class), 1
    channels = 3 if guided_channels == "auto" and model.in_channels == 4 else model.in_channels
    return batched_cfg_denoiser(model, y, scale, model.null_class, channels), 2
