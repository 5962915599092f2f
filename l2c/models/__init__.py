"""Model presets: one table from a preset name to its constructor arguments (DiT's `DiT_models`), and one row of
conventions per architecture that the rest of the library reads instead of inspecting a model."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from .dit import DiT, DiTBlock
from .uvit import UViT, UViTBlock


@dataclass(frozen=True)
class Architecture:
    """How the upstream code samples and trains routers for one architecture (docs/upstream.md §1.5, §2, §3)."""

    sampler: str  # the sampler of its published numbers
    schedule: str  # β schedule: "linear" (ADM) or "scaled_linear" (Stable Diffusion)
    time_offset: int  # model time = index + offset: DiT t = 0..T-1, U-ViT n = 1..T
    guidance: str  # "batched": one call on a doubled batch (DiT); "separate": two calls, two caches (U-ViT)
    router_loss: str  # router distillation loss: "mean" squared error (DiT) or per-sample "sum" (U-ViT)


ARCHITECTURES = {
    "dit": Architecture(sampler="ddim", schedule="linear", time_offset=0, guidance="batched", router_loss="mean"),
    "uvit": Architecture(
        sampler="dpm-solver-2", schedule="scaled_linear", time_offset=1, guidance="separate", router_loss="sum"
    ),
}


@dataclass(frozen=True)
class Preset:
    arch: str  # a key of ARCHITECTURES
    kwargs: dict = field(default_factory=dict)
    latent: bool = True  # samples are VAE latents (decode with a VAE) rather than pixels


def _dit(depth: int, hidden: int, heads: int, patch: int, latent: bool = True, **extra) -> Preset:
    return Preset("dit", dict(depth=depth, hidden_size=hidden, num_heads=heads, patch_size=patch, **extra), latent)


def _uvit(depth: int, dim: int, heads: int, latent: bool = True, **extra) -> Preset:
    return Preset("uvit", dict(depth=depth, embed_dim=dim, num_heads=heads, **extra), latent)


_DIT_SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
_UVIT_SIZES = {"S": (12, 512, 8), "M": (16, 768, 12), "L": (20, 1024, 16), "H": (28, 1152, 16)}

MODELS: dict[str, Preset] = {
    **{f"DiT-{s}/{p}": _dit(*_DIT_SIZES[s], p) for s in _DIT_SIZES for p in (2, 4, 8)},
    # U-ViT ImageNet-256 latent configs (patch 2, 4x32x32, 1000 classes + null label).
    **{f"U-ViT-{s}/2": _uvit(*_UVIT_SIZES[s], patch_size=2) for s in _UVIT_SIZES},
    # Small presets that train on a 2-core CPU: MNIST pixels (1x28x28), patch 4 -> 49 tokens.
    "DiT-mnist": _dit(6, 128, 4, 4, False, input_size=28, in_channels=1, num_classes=10, learn_sigma=False),
    "U-ViT-mnist": _uvit(6, 128, 4, False, patch_size=4, img_size=28, in_chans=1, num_classes=11),
    # Tiny presets for tests and smoke runs (random weights only).
    "DiT-tiny": _dit(2, 32, 2, 4, False, input_size=8, in_channels=1, num_classes=10),
    "U-ViT-tiny": _uvit(2, 32, 2, False, patch_size=4, img_size=8, in_chans=1, num_classes=11),
}


def create_model(name: str, **overrides) -> nn.Module:
    """Build a preset by name, e.g. create_model("DiT-XL/2") or create_model("DiT-XL/2", input_size=64) for 512px."""
    if name not in MODELS:
        raise ValueError(f"unknown model preset {name!r}; known presets: {', '.join(MODELS)}")
    preset = MODELS[name]
    cls = DiT if preset.arch == "dit" else UViT
    return cls(**{**preset.kwargs, **overrides})


def architecture_of(model: nn.Module) -> str:
    if isinstance(model, DiT):
        return "dit"
    if isinstance(model, UViT):
        return "uvit"
    raise TypeError(f"not a DiT or U-ViT: {type(model).__name__}")


def conventions(model: nn.Module) -> Architecture:
    """The architecture row of a model instance (its sampler, schedule, guidance form, router loss)."""
    return ARCHITECTURES[architecture_of(model)]


__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "conventions",
    "MODELS",
    "Preset",
    "DiT",
    "DiTBlock",
    "UViT",
    "UViTBlock",
    "create_model",
    "architecture_of",
]
