"""Workloads of diffusers text-to-image models, from their folders (l2c.jobs.workload says what a workload is).

    workload, meta = flux_workload("flux-mnist")                                  # the bundled model, by name
    workload, meta = flux_workload("my-flux/", conditioning="prompts.safetensors", height=1024, width=1024)

A folder is a pipeline folder (transformer/ and scheduler/) or a transformer folder; its prompts come as precomputed
embeddings named as FluxPipeline's call arguments (`prompt_embeds` (P, S, D), `pooled_prompt_embeds` (P, D), and for
true CFG `negative_prompt_embeds` / `negative_pooled_prompt_embeds`, 1 or P rows), or, for a folder in flux-mnist's
layout, its own `conditioning.safetensors` (one row per class, the empty prompt last). Everything is validated
before the model runs: one line naming what is wrong.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..cache.macs import MacProfile, measure_macs
from ..sampling.flow_matching import DiffusersFlowMatchEuler
from .workload import FLUX_FAMILY, FluxWorkload

REQUIRED = ("prompt_embeds", "pooled_prompt_embeds")
NEGATIVE = ("negative_prompt_embeds", "negative_pooled_prompt_embeds")


def is_flux_model(name: str) -> bool:
    """Whether `name` is flux-mnist or a folder holding a FLUX-family transformer."""
    if name == "flux-mnist":
        return True
    config = _transformer_dir(Path(name)) / "config.json" if Path(name).is_dir() else None
    if config is None or not config.exists():
        return False
    return json.loads(config.read_text()).get("_class_name") in FLUX_FAMILY


def _transformer_dir(folder: Path) -> Path:
    return folder / "transformer" if (folder / "transformer" / "config.json").exists() else folder


def read_conditioning(path: str | Path, transformer, cfg: float) -> dict:
    """Prompt embeddings from a .safetensors file named as FluxPipeline's arguments, checked against the model."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--conditioning {path}: no such file")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"--conditioning {path} is not a safetensors file ({e})") from None
    check_conditioning(tensors, transformer, cfg, str(path))
    return {k: v for k, v in tensors.items() if k in REQUIRED + NEGATIVE}


def check_conditioning(tensors: dict, transformer, cfg: float, where: str) -> None:
    need = REQUIRED + (NEGATIVE if cfg > 1 else ())
    missing = [k for k in need if k not in tensors]
    if missing:
        why = " (true CFG, --cfg > 1, needs the negative prompt)" if set(missing) & set(NEGATIVE) else ""
        raise ValueError(
            f"{where} has no {', '.join(missing)}{why}; it holds {', '.join(sorted(tensors)) or 'nothing'}"
        )
    config = transformer.config
    widths = {"prompt_embeds": config.joint_attention_dim, "pooled_prompt_embeds": config.pooled_projection_dim}
    widths.update(
        negative_prompt_embeds=widths["prompt_embeds"], negative_pooled_prompt_embeds=widths["pooled_prompt_embeds"]
    )
    dims = {
        "prompt_embeds": 3,
        "pooled_prompt_embeds": 2,
        "negative_prompt_embeds": 3,
        "negative_pooled_prompt_embeds": 2,
    }
    for key in need:
        t = tensors[key]
        if t.ndim != dims[key] or t.shape[0] < 1 or t.shape[-1] != widths[key]:
            shape = "(P, S, " if dims[key] == 3 else "(P, "
            raise ValueError(
                f"{where}: {key} has shape {tuple(t.shape)}, expected {shape}{widths[key]}) with P >= 1 prompts for "
                f"{type(transformer).__name__} (width {widths[key]})"
            )
    prompts = tensors["prompt_embeds"].shape[0]
    if tensors["pooled_prompt_embeds"].shape[0] != prompts:
        raise ValueError(f"{where}: {prompts} prompt_embeds but {tensors['pooled_prompt_embeds'].shape[0]} pooled")


def flux_workload(
    model: str,
    conditioning: str | None = None,
    steps: int = 28,
    cfg: float = 1.0,
    height: int | None = None,
    width: int | None = None,
    device="cpu",
    dtype=torch.float32,
    prompts: list[str] | None = None,
    negative_prompt: str = "",
) -> tuple[FluxWorkload, dict]:
    """(workload, metadata) of flux-mnist or a FLUX folder, sampled with its own FlowMatchEuler scheduler; a folder's
    prompts come as embeddings (`conditioning`, a .safetensors file) or as text (`prompts`) that the pipeline folder's
    own text encoders encode (l2c.jobs.prompts; `negative_prompt` for true CFG)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    from ..models import flux_mnist

    if steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}")
    if model == "flux-mnist" or (conditioning is None and (Path(model) / "conditioning.safetensors").exists()):
        if conditioning is not None or prompts is not None:
            raise ValueError("flux-mnist brings its class prompts: drop --conditioning / --prompts")
        folder = None if model == "flux-mnist" else model
        transformer, scheduler, table = flux_mnist.load_flux_mnist(folder, dtype=dtype)
        from .flux_sampling import class_prompts

        prompts = class_prompts(table, list(range(flux_mnist.NUM_CLASSES)))
        height = width = flux_mnist.IMAGE_SIZE
        pixel_space = True  # its latents are pixels rearranged 2x2: the error compares them clipped to [-1, 1]
    else:
        if conditioning is None and prompts is None:
            raise ValueError(
                f"{model} has no prompts: pass --conditioning FILE.safetensors with prompt_embeds and "
                "pooled_prompt_embeds, or --prompts FILE (one per line; a pipeline folder with its text encoders)"
            )
        if conditioning is not None and prompts is not None:
            raise ValueError("--prompts and --conditioning both give the prompts: pass one")
        folder = Path(model)
        transformer = FluxTransformer2DModel.from_pretrained(_transformer_dir(folder), torch_dtype=dtype)
        scheduler_json = folder / "scheduler" / "scheduler_config.json"
        config = json.loads(scheduler_json.read_text()) if scheduler_json.exists() else {}
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(config)
        if prompts is not None:
            from .prompts import encode_prompts

            tensors = encode_prompts(folder, prompts, negative_prompt, cfg)
            check_conditioning(tensors, transformer, cfg, "the text encoders' output")
        else:
            tensors = read_conditioning(conditioning, transformer, cfg)
        prompts = {k: v.to(dtype) for k, v in tensors.items()}
        height, width = height or 1024, width or 1024
        pixel_space = False
    if height % 16 or width % 16:
        raise ValueError(f"height and width must be multiples of 16 (FluxPipeline), got {height} x {width}")
    transformer = transformer.to(device).eval().requires_grad_(False)
    latent = (transformer.config.in_channels // 4, 2 * (height // 16), 2 * (width // 16))
    sampler = DiffusersFlowMatchEuler(scheduler, steps, image_seq_len=(latent[1] // 2) * (latent[2] // 2))
    workload = FluxWorkload(transformer, sampler, prompts, cfg, latent, pixel_space)
    meta = {
        "model": model,
        "class": type(transformer).__name__,
        "sampler": sampler.name,
        "height": height,
        "width": width,
        "pixel_space": pixel_space,
    }
    return workload, meta


def workload_macs(workload: FluxWorkload) -> MacProfile:
    """The workload's MAC profile, measured on one call of one image (the paper's convention: a guided evaluation's
    second call is not counted, as for our models)."""
    model = workload.model
    x = workload.noise([0])
    denoise_one = _one_call(workload)
    t = workload.sampler.model_time(0, 1, x.device)
    return measure_macs(model, lambda: denoise_one(x, t, 0))


def _one_call(workload: FluxWorkload):
    cond = FluxWorkload(workload.model, workload.sampler, workload.prompts, 1.0, workload.latent)
    return cond.denoiser(torch.tensor([0]))[0]
