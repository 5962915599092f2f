"""The router-training job: build a router for a sampling run, set λ, train it (Algorithm 1), write the file and
its pictures. Shared by `l2c train-router` and the demo."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..cache.layout import sublayers
from ..cache.plan import cache_steps_for
from ..data.prepared import ArrayDataset
from ..data.sources import open_training_data
from ..models import architecture_of
from ..router.files import save_router
from ..router.report import plot_router, plot_training_history, router_summary
from ..router.router import Router
from ..sampling.samplers import make_sampler
from ..training.train_router import RouterTrainConfig, cpu_defaults, official_defaults, resolve_lambda, train_router
from ..utils import distributed
from ..utils.io import file_sha256
from .generate import SampleConfig, generate
from .loading import is_latent


@dataclass(frozen=True)
class RouterJob:
    sampler: str
    steps: int
    guidance_scale: float = 1.5  # recorded in the router file (router training itself runs unguided)
    official: bool = False  # the paper's Table 8 settings instead of the small-model CPU defaults
    overrides: tuple = ()  # (name, value) pairs over the defaults: iterations, batch_size, lr, lam, loss, clamp, ...
    target_removal: float = 0.5  # for λ = "auto"
    ste_threshold: float | None = None
    seed: int = 0


def batch_source(
    data: str, model, spec, meta: dict, vae: str | None, work: Path, sampling: SampleConfig, generated_images: int = 512
):
    """sample_batch(generator, n) -> (x0, labels) from MNIST, an image folder, or the model's own samples (drawn
    with `sampling`)."""
    if data == "generated":
        classes = [i % model.null_class for i in range(generated_images)]
        seeds = list(range(10**6, 10**6 + generated_images))  # not the seeds anyone evaluates
        return ArrayDataset(generate(model, spec, seeds, classes, sampling), classes).random_batch
    return open_training_data(data, model, is_latent(meta), vae, work / "data").random_batch


def train_router_job(
    model, spec, meta: dict, job: RouterJob, sample_batch, out: Path, resume: bool = False, extra_meta: dict = None
) -> Router:
    """Train and write `out` (a .safetensors router file); working files go to the folder `out` without suffix."""
    arch = architecture_of(model)
    sampler = make_sampler(job.sampler, job.steps, spec)
    settings = official_defaults(arch, job.steps) if job.official else cpu_defaults(arch)
    settings.update(dict(job.overrides))
    threshold = settings.pop("threshold")
    cache_steps = cache_steps_for(sampler.cache_schedule, sampler.num_evaluations)
    generator = torch.Generator().manual_seed(job.seed)
    router = Router(job.steps, len(sublayers(model)), cache_steps, generator=generator)
    settings["lam"] = resolve_lambda(
        settings["lam"], model, router, sampler, sample_batch, settings["loss"], job.target_removal
    )
    config = RouterTrainConfig(**settings, ste_threshold=job.ste_threshold, seed=job.seed)
    work = out.with_suffix("")
    history = train_router(model, router, sampler, sample_batch, config, out_dir=work, resume=resume)
    if not distributed.is_main():
        return router  # the router is identical on every process; the main one writes it
    router_meta = {
        "arch": arch,
        "model": meta.get("preset"),
        "sampler": job.sampler,
        "steps": job.steps,
        "guidance": job.guidance_scale,
        "lambda": config.lam,
        "threshold": threshold,
        "schedule": sampler.cache_schedule,
        "training": asdict(config),
        "processes": distributed.world_size(),  # the global batch is processes x batch_size
        **(extra_meta or {}),
    }
    if meta.get("path"):
        router_meta["checkpoint_sha256"] = file_sha256(meta["path"])
    save_router(router, out, router_meta)
    plot_router(router, threshold, work / "router.png", title=f"{meta.get('preset')} {job.sampler}-{job.steps}")
    plot_training_history(history, work / "router_loss.png")
    summary = router_summary(router, threshold)
    print(
        f"wrote {out} (executed {summary['executed']}/{summary['total']} sub-layers in cache steps at θ = "
        f"{threshold}); heat-map {work / 'router.png'}, loss curve {work / 'router_loss.png'}"
    )
    return router
