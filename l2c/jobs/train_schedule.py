"""The schedule-training job: learn a compute / reuse / forecast schedule over every evaluation to a MAC budget
(l2c.training.trajectory), export it at exactly that budget (l2c.router.budget), write the router file and its
heat-map. Used by `l2c train-router --target-speedup / --target-macs` and the demo."""

from __future__ import annotations

import math
from dataclasses import asdict, replace
from pathlib import Path

import torch

from ..cache.layout import describe, group_by_block, sublayer_blocks
from ..cache.macs import MacProfile, plan_peak_bytes
from ..cache.plan import ACTION_NAMES, COMPUTE, CachePlan
from ..models import architecture_of
from ..router.budget import action_names, router_plan, threshold_for_budget
from ..router.files import save_router
from ..router.report import plot_router
from ..router.router import Router
from ..sampling.samplers import Sampler
from ..training.deadline import Deadline
from ..training.ranked_search import fill_ranked, grow_ranked, refine_ranked, trim_ranked
from ..training.schedule_search import (
    SearchTrace,
    TrajectoryError,
    fill_budget,
    fill_within_evaluation,
    grow_to_budget,
    refine,
    trim_to_budget,
)
from ..training.trajectory import (
    ScheduleTrainConfig,
    initial_logits,
    interval_just_over,
    interval_well_under,
    rows_actions,
    rows_cost,
    start_evaluations,
    train_schedule,
    warmup_rows,
)
from ..utils.io import atomic_write_json
from .loading import is_latent

# Pixel models' samples are images in [-1, 1]; saved images are clipped to it (l2c.jobs.generate.to_uint8).
PIXEL_RANGE = (-1.0, 1.0)
# Held-out noise seeds of the search and of its check: far from the seeds images are evaluated on (0, 1, ...).
SEARCH_SEED, CHECK_SEED = 10**7, 2 * 10**7
# Evaluations computed back to back at the start of the search's warm-up starts (trajectory.warmup_rows).
WARMUPS = (2, 3, 4)
# Why a grown start left budget unspent (schedule_search.grow_to_budget's last value), for the note train-router prints.
GROWTH_STOPPED = {
    "budget": "no whole evaluation more fits",
    "error": "no whole evaluation more that fits lowered the held-out error",
    "check": "the best evaluation more did not lower the check error",
    "time": "the search's time ran out (--search-minutes)",
}


def train_schedule_job(
    model,
    meta: dict,
    sampler: Sampler,
    macs: MacProfile,
    config: ScheduleTrainConfig,
    out: Path,
    max_skip: int | None = None,
    progress: bool = True,
    workload=None,
    max_cache_bytes: float | None = None,
    cost: tuple[MacProfile, dict] | None = None,
    reference_sampler: Sampler | None = None,
) -> tuple[Router, dict]:
    """Start from TaylorSeer's interval at the budget, train (gradient iterations, if any), take the plan that meets
    the budget, refine it by search along its own trajectory, write `out` (.safetensors) and `out` without suffix /
    {schedule.png, schedule_training.json}.

    workload: what the search samples (l2c.jobs.workload; a diffusers transformer with its prompts), else the
    class-conditional `model` with the sampler and the config's guidance. max_cache_bytes: the most a plan may store
    per image (l2c.cache.macs.plan_peak_bytes, in the model's dtype, every guidance call counted); the search skips
    plans over it. cost: a measured time profile and its record (l2c.cache.costs.measure_time_profile): the budget
    is then `config.target_macs` of the predicted uncached *time*, and `macs` serves the reports only.
    reference_sampler: what the search's errors measure against, where not the uncached run of `sampler` (another
    step count of the same sampler: l2c.training.trajectory_error.TrajectoryError)."""
    if workload is not None and config.iterations:
        raise ValueError(
            "gradient training (--iterations) runs on class-conditional models; a diffusers transformer's schedule is "
            "searched: use --iterations 0"
        )
    num_classes = model.null_class if workload is None else None  # labels 0 .. null - 1
    mac_profile = macs
    if cost is not None:
        macs = cost[0]  # every budget computation below spends predicted seconds instead of MACs
    E, L = sampler.num_evaluations, len(macs.sublayer_linear)
    order_errors = error = None
    if config.search_rounds:  # the search's held-out error; "auto" measures the forecast orders with it first
        pixels = meta["pixel_space"] if "pixel_space" in meta else not is_latent(meta)
        clip = PIXEL_RANGE if config.error_on == "images" and pixels else None
        every = -(-sampler.num_steps // config.search_snapshots) if config.search_snapshots else 0
        runs = dict(workload=workload, reference_sampler=reference_sampler)  # what every error below samples
        error = TrajectoryError(
            model, sampler, config.guidance_scale, config.search_images, SEARCH_SEED, clip, every, **runs
        )
    if config.action == "auto":
        config, order_errors = _choose_order(E, L, macs, config, error)
        print(
            f"forecast order: {config.action} (held-out error of the evenly spread start: "
            + ", ".join(f"{a} {e:.3f}" for a, e in order_errors.items())
            + ")",
            flush=True,
        )
    near = interval_just_over(E, macs, config) if config.init == "taylorseer" else None
    if near is not None and not config.search_rounds and cost is None:  # notes about MAC budgets
        print(
            f"note: TaylorSeer's interval {near[0]} costs {near[1]:.3f} of the MACs, "
            f"{near[1] / config.target_macs - 1:.1%} over the budget, and plans just under such an interval have "
            f"lost to it (docs/benchmarks.md): --target-macs {math.ceil(near[1] * 1000) / 1000} "
            "takes it, and a search (--search-rounds) also tries it trimmed to the budget",
            flush=True,
        )
    under = interval_well_under(E, macs, config) if config.init == "taylorseer" and near is None else None
    if under is not None and not config.search_rounds and cost is None:
        print(
            f"note: the budget lies between TaylorSeer's intervals {under[0] - 1} and {under[0]}; interval {under[0]} "
            f"alone costs {under[1]:.3f} of the MACs, and at such budgets it was faster and as good as or better "
            "than the searched schedule on dit-mnist DDIM-50, though not on uvit-mnist NFE 20 at 1.5x "
            f"(docs/benchmarks.md): compare it, --target-macs {math.ceil(under[1] * 1000) / 1000} takes it, and a "
            "search (--search-rounds) also tries it grown where the held-out error says it helps",
            flush=True,
        )
    if config.iterations:
        logits, history = train_schedule(model, sampler, macs, config, num_classes, progress=progress)
    else:
        logits, history = initial_logits(E, L, config, macs), {"config": asdict(config)}
    if order_errors is not None:
        history.update(order_errors=order_errors)
    scores = torch.sigmoid(logits.double())
    theta, plan, met = threshold_for_budget(scores, config.target_macs, macs, config.action, max_skip, config.form)
    cap = None
    if max_cache_bytes is not None:  # checked before any sampling: the search only moves among plans under the cap
        cap = _memory_cap(model, mac_profile, max_cache_bytes, config.guidance_scale, workload)
        _check_memory(plan, cap, "the search's start")
    stopped_early = None
    if config.search_rounds:
        deadline = Deadline(config.search_minutes)
        ranked = config.search_method == "ranked"
        scale = config.guidance_scale
        blocks = group_by_block(sublayer_blocks(model))  # the sub-layers a block move shifts together
        check = screen = None
        if config.check_images:
            check = TrajectoryError(model, sampler, scale, config.check_images, CHECK_SEED, clip, every, **runs)
        if ranked and config.screen_images < config.search_images:  # the first of the search's seeds
            screen = TrajectoryError(model, sampler, scale, config.screen_images, SEARCH_SEED, clip, every, **runs)
        elif ranked:
            screen = error
        if cap is not None:
            for measure in (error, check, screen):
                if measure is not None:
                    measure.cap_memory(*cap)
        # Budgets near a TaylorSeer interval: that interval, trimmed to the budget (just over it) or grown where the
        # held-out error says it helps (well under it), is another start; so are the start's evaluations with the
        # first few computed back to back (trajectory.warmup_rows). The one with the lowest held-out error is kept.
        starts, stopped = {}, None
        if near is not None:
            skipped = ACTION_NAMES.index(config.action)
            interval = rows_actions(E, L, slice(None, None, near[0]), config.action)
            trim = trim_ranked if ranked else trim_to_budget
            trimmed, trimmed_error = trim(
                interval, error, macs, config.target_macs, skipped, config.form, max_skip, progress, blocks, deadline
            )
            starts[f"interval {near[0]} trimmed"] = (trimmed, trimmed_error)
        elif under is not None:
            interval = rows_actions(E, L, slice(None, None, under[0]), config.action)
            grow = grow_ranked if ranked else grow_to_budget
            grown, grown_error, added, stopped = grow(
                interval, error, macs, config.target_macs, config.form, max_skip, progress, check, deadline
            )
            grown_name = f"interval {under[0]} + {len(added)} evaluations"
            starts[grown_name] = (grown, grown_error)
            history.update(evaluations_added=added, growth_stopped=stopped)
        count = int(plan.actions.eq(COMPUTE).all(1).sum())
        starts[f"{count} evaluations spread evenly"] = (plan.actions, None)
        for warm in WARMUPS:
            rows = warmup_rows(E, count, warm)
            if rows is not None and rows_cost(E, rows, macs, config) <= config.target_macs:
                starts[f"{count} evaluations, the first {warm} back to back"] = (
                    rows_actions(E, L, rows, config.action),
                    None,
                )
        name, start_errors = _choose_start(starts, error, config.form, deadline)
        history.update(start_errors=start_errors)
        if len(start_errors) > 1:
            measured = ", ".join(f"{n} ({e:.3f})" for n, e in start_errors.items() if e is not None)
            print(f"search start: {name}; held-out errors: {measured}", flush=True)
        start, start_error = starts[name][0], start_errors[name]
        grown_start = stopped is not None and name == grown_name  # stopped is set by the growth alone
        if deadline.passed("the moves"):
            actions, trace = start, SearchTrace()
        else:
            actions, trace = _refine(
                start, error, screen, check, start_error, config, max_skip, progress, blocks, deadline
            )
        fill = None
        under_budget = _fraction(actions, config, macs) < 0.98 * config.target_macs
        if (config.fill_budget == "blocks" or under_budget) and deadline.passed("the fill"):
            pass  # out of time: the plan stays as the moves left it, within the budget
        elif config.fill_budget == "blocks":
            fill_blocks = fill_ranked if ranked else fill_budget
            actions, filled = fill_blocks(
                actions, error, macs, config.target_macs, config.form, max_skip, progress, blocks, deadline
            )
            history.update(blocks_filled=filled)
        elif config.fill_budget == "evaluation" and under_budget:
            actions, fill = fill_within_evaluation(
                actions,
                error,
                macs,
                config.target_macs,
                config.form,
                max_skip,
                progress,
                check,
                start_error=trace.errors[-1] if trace.errors else None,
                start_check=trace.checks[-1] if trace.checks else None,
                deadline=deadline,
            )
            history.update(fill=fill)
            if fill["sublayers"]:
                verdict = "kept" if fill["kept"] else "not kept"
                print(
                    f"fill: {len(fill['sublayers'])} sub-layers of evaluation {fill['evaluation']}, held-out error "
                    f"{fill['error_before']:.3f} -> {fill['error_after']:.3f}: {verdict}",
                    flush=True,
                )
        history.update(
            search_errors=trace.errors,
            check_errors=trace.checks,
            moves_rejected_by_check=trace.rejected,
            search_evaluations=error.evaluations,
            screen_evaluations=screen.evaluations if screen is not None and screen is not error else 0,
            search_minutes_spent=deadline.spent_minutes(),
            search_stopped=deadline.stopped,
        )
        stopped_early = deadline.stopped
        if stopped_early is not None:
            print(f"search stopped early: {stopped_early['reason']}; the best schedule so far is kept", flush=True)
        # Store the searched plan as scores on either side of θ = 0.5: the file reproduces it exactly.
        logits = torch.where(actions == COMPUTE, 4.0, -4.0).float()
        theta = 0.5
        plan = CachePlan.from_actions(actions, form=config.form, max_skip=max_skip)
        met = macs.fraction(plan)
        if cap is not None:
            _check_memory(plan, cap, "the schedule found")
        if met < 0.98 * config.target_macs and config.fill_budget != "blocks":
            print(
                f"note: the schedule costs {met:.3f} of the MACs, {1 - met / config.target_macs:.1%} under the budget "
                f"({_unspent_reason(fill, stopped if grown_start else None, config.fill_budget)}); the router file "
                "records both, and --fill-budget blocks spends the rest",
                flush=True,
            )
    router = Router(E, L, list(range(1, E)))
    router.logits.data.copy_(logits)
    router_meta = {
        "kind": "schedule",
        "arch": architecture_of(model) if workload is None else meta["class"],
        "model": meta.get("preset") or meta.get("model"),
        "sampler": sampler.name,
        "steps": sampler.num_evaluations // sampler.evaluations_per_step,
        "guidance": config.guidance_scale,
        "action": action_names(plan.actions),  # one per sub-layer where the search chose differently
        "form": config.form,
        "max_skip": max_skip,
        "threshold": theta,
        "budget": "time" if cost is not None else "macs",
        "target_macs": None if cost is not None else config.target_macs,
        "met_macs": mac_profile.fraction(plan),
        "actions": plan.action_counts(),
        "training": {k: v for k, v in history["config"].items()},
        "schedule": "all",
        # for `router show` without the model at hand (a diffusers folder has no preset to profile)
        "macs_per_image_uncached_linear": mac_profile.full() * plan.num_steps,
        "stored_bytes_peak_per_image": plan_peak_bytes(plan, mac_profile.sublayer_outputs, 1, _element_size(model)),
        # the model's sub-layers (name, kind, block), so reports need not guess them without the model
        "sublayers": [[sub.name, sub.kind, sub.block] for sub in describe(model)],
    }
    if reference_sampler is not None:  # searched against the images of another step count (--reference-steps)
        router_meta["reference_steps"] = reference_sampler.num_evaluations // reference_sampler.evaluations_per_step
    if stopped_early is not None:  # --search-minutes ended the search: when, where and why (router show says it)
        router_meta["search_stopped"] = stopped_early
    if cost is not None:  # the measured cost model, and what it predicts for this plan
        router_meta.update(target_time=config.target_macs, predicted_time=met, cost=cost[1])
    save_router(router, out, router_meta)
    work = out.with_suffix("")
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_json({"meta": router_meta, "history": history}, work / "schedule_training.json")
    unit = "predicted time" if cost is not None else "MACs"
    title = f"{meta.get('preset') or meta.get('model')} {sampler.name}, {unit} {met:.3f}"
    plot_router(router, theta, work / "schedule.png", title=title, layout=describe(model))
    print(
        f"wrote {out}: {plan.action_counts()} over {plan.num_steps} evaluations; {unit} {met:.3f} of uncached "
        f"(target {config.target_macs:.3f}, {1 / met:.2f}x); MACs {router_meta['met_macs']:.3f} at θ = {theta:.4g}"
    )
    if not torch.equal(router_plan(router, router_meta).actions, plan.actions):
        raise RuntimeError("the router file does not reproduce the exported plan: this is a bug in l2c")
    return router, router_meta


def _choose_order(E: int, L: int, macs, config, error) -> tuple[ScheduleTrainConfig, dict]:
    """config with action "auto" resolved: the forecast order whose evenly spread start (the most whole
    evaluations that fit, every other cell forecast) has the lower error on the search's held-out seeds. Order 2
    measured better on dit-mnist (TaylorSeer N 3: 45.7 against 40.0 dB at N 4 for order 1), order 1 on flux-mnist
    (interval 3: 37.0 against 35.3 dB), so neither is right for every model."""
    errors = {}
    for action in ("forecast1", "forecast2"):
        candidate = replace(config, action=action)
        rows = start_evaluations(E, macs, candidate)
        errors[action] = error(CachePlan.from_actions(rows_actions(E, L, rows, action), form=config.form))
    return replace(config, action=min(errors, key=errors.get)), errors


def _choose_start(starts: dict, error, form: str, deadline: Deadline) -> tuple[str, dict]:
    """(name of the start with the lowest held-out error, every start's error: None where not measured). Without
    time to measure, the first start: an interval's (trimmed or grown) beat the even spread on every budget measured
    (docs/learned-schedules.md)."""
    errors = {name: measured for name, (_, measured) in starts.items()}
    if len(starts) == 1:
        return next(iter(starts)), errors
    for name, (actions, measured) in starts.items():
        if measured is None:
            if deadline.passed("the choice of a start"):
                break
            errors[name] = error(CachePlan.from_actions(actions, form=form))
    done = {name: e for name, e in errors.items() if e is not None}
    return (min(done, key=done.get) if done else next(iter(starts))), errors


def _refine(start, error, screen, check, start_error, config, max_skip, progress, blocks, deadline):
    """The budget-neutral moves of the search, by config.search_method."""
    rounds, form = config.search_rounds, config.form
    if screen is not None:  # ranked
        return refine_ranked(
            start, error, screen, form, rounds, max_skip, progress, check, start_error, blocks, deadline
        )
    return refine(start, error, form, rounds, max_skip, progress, check, start_error, blocks, deadline)


def _element_size(model) -> int:
    return next(model.parameters()).element_size()


def _memory_cap(model, macs: MacProfile, max_bytes: float, guidance_scale: float, workload) -> tuple:
    """cap_memory's arguments: the model's element size, and its model calls per evaluation that keep caches."""
    element_size = _element_size(model)
    # Guidance stores a second set per image: two calls (U-ViT, FLUX's true CFG) or a doubled batch (DiT).
    guided = getattr(workload, "cfg", 1.0) > 1 if workload is not None else guidance_scale != 1.0
    return macs.sublayer_outputs, max_bytes, element_size, 2 if guided else 1


def _check_memory(plan: CachePlan, cap: tuple, which: str) -> None:
    outputs, max_bytes, element_size, calls = cap
    need = plan_peak_bytes(plan, outputs, 1, element_size, calls)
    if need > max_bytes:
        raise ValueError(
            f"{which} stores {need / 2**30:.3g} GB per image, over --max-cache-memory {max_bytes / 2**30:.3g} GB: "
            "raise the cap, or store less (--action reuse keeps one output per sub-layer)"
        )


def _fraction(actions: torch.Tensor, config: ScheduleTrainConfig, macs: MacProfile) -> float:
    return macs.fraction(CachePlan.from_actions(actions, form=config.form))


def _unspent_reason(fill: dict | None, stopped: str | None, mode: str) -> str:
    """Why a searched schedule leaves more than 2 % of its budget unspent, for train-router's note."""
    if fill is not None and not fill["sublayers"]:
        return "no sub-layer more fits"
    if fill is not None and not fill["kept"]:
        return (
            f"its sub-layers of evaluation {fill['evaluation']} that fit raised the held-out or check error, so the "
            "fill was not kept"
        )
    if fill is not None and stopped is not None:
        return f"{GROWTH_STOPPED[stopped]}; one evaluation's sub-layers were added"
    if stopped is not None:
        return GROWTH_STOPPED[stopped]
    return "as the search left it" if mode == "evaluation" else "the fill is off"
