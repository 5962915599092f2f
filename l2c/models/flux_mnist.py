"""flux-mnist: diffusers' own FluxTransformer2DModel, small, conditioned on MNIST classes as a text-to-image FLUX is
conditioned on a prompt, so it is driven exactly as FluxPipeline drives FLUX.1 with precomputed prompt embeddings.

* Latents: a 28x28 digit in [-1, 1] is turned into 4 x 14 x 14 by 2x2 space-to-depth (the "VAE" of this model is
  lossless); FluxPipeline packs 2x2 latent patches into tokens, so the transformer sees 49 tokens of 16 channels.
  With vae=None, FluxPipeline's vae_scale_factor is 8, so height = width = 112 gives that 14x14 latent.
* Conditioning: one learned "prompt" per class, a sequence of TEXT_TOKENS embeddings fed as encoder_hidden_states
  (FLUX: T5 tokens) and one pooled vector fed as pooled_projections (FLUX: CLIP's pooled output). Entry NULL_CLASS
  is the empty prompt (trained with 10 % label dropout), the negative prompt of true classifier-free guidance.
* Guidance: true CFG (two transformer calls per step, FluxPipeline's `true_cfg_scale` with negative prompt
  embeddings), guidance_embeds=False. FLUX.1-dev's guidance embedding is distilled from a CFG teacher, a second
  training stage; true CFG trains with plain label dropout and runs the two-call path that step-caches must handle.

A saved model is a diffusers folder: transformer/ (config.json + fp16 safetensors), scheduler/
(FlowMatchEulerDiscreteScheduler, FLUX.1's dynamic shift) and conditioning.safetensors holding `prompt_embeds`
(11, S, D) and `pooled_prompt_embeds` (11, D), named as FluxPipeline's call arguments.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..utils.io import atomic_output, atomic_write_json

ASSET = Path(__file__).resolve().parent.parent / "assets" / "flux-mnist"
NUM_CLASSES = 10
NULL_CLASS = 10  # the empty prompt: negative prompt of true CFG, and the label-dropout target in training
TEXT_TOKENS = 4  # S: tokens per class prompt
IMAGE_SIZE = 112  # FluxPipeline height / width: latent 112 / 8 = 14, packed to 7 x 7 = 49 tokens

# Transformer size: trains to good samples in about 1.5 h on one CPU thread (docs/models/flux-mnist.md).
TRANSFORMER_CONFIG = dict(
    patch_size=1,
    in_channels=16,  # 4 latent channels x 2 x 2 packing
    num_layers=2,  # double-stream blocks (transformer_blocks)
    num_single_layers=4,  # single-stream blocks (single_transformer_blocks)
    attention_head_dim=32,
    num_attention_heads=4,  # width 128
    joint_attention_dim=64,  # D of prompt_embeds
    pooled_projection_dim=64,  # D of pooled_prompt_embeds
    guidance_embeds=False,  # true CFG, see the module docstring
    axes_dims_rope=(8, 12, 12),  # sums to the head dim
)

# FLUX.1's scheduler settings: dynamic shift, mu from the image sequence length (FluxPipeline's calculate_shift).
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    shift=3.0,
    use_dynamic_shifting=True,
    base_shift=0.5,
    max_shift=1.15,
    base_image_seq_len=256,
    max_image_seq_len=4096,
)

DEFAULT_STEPS = 28  # FLUX.1-dev's default num_inference_steps
DEFAULT_CFG = 2.0  # true_cfg_scale: the best MNIST-FID of 1.5 / 2 / 3 in a probe, 100 % class accuracy (card)


def create_transformer(**overrides):
    """A randomly initialised flux-mnist transformer (diffusers' FluxTransformer2DModel)."""
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(**{**TRANSFORMER_CONFIG, **overrides})


class ClassPrompts(nn.Module):
    """The learned class -> prompt table: row c is the "prompt embedding" of digit c, row NULL_CLASS the empty one."""

    def __init__(self, tokens: int = TEXT_TOKENS, dim: int = 64, pooled_dim: int = 64, classes: int = NUM_CLASSES):
        super().__init__()
        # Unit-scale rows: the transformer's context_embedder / pooled projection are plain Linear layers.
        self.prompt_embeds = nn.Parameter(torch.randn(classes + 1, tokens, dim))  # (11, S, D)
        self.pooled_prompt_embeds = nn.Parameter(torch.randn(classes + 1, pooled_dim))  # (11, D)

    def forward(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """labels (N,) -> prompt_embeds (N, S, D), pooled_prompt_embeds (N, D)."""
        return self.prompt_embeds[labels], self.pooled_prompt_embeds[labels]


def pixels_to_latents(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, 28, 28) -> (N, 4, 14, 14): 2x2 space-to-depth, the lossless "VAE" of flux-mnist."""
    return F.pixel_unshuffle(x, 2)


def latents_to_pixels(z: torch.Tensor) -> torch.Tensor:
    """(N, 4, 14, 14) -> (N, 1, 28, 28): the inverse of pixels_to_latents."""
    return F.pixel_shuffle(z, 2)


# FluxPipeline's static helpers (diffusers 0.42.1 pipelines/flux/pipeline_flux.py), restated so that training and
# sampling need no `transformers` (FluxPipeline imports it); tests/test_flow_matching.py checks they are equal.
def pack_latents(z: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, H/2 · W/2, 4C): each 2x2 latent patch becomes one token (FluxPipeline._pack_latents)."""
    n, c, h, w = z.shape
    return z.view(n, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(n, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(N, h/2 · w/2, 4C) -> (N, C, h, w): the inverse of pack_latents (FluxPipeline._unpack_latents)."""
    n, _, c4 = tokens.shape
    return tokens.view(n, h // 2, w // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(n, c4 // 4, h, w)


def image_ids(h: int, w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(h/2 · w/2, 3) RoPE positions (0, row, column) of the packed tokens (FluxPipeline._prepare_latent_image_ids)."""
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] = ids[..., 1] + torch.arange(h // 2)[:, None]
    ids[..., 2] = ids[..., 2] + torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)


def save_flux_mnist(transformer, prompts: ClassPrompts, out: str | Path) -> Path:
    """Write the diffusers folder (transformer/, scheduler/, conditioning.safetensors) in float16."""
    from safetensors.torch import save_file

    out = Path(out)
    # A float16 copy (the caller's model is left as it is); .half() rather than ModelMixin.to, which warns here.
    copy.deepcopy(transformer).half().save_pretrained(out / "transformer", safe_serialization=True)
    atomic_write_json({"_class_name": "FlowMatchEulerDiscreteScheduler", **SCHEDULER_CONFIG}, _scheduler_json(out))
    tensors = {k: v.detach().half().contiguous() for k, v in prompts.state_dict().items()}
    with atomic_output(out / "conditioning.safetensors") as tmp:
        save_file(tensors, str(tmp))
    return out


def _scheduler_json(folder: Path) -> Path:
    return folder / "scheduler" / "scheduler_config.json"


def load_flux_mnist(path: str | Path | None = None, dtype=torch.float32):
    """(transformer, scheduler, conditioning) of a flux-mnist folder (the bundled one by default).

    conditioning: {"prompt_embeds": (11, S, D), "pooled_prompt_embeds": (11, D)} in `dtype`; row c is class c.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from safetensors.torch import load_file

    path = Path(path or ASSET)
    if not (path / "transformer" / "config.json").exists():
        raise FileNotFoundError(f"no flux-mnist folder at {path} (expected transformer/config.json in it)")
    # low_cpu_mem_usage=False: the lazy loading needs `accelerate` and only warns without it (the model is 5 MB)
    transformer = FluxTransformer2DModel.from_pretrained(
        path / "transformer", torch_dtype=dtype, low_cpu_mem_usage=False
    )
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(json.loads(_scheduler_json(path).read_text()))
    conditioning = {k: v.to(dtype) for k, v in load_file(str(path / "conditioning.safetensors")).items()}
    return transformer.eval().requires_grad_(False), scheduler, conditioning
