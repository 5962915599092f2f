"""The schedule-training job: learn a compute / reuse / forecast schedule over every evaluation to a MAC budget
(l2c.training.trajectory), export it at exactly that budget (l2c.router.budget), write the router file and its
heat-map. Used by `l2c train-router --target-speedup / --target-macs` and the demo."""

from __future__ import annotations

from pathlib import Path

from ..cache.macs import MacProfile
from ..models import architecture_of
from ..router.budget import plan_fraction, schedule_scores, threshold_for_budget
from ..router.files import save_router
from ..router.report import plot_router
from ..router.router import Router
from ..sampling.samplers import Sampler
from ..training.trajectory import ScheduleTrainConfig, train_schedule
from ..utils.io import atomic_write_json


def train_schedule_job(
    model,
    meta: dict,
    sampler: Sampler,
    macs: MacProfile,
    config: ScheduleTrainConfig,
    out: Path,
    max_skip: int | None = None,
    progress: bool = True,
) -> tuple[Router, dict]:
    """Train, pick θ for the budget, write `out` (.safetensors) and `out` without suffix / {schedule.png, .json}."""
    num_classes = model.null_class  # labels 0 .. null - 1
    logits, history = train_schedule(model, sampler, macs, config, num_classes, progress=progress)
    router = Router(logits.shape[0], logits.shape[1], list(range(1, logits.shape[0])))
    router.logits.data.copy_(logits)
    scores = schedule_scores(router)
    theta, plan, met = threshold_for_budget(scores, config.target_macs, macs, config.action, max_skip)
    router_meta = {
        "kind": "schedule",
        "arch": architecture_of(model),
        "model": meta.get("preset"),
        "sampler": sampler.name,
        "steps": sampler.num_evaluations // sampler.evaluations_per_step,
        "guidance": config.guidance_scale,
        "action": config.action,
        "max_skip": max_skip,
        "threshold": theta,
        "target_macs": config.target_macs,
        "met_macs": met,
        "actions": plan.action_counts(),
        "training": {k: v for k, v in history["config"].items()},
        "schedule": "all",
    }
    save_router(router, out, router_meta)
    work = out.with_suffix("")
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_json({"meta": router_meta, "history": history}, work / "schedule_training.json")
    plot_router(router, theta, work / "schedule.png", title=f"{meta.get('preset')} {sampler.name}, MACs {met:.3f}")
    print(
        f"wrote {out}: {plan.action_counts()} over {plan.num_steps} evaluations; MACs {met:.3f} of uncached "
        f"(target {config.target_macs:.3f}, {1 / met:.2f}x fewer) at θ = {theta:.4g}"
    )
    assert abs(plan_fraction(plan, macs) - met) < 1e-12
    return router, router_meta
