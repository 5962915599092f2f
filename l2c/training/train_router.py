"""Router training, the paper's Algorithm 1 (docs/upstream.md §1.5-1.7), against a frozen DiT or U-ViT.

Each iteration: draw x0 and labels (10% null, one mask for all three forwards), pick one cache step m (the same for
the whole batch), noise x0 to the evaluation before m, take one full solver step into m while recording every
sub-layer output, then compare the full model at (x_m, m) (teacher) with the blended model (student, β =
sigmoid(router[m]), Eq. 6 with α = 1 as the official code) and minimise  D(teacher - student) + λ Σ β.
Only the router's logits are optimised.

Under torchrun each process takes its slice of one global batch of world_size x batch_size drawn from the shared
generator, draws its own cache step (as the official DDP code does: one t per GPU per iteration), and the router's
gradient is averaged over the processes. With a single cache step, N processes at batch B therefore train exactly
the router of one process at batch N*B.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..cache.engine import CacheEngine
from ..models import ARCHITECTURES
from ..router.router import Router
from ..sampling.samplers import Sampler
from ..utils import distributed
from ..utils.io import atomic_torch_save, atomic_write_json, safe_torch_load
from ..utils.precision import check_precision, grad_scaler, precision_scope
from ..utils.progress import progress_bar

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RouterTrainConfig:
    iterations: int = 300  # optimizer steps (official: 20k-40k at batch 64 on 8 GPUs)
    batch_size: int = 32
    lr: float = 5e-2  # AdamW; official 1e-3 for 20k iterations, larger for short CPU runs
    lam: float = 1e-3  # λ of the sparsity term λ Σ sigmoid(logits)
    loss: str = "mean"  # "mean": DiT's mean squared error; "sum": U-ViT's per-sample sum of squares
    clamp: float = 5.0  # clamp logits to [-c, c] after each step (DiT official); 0 = no clamp (U-ViT)
    label_dropout: float = 0.1
    ste_threshold: float | None = None  # straight-through threshold in training (off in the official routers)
    seed: int = 0
    ckpt_every: int = 100
    precision: str = "fp32"  # fp32 | tf32 | bf16 | fp16 (autocast; fp16 with loss scaling, as U-ViT's accelerate)

    def __post_init__(self):
        if self.loss not in ("mean", "sum"):
            raise ValueError(f"loss must be 'mean' or 'sum', got {self.loss!r}")
        if self.iterations < 1 or self.batch_size < 1:
            raise ValueError("iterations and batch_size must be >= 1")
        if self.lam < 0 or self.lr <= 0:
            raise ValueError(f"need lam >= 0 and lr > 0, got lam={self.lam}, lr={self.lr}")
        check_precision(self.precision)


def official_defaults(arch: str, steps: int) -> dict:
    """Spec Table 8: λ, θ, lr and loss form of the released routers."""
    if arch == "dit":
        lam = {50: 1e-6, 20: 5e-6, 10: 1e-6}.get(steps, 5e-6)
        return dict(lam=lam, lr=1e-3, loss="mean", clamp=5.0, threshold=0.1, batch_size=64, iterations=20000)
    return dict(lam=0.1, lr=1e-3, loss="sum", clamp=0.0, threshold=0.9, batch_size=64, iterations=40000)


def cpu_defaults(arch: str) -> dict:
    """Settings for small models on a CPU: a few hundred iterations, so a far larger lr than the paper's 1e-3
    (each cache step gets ~40 updates; Adam moves a logit by about lr per update), and λ calibrated on the model."""
    loss = ARCHITECTURES[arch].router_loss
    return dict(iterations=400, batch_size=16, lr=1e-1, lam="auto", loss=loss, clamp=5.0, threshold=0.5)


def router_step_loss(
    model,
    engine: CacheEngine,
    router: Router,
    sampler: Sampler,
    x0,
    y,
    m: int,
    noise: torch.Tensor,
    cfg: RouterTrainConfig,
    randn_like=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(total loss, distillation part) of one batch at cache evaluation m (Algorithm 1, lines 3-7).

    The solver step into m is the sampler's own `step` (the code path of sampling), run unguided with the full
    model; `randn_like` feeds a stochastic sampler (DDPM) its noise.
    """
    i = sampler.step_into(m)
    x_s = sampler.noised(x0, i, noise)

    def denoise(x, t, j):
        engine.begin_evaluation()
        return model(x, t, y)

    with torch.no_grad():
        with engine.recording():  # the last evaluation before m leaves its outputs in the cache
            x_m = sampler.step(denoise, x_s, i, {}, randn_like)
        t_m = sampler.training_time(m, x0.shape[0], x0.device)
        with engine.bypassed():
            target = model(x_m, t_m, y)
    with engine.blending(router.scores(m, cfg.ste_threshold)):
        pred = model(x_m, t_m, y)
    sq = (pred - target).square()
    distill = sq.mean() if cfg.loss == "mean" else sq.flatten(1).sum(1).mean()
    # Eq. (8): the L1 term is the sum of the scores of the one router being trained.
    return distill + cfg.lam * torch.sigmoid(router.logits[m]).sum(), distill


@torch.no_grad()
def caching_errors(
    model,
    router: Router,
    sampler: Sampler,
    sample_batch: Callable,
    batch_size: int = 32,
    loss: str = "mean",
    seed: int = 0,
) -> torch.Tensor:
    """(cache steps, L) distillation error of reusing ONE sub-layer at one cache step, all others computed.

    The paper's Fig. 3 quantity, measured with the training loss itself. Used to pick λ: with the loss
    D + λ Σ β, dropping sub-layer l pays off roughly when its error is below λ.
    """
    cfg = RouterTrainConfig(lam=0.0, loss=loss, label_dropout=0.0)
    engine = CacheEngine(model)
    errors = torch.zeros(len(router.cache_steps), router.num_sublayers)
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    x0, y = sample_batch(gen, batch_size)
    x0, y = x0.to(device), y.to(device)
    noise = torch.randn(x0.shape, generator=gen).to(device)
    probe = Router(router.num_steps, router.num_sublayers, router.cache_steps).to(device)
    try:
        for i, m in enumerate(router.cache_steps):
            for l in range(router.num_sublayers):
                probe.logits.data.fill_(30.0)  # β ≈ 1: compute
                probe.logits.data[m, l] = -30.0  # β ≈ 0: reuse this one
                randn_like = _seeded_noise(seed * 7919 + i * 1009 + l)
                _, distill = router_step_loss(model, engine, probe, sampler, x0, y, m, noise, cfg, randn_like)
                errors[i, l] = distill
                engine.reset()
    finally:
        engine.detach()
    return errors


def resolve_lambda(lam, model, router, sampler, sample_batch, loss: str, target_removal: float, batch_size=32):
    """A number, or "auto": the target-removal quantile of single-layer caching errors measured on this model."""
    if lam != "auto":
        try:
            return float(lam)
        except ValueError:
            raise ValueError(f"--lam must be a number or 'auto', got {lam!r}") from None
    errors = caching_errors(model, router, sampler, sample_batch, batch_size=batch_size, loss=loss)
    value = lambda_for_removal(errors, target_removal)
    print(
        f"λ = {value:.3g}: the {target_removal:.0%} quantile of single-layer caching errors "
        f"(range {errors.min().item():.2g} .. {errors.max().item():.2g})"
    )
    return value


def _seeded_noise(seed: int, stream: int = 0):
    """randn_like for a stochastic sampler's step in training, reproducible per iteration (and process)."""
    gen = torch.Generator().manual_seed(seed * 65_537 + stream)
    return lambda x: torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)


def lambda_for_removal(errors: torch.Tensor, target_removal: float) -> float:
    """λ at the `target_removal` quantile of the single-layer caching errors."""
    if not 0.0 < target_removal < 1.0:
        raise ValueError(f"target removal must be in (0, 1), got {target_removal}")
    return float(torch.quantile(errors.flatten().double(), target_removal))


def train_router(
    model,
    router: Router,
    sampler: Sampler,
    sample_batch: Callable,
    cfg: RouterTrainConfig,
    out_dir: Path | None = None,
    resume: bool = False,
    record: dict | None = None,
) -> dict:
    """sample_batch(generator, n) -> (x0 (n,C,H,W), labels (n,)). Returns the loss history.

    cfg.batch_size is per process; only the main process writes the working checkpoint and the history.
    """
    model.eval().requires_grad_(False)
    device = next(model.parameters()).device
    router.to(device)
    opt = torch.optim.AdamW([router.logits], lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    history = {"iteration": [], "step": [], "loss": [], "distill": [], "active": []}
    start = 0
    ckpt = Path(out_dir) / "router_training.pt" if out_dir else None
    if resume and ckpt is not None and ckpt.exists():
        state = safe_torch_load(ckpt)
        router.logits.data.copy_(state["logits"])
        opt.load_state_dict(state["opt"])
        history, start = state["history"], state["iteration"]
    engine = CacheEngine(model)
    scaler = grad_scaler(model, cfg.precision)
    null = model.null_class
    rank, world = distributed.rank(), distributed.world_size()
    mine = slice(rank * cfg.batch_size, (rank + 1) * cfg.batch_size)
    t0 = time.time()
    try:
        bar = progress_bar(
            range(start, cfg.iterations),
            initial=start,
            total=cfg.iterations,
            desc="train-router",
            disable=not distributed.is_main(),
        )
        for it in bar:
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + it)
            x0, y = sample_batch(gen, cfg.batch_size * world)
            drop = torch.rand(y.shape, generator=gen) < cfg.label_dropout
            y = torch.where(drop, torch.full_like(y, null), y)
            m = router.cache_steps[int(torch.randint(len(router.cache_steps), (1,), generator=gen))]
            noise = torch.randn(x0.shape, generator=gen)
            for _ in range(rank):  # processes after the first draw their own step, after everything shared
                m = router.cache_steps[int(torch.randint(len(router.cache_steps), (1,), generator=gen))]
            x0, y, noise = x0[mine].to(device), y[mine].to(device), noise[mine].to(device)
            randn_like = _seeded_noise(cfg.seed * 1_000_003 + it, rank)
            with precision_scope(model, cfg.precision):
                loss, distill = router_step_loss(model, engine, router, sampler, x0, y, m, noise, cfg, randn_like)
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"router loss is {loss.item()} at iteration {it}; lower --lr (now {cfg.lr})")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)  # gradients in true units before averaging (a no-op unless fp16)
            distributed.mean_across_processes(router.logits.grad)
            scaler.step(opt)  # fp16: skips the step when the scaled gradient overflowed
            scaler.update()
            if cfg.clamp:
                with torch.no_grad():
                    router.logits.clamp_(-cfg.clamp, cfg.clamp)
            engine.reset()
            active = float(torch.sigmoid(router.logits.detach()[router.cache_steps]).mean())
            # one host transfer for both numbers (averaged over the processes under torchrun)
            loss_value, distill_value = distributed.mean_across_processes(
                torch.stack([loss.detach(), distill.detach()])
            ).tolist()
            for k, v in (
                ("iteration", it + 1),
                ("step", m),
                ("loss", loss_value),
                ("distill", distill_value),
                ("active", active),
            ):
                history[k].append(v)
            bar.set_postfix(loss=f"{np.mean(history['loss'][-20:]):.3g}", mean_score=f"{active:.2f}")
            due = (it + 1) % cfg.ckpt_every == 0 or it + 1 == cfg.iterations
            if ckpt is not None and due and distributed.is_main():
                atomic_torch_save(
                    {
                        "logits": router.logits.detach().clone(),
                        "opt": opt.state_dict(),
                        "history": history,
                        "iteration": it + 1,
                        "config": asdict(cfg),
                        "record": record,  # the settings a --resume must match (jobs.train_router)
                    },
                    ckpt,
                )
    finally:
        engine.detach()
    history["wall_s"] = time.time() - t0
    if out_dir and distributed.is_main():
        atomic_write_json({"config": asdict(cfg), "history": history}, Path(out_dir) / "router_training.json")
    return history
