"""Layers shared by DiT and U-ViT, with the parameter names of the upstream checkpoints.

Written from the equations of DiT (Peebles & Xie 2023) and U-ViT (Bao et al. 2023); timm is not used because it
drags a CUDA build of torch into this environment. Parameter names (`proj`, `qkv`, `fc1`, `fc2`, ...) match timm's so
the official checkpoints load with `strict=True`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(
    t: torch.Tensor, dim: int, max_period: float = 10000.0, dtype=torch.float32, frequency_shift: float = 0.0
) -> torch.Tensor:
    """Sinusoidal embedding [cos | sin] of (possibly fractional) timesteps t: (N,) -> (N, dim).

    Frequencies exp(−ln(max_period)·i / (dim/2 − frequency_shift)): DiT's shift is 0; diffusers' DiT port uses 1, and
    a model converted from diffusers keeps it so that it computes what the diffusers model computes.
    Computed in float32 as upstream; `dtype` = float64 only for float64 models (reference tests).
    """
    half = dim // 2
    span = half - frequency_shift if frequency_shift else half  # shift 0: exactly upstream's integer divisor
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=dtype, device=t.device) / span)
    args = t[:, None].to(dtype) * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def sincos_pos_embed_2d(dim: int, grid_size: int) -> np.ndarray:
    """Fixed 2-D sin-cos position embedding of DiT (MAE convention): (grid_size**2, dim), float64."""
    coords = np.arange(grid_size, dtype=np.float64)
    grid_w, grid_h = np.meshgrid(coords, coords)  # first array varies along width, as upstream
    emb_h = _sincos_1d(dim // 2, grid_w.reshape(-1))
    emb_w = _sincos_1d(dim // 2, grid_h.reshape(-1))
    return np.concatenate([emb_h, emb_w], axis=1)


def _sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.einsum("m,d->md", pos, omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


class PatchEmbed(nn.Module):
    """Image (N, C, H, W) -> tokens (N, T, D) with a strided convolution named `proj` (timm layout)."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"image size {img_size} is not a multiple of patch size {patch_size}")
        self.patch_size = patch_size
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with fused `qkv` and output `proj`; uses scaled_dot_product_attention."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, T, D = x.shape
        qkv = self.qkv(x).reshape(N, T, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (N, H, T, D/H)
        return self.proj(x.transpose(1, 2).reshape(N, T, D))


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2. DiT uses the tanh approximation of GELU, U-ViT the exact one."""

    def __init__(self, dim: int, hidden: int, approximate: str = "none"):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate=approximate)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class TimestepEmbedder(nn.Module):
    """DiT's timestep embedder: 256-d sinusoid -> Linear -> SiLU -> Linear (keys `mlp.0`, `mlp.2`)."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.frequency_shift = 0.0  # not a weight: set by diffusers_to_dit (diffusers' DiT uses 1)
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        dtype = self.mlp[0].weight.dtype
        emb = timestep_embedding(
            t,
            self.frequency_embedding_size,
            dtype=torch.float64 if dtype == torch.float64 else torch.float32,
            frequency_shift=self.frequency_shift,
        )
        return self.mlp(emb.to(dtype))


class LabelEmbedder(nn.Module):
    """Class embedding table with one extra row (index num_classes) for the null class of guidance.

    Upstream drops labels inside forward during training; here the training loop does it explicitly, so the model's
    forward is a pure function of its inputs (the cache engine and router training rely on that).
    """

    def __init__(self, num_classes: int, hidden_size: int, with_null_class: bool = True):
        super().__init__()
        self.num_classes = num_classes
        self.embedding_table = nn.Embedding(num_classes + int(with_null_class), hidden_size)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(y)
