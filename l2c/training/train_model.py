"""Train a DiT or U-ViT preset from scratch (the bundled MNIST models are made with this).

AdamW, EMA with warm-up, 10% label dropout for classifier-free guidance, ε-prediction (+ DiT's variational term for
learned-sigma presets), atomic periodic checkpoints, exact resume (batch i is drawn from a generator seeded by
(seed, i), so a resumed run sees the same batches as an uninterrupted one).
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

from ..models import MODELS, architecture_of, create_model
from ..sampling.diffusion import DiffusionSpec, default_spec
from ..utils.io import atomic_output, atomic_torch_save, atomic_write_json, atomic_write_text, safe_torch_load
from ..utils.progress import progress_bar
from .losses import epsilon_loss

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainModelConfig:
    model: str = "DiT-mnist"  # preset name (l2c.models.MODELS)
    steps: int = 20000  # optimizer steps in total (a resumed run continues to this number)
    batch_size: int = 64
    lr: float = 1e-3  # AdamW, weight decay 0, linear warm-up then constant
    warmup: int = 200  # warm-up steps
    ema_decay: float = 0.9995  # capped by (1 + step) / (10 + step) early on, so the EMA is useful from the start
    label_dropout: float = 0.1  # fraction of labels replaced by the null class (for guidance)
    grad_clip: float = 1.0
    schedule: str = ""  # beta schedule; "" = the architecture's default (linear for DiT, scaled_linear for U-ViT)
    seed: int = 0
    ckpt_every: int = 500  # steps between atomic checkpoints
    threads: int = 0  # torch CPU threads; 0 = torch's default
    min_snr_gamma: float = 0.0  # > 0: Min-SNR-γ loss weights (faster convergence); 0 = DiT's uniform weights
    random_flip: bool = False  # ADM's horizontal flips (natural images; not for digits)

    def __post_init__(self):
        if self.model not in MODELS:
            raise ValueError(f"unknown model preset {self.model!r}; known presets: {', '.join(MODELS)}")
        for name in ("steps", "batch_size", "ckpt_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.label_dropout < 1:
            raise ValueError(f"label_dropout must be in [0, 1), got {self.label_dropout}")


RESUMABLE_CHANGES = ("steps", "ckpt_every", "threads")  # settings a resumed run may change: the result stays the same


def check_resume(out_dir: Path, cfg: TrainModelConfig, resume: bool, record: dict | None = None) -> None:
    """Before any data is read: refuse to overwrite a run without --resume, and a --resume of another command's
    checkpoint (naming the first settings that differ). `record` names the data, which cfg does not hold."""
    ckpt_path = Path(out_dir) / "checkpoint.pt"
    if not ckpt_path.exists():
        return
    if not resume:
        raise FileExistsError(f"{ckpt_path} exists: pass --resume to continue it, or choose another --out")
    ckpt = safe_torch_load(ckpt_path)
    old = {**ckpt.get("config", {}), **(ckpt.get("record") or {})}
    new = {**asdict(cfg), **(record or {})}
    changed = [k for k in sorted(set(old) | set(new)) if k not in RESUMABLE_CHANGES and old.get(k) != new.get(k)]
    if changed:
        said = "; ".join(f"{k} was {old.get(k)!r}, now {new.get(k)!r}" for k in changed[:3])
        raise ValueError(
            f"{ckpt_path} was made by another command ({said}): pass the old values to resume it, or choose "
            "another --out"
        )
    if ckpt.get("step", 0) > cfg.steps:
        raise ValueError(f"{ckpt_path} is already at step {ckpt['step']}, past --steps {cfg.steps}")


def train_model(cfg: TrainModelConfig, data, out_dir: Path, resume: bool = False, record: dict | None = None):
    """data: an l2c.data.prepared dataset (ArrayDataset, PreparedDataset) of the model's input shape.

    Writes out_dir/{checkpoint.pt, config.json, losses.csv, loss.png}; returns (ema model, diffusion spec, state).
    """
    out_dir = Path(out_dir)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)  # the initial weights depend on the seed only, not on earlier global RNG use
        model = create_model(cfg.model)
    spec = default_spec(architecture_of(model), cfg.schedule or None)
    expected = (model.in_channels, model.input_size, model.input_size)
    if tuple(data.shape) != expected:
        raise ValueError(f"the data is {tuple(data.shape)} per image but {cfg.model} takes {expected}")
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.0)
    state = {"step": 0, "losses": [], "record": record}
    ckpt_path = out_dir / "checkpoint.pt"
    check_resume(out_dir, cfg, resume, record)
    if resume and ckpt_path.exists():
        state = {**_load_training_state(ckpt_path, cfg, model, ema, opt), "record": record}
        log.info("resumed from %s at step %d", ckpt_path, state["step"])
    atomic_write_json({"config": asdict(cfg), "diffusion": asdict(spec)}, out_dir / "config.json")
    _run(cfg, spec, model, ema, opt, state, data, out_dir)
    return ema, spec, state


def _run(cfg, spec: DiffusionSpec, model, ema, opt, state, data, out_dir):
    abar = torch.as_tensor(spec.alphas_cumprod())
    null = model.null_class
    bar = progress_bar(range(state["step"], cfg.steps), initial=state["step"], total=cfg.steps, desc="train-model")
    t0 = time.time()
    for step in bar:
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        idx = torch.randint(0, len(data), (cfg.batch_size,), generator=gen)
        flip = torch.rand(cfg.batch_size, generator=gen) < 0.5 if cfg.random_flip else None
        x0, y = data.batch(idx, flip)
        y[torch.rand(cfg.batch_size, generator=gen) < cfg.label_dropout] = null
        for group in opt.param_groups:
            group["lr"] = cfg.lr * min(1.0, (step + 1) / max(cfg.warmup, 1))
        loss = epsilon_loss(model, x0, y, gen, spec, abar, cfg.min_snr_gamma)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"loss is {loss.item()} at step {step}; lower --lr (now {cfg.lr})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        _update_ema(ema, model, min(cfg.ema_decay, (1 + step) / (10 + step)))
        state["losses"].append(loss.item())
        state["step"] = step + 1
        bar.set_postfix(loss=f"{np.mean(state['losses'][-100:]):.4f}")
        if state["step"] % cfg.ckpt_every == 0 or state["step"] == cfg.steps:
            state["wall_s"] = state.get("wall_s", 0.0) + time.time() - t0
            t0 = time.time()
            _save(cfg, spec, model, ema, opt, state, out_dir)


@torch.no_grad()
def _update_ema(ema, model, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        if p.requires_grad:
            e.lerp_(p, 1.0 - decay)


def _save(cfg, spec, model, ema, opt, state, out_dir: Path) -> None:
    atomic_torch_save(
        {
            "model": model.state_dict(),
            "ema": ema.state_dict(),
            "opt": opt.state_dict(),
            "step": state["step"],
            "losses": state["losses"],
            "wall_s": state["wall_s"],
            "config": asdict(cfg),
            "diffusion": asdict(spec),
            "record": state.get("record"),  # the data: compared on --resume (check_resume)
        },
        out_dir / "checkpoint.pt",
    )
    losses = np.asarray(state["losses"])
    text = "step,loss\n" + "".join(f"{i + 1},{v:.6f}\n" for i, v in enumerate(losses))
    atomic_write_text(text, out_dir / "losses.csv")
    _plot_losses(losses, out_dir / "loss.png")


def _load_training_state(path, cfg, model, ema, opt) -> dict:
    ckpt = safe_torch_load(path)
    if ckpt["config"]["model"] != cfg.model:
        raise ValueError(
            f"{path} trains {ckpt['config']['model']!r}, not {cfg.model!r}; use --model {ckpt['config']['model']}"
        )
    model.load_state_dict(ckpt["model"])
    ema.load_state_dict(ckpt["ema"])
    opt.load_state_dict(ckpt["opt"])
    return {"step": ckpt["step"], "losses": list(ckpt["losses"]), "wall_s": ckpt.get("wall_s", 0.0)}


def _plot_losses(losses: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(np.arange(1, len(losses) + 1), losses, lw=0.3, alpha=0.4, label="loss")
    if len(losses) >= 100:
        smooth = np.convolve(losses, np.ones(100) / 100, mode="valid")
        ax.plot(np.arange(100, len(losses) + 1), smooth, lw=1.2, label="mean of 100")
    ax.set(xlabel="step", ylabel="ε-MSE", yscale="log")
    ax.legend()
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
