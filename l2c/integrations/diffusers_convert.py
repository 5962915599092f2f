"""Conversion both ways between our DiT and diffusers' `DiTTransformer2DModel`, and diffusers folders.

The two hold the same computation with a different parameter layout:

* diffusers gives every block its own timestep / label embedder (`transformer_blocks[i].norm1.emb`) and uses block 0's
  for the final layer; DiT has one shared `t_embedder` / `y_embedder`. Ours -> diffusers copies it into every block;
  diffusers -> ours requires all copies to be equal (they are in every converted DiT checkpoint).
* attention: DiT's fused `qkv` = diffusers' `to_q`, `to_k`, `to_v` stacked in that order; `proj` = `to_out.0`.
* MLP: `fc1` = `ff.net.0.proj`, `fc2` = `ff.net.2`; final layer: `adaLN_modulation.1` = `proj_out_1`, `linear` =
  `proj_out_2`; adaLN-Zero chunks come in the same order (shift, scale, gate for attention, then for the MLP).
* the fixed sin-cos position embedding is a parameter in DiT and a non-persistent buffer in diffusers, recomputed on
  load with the same float32 values as DiT's formula; conversion copies it in memory (a checkpoint stored in float16,
  like the bundled dit-mnist, holds it rounded: up to 2.4e-4 off, which a saved-and-reloaded folder loses).

Known differences, so a converted model is close but not bit-equal:

* timestep embedding: diffusers' DiT builds it with `Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=1)`,
  i.e. frequencies exp(-ln(10^4) i / (half - 1)), i = 0..127, where DiT divides by half = 128. The same [cos | sin]
  layout otherwise. The shift is a plain attribute of each block's `norm1.emb.time_proj`, not in the config or the
  weights: `dit_to_diffusers(..., exact_timestep_embedding=True)` sets it to 0 in memory (then the forward matches
  ours up to float rounding), but a saved folder always loads with diffusers' shift 1.
* the MLP LayerNorm eps: DiT uses 1e-6; diffusers' `norm3` uses the config's `norm_eps` (default 1e-5). Ours ->
  diffusers writes norm_eps=1e-6; diffusers -> ours sets the loaded eps on our `norm2` instances.

docs/diffusers.md gives the measured effect on the bundled dit-mnist.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from ..models import MODELS, DiT
from ..sampling.diffusion import DiffusionSpec
from ..sampling.samplers import scheduler_settings

_TIME_PREFIX = "norm1.emb.timestep_embedder"
_LABEL_KEY = "norm1.emb.class_embedder.embedding_table.weight"


def _diffusers():
    try:
        import diffusers
    except ImportError as e:
        raise ImportError("this needs diffusers: pip install 'diffusers>=0.30' (or l2c[latent])") from e
    return diffusers


# --------------------------------------------------------------------------------------------- ours -> diffusers
def dit_config(model: DiT) -> dict:
    """The DiTTransformer2DModel config that holds `model` (raises if DiT has a shape diffusers cannot express)."""
    hidden = model.pos_embed.shape[-1]
    heads = model.blocks[0].attn.num_heads
    mlp_hidden = model.blocks[0].mlp.fc1.out_features
    if mlp_hidden != 4 * hidden:
        raise ValueError(f"diffusers' DiT has an MLP ratio of 4; this model has {mlp_hidden / hidden:g}")
    return dict(
        num_attention_heads=heads,
        attention_head_dim=hidden // heads,
        in_channels=model.in_channels,
        out_channels=model.out_channels,
        num_layers=len(model.blocks),
        sample_size=model.input_size,
        patch_size=model.patch_size,
        activation_fn="gelu-approximate",  # DiT's MLP uses the tanh GELU
        num_embeds_ada_norm=model.num_classes,  # the label table has one more row, the null class, as ours
        norm_type="ada_norm_zero",
        norm_elementwise_affine=False,
        norm_eps=1e-6,  # DiT's LayerNorms all use 1e-6
        attention_bias=True,
    )


def dit_state_dict_to_diffusers(model: DiT) -> dict[str, torch.Tensor]:
    """Our parameters under diffusers' names (persistent keys only; the position buffer is set separately)."""
    sd = model.state_dict()
    out = {
        "pos_embed.proj.weight": sd["x_embedder.proj.weight"],
        "pos_embed.proj.bias": sd["x_embedder.proj.bias"],
        "proj_out_1.weight": sd["final_layer.adaLN_modulation.1.weight"],
        "proj_out_1.bias": sd["final_layer.adaLN_modulation.1.bias"],
        "proj_out_2.weight": sd["final_layer.linear.weight"],
        "proj_out_2.bias": sd["final_layer.linear.bias"],
    }
    for i in range(len(model.blocks)):
        ours, theirs = f"blocks.{i}.", f"transformer_blocks.{i}."
        for kind in ("weight", "bias"):
            # one shared embedder in DiT -> one copy per block in diffusers
            out[f"{theirs}{_TIME_PREFIX}.linear_1.{kind}"] = sd[f"t_embedder.mlp.0.{kind}"]
            out[f"{theirs}{_TIME_PREFIX}.linear_2.{kind}"] = sd[f"t_embedder.mlp.2.{kind}"]
            out[f"{theirs}norm1.linear.{kind}"] = sd[f"{ours}adaLN_modulation.1.{kind}"]
            q, k, v = sd[f"{ours}attn.qkv.{kind}"].chunk(3, dim=0)
            out[f"{theirs}attn1.to_q.{kind}"], out[f"{theirs}attn1.to_k.{kind}"] = q, k
            out[f"{theirs}attn1.to_v.{kind}"] = v
            out[f"{theirs}attn1.to_out.0.{kind}"] = sd[f"{ours}attn.proj.{kind}"]
            out[f"{theirs}ff.net.0.proj.{kind}"] = sd[f"{ours}mlp.fc1.{kind}"]
            out[f"{theirs}ff.net.2.{kind}"] = sd[f"{ours}mlp.fc2.{kind}"]
        out[f"{theirs}{_LABEL_KEY}"] = sd["y_embedder.embedding_table.weight"]
    return {k: v.detach().clone() for k, v in out.items()}


def set_timestep_shift(transformer, shift: float) -> None:
    """Set diffusers' `downscale_freq_shift` of every block's timestep projection (0 = DiT's, 1 = diffusers')."""
    for block in transformer.transformer_blocks:
        block.norm1.emb.time_proj.downscale_freq_shift = shift


def dit_to_diffusers(model: DiT, exact_timestep_embedding: bool = False):
    """A DiTTransformer2DModel (eval mode, same dtype) computing what `model` computes; see the module doc.

    exact_timestep_embedding=True sets the frequency shift to the model's own (DiT's 0, unless the model came from
    diffusers; in memory only, lost by save_pretrained).
    """
    if not isinstance(model, DiT):
        raise TypeError(f"dit_to_diffusers converts an l2c DiT, got {type(model).__name__}")
    transformer = _diffusers().DiTTransformer2DModel(**dit_config(model))
    transformer.load_state_dict(dit_state_dict_to_diffusers(model), strict=True)
    with torch.no_grad():
        transformer.pos_embed.pos_embed.copy_(model.pos_embed)
    if exact_timestep_embedding:
        set_timestep_shift(transformer, model.t_embedder.frequency_shift)
    dtype = next(model.parameters()).dtype
    if dtype != torch.float32:  # diffusers warns on any .to(dtype), even a no-op one
        transformer = transformer.to(dtype)
    return transformer.eval().requires_grad_(False)


# --------------------------------------------------------------------------------------------- diffusers -> ours
class NotConvertible(ValueError):
    """A DiTTransformer2DModel our DiT cannot hold exactly (a schedule search then runs on it as it is)."""


def _check_diffusers_config(cfg) -> None:
    problems = []
    if cfg.get("norm_type", "ada_norm_zero") != "ada_norm_zero":
        problems.append(f"norm_type {cfg['norm_type']!r} (DiT is 'ada_norm_zero')")
    if cfg.get("activation_fn", "gelu-approximate") != "gelu-approximate":
        problems.append(f"activation_fn {cfg['activation_fn']!r} (DiT uses 'gelu-approximate')")
    if cfg.get("norm_elementwise_affine", False):
        problems.append("norm_elementwise_affine=True (DiT's LayerNorms have no affine parameters)")
    if not cfg.get("attention_bias", True):
        problems.append("attention_bias=False (DiT's attention has biases)")
    out_channels = cfg.get("out_channels") or cfg["in_channels"]
    if out_channels not in (cfg["in_channels"], 2 * cfg["in_channels"]):
        problems.append(f"out_channels {out_channels} for in_channels {cfg['in_channels']}")
    if problems:
        raise NotConvertible("this DiTTransformer2DModel has no l2c DiT equivalent: " + "; ".join(problems))


def _shared_embedder(sd: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """Block 0's embedder weights, after checking that every block holds the same (DiT shares one)."""
    names = [f"{_TIME_PREFIX}.linear_{j}.{kind}" for j in (1, 2) for kind in ("weight", "bias")] + [_LABEL_KEY]
    shared = {name: sd[f"transformer_blocks.0.{name}"] for name in names}
    for i in range(1, num_layers):
        for name in names:
            if not torch.equal(sd[f"transformer_blocks.{i}.{name}"], shared[name]):
                raise NotConvertible(
                    f"block {i}'s {name} differs from block 0's: DiT shares one timestep / label embedder, "
                    "so this model (fine-tuned per block?) cannot be converted exactly"
                )
    return shared


def diffusers_to_dit(transformer) -> DiT:
    """Our DiT (eval mode, float32 parameters as our loaders give) computing what `transformer` computes."""
    cfg = dict(transformer.config)
    _check_diffusers_config(cfg)
    sd = {k: v.detach().float() for k, v in transformer.state_dict().items()}
    hidden = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    mlp_hidden = sd["transformer_blocks.0.ff.net.0.proj.weight"].shape[0]
    in_ch = cfg["in_channels"]
    model = DiT(
        input_size=cfg["sample_size"],
        patch_size=cfg["patch_size"],
        in_channels=in_ch,
        hidden_size=hidden,
        depth=cfg["num_layers"],
        num_heads=cfg["num_attention_heads"],
        mlp_ratio=mlp_hidden / hidden,
        num_classes=cfg["num_embeds_ada_norm"],
        learn_sigma=(cfg.get("out_channels") or in_ch) == 2 * in_ch,
    )
    shared = _shared_embedder(sd, cfg["num_layers"])
    ours = {
        "pos_embed": transformer.pos_embed.pos_embed.detach().float().clone(),  # what diffusers computes with
        "x_embedder.proj.weight": sd["pos_embed.proj.weight"],
        "x_embedder.proj.bias": sd["pos_embed.proj.bias"],
        "y_embedder.embedding_table.weight": shared[_LABEL_KEY],
        "final_layer.adaLN_modulation.1.weight": sd["proj_out_1.weight"],
        "final_layer.adaLN_modulation.1.bias": sd["proj_out_1.bias"],
        "final_layer.linear.weight": sd["proj_out_2.weight"],
        "final_layer.linear.bias": sd["proj_out_2.bias"],
    }
    for kind in ("weight", "bias"):
        ours[f"t_embedder.mlp.0.{kind}"] = shared[f"{_TIME_PREFIX}.linear_1.{kind}"]
        ours[f"t_embedder.mlp.2.{kind}"] = shared[f"{_TIME_PREFIX}.linear_2.{kind}"]
        for i in range(cfg["num_layers"]):
            theirs, mine = f"transformer_blocks.{i}.", f"blocks.{i}."
            ours[f"{mine}adaLN_modulation.1.{kind}"] = sd[f"{theirs}norm1.linear.{kind}"]
            ours[f"{mine}attn.qkv.{kind}"] = torch.cat([sd[f"{theirs}attn1.to_{p}.{kind}"] for p in "qkv"])
            ours[f"{mine}attn.proj.{kind}"] = sd[f"{theirs}attn1.to_out.0.{kind}"]
            ours[f"{mine}mlp.fc1.{kind}"] = sd[f"{theirs}ff.net.0.proj.{kind}"]
            ours[f"{mine}mlp.fc2.{kind}"] = sd[f"{theirs}ff.net.2.{kind}"]
    model.load_state_dict(ours, strict=True)
    # The frequency spacing of the timestep embedding, so that the forward is diffusers' (DiT's own is shift 0).
    model.t_embedder.frequency_shift = float(transformer.transformer_blocks[0].norm1.emb.time_proj.downscale_freq_shift)
    eps = cfg.get("norm_eps", 1e-5)
    for block in model.blocks:  # diffusers' norm3 eps (an attribute, not a weight), so the forward matches
        block.norm2.eps = eps
    return model.eval().requires_grad_(False)


# --------------------------------------------------------------------------------------------- folders
L2C_META = "l2c.json"  # beside config.json: where the model came from and how it is fed time


def ddim_scheduler_config(diffusion: dict) -> dict:
    """diffusers DDIMScheduler settings for our linear / scaled-linear ε-models fed the index t (time_offset 0)."""
    keys = ("schedule", "time_offset", "num_timesteps")
    return scheduler_settings(DiffusionSpec(**{k: v for k, v in diffusion.items() if k in keys}))


def export_diffusers(model: DiT, out_dir: str | Path, meta: dict | None = None) -> Path:
    """Write `model` as a diffusers folder (config.json + safetensors, scheduler_config.json, l2c.json).

    Atomic: written into a temporary folder beside out_dir, then renamed into place (an existing out_dir is
    replaced only once the new one is complete). Loads with DiTTransformer2DModel.from_pretrained(out_dir) and
    DDIMScheduler.from_pretrained(out_dir); `meta` (e.g. load_model's) supplies the diffusion spec and preset.
    """
    diffusers = _diffusers()
    meta = meta or {}
    if meta.get("diffusion", {}).get("time_offset", 0) != 0:
        raise ValueError("only models fed the index t (time_offset 0, DiT's convention) map to diffusers' DiT")
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        dit_to_diffusers(model).save_pretrained(tmp, safe_serialization=True)
        diffusion = meta.get("diffusion", {"schedule": "linear", "time_offset": 0, "num_timesteps": 1000})
        diffusers.DDIMScheduler(**ddim_scheduler_config(diffusion)).save_pretrained(tmp)
        info = {
            "format": "l2c-diffusers",
            "version": 1,
            "preset": meta.get("preset"),
            "diffusion": diffusion,
            "timestep_embedding": "diffusers downscale_freq_shift=1 (DiT: 0); see docs/diffusers.md",
        }
        (tmp / L2C_META).write_text(json.dumps(info, indent=2))
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def is_diffusers_folder(path: str | Path) -> bool:
    path = Path(path)
    return (path / "config.json").is_file() or (path / "transformer" / "config.json").is_file()


def load_diffusers_folder(path: str | Path, as_dit: bool = True):
    """(model, meta) from a diffusers transformer folder, or a pipeline folder with a transformer/ subfolder.

    as_dit=True converts to our DiT (for every l2c command; it keeps diffusers' timestep embedding, so it computes what
    the folder's model computes); False returns the DiTTransformer2DModel itself.
    meta: "diffusion" (from l2c.json, else the scheduler config, else DiT's linear schedule; with the folder's
    scheduler config, which the diffusers-* samplers use), "preset" (l2c.json's, else the preset of the same shape),
    "path" (the weights file, for the checksum routers record), "folder".
    """
    path = Path(path)
    if not is_diffusers_folder(path):
        raise FileNotFoundError(f"{path} is not a diffusers folder (no config.json or transformer/config.json)")
    root = path / "transformer" if (path / "transformer" / "config.json").is_file() else path
    transformer = (
        _diffusers().DiTTransformer2DModel.from_pretrained(root, low_cpu_mem_usage=False).eval().requires_grad_(False)
    )
    diffusion, scheduler_config = _diffusion_from_folder(path, root)
    preset = None
    if (root / L2C_META).is_file():
        info = json.loads((root / L2C_META).read_text())
        preset, diffusion = info.get("preset"), info.get("diffusion", diffusion)
    # as_dit=False leaves the transformer as it is: a DiT trained in diffusers (an embedder per block) has no l2c
    # DiT equivalent, and l2c.jobs.dit_workload drives it on itself.
    model = diffusers_to_dit(transformer) if as_dit else None
    weights = sorted(root.glob("*.safetensors")) or sorted(root.glob("*.bin"))
    meta = {
        "path": str(weights[0]) if weights else None,
        "folder": str(path),
        "preset": preset or (_preset_of(model) if as_dit else None),
        "diffusion": {**diffusion, "scheduler_config": scheduler_config},
    }
    return (model if as_dit else transformer), meta


def _preset_of(model: DiT) -> str:
    """The preset with this model's shape (for MAC counts and conventions), or a clear refusal."""
    defaults = {k: v.default for k, v in inspect.signature(DiT).parameters.items()}
    shape = dict(
        input_size=model.input_size,
        patch_size=model.patch_size,
        in_channels=model.in_channels,
        hidden_size=model.pos_embed.shape[-1],
        depth=len(model.blocks),
        num_heads=model.blocks[0].attn.num_heads,
        mlp_ratio=model.blocks[0].mlp.fc1.out_features / model.pos_embed.shape[-1],
        num_classes=model.num_classes,
        learn_sigma=model.learn_sigma,
    )
    for name, preset in MODELS.items():
        if preset.arch == "dit" and all({**defaults, **preset.kwargs}[k] == v for k, v in shape.items()):
            return name
    raise ValueError(f"no l2c DiT preset has the shape of this diffusers model ({shape})")


def _diffusion_from_folder(path: Path, root: Path) -> tuple[dict, str | None]:
    """(diffusion spec fields, the scheduler config as JSON text or None) of a folder."""
    for candidate in (root / "scheduler_config.json", path / "scheduler" / "scheduler_config.json"):
        if candidate.is_file():
            cfg = json.loads(candidate.read_text())
            if cfg.get("prediction_type", "epsilon") != "epsilon":
                raise ValueError(f"{candidate}: l2c samples ε-prediction models, this is {cfg['prediction_type']}")
            schedule = cfg.get("beta_schedule", "linear")
            if schedule not in ("linear", "scaled_linear"):
                raise ValueError(f"{candidate}: beta_schedule {schedule!r}; l2c knows 'linear' and 'scaled_linear'")
            spec = {"schedule": schedule, "time_offset": 0, "num_timesteps": cfg.get("num_train_timesteps", 1000)}
            return spec, json.dumps(cfg, sort_keys=True)
    return {"schedule": "linear", "time_offset": 0, "num_timesteps": 1000}, None
