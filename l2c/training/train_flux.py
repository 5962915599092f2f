"""Train flux-mnist: diffusers' FluxTransformer2DModel with rectified flow on MNIST (how the bundled model is made).

Rectified flow as FLUX / SD3 train it (Esser et al. 2024, §2-3): x_t = (1 − t) x0 + t ε, the transformer predicts the
velocity v = ε − x0 (MSE), t drawn logit-normal (t = sigmoid(u), u ~ N(0, 1)) and fed as the transformer's timestep
in [0, 1] (FluxPipeline feeds the scheduler's timestep / 1000). Each image is conditioned through its class's learned
prompt (l2c.models.flux_mnist.ClassPrompts), replaced by the empty prompt with probability `label_dropout` so that
true CFG works at sampling time. AdamW, EMA with warm-up, atomic checkpoints and exact resume as train_model.py
(batch i is drawn from a generator seeded by (seed, i)).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..models.flux_mnist import (
    NULL_CLASS,
    ClassPrompts,
    create_transformer,
    image_ids,
    pack_latents,
    pixels_to_latents,
    save_flux_mnist,
)
from ..utils.io import atomic_torch_save, atomic_write_json, atomic_write_text, safe_torch_load
from ..utils.progress import progress_bar
from .train_model import _plot_losses, _update_ema, check_resume

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainFluxConfig:
    steps: int = 12000  # optimizer steps in total (a resumed run continues to this number)
    batch_size: int = 64
    lr: float = 1e-3  # AdamW, weight decay 0, linear warm-up then constant
    warmup: int = 500  # warm-up steps
    ema_decay: float = 0.9995  # capped by (1 + step) / (10 + step) early on, as train_model.py
    label_dropout: float = 0.1  # fraction of prompts replaced by the empty prompt (for true CFG)
    grad_clip: float = 1.0
    seed: int = 0
    ckpt_every: int = 500  # steps between atomic checkpoints
    threads: int = 1  # torch CPU threads (one leaves the other core of a 2-core machine free)

    def __post_init__(self):
        for name in ("steps", "batch_size", "ckpt_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.label_dropout < 1:
            raise ValueError(f"label_dropout must be in [0, 1), got {self.label_dropout}")


class FluxMNIST(nn.Module):
    """What is trained: the transformer and the class-prompt table, one module so that AdamW and the EMA see both."""

    def __init__(self, **transformer_overrides):
        super().__init__()
        self.transformer = create_transformer(**transformer_overrides)
        cfg = self.transformer.config
        self.prompts = ClassPrompts(dim=cfg.joint_attention_dim, pooled_dim=cfg.pooled_projection_dim)


def flow_matching_loss(net: FluxMNIST, x0: torch.Tensor, labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Rectified-flow velocity MSE on a batch of pixels x0 (N, 1, 28, 28) in [-1, 1] with labels (N,)."""
    z0 = pixels_to_latents(x0)  # (N, 4, 14, 14)
    img_ids = image_ids(z0.shape[2], z0.shape[3], z0.device, z0.dtype)  # (49, 3)
    txt_ids = torch.zeros(net.prompts.prompt_embeds.shape[1], 3)  # (S, 3): FluxPipeline's text positions
    z0 = pack_latents(z0)  # (N, 49, 16)
    t = torch.sigmoid(torch.randn(z0.shape[0], generator=gen))  # logit-normal(0, 1), SD3 §3.1
    noise = torch.randn(z0.shape, generator=gen)
    xt = (1 - t.view(-1, 1, 1)) * z0 + t.view(-1, 1, 1) * noise
    prompt_embeds, pooled = net.prompts(labels)
    v = net.transformer(
        hidden_states=xt,
        encoder_hidden_states=prompt_embeds,
        pooled_projections=pooled,
        timestep=t,  # the transformer multiplies by 1000 itself; FluxPipeline passes sigma · 1000 / 1000
        img_ids=img_ids,
        txt_ids=txt_ids,
        return_dict=False,
    )[0]
    return torch.mean((v.float() - (noise - z0)) ** 2)


def train_flux(cfg: TrainFluxConfig, data, out_dir: Path, resume: bool = False) -> tuple[FluxMNIST, dict]:
    """data: an l2c.data.prepared ArrayDataset of MNIST (1, 28, 28) in [-1, 1].

    Writes out_dir/{checkpoint.pt, config.json, losses.csv, loss.png}; returns (EMA FluxMNIST, state).
    """
    out_dir = Path(out_dir)
    if tuple(data.shape) != (1, 28, 28):
        raise ValueError(f"flux-mnist trains on 1x28x28 MNIST pixels, the data is {tuple(data.shape)} per image")
    torch.set_num_threads(cfg.threads)
    check_resume(out_dir, cfg, resume)
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)  # the initial weights depend on the seed only
        net = FluxMNIST()
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=0.0)
    state = {"step": 0, "losses": [], "wall_s": 0.0}
    ckpt_path = out_dir / "checkpoint.pt"
    if resume and ckpt_path.exists():
        ckpt = safe_torch_load(ckpt_path)
        net.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["opt"])
        state = {"step": ckpt["step"], "losses": list(ckpt["losses"]), "wall_s": ckpt["wall_s"]}
        log.info("resumed from %s at step %d", ckpt_path, state["step"])
    atomic_write_json({"config": asdict(cfg), "transformer": dict(net.transformer.config)}, out_dir / "config.json")
    _run(cfg, net, ema, opt, state, data, out_dir)
    return ema, state


def _run(cfg: TrainFluxConfig, net, ema, opt, state, data, out_dir: Path) -> None:
    bar = progress_bar(range(state["step"], cfg.steps), initial=state["step"], total=cfg.steps, desc="train-flux")
    t0 = time.time()
    for step in bar:
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        idx = torch.randint(0, len(data), (cfg.batch_size,), generator=gen)
        x0, y = data.batch(idx)
        y[torch.rand(cfg.batch_size, generator=gen) < cfg.label_dropout] = NULL_CLASS
        for group in opt.param_groups:
            group["lr"] = cfg.lr * min(1.0, (step + 1) / max(cfg.warmup, 1))
        loss = flow_matching_loss(net, x0, y, gen)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"loss is {loss.item()} at step {step}; lower --lr (now {cfg.lr})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        opt.step()
        _update_ema(ema, net, min(cfg.ema_decay, (1 + step) / (10 + step)))
        state["losses"].append(loss.item())
        state["step"] = step + 1
        bar.set_postfix(loss=f"{np.mean(state['losses'][-100:]):.4f}")
        if state["step"] % cfg.ckpt_every == 0 or state["step"] == cfg.steps:
            state["wall_s"] += time.time() - t0
            t0 = time.time()
            _save(cfg, net, ema, opt, state, out_dir)


def _save(cfg: TrainFluxConfig, net, ema, opt, state, out_dir: Path) -> None:
    atomic_torch_save(
        {
            "model": net.state_dict(),
            "ema": ema.state_dict(),
            "opt": opt.state_dict(),
            "step": state["step"],
            "losses": state["losses"],
            "wall_s": state["wall_s"],
            "config": asdict(cfg),  # compared on --resume (check_resume)
        },
        out_dir / "checkpoint.pt",
    )
    losses = np.asarray(state["losses"])
    text = "step,loss\n" + "".join(f"{i + 1},{v:.6f}\n" for i, v in enumerate(losses))
    atomic_write_text(text, out_dir / "losses.csv")
    _plot_losses(losses, out_dir / "loss.png")


def load_trained(path: str | Path, ema: bool = True) -> FluxMNIST:
    """The FluxMNIST of a train_flux checkpoint (its EMA weights by default), in eval mode."""
    ckpt = safe_torch_load(path)
    net = FluxMNIST()
    net.load_state_dict(ckpt["ema" if ema else "model"])
    return net.eval().requires_grad_(False)


def export_trained(path: str | Path, out: str | Path, ema: bool = True) -> Path:
    """Write a train_flux checkpoint's EMA weights as a flux-mnist diffusers folder (float16; see save_flux_mnist)."""
    net = load_trained(path, ema)
    return save_flux_mnist(net.transformer, net.prompts, out)
