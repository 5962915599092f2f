"""The router-training job: build a router for a sampling run, set λ, train it (Algorithm 1), write the file and
its pictures. Shared by `l2c train-router` and the demo."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import torch

from ..cache.layout import describe, sublayers
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
from ..utils.io import file_sha256, safe_torch_load
from ..utils.precision import precision_scope
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
    precision: str = "fp32"  # fp32 | tf32 | bf16 | fp16 (l2c.utils.precision), for λ calibration and training


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


def check_before_training(model, spec, meta: dict, job: RouterJob, out: Path, resume: bool, extra_meta: dict) -> None:
    """What train_router_job would refuse, checked before any data is made or read."""
    make_sampler(job.sampler, job.steps, spec)  # steps that the sampler cannot take
    settings = _settings(job, architecture_of(model))
    check_working_checkpoint(out, resume_record(job, model, spec, meta, extra_meta), settings["iterations"], resume)


def _settings(job: RouterJob, arch: str) -> dict:
    settings = official_defaults(arch, job.steps) if job.official else cpu_defaults(arch)
    settings.update(dict(job.overrides))
    return settings


def resume_record(job: RouterJob, model, spec, meta: dict, extra_meta: dict | None) -> dict:
    """Every setting that changes the trained router, by name. Not θ (only written into the file) and not the
    iteration count (the lr is constant, so a longer run continues a shorter one exactly)."""
    overrides = {f"--{k.replace('_', '-')}": v for k, v in job.overrides if k not in ("iterations", "threshold")}
    chosen = {k: v for k, v in asdict(job).items() if k not in ("overrides", "guidance_scale")}
    return {
        "model": meta.get("preset"),
        "weights": _weights_identity(meta),
        "dtype": str(next(model.parameters()).dtype),
        **{f"diffusion {k}": v for k, v in asdict(spec).items()},  # the β schedule and how time is fed
        **chosen,
        **overrides,
        "processes": distributed.world_size(),  # the global batch is processes x batch size
        **{k: v for k, v in (extra_meta or {}).items() if k != "model"},  # the training data
    }


def _weights_identity(meta: dict) -> str:
    return f"sha256 {_sha256(meta['path'])}" if meta.get("path") else "random init"


@lru_cache(maxsize=4)
def _sha256(path: str) -> str:
    return file_sha256(path)  # large official checkpoints take seconds to hash; one run hashes each once


def unfinished_run(out: Path) -> bool:
    """Whether the working folder of `out` holds a run stopped before its last iteration."""
    ckpt = Path(out).with_suffix("") / "router_training.pt"
    if not ckpt.exists():
        return False
    state = safe_torch_load(ckpt)
    return state.get("iteration", 0) < state.get("config", {}).get("iterations", 0)


def check_working_checkpoint(out: Path, record: dict, iterations: int, resume: bool) -> float | None:
    """Refuse a --resume whose checkpoint another command made (naming the setting), and a fresh start that would
    overwrite an unfinished run. Returns the checkpoint's λ when resuming, else None."""
    ckpt = out.with_suffix("") / "router_training.pt"
    if not ckpt.exists():
        if resume and distributed.is_main():
            print(f"no working checkpoint at {ckpt}: starting from the beginning")
        return None
    state = safe_torch_load(ckpt)
    done, total = state.get("iteration", 0), state.get("config", {}).get("iterations", 0)
    if not resume:
        if done < total:
            raise ValueError(
                f"{ckpt} holds an unfinished run ({done} of {total} iterations): add --resume to continue it, "
                f"or remove {ckpt} to start over"
            )
        return None
    old = state.get("record")
    if old is None:
        raise ValueError(f"{ckpt} was written by an older l2c and records no settings to check: remove it to restart")
    changed = [k for k in sorted(set(old) | set(record)) if old.get(k) != record.get(k)]
    if changed:
        said = "; ".join(f"{k} was {old.get(k)!r}, now {record.get(k)!r}" for k in changed[:3])
        raise ValueError(
            f"{ckpt} was made by another command ({said}): pass the old values to resume it, or remove {ckpt} "
            "to start over"
        )
    if done > iterations:
        raise ValueError(f"{ckpt} is already at iteration {done}, past --iterations {iterations}: pass {done} or more")
    return state["config"]["lam"]


def train_router_job(
    model, spec, meta: dict, job: RouterJob, sample_batch, out: Path, resume: bool = False, extra_meta: dict = None
) -> Router:
    """Train and write `out` (a .safetensors router file); working files go to the folder `out` without suffix."""
    arch = architecture_of(model)
    sampler = make_sampler(job.sampler, job.steps, spec)
    settings = _settings(job, arch)
    threshold = settings.pop("threshold")
    record = resume_record(job, model, spec, meta, extra_meta)
    known_lam = check_working_checkpoint(out, record, settings["iterations"], resume)
    if known_lam is not None:
        settings["lam"] = known_lam  # the λ this run was calibrated with: measuring it again gives the same
    cache_steps = cache_steps_for(sampler.cache_schedule, sampler.num_evaluations)
    generator = torch.Generator().manual_seed(job.seed)
    router = Router(job.steps, len(sublayers(model)), cache_steps, generator=generator)
    with precision_scope(model, job.precision):  # λ is calibrated on the errors of the precision it trains at
        settings["lam"] = resolve_lambda(
            settings["lam"], model, router, sampler, sample_batch, settings["loss"], job.target_removal
        )
    config = RouterTrainConfig(**settings, ste_threshold=job.ste_threshold, seed=job.seed, precision=job.precision)
    work = out.with_suffix("")
    history = train_router(model, router, sampler, sample_batch, config, out_dir=work, resume=resume, record=record)
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
        router_meta["checkpoint_sha256"] = _sha256(meta["path"])
    save_router(router, out, router_meta)
    layout = describe(model)
    plot_router(
        router, threshold, work / "router.png", title=f"{meta.get('preset')} {job.sampler}-{job.steps}", layout=layout
    )
    plot_training_history(history, work / "router_loss.png")
    summary = router_summary(router, threshold, layout=layout)
    print(
        f"wrote {out} (executed {summary['executed']}/{summary['total']} sub-layers in cache steps at θ = "
        f"{threshold}); heat-map {work / 'router.png'}, loss curve {work / 'router_loss.png'}"
    )
    return router
