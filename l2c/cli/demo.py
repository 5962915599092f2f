"""`l2c demo`: the main job — train a router on a bundled model, sample with and without it, compare."""

from __future__ import annotations

HELP = "the main job: train a router on a bundled model, sample with and without it, compare"


def add_arguments(p) -> None:
    p.add_argument(
        "--model",
        default="dit-mnist",
        choices=["dit-mnist", "uvit-mnist", "flux-mnist"],
        help="bundled model (flux-mnist: uncached against its bundled learned schedule; no router to train)",
    )
    p.add_argument("--images", type=int, default=500, help="images per arm for FID / accuracy / PSNR")
    p.add_argument("--iterations", type=int, default=None, help="router iterations (default per model; not flux-mnist)")
    p.add_argument("--repeats", type=int, default=5, help="latency repeats (median reported)")
    p.add_argument("--target-removal", type=float, default=0.5, help="sets λ (see train-router --lam auto)")
    p.add_argument("--out", default="demo_out", help="output folder")


def run(args) -> int:
    from ..jobs.demo import run_demo

    if args.model == "flux-mnist" and args.iterations is not None:
        raise ValueError("flux-mnist's demo trains no router (its learned schedule is bundled): drop --iterations")
    return run_demo(
        args.model,
        images=args.images,
        iterations=args.iterations,
        repeats=args.repeats,
        target_removal=args.target_removal,
        out=args.out,
    )
