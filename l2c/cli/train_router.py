"""`l2c train-router`: train a Learning-to-Cache router against a frozen model (Algorithm 1)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from .common import (
    add_conditioning_arg,
    add_model_args,
    add_sampler_args,
    advanced,
    is_flux,
    load_model,
    load_native_dit,
    load_workload,
    sample_config,
)

HELP = "train a Learning-to-Cache router against a frozen model (Algorithm 1)"
SETTINGS = ("iterations", "batch_size", "lr", "lam", "loss", "clamp", "threshold")


def add_arguments(p) -> None:
    add_model_args(p)
    add_sampler_args(p)
    p.add_argument(
        "--data",
        default="mnist",
        help="'mnist', 'generated' (images the model samples itself), a folder made by `l2c prepare-data`, "
        "or an image folder (prepared beside --out first)",
    )
    p.add_argument(
        "--target-speedup",
        type=float,
        default=None,
        help="learn a schedule over every evaluation predicted this much faster on this device (e.g. 2.5; beyond "
        "the paper): the time of each part is measured first, at --cost-batch images",
    )
    p.add_argument(
        "--target-macs", type=float, default=None, help="a schedule at this MAC fraction of uncached instead (e.g. 0.4)"
    )
    add_conditioning_arg(p)
    p.add_argument("--out", default="router.safetensors", help="router file to write (working files beside it)")
    p.add_argument("--resume", action="store_true", help="continue from the working checkpoint beside --out")
    _add_training_knobs(advanced(p, "advanced: router training (the paper's Algorithm 1)"))
    _add_search_knobs(advanced(p, "advanced: learned schedules (with --target-speedup or --target-macs)"))


def _add_training_knobs(g) -> None:
    g.add_argument("--iterations", type=int, default=None, help="router optimizer steps (default per model)")
    g.add_argument("--batch-size", type=int, default=None, help="batch per iteration (default per model)")
    g.add_argument("--lr", type=float, default=None, help="router AdamW learning rate (default per model)")
    g.add_argument(
        "--lam",
        "--lambda",
        dest="lam",
        default=None,
        help="λ of the sparsity term, or 'auto' from --target-removal (default: auto; Table 8 with --official)",
    )
    g.add_argument(
        "--target-removal",
        type=float,
        default=0.5,
        help="--lam auto: λ is this quantile of the measured single-layer caching errors",
    )
    g.add_argument("--loss", choices=["mean", "sum"], default=None, help="distillation loss form (DiT mean, U-ViT sum)")
    g.add_argument("--clamp", type=float, default=None, help="clamp logits to ±c after each step; 0 = off")
    g.add_argument("--threshold", type=float, default=None, help="θ stored in the router file")
    g.add_argument("--ste-threshold", type=float, default=None, help="straight-through threshold in training")
    g.add_argument("--official", action="store_true", help="use the paper's Table 8 settings (λ, lr, loss, clamp)")
    g.add_argument("--seed", type=int, default=0, help="seed for batches, steps and the router init")
    g.add_argument("--generated-images", type=int, default=512, help="pool size for --data generated")
    g.add_argument("--vae", default=None, help="local AutoencoderKL folder (latent models with an image folder)")


def _add_search_knobs(g) -> None:
    g.add_argument(
        "--action",
        choices=["forecast2", "forecast1", "reuse", "auto"],
        default=None,
        help="what a skipped cell does; auto: the measured better order (default: auto for FLUX, else forecast2)",
    )
    g.add_argument("--search-rounds", type=int, default=2, help="rounds of budget-neutral moves (0: no search)")
    g.add_argument("--search-images", type=int, default=64, help="held-out noise seeds each move is measured on")
    g.add_argument("--check-images", type=int, default=64, help="other seeds a kept move must also improve (0: none)")
    # What the search leaves of the budget (it adds whole evaluations only where the held-out error falls, so up to
    # one evaluation can be left): 'evaluation' spends it on the sub-layers of the one evaluation whose computation
    # lowers the held-out error most, kept only if that error does not rise; 'blocks' block by block, the least
    # harmful first, whatever the error; 'off' leaves it unspent.
    g.add_argument(
        "--fill-budget",
        nargs="?",
        const="blocks",
        choices=["evaluation", "blocks", "off"],
        default=None,
        help="spend the budget the search leaves: evaluation (default with a search), blocks (bare flag), off",
    )
    g.add_argument(
        "--search-snapshots", type=int, default=10, help="stored runs a candidate resumes from (fewer: less memory)"
    )
    g.add_argument(
        "--search-method",
        choices=["ranked", "exhaustive"],
        default="ranked",
        help="ranked: moves screened on 16 images, tried best first; exhaustive: each on every image (slower)",
    )
    g.add_argument(
        "--search-minutes", type=float, default=None, help="stop the search after M minutes with the best plan so far"
    )
    g.add_argument(
        "--reference-steps",
        type=int,
        default=None,
        help="the search matches the uncached images of this many steps (default: --steps)",
    )
    g.add_argument(
        "--search-error",
        choices=["images", "samples"],
        default="images",
        help="measure moves on samples clipped to the image range (pixel models), or unclipped",
    )
    g.add_argument(
        "--forecast-form",
        choices=["newton", "taylorseer"],
        default="newton",
        help="order-2 forecast: Newton's quadratic through three outputs, or TaylorSeer's k²/2 term",
    )
    g.add_argument("--window", type=int, default=5, help="evaluations per back-propagation window")
    g.add_argument("--max-skip", type=int, default=None, help="cap on consecutive non-computed evaluations")
    g.add_argument(
        "--max-cache-memory",
        type=float,
        default=None,
        help="GB a schedule may store per image (every guidance call counted); the search skips plans over it",
    )
    g.add_argument("--cost-batch", type=int, default=64, help="images per call --target-speedup's timing runs at")
    g.add_argument("--height", type=int, default=None, help="image height of a FLUX folder's runs (default 1024)")
    g.add_argument("--width", type=int, default=None, help="image width of a FLUX folder's runs (default 1024)")


def run(args) -> int:
    if args.target_speedup is not None or args.target_macs is not None:
        return run_schedule(args)
    if is_flux(args):
        raise ValueError(f"{args.model} trains learned schedules: pass --target-speedup or --target-macs")
    if args.conditioning is not None or args.prompts is not None:
        raise ValueError("--conditioning / --prompts are for a FLUX folder's prompts; this model is class-conditional")
    from ..jobs.train_router import RouterJob, batch_source, check_before_training, train_router_job

    model, spec, meta = load_model(args)
    sampling = sample_config(args, model, spec)
    job = RouterJob(
        sampler=sampling.sampler,
        steps=args.steps,
        guidance_scale=args.cfg,
        official=args.official,
        overrides=tuple((k, getattr(args, k)) for k in SETTINGS if getattr(args, k) is not None),
        target_removal=args.target_removal,
        ste_threshold=args.ste_threshold,
        seed=args.seed,
        precision=args.dtype,
    )
    out = Path(args.out)
    data = {"data": args.data, "generated_images": args.generated_images if args.data == "generated" else None}
    check_before_training(model, spec, meta, job, out, args.resume, data)  # before any images are made or read
    batches = batch_source(args.data, model, spec, meta, args.vae, out.with_suffix(""), sampling, args.generated_images)
    train_router_job(model, spec, meta, job, batches, out, resume=args.resume, extra_meta=data)
    return 0


def _default_action(args) -> str:
    """forecast2 where it measured best (dit-mnist, uvit-mnist); measured per search where order 1 did better
    (flux-mnist: docs/forecast-positions.md) and for FLUX folders, whose order is unknown in advance."""
    return "auto" if is_flux(args) and args.search_rounds and not args.iterations else "forecast2"


def schedule_config(args):
    """The schedule-training settings of the command line (validated before any work)."""
    from ..training.trajectory import ScheduleTrainConfig

    if args.target_speedup is not None and args.target_macs is not None:
        raise ValueError("give --target-speedup or --target-macs, not both")
    if args.target_speedup is not None and not args.target_speedup > 1.0:
        raise ValueError(f"--target-speedup must be > 1, got {args.target_speedup}")
    target = args.target_macs if args.target_macs is not None else 1.0 / args.target_speedup
    overrides = {k: getattr(args, k) for k in ("iterations", "batch_size", "lr") if getattr(args, k) is not None}
    if args.search_rounds < 0:
        raise ValueError(f"--search-rounds must be >= 0, got {args.search_rounds}")
    if args.search_images < 1:
        raise ValueError(f"--search-images must be >= 1, got {args.search_images}")
    if args.check_images < 0:
        raise ValueError(f"--check-images must be >= 0, got {args.check_images}")
    if args.fill_budget not in (None, "off") and not args.search_rounds:
        raise ValueError("--fill-budget needs a search (--search-rounds > 0): without one the export fills the budget")
    if args.search_snapshots < 0:
        raise ValueError(f"--search-snapshots must be >= 0, got {args.search_snapshots}")
    if args.search_minutes is not None and not (args.search_minutes > 0 and args.search_rounds):
        raise ValueError("--search-minutes needs a value > 0 and a search (--search-rounds > 0), which it bounds")
    if args.reference_steps is not None and not (args.reference_steps >= 1 and args.search_rounds):
        raise ValueError("--reference-steps needs a value >= 1 and a search (--search-rounds > 0), which it measures")
    return ScheduleTrainConfig(
        target_macs=target,
        action=args.action or _default_action(args),
        form=args.forecast_form,
        window=args.window,
        search_rounds=args.search_rounds,
        search_images=args.search_images,
        check_images=args.check_images,
        search_snapshots=args.search_snapshots,
        search_method=args.search_method,
        search_minutes=args.search_minutes,
        fill_budget=args.fill_budget or "evaluation",
        error_on=args.search_error,
        guidance_scale=args.cfg,
        seed=args.seed,
        **overrides,
    )


def run_schedule(args) -> int:
    from ..jobs.diffusers_workload import is_flux_model
    from ..jobs.train_schedule import train_schedule_job

    config = schedule_config(args)
    if args.max_skip is not None and args.max_skip < 1:
        raise ValueError(f"--max-skip must be >= 1, got {args.max_skip}")
    if args.max_cache_memory is not None and not (args.max_cache_memory > 0 and config.search_rounds):
        raise ValueError("--max-cache-memory needs a value > 0 and a search (--search-rounds > 0), which it bounds")
    cap = None if args.max_cache_memory is None else args.max_cache_memory * 2**30
    if args.cost_batch < 1:
        raise ValueError(f"--cost-batch must be >= 1, got {args.cost_batch}")
    if is_flux_model(args.model):
        return _run_flux_schedule(args, config, cap)
    if args.conditioning is not None or args.prompts is not None:
        raise ValueError("--conditioning / --prompts are for a FLUX folder's prompts; this model is class-conditional")
    from ..cache.macs import profile_macs
    from ..integrations.diffusers_convert import NotConvertible
    from ..sampling.workload import ClassWorkload

    try:
        model, spec, meta = load_model(args)
    except NotConvertible:  # a DiT trained in diffusers (an embedder per block): searched on itself
        return _run_native_dit_schedule(args, config, cap)
    sampling = sample_config(args, model, spec)
    sampler = sampling.make_sampler(spec)
    reference = None
    if args.reference_steps is not None:
        reference = replace(sampling, steps=args.reference_steps).make_sampler(spec)
    macs = profile_macs(meta["preset"])
    cost = _measured_cost(args, ClassWorkload(model, sampler, args.cfg), macs)
    out, skip = Path(args.out), args.max_skip
    train_schedule_job(
        model, meta, sampler, macs, config, out, skip, max_cache_bytes=cap, cost=cost, reference_sampler=reference
    )
    return 0


def _measured_cost(args, workload, macs):
    """With --target-speedup, the time profile of one evaluation at --cost-batch images (None for --target-macs)."""
    if args.target_speedup is None:
        return None
    import torch

    from ..cache.costs import measure_time_profile

    seeds = list(range(args.cost_batch))
    z = workload.noise(seeds)
    denoise, copies = workload.denoiser(torch.tensor(seeds))
    x = torch.cat([z] * copies)
    t = workload.sampler.model_time(workload.sampler.num_evaluations // 2, len(x), x.device)
    print(f"measuring the time of each part of an evaluation at {args.cost_batch} images", flush=True)
    return measure_time_profile(workload.model, lambda: denoise(x, t, 0), macs.sublayer_outputs, args.cost_batch)


def _run_flux_schedule(args, config, cap) -> int:
    """A FLUX-family diffusers transformer, searched on itself with its own FlowMatchEuler loop (image-free)."""
    from ..jobs.diffusers_workload import workload_macs
    from ..jobs.train_schedule import train_schedule_job

    workload, meta = load_workload(args)
    macs = workload_macs(workload)
    model, sampler = workload.model, workload.sampler
    cost = _measured_cost(args, workload, macs)
    out, reference = Path(args.out), _reference_sampler(args, workload)
    train_schedule_job(model, meta, sampler, macs, config, out, args.max_skip, True, workload, cap, cost, reference)
    return 0


def _run_native_dit_schedule(args, config, cap) -> int:
    """A DiTTransformer2DModel folder our DiT cannot hold, searched on the transformer itself (DiTPipeline's loop)."""
    from ..jobs.dit_workload import dit_macs
    from ..jobs.train_schedule import train_schedule_job

    workload, meta = load_native_dit(args)
    macs = dit_macs(workload)
    cost = _measured_cost(args, workload, macs)
    model, sampler, out = workload.model, workload.sampler, Path(args.out)
    reference = _reference_sampler(args, workload)
    train_schedule_job(model, meta, sampler, macs, config, out, args.max_skip, True, workload, cap, cost, reference)
    return 0


def _reference_sampler(args, workload):
    """The sampler of --reference-steps (the workload's own sampler at that step count), or None."""
    return None if args.reference_steps is None else workload.with_steps(args.reference_steps).sampler
